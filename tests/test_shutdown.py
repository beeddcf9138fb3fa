"""Graceful shutdown of a real ``ragops serve``: on SIGTERM ``/readyz`` turns 503 at once while requests are still
served (``shutdown_drain_s``), then the port closes, a stream already open finishes with ``[DONE]`` (within
``shutdown_grace_s``), and the process exits 0.

The slow stream comes from an OpenAI-compatible backend (tests/stub_openai.py) that sends one cited sentence every
``SENTENCE_GAP_S``, so the stream outlives the drain by a known margin whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers
from tests.stub_openai import StubOpenAI

SENTENCES = 8
SENTENCE_GAP_S = 0.5  # the stream lasts about 4 s
DRAIN_S = 1.0


@pytest.fixture
def server(stub_openai: Callable[..., StubOpenAI], live_server: LiveServers) -> LiveServer:
    backend = stub_openai("stream", sentences=SENTENCES, gap_s=SENTENCE_GAP_S)
    settings = {
        "generator": "vllm",
        "vllm_base_url": backend.url,
        "vllm_max_retries": 0,
        "generation_timeout_s": 60,
        "output_guard": "report",  # the backend's sentences are not grounded: keep them, do not replace
        "shutdown_drain_s": DRAIN_S,
        "shutdown_grace_s": 30,
    }
    return live_server(settings, log_level="info", documents=load_sample_records(10))


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
        except httpx.ReadError:
            # Connected into the listener's backlog just as it closed, then reset (seen once in a fresh clone's
            # run): the port is closing, and a later try must be refused.
            pass
        time.sleep(0.1)
    return False
