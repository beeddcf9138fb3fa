"""The one OpenAI-compatible backend the tests serve on 127.0.0.1, in a thread: a well-formed but slow stream, or
a backend that misbehaves on purpose to inject faults (an HTTP error, a malformed body, or silence)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Mode = Literal["stream", "error", "malformed", "slow"]


class StubOpenAI:
    """Answers every POST (``url`` is the base URL, ending in ``/v1``) as ``mode`` says:

    - ``stream``: ``sentences`` cited chat-completion chunks, ``gap_s`` apart, then usage and ``[DONE]``; with
      ``texts``, those chunks instead (a model that says what a test needs it to);
    - ``error``: a 500 with an OpenAI error body; ``malformed``: a 200 whose body is not JSON;
    - ``slow``: the error body with a 200, after 2 s.

    ``calls`` counts the requests."""

    def __init__(self, mode: Mode, sentences: int = 8, gap_s: float = 0.5, texts: Sequence[str] = ()) -> None:
        self.calls = 0
        chunks = list(texts) or [f"The Normans came from Normandy {number}. [1] " for number in range(sentences)]
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if mode == "stream" else "HTTP/1.0"

            def do_POST(self) -> None:
                owner.calls += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if mode == "stream":
                    self._stream()
                    return
                if mode == "slow":
                    time.sleep(2)
                body = b"{not json" if mode == "malformed" else json.dumps({"error": {"message": "boom"}}).encode()
                self.send_response(500 if mode == "error" else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for chunk in chunks:
                    self._event({"choices": [{"index": 0, "delta": {"content": chunk}}]})
                    time.sleep(gap_s)
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self._event(
                    {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 80, "total_tokens": 90}}
                )
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, chunk: dict[str, object]) -> None:
                body = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "slow", **chunk}
                self.wfile.write(f"data: {json.dumps(body)}\n\n".encode())
                self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
