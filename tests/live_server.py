"""Servers the tests start for real on 127.0.0.1: ``ragops serve`` here, vLLM in vllm_server.py.

Tests start ``ragops serve`` through the ``live_server`` / ``module_live_server`` fixtures (tests/conftest.py),
which hand out a ``LiveServers``: ``live_server({"generator": "extractive"}, documents=...)`` returns a running
``LiveServer`` (``.url``, ``.client()``, ``.ingest()``, ``.data_dir``, ``.log_path``, ``.stop()``), stopped at the
fixture's teardown if the test did not stop it itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A child process serving HTTP: started in its own session, ready once ``ready_url`` answers 200, stopped
    with SIGTERM to its whole process group (then SIGKILL)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, ready_url: str, timeout: float,
        cwd: Path | None = None,
    ) -> None:  # fmt: skip
        self._log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
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
    """``ragops serve`` (or ``module``'s ``serve``, e.g. tests/faulty_serve.py) on a free port of 127.0.0.1."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        timeout: float = 120.0,
        log_level: str = "warning",
        module: str = "app.cli",
        source: Path | None = None,
    ) -> None:
        """``source``: another checkout of ragops to run (its ``module``, with this venv), e.g. an earlier commit."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.data_dir = Path(env.get("RAGOPS_DATA_DIR", ".ragops"))  # where ragops puts it when unset
        self.env = env  # what it was started with: a CLI run against the same data dir and settings takes it too
        self._clients: list[httpx.Client] = []
        argv = [sys.executable, "-m", module, "serve", "--port", str(self.port), "--log-level", log_level]
        super().__init__(argv, {**os.environ, **env}, log_path, f"{self.url}/readyz", timeout, cwd=source)

    def client(self, timeout: float = 30, **options: Any) -> httpx.Client:
        """An httpx client on this server, closed when it stops (or used as a context manager)."""
        http = httpx.Client(base_url=self.url, timeout=timeout, **options)
        self._clients.append(http)
        return http

    def ingest(
        self, documents: list[dict[str, Any]], headers: dict[str, str] | None = None, timeout: float = 120, **body: Any
    ) -> dict[str, Any]:
        """POST /v1/documents (``body``: its other fields, e.g. ``collection``), asserting a 200."""
        response = httpx.post(
            f"{self.url}/v1/documents", json={"documents": documents, **body}, headers=headers, timeout=timeout
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines of the server's log (``--log-level info`` writes them)."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def lines_of(self, rid: str, count: int = 1) -> list[dict[str, Any]]:
        """The log lines of request ``rid``, once its request line is there (it is written as the request ends)."""
        deadline = time.monotonic() + 10
        while True:
            lines = [line for line in self.log_lines() if line["request_id"] == rid]
            if sum(line["message"] == "request" for line in lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def stop(self) -> None:
        for http in self._clients:
            http.close()
        super().stop()


def settings_env(settings: Mapping[str, object]) -> dict[str, str]:
    """Settings by their flat names (``api_keys``) as ``ragops serve`` reads them: ``RAGOPS_<NAME>``, JSON for lists
    and dicts."""
    env = {}
    for field, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, dict | list | tuple):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"RAGOPS_{field.upper()}"] = text
    return env


class LiveServers:
    """What the ``live_server`` fixtures give: a call starts a server, the fixture's teardown stops them all.

    ``settings`` are settings by their flat names (``{"generator": "extractive"}``), ``env`` raw variables
    (``LANGSMITH_*``, ``RAGOPS_TEST_*``); each server gets a data dir of its own (``server.data_dir``) unless they
    name one, and the session's models dir; ``documents`` are ingested into the default collection before it is
    returned."""

    def __init__(self, new_dir: Callable[[str], Path], models_dir: Path) -> None:
        self._new_dir = new_dir
        self.models_dir = models_dir
        self.started: list[LiveServer] = []

    def __call__(
        self,
        settings: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "server",
        log_level: str = "warning",
        module: str = "app.cli",
        documents: list[dict[str, Any]] | None = None,
    ) -> LiveServer:
        root = self._new_dir(name)
        full = {
            "RAGOPS_DATA_DIR": str(root / "data"),
            "RAGOPS_MODELS_DIR": str(self.models_dir),
            **settings_env(settings or {}),
            **(env or {}),
        }
        server = LiveServer(full, root / "server.log", log_level=log_level, module=module)
        self.started.append(server)
        if documents is not None:
            server.ingest(documents)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


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
