"""The API side of the llama.cpp worker: one child process at a time, restarted with backoff when it dies, killed
when it hangs, stopped with the API. ``LlamaCppGenerator`` is the chain's ``llamacpp`` backend on top of it.

A worker that dies mid-answer (SIGILL, SIGSEGV, SIGKILL from the OOM killer) ends that answer with a ``crashed``
failure the fallback chain answers instead; one that stops producing past its deadline is killed and ends as a
``timeout``. Either way the supervisor starts a new one (the model loads in about a second) and reports itself
down meanwhile (``/readyz`` says ``degraded``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Generator as GeneratorType
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from serving.answering.llamacpp.protocol import (
    FROM_WORKER,
    Cancel,
    Delta,
    Done,
    Failed,
    Job,
    Ready,
    Started,
    Unusable,
    _Message,
    encode,
)
from serving.contracts.generation import Generation, GenerationRequest, GeneratorError, StreamDelta, Usage

logger = logging.getLogger("ragops")

# What a job may take past its deadline before the worker counts as hung: the worker checks its deadline between
# tokens, and evaluating a long prompt (no tokens yet) can take a few seconds on 2 cores.
HANG_GRACE_S = 5.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a worker up this long, or one that finished an answer, resets the backoff


@dataclass(frozen=True)
class WorkerConfig:
    model_path: Path
    threads: int = 1
    context: int = 2048
    timeout_s: float = 30.0
    start_timeout_s: float = 120.0
    prefix_cache: bool = True  # the engine's KV snapshots per system prompt (engine.PrefixCache)
    flash_attn: bool = False  # faster prompt evaluation on CPU, but the answers' floating point changes

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "serving.answering.llamacpp.worker", "--model", str(self.model_path),
            "--threads", str(self.threads), "--context", str(self.context), "--timeout", str(self.timeout_s),
            *(() if self.prefix_cache else ("--no-prefix-cache",)), *(("--flash-attn",) if self.flash_attn else ()),
        ]  # fmt: skip


@dataclass(frozen=True)
class Gone:
    """Put in every open job's queue when the worker process ends."""

    reason: str


Event = Started | Delta | Done | Failed | Gone


def exit_cause(returncode: int, killed_for: str | None, unusable: str | None) -> tuple[str, str]:
    """(cause, reason): a short cause for the restarts metric (``SIGILL``, ``hung``, ``unusable``, ``exit``) and
    the sentence logs and answers carry."""
    if killed_for is not None:
        return "hung", f"was killed: {killed_for}"
    if unusable is not None:
        return "unusable", f"cannot start: {unusable}"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return name, f"was killed by {name}"
    return "exit", f"exited with status {returncode}"


class WorkerProcess:
    """One worker: its events routed to the open jobs by id, until its pipe closes (it exited or was killed)."""

    def __init__(
        self,
        config: WorkerConfig,
        on_ready: Callable[[WorkerProcess], None],
        on_exit: Callable[[WorkerProcess, str, str], None],
    ) -> None:
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._jobs: dict[int, queue.Queue[Event]] = {}
        self._lock = threading.Lock()
        self.ready: Ready | None = None
        self.exit_reason: str | None = None
        self._killed_for: str | None = None
        self.answered = 0  # jobs it finished: one that did has shown it works
        self.started_at = time.monotonic()
        self.last_heard = self.started_at  # when the worker last wrote anything: silence past a deadline is a hang
        self._process = subprocess.Popen(config.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._stdin: IO[bytes] = self._process.stdin  # type: ignore[assignment]  # PIPE: never None
        self._reader = threading.Thread(target=self._read, name=f"llamacpp-{self.pid}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def submit(self, job: Job) -> queue.Queue[Event]:
        events: queue.Queue[Event] = queue.Queue()
        with self._lock:
            if self.exit_reason is not None:
                raise GeneratorError("crashed", f"llama.cpp worker {self.exit_reason}")
            self._jobs[job.id] = events
            # A failed send means the worker is gone but its reader has not seen the exit status yet: the job stays
            # open, and the reader ends it with the cause (SIGKILL, ...), not a guess.
            self._send(job)
        return events

    def cancel(self, job_id: int) -> None:
        with self._lock:
            if self._jobs.pop(job_id, None) is not None:
                self._send(Cancel(id=job_id))

    def release(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def _send(self, message: _Message) -> None:
        # A broken pipe (or a closed input) means the worker is gone: its reader says why.
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._stdin.write(encode(message))
            self._stdin.flush()

    def kill(self, why: str) -> None:
        """SIGKILL, and ``why`` becomes the exit's reason."""
        self._killed_for = why
        if self._process.poll() is None:
            self._process.kill()

    def stop(self, grace_s: float = 2.0) -> None:
        """Close its input (it exits), kill it if it has not within ``grace_s``, and wait for the reader."""
        with self._lock, contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self._process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._reader.join(timeout=grace_s + 5)

    def _read(self) -> None:
        stdout: IO[bytes] = self._process.stdout  # type: ignore[assignment]  # PIPE: never None
        unusable: str | None = None
        for line in stdout:
            self.last_heard = time.monotonic()
            try:
                event = FROM_WORKER.validate_json(line)
            except ValidationError:
                logger.warning("llama.cpp worker %d wrote an unreadable line: %r", self.pid, line[:200])
                continue
            if isinstance(event, Ready):
                self.ready = event
                self._on_ready(self)
            elif isinstance(event, Unusable):
                unusable = event.reason
            else:
                with self._lock:
                    events = self._jobs.get(event.id)
                if events is not None:
                    events.put(event)
                self.answered += isinstance(event, Done)
        cause, reason = exit_cause(self._process.wait(), self._killed_for, unusable)
        with self._lock:
            self.exit_reason = reason
            open_jobs, self._jobs = list(self._jobs.values()), {}
        for events in open_jobs:
            events.put(Gone(reason))
        stdout.close()
        self._on_exit(self, cause, reason)


@dataclass(frozen=True)
class WorkerStatus:
    """What ``/readyz`` and ``ragops doctor`` say of the worker."""

    up: bool
    pid: int | None
    restarts: int
    last_exit: str | None
    ready: Ready | None = field(default=None, compare=False)


class WorkerSupervisor:
    """Keeps one worker running. A worker that exits is started again after a backoff (0.5 s, doubling to 30 s
    while workers die without finishing an answer; back to 0.5 s after one that finished an answer or was up for a
    minute: a crash loop at start backs off, a crash now and then is restarted at once). ``on_exit`` hears the
    cause (``SIGILL``, ``hung``, ...); ``when_ready`` callbacks run when a worker (the first, or a restarted one)
    takes jobs."""

    def __init__(
        self,
        config: WorkerConfig,
        on_exit: Callable[[str], None] = lambda cause: None,
    ) -> None:
        self.config = config
        self._on_exit = on_exit
        self._on_ready: list[Callable[[], None]] = []
        self._lock = threading.Condition()
        self._worker: WorkerProcess | None = None
        self._restarts = 0
        self._last_exit: str | None = None
        self._backoff_s = FIRST_BACKOFF_S
        self._closed = False
        self._timer: threading.Timer | None = None

    def when_ready(self, callback: Callable[[], None]) -> None:
        self._on_ready.append(callback)

    def start(self, wait_s: float | None = None) -> WorkerStatus:
        """Start the first worker and wait up to ``wait_s`` (the config's start timeout) for it to be ready or
        gone; the status says which. Answers fall back while it is not up; restarts go on in the background."""
        with self._lock:
            self._spawn()
            settled = lambda: self._up() or self._last_exit is not None  # noqa: E731
            self._lock.wait_for(settled, wait_s or self.config.start_timeout_s)
        return self.status()

    def worker(self) -> WorkerProcess:
        """The worker taking jobs, or a ``crashed`` failure saying why there is none."""
        with self._lock:
            if self._worker is not None and self._worker.ready is not None and self._worker.exit_reason is None:
                return self._worker
            why = f"after it {self._last_exit}" if self._last_exit else "to start"
        raise GeneratorError("crashed", f"llama.cpp worker is not up: waiting for it {why}")

    def status(self) -> WorkerStatus:
        with self._lock:
            worker = self._worker
            return WorkerStatus(self._up(), worker.pid if worker else None, self._restarts, self._last_exit,
                                worker.ready if worker else None)  # fmt: skip

    def kill_hung(self, worker: WorkerProcess, why: str) -> None:
        worker.kill(f"hung, {why}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
            if self._timer is not None:
                self._timer.cancel()
        if worker is not None:
            worker.stop()

    def _up(self) -> bool:
        worker = self._worker
        return worker is not None and worker.ready is not None and worker.exit_reason is None

    def _spawn(self) -> None:
        """Under the lock."""
        if self._closed:
            return
        try:
            self._worker = WorkerProcess(self.config, self._ready, self._exited)
        except OSError as exc:  # the interpreter cannot be started (no memory, no pids): try again later
            self._exited(None, "exit", f"could not be started: {exc}")

    def _ready(self, worker: WorkerProcess) -> None:
        with self._lock:
            if worker is not self._worker:
                return
            self._lock.notify_all()
        logger.info("llama.cpp worker %d ready (%s)", worker.pid, worker.ready.build.label if worker.ready else "")
        for callback in self._on_ready:
            callback()

    def _exited(self, worker: WorkerProcess | None, cause: str, reason: str) -> None:
        with self._lock:
            if self._closed or (worker is not None and worker is not self._worker):
                return
            if worker is not None and (worker.answered or time.monotonic() - worker.started_at >= STABLE_AFTER_S):
                self._backoff_s = FIRST_BACKOFF_S  # it worked: this crash is news, not a loop
            delay, self._backoff_s = self._backoff_s, min(self._backoff_s * 2, MAX_BACKOFF_S)
            self._last_exit = reason
            self._restarts += 1
            self._timer = threading.Timer(delay, self._restart)
            self._timer.daemon = True
            self._timer.start()
            self._lock.notify_all()
        logger.error("llama.cpp worker %s %s; restarting in %.1fs (answers fall back meanwhile)",
                     worker.pid if worker else "-", reason, delay)  # fmt: skip
        self._on_exit(cause)

    def _restart(self) -> None:
        with self._lock:
            self._spawn()


class LlamaCppGenerator:
    """The ``llamacpp`` backend: jobs to the supervised worker, its events back as the chain's stream."""

    name = "llamacpp"

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self.supervisor = supervisor
        self._timeout_s = supervisor.config.timeout_s
        self._ids = itertools.count(1)

    def generate(self, request: GenerationRequest) -> Generation:
        last: Generation | None = None
        for event in self.stream(request):
            if isinstance(event, Generation):
                last = event
        assert last is not None
        return last

    def stream(self, request: GenerationRequest) -> GeneratorType[StreamDelta | Generation, None, None]:
        """The worker's deltas, then the ``Generation``. Closing the stream early cancels the job (the worker
        stops at its next token)."""
        worker = self.supervisor.worker()
        job = Job.of(next(self._ids), request)
        events = worker.submit(job)
        finished = False
        try:
            for event in self._events(worker, events):
                if isinstance(event, Delta):
                    yield StreamDelta(event.text)
                    continue
                finished = True
                if isinstance(event, Done):
                    usage = Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens)
                    model = worker.ready.model if worker.ready else "llamacpp"
                    yield Generation(event.text, usage, event.finish_reason, model)
                    return
                if isinstance(event, Failed):
                    raise GeneratorError(event.error, f"llama.cpp {event.message}")
                raise GeneratorError("crashed", f"llama.cpp worker {event.reason} mid-answer")
        finally:
            if finished:
                worker.release(job.id)
            else:
                worker.cancel(job.id)

    def _events(self, worker: WorkerProcess, events: queue.Queue[Event]) -> Iterator[Delta | Done | Failed | Gone]:
        """The job's events; waits at most the timeout for its turn, then the timeout and a grace for the job
        itself. Past either, a worker that said nothing all that time is hung: killed (the supervisor starts
        another) and a ``timeout``."""
        deadline = time.monotonic() + self._timeout_s
        running = False
        while True:
            try:
                event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                silent_s = time.monotonic() - worker.last_heard
                if not running and silent_s < self._timeout_s:  # busy with other answers: this one waited too long
                    raise GeneratorError("timeout", f"llama.cpp had no turn within {self._timeout_s:g}s") from None
                self.supervisor.kill_hung(worker, f"silent for {silent_s:.1f}s, past the {self._timeout_s:g}s deadline")
                raise GeneratorError("timeout", "llama.cpp worker hung past its deadline and was killed") from None
            if isinstance(event, Started):
                running = True
                deadline = time.monotonic() + self._timeout_s + HANG_GRACE_S
                continue
            yield event
