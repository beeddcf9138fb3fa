"""llama.cpp in its own process: a worker that crashes (SIGILL, as a build for the wrong CPU does; SIGKILL, as the
OOM killer does) or hangs costs one answer its model, never the service: the fallback answers and says so, the
supervisor restarts the worker, and no worker outlives the API. Real worker processes and a real ``ragops serve``;
the faults are real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil  # type: ignore[import-untyped]
import pytest

from app.parts import llamacpp_worker_config
from app.settings import load_settings
from prompts.loader import ModelParams, PromptPassage
from serving.answering.extractive import ExtractiveGenerator
from serving.answering.fallback import ChainResult, FallbackChain
from serving.answering.llamacpp.build import BEYOND_BASELINE, LlamaBuild
from serving.answering.llamacpp.supervisor import LlamaCppGenerator, WorkerConfig, WorkerSupervisor
from serving.contracts.generation import GenerationRequest, GeneratorError, StreamDelta
from tests.conftest import load_sample_records
from tests.live_server import LONG_ANSWER_PROMPT, LiveServer, LiveServers, llamacpp_worker, long_answer_prompts

HANG_TIMEOUT_S = 3.0
SHORT = GenerationRequest([{"role": "user", "content": "Say hi."}], "hi", [], ModelParams(max_tokens=4))


def long_request() -> GenerationRequest:
    messages = [{"role": "user", "content": "Write a long story about a dragon who learns to read."}]
    return GenerationRequest(messages, "dragon", [], ModelParams(max_tokens=400))


def wait_until(condition: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def supervise(gguf: Path, timeout_s: float) -> tuple[LlamaCppGenerator, list[str]]:
    """A supervised worker, as the server runs it, and the causes of its exits as the restarts metric hears them."""
    causes: list[str] = []
    supervisor = WorkerSupervisor(WorkerConfig(gguf, timeout_s=timeout_s), on_exit=causes.append)
    assert supervisor.start().up
    return LlamaCppGenerator(supervisor), causes


@pytest.fixture
def supervised(gguf: Path) -> Iterator[tuple[LlamaCppGenerator, list[str]]]:
    generator, causes = supervise(gguf, timeout_s=60.0)
    yield generator, causes
    generator.supervisor.close()


@pytest.fixture
def impatient(gguf: Path) -> Iterator[tuple[LlamaCppGenerator, list[str]]]:
    generator, causes = supervise(gguf, timeout_s=HANG_TIMEOUT_S)
    yield generator, causes
    generator.supervisor.close()


def test_the_build_is_portable(supervised: tuple[LlamaCppGenerator, list[str]]) -> None:
    """The worker reports the loaded library: built for the baseline (AVX2/FMA/F16C), nothing a smaller CPU lacks."""
    ready = supervised[0].supervisor.status().ready
    assert ready is not None
    assert {"AVX2", "FMA", "F16C"} <= set(ready.build.features), ready.build.label
    assert not set(ready.build.features) & BEYOND_BASELINE, f"a native-only build: {ready.build.label}"
    assert ready.build.variant == "portable"


def test_build_parsing() -> None:
    native = LlamaBuild.parse("0.3.36", "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | AVX512_BF16 = 0 | ")
    assert native.beyond_baseline == ("AMX_INT8", "AVX512") and native.variant == "native:AMX_INT8+AVX512"


def test_the_engine_settings_reach_the_worker() -> None:
    """The prefix cache is on unless turned off; flash attention (which changes answers) only when asked for."""
    plain = llamacpp_worker_config(load_settings()).argv()
    assert "--no-prefix-cache" not in plain and "--flash-attn" not in plain
    changed = llamacpp_worker_config(load_settings(llamacpp_prefix_cache=False, llamacpp_flash_attn=True)).argv()
    assert "--no-prefix-cache" in changed and "--flash-attn" in changed
    assert load_settings(llamacpp_flash_attn=True).answer_fingerprint() != load_settings().answer_fingerprint()


@pytest.mark.parametrize("fault", [signal.SIGILL, signal.SIGKILL, signal.SIGSEGV], ids=lambda s: s.name)
def test_a_worker_dying_mid_answer_is_a_crash_and_is_restarted(
    supervised: tuple[LlamaCppGenerator, list[str]], fault: signal.Signals
) -> None:
    generator, causes = supervised
    before = generator.supervisor.status()
    stream = generator.stream(long_request())
    assert isinstance(next(stream), StreamDelta)
    assert before.pid is not None
    os.kill(before.pid, fault)
    with pytest.raises(GeneratorError) as failure:
        list(stream)
    assert failure.value.kind == "crashed" and fault.name in str(failure.value)
    assert wait_until(lambda: generator.supervisor.status().up, 30)
    after = generator.supervisor.status()
    assert after.pid != before.pid and after.restarts == before.restarts + 1 and causes[-1] == fault.name
    assert generator.generate(SHORT).text


def test_a_job_sent_to_a_worker_just_killed_names_the_signal(
    supervised: tuple[LlamaCppGenerator, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job may reach the pipe after the worker died but before its reader has the exit status (a race CI hit):
    the answer still names the signal, not the broken pipe. The fault: a reader slow to collect the status."""
    generator, _ = supervised
    process = generator.supervisor.worker()._process
    collect = process.wait

    def slow_wait(timeout: float | None = None) -> int:
        time.sleep(1.0)
        return collect(timeout)

    monkeypatch.setattr(process, "wait", slow_wait)
    worker = psutil.Process(process.pid)
    worker.kill()
    assert wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 10)
    with pytest.raises(GeneratorError) as failure:
        list(generator.stream(SHORT))
    assert failure.value.kind == "crashed" and "SIGKILL" in str(failure.value), failure.value


def test_a_hung_worker_is_a_timeout_then_killed_and_the_fallback_answers(
    impatient: tuple[LlamaCppGenerator, list[str]], embedder: Any
) -> None:
    generator, causes = impatient
    pid = generator.supervisor.status().pid
    assert pid is not None
    chain = FallbackChain([generator, ExtractiveGenerator(embedder)])
    generator.supervisor.when_ready(chain.breakers[generator.name].reset)
    os.kill(pid, signal.SIGSTOP)  # alive but never answers: a wedged native call looks like this
    try:
        passage = PromptPassage(1, "paris", "Paris is the capital of France. It lies on the Seine.")
        request = GenerationRequest(long_request().messages, "What is the capital of France?", [passage], ModelParams())
        started = time.monotonic()
        result = next(e for e in chain.stream(request) if isinstance(e, ChainResult))
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed as hung by now, most likely
            os.kill(pid, signal.SIGCONT)
    waited = time.monotonic() - started
    assert result.generator == "extractive" and result.fallback is not None
    assert result.fallback.reason.startswith("timeout") and "hung" in result.fallback.reason
    assert HANG_TIMEOUT_S <= waited < HANG_TIMEOUT_S + 10  # silent past the deadline: no grace before a first word
    assert wait_until(lambda: generator.supervisor.status().restarts == 1, 10) and causes == ["hung"]
    assert wait_until(lambda: generator.supervisor.status().up, 30) and generator.supervisor.status().pid != pid
    assert chain.breakers[generator.name].state == "closed"  # tried again at once, not after the cool-down


def test_a_stream_closed_early_cancels_the_job(supervised: tuple[LlamaCppGenerator, list[str]]) -> None:
    """A client that leaves: the worker stops at its next token, so the next answer does not wait for 400."""
    generator, _ = supervised
    stream = generator.stream(long_request())
    assert isinstance(next(stream), StreamDelta)
    stream.close()
    started = time.monotonic()
    assert generator.generate(SHORT).text
    assert time.monotonic() - started < 2.5  # 400 tokens take several seconds here


def test_close_leaves_no_worker(gguf: Path) -> None:
    supervisor = WorkerSupervisor(WorkerConfig(gguf))
    pid = supervisor.start().pid
    assert pid is not None and psutil.pid_exists(pid)
    supervisor.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert supervisor.status().restarts == 0  # a stop is not a crash


def test_a_worker_that_cannot_start_says_why() -> None:
    supervisor = WorkerSupervisor(WorkerConfig(Path("/nonexistent/model.gguf"), start_timeout_s=60))
    try:
        status = supervisor.start()
        assert not status.up and status.last_exit and "/nonexistent/model.gguf" in status.last_exit
        with pytest.raises(GeneratorError) as failure:
            LlamaCppGenerator(supervisor).generate(long_request())
        assert failure.value.kind == "crashed"
    finally:
        supervisor.close()


# The service around it: a real `ragops serve`, its worker killed while an answer streams.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_live_server: LiveServers) -> LiveServer:
    prompts = long_answer_prompts(tmp_path_factory.mktemp("worker-prompts") / "prompts")
    settings = {
        "prompts_dir": prompts,
        "prompt": LONG_ANSWER_PROMPT,
        "output_guard": "report",
        "answer_cache_size": 0,
        "generation_timeout_s": 60,
    }
    return module_live_server(settings, name="worker", documents=load_sample_records(40))


def worker_of(server: LiveServer) -> psutil.Process:
    """The worker taking jobs, once there is one: an earlier test may have killed the last."""
    assert readiness_until_ready(server)[-1] == "ready"
    return psutil.Process(llamacpp_worker(server))


def readiness_until_ready(server: LiveServer, timeout: float = 30) -> list[str]:
    """``/readyz`` statuses, polled until ready: what a load balancer sees while the worker restarts."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{server.url}/readyz", timeout=5)
        assert response.status_code == 200  # degraded is still ready: answers are served
        seen.append(response.json()["status"])
        if seen[-1] == "ready":
            break
        time.sleep(0.05)
    return seen


def restarts(server: LiveServer, cause: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'ragops_generator_restarts_total{{cause="{cause}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_chat_stream_survives_a_sigill_mid_answer(server: LiveServer) -> None:
    worker = worker_of(server)
    payload = {"question": "Who were the Normans?", "stream": True}
    events: list[Any] = []
    with httpx.stream("POST", f"{server.url}/v1/chat", json=payload, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
                if len(events) == 1:
                    assert events[0]["type"] == "delta"
                    worker.send_signal(signal.SIGILL)
    kinds = [e if isinstance(e, str) else e["type"] for e in events]
    assert kinds[-2:] == ["answer", "[DONE]"] and "replaced" in kinds, kinds
    replaced, answer = events[kinds.index("replaced")], events[-2]
    assert (
        replaced["from"] == "llamacpp" and "SIGILL" in replaced["reason"] and replaced["reason"].startswith("crashed")
    )
    assert answer["generator"] == "extractive" and answer["answer"] and answer["citations"]
    assert answer["fallback"]["from"] == "llamacpp" and "SIGILL" in answer["fallback"]["reason"]
    statuses = readiness_until_ready(server)
    assert "degraded" in statuses and statuses[-1] == "ready", statuses
    assert restarts(server, "SIGILL") == 1
    again = httpx.post(
        f"{server.url}/v1/chat", json={"question": "What part of the Earth's atmosphere is oxygen?"}, timeout=120
    ).json()
    assert again["generator"] == "llamacpp" and again["fallback"] is None and worker_of(server).pid != worker.pid


def test_openai_stream_survives_a_sigkill_mid_answer(server: LiveServer) -> None:
    worker = worker_of(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    chunks = []
    stream = client.chat.completions.create(
        model="ragops",
        messages=[{"role": "user", "content": "What do petrologists use electron microprobes for?"}],
        stream=True,
    )
    for chunk in stream:  # the SDK stops at [DONE]
        chunks.append(chunk)
        if len(chunks) == 1:
            worker.send_signal(signal.SIGKILL)
    last = chunks[-1].model_dump()
    assert last["ragops"]["generator"] == "extractive" and "SIGKILL" in last["ragops"]["fallback"]["reason"]
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert readiness_until_ready(server)[-1] == "ready" and restarts(server, "SIGKILL") == 1
    answer = client.chat.completions.create(
        model="ragops", messages=[{"role": "user", "content": "What was the Norman castle called?"}]
    )
    assert answer.model_dump()["ragops"]["generator"] == "llamacpp"


def test_no_worker_outlives_the_api(server: LiveServer, live_server: LiveServers) -> None:
    """SIGTERM: the API stops its worker on the way out. SIGKILL: nothing runs in the API any more, and the
    worker sees its input close and exits."""
    worker = worker_of(server)
    server.stop()  # SIGTERM to the process group, as an orchestrator or Ctrl-C would
    assert server.process.returncode == 0
    assert wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 10)

    other = live_server()
    orphan = worker_of(other)
    other.process.send_signal(signal.SIGKILL)  # the API alone, not its process group
    other.process.wait()
    try:
        assert wait_until(lambda: not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE, 10)
    finally:
        if orphan.is_running():
            orphan.kill()
