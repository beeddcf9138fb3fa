"""An OpenAI-compatible endpoint that misbehaves on purpose, to inject backend faults."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultyServer:
    """An OpenAI-compatible endpoint that misbehaves on purpose: an HTTP error, a malformed body, or silence."""

    def __init__(self, mode: str) -> None:
        self.calls = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.calls += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if mode == "slow":
                    time.sleep(2)
                body = b"{not json" if mode == "malformed" else json.dumps({"error": {"message": "boom"}}).encode()
                self.send_response(500 if mode == "error" else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
