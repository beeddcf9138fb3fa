"""Graceful shutdown of a real ``ragops serve``: on SIGTERM ``/readyz`` turns 503 at once while requests are still
served (``shutdown_drain_s``), then the port closes, a stream already open finishes with ``[DONE]`` (within
``shutdown_grace_s``), and the process exits 0.

The slow stream comes from an OpenAI-compatible backend written here that sends one cited sentence every
``SENTENCE_GAP_S``, so the stream outlives the drain by a known margin whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import load_sample_records
from tests.live_server import LiveServer

SENTENCES = 8
SENTENCE_GAP_S = 0.5  # the stream lasts about 4 s
DRAIN_S = 1.0


class SlowStreamBackend:
    """Streams ``SENTENCES`` chat-completion chunks, ``SENTENCE_GAP_S`` apart, then usage and ``[DONE]``."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for number in range(SENTENCES):
                    sentence = f"The Normans came from Normandy {number}. [1] "
                    self._event({"choices": [{"index": 0, "delta": {"content": sentence}}]})
                    time.sleep(SENTENCE_GAP_S)
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


@pytest.fixture
def server(tmp_path: Path, models_dir: Path) -> Iterator[LiveServer]:
    backend = SlowStreamBackend()
    env = {
        "RAGOPS_DATA_DIR": str(tmp_path / "data"),
        "RAGOPS_MODELS_DIR": str(models_dir),
        "RAGOPS_GENERATOR": "vllm",
        "RAGOPS_VLLM_BASE_URL": backend.url,
        "RAGOPS_VLLM_MAX_RETRIES": "0",
        "RAGOPS_GENERATION_TIMEOUT_S": "60",
        "RAGOPS_OUTPUT_GUARD": "report",  # the backend's sentences are not grounded: keep them, do not replace
        "RAGOPS_SHUTDOWN_DRAIN_S": str(DRAIN_S),
        "RAGOPS_SHUTDOWN_GRACE_S": "30",
    }
    live = LiveServer(env, tmp_path / "server.log", log_level="info")
    response = httpx.post(f"{live.url}/v1/documents", json={"documents": load_sample_records(10)}, timeout=120)
    assert response.status_code == 200, response.text
    yield live
    live.stop()
    backend.close()


def test_sigterm_drains_then_finishes_open_streams_and_exits_0(server: LiveServer) -> None:
    payload = {"question": "Who were the Normans?", "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/chat", json=payload, timeout=60) as response:
        events = response.iter_lines()
        for line in events:  # up to the first delta: the answer is being streamed
            if line.startswith("data:"):
                lines.append(line)
                if '"delta"' in line:
                    break
        os.kill(server.process.pid, signal.SIGTERM)
        sent_at = time.monotonic()
        draining = httpx.get(f"{server.url}/readyz", timeout=5)  # a new connection, during the drain
        assert draining.status_code == 503 and draining.json()["status"] == "draining"
        refused_while_streaming = wait_until_refused(server.url, deadline=sent_at + DRAIN_S + 2)
        lines.extend(line for line in events if line.startswith("data:"))
    assert refused_while_streaming, "the port stayed open after the drain"
    assert lines[-1] == "data: [DONE]", lines[-3:]
    final = json.loads(lines[-2].removeprefix("data: "))
    assert final["type"] == "answer" and final["generator"] == "vllm" and final["answer"].count("Normandy") == SENTENCES
    assert server.process.wait(timeout=30) == 0, server.log_tail()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=5)


def wait_until_refused(url: str, deadline: float) -> bool:
    """Whether new connections are refused before ``deadline`` (the drain has ended and the port closed)."""
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
        except httpx.ConnectError:
            return True
        time.sleep(0.1)
    return False
