"""Servers the tests start for real on 127.0.0.1: ``ragops serve`` here, vLLM in vllm_server.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A child process serving HTTP: started in its own session, ready once ``ready_url`` answers 200, stopped
    with SIGTERM to its whole process group (then SIGKILL)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, ready_url: str, timeout: float) -> None:
        self._log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{argv[2]} not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self._log_path.read_text()[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class LiveServer(ServerProcess):
    def __init__(self, env: dict[str, str], log_path: Path, timeout: float = 120.0, log_level: str = "warning") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--log-level", log_level]
        super().__init__(argv, {**os.environ, **env}, log_path, f"{self.url}/readyz", timeout)


def llamacpp_worker(server: ServerProcess) -> int:
    """The pid of a ``ragops serve``'s llama.cpp worker (a child that exited and is not reaped yet is not it)."""
    import psutil  # type: ignore[import-untyped]

    workers = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if "serving.answering.llamacpp.worker" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                workers.append(child.pid)
        except psutil.Error:  # gone, or a zombie, while we looked
            continue
    (pid,) = workers
    return int(pid)


# A prompt that makes SmolLM2 talk for seconds, so a test (or bench/llamacpp_worker.py) can kill the worker with an
# answer half-way out.
LONG_ANSWER_PROMPT = "rag_answer@v90"
_LONG_ANSWER = """name: rag_answer
version: v90
description: Test only. A long free-text answer, so that the model can be killed mid-answer.
changelog: Test only.
params:
  temperature: 0.0
  max_tokens: 400
  seed: 0
system: You are a storyteller. Write a long and detailed story of at least twenty sentences about the question.
user: |
  {% for passage in passages %}Passage [{{ passage.index }}]: {{ passage.text }}
  {% endfor %}
  Question: {{ question }}
"""


def long_answer_prompts(root: Path) -> Path:
    """The shipped prompts plus ``LONG_ANSWER_PROMPT``, under ``root`` (for ``RAGOPS_PROMPTS_DIR``)."""
    shutil.copytree(Path(__file__).resolve().parents[1] / "prompts", root,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))  # fmt: skip
    (root / "rag_answer" / "v90.yaml").write_text(_LONG_ANSWER)
    return root
