"""A local HTTP receiver standing in for LangSmith: records every request, answers like the API would.

Each POST/PATCH gets back its own JSON body completed with the fields LangSmith adds (id, timestamps, tenant),
which is what the langsmith SDK parses; GETs of datasets and /info get empty but well-formed answers.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Recorded(self.command, self.path, headers, body))
                reply = receiver.reply(self.command, self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle  # noqa: N815 (the names http.server dispatches on)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reply(self, method: str, path: str, body: bytes) -> Any:
        if method == "GET":
            return {} if path.startswith("/info") else []
        if "/examples" in path:
            return []  # the ids of the created examples: the SDK only counts them
        try:
            sent = json.loads(body) if body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            sent = {}  # multipart batches
        now = datetime.now(UTC).isoformat()
        defaults = {
            "id": str(uuid.uuid4()),
            "created_at": now,
            "start_time": now,
            "tenant_id": str(uuid.uuid4()),
            "reference_dataset_id": None,
        }
        if isinstance(sent, dict):
            return {**defaults, "count": 0, "example_ids": [], **sent}
        return defaults

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
