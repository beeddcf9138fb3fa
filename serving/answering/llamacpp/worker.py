"""The llama.cpp worker: a child process of the API that holds the model, so a native fault (SIGILL from a build
the CPU cannot run, SIGSEGV, the OOM killer) ends this process and not the service.

Run as ``python -m serving.answering.llamacpp.worker --model PATH ...`` by ``supervisor``, never by hand.
Jobs come on stdin and run one at a time; events go out on the original stdout, which is kept for them alone
(fd 1 is pointed at stderr, so nothing llama.cpp prints can corrupt the protocol). The worker ignores SIGINT and
SIGTERM (the API decides when it stops) and exits the moment stdin closes: the API closing it, or the API process
dying, whatever killed it (its end of the pipe closes with it), so a worker never outlives its API. A reader thread
watches stdin, and llama.cpp's calls release the GIL, so this holds mid-answer too. (PR_SET_PDEATHSIG would not:
it fires when the *thread* that started the child ends, and restarts are started from short-lived threads.)
"""

from __future__ import annotations

import argparse
import functools
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from serving.answering.llamacpp.build import loaded_build
from serving.answering.llamacpp.engine import LlamaEngine
from serving.answering.llamacpp.protocol import (
    TO_WORKER,
    Cancel,
    Done,
    Failed,
    Job,
    Ready,
    Started,
    Unusable,
    _Message,
    encode,
)

WARMUP = Job(id=0, messages=[{"role": "user", "content": "Count from one to twenty."}], temperature=0.0,
             max_tokens=16, stop=[], seed=0, grammar=None)  # fmt: skip


class Outbox:
    """Events to the API, a line each, from any thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: _Message) -> None:
        with self._lock:
            self._stream.write(encode(message))
            self._stream.flush()


class Inbox:
    """Jobs in arrival order; cancellations noted as they arrive (a reader thread), so a running job sees its own
    at the next token. stdin closing means the API is done with us: exit at once, whatever runs."""

    def __init__(self, stream: BinaryIO) -> None:
        self.jobs: queue.Queue[Job] = queue.Queue()
        self._cancelled: set[int] = set()
        self._stream = stream
        threading.Thread(target=self._read, name="llamacpp-inbox", daemon=True).start()

    def cancelled(self, job_id: int) -> bool:
        return job_id in self._cancelled

    def _read(self) -> None:
        for line in self._stream:
            try:
                message = TO_WORKER.validate_json(line)
            except ValidationError:
                continue  # the API writes these lines itself; a bad one is dropped, not fatal
            if isinstance(message, Cancel):
                self._cancelled.add(message.id)
            else:
                self.jobs.put(message)
        os._exit(0)


def warm_up(engine: LlamaEngine) -> float:
    """A few tokens before saying ready: a build that cannot run on this CPU dies here, not on a user's question.
    Returns the decode rate in tokens per second (after the first token: the prompt is not counted)."""
    stamps: list[float] = []
    for event in engine.run(WARMUP, lambda: False, timeout_s=120.0):  # the API's deadline is for answers
        if isinstance(event, Failed):
            raise RuntimeError(event.message)
        stamps.append(time.perf_counter())
    return (len(stamps) - 2) / max(stamps[-1] - stamps[0], 1e-9) if len(stamps) > 2 else 0.0


def serve(engine: LlamaEngine, inbox: Inbox, outbox: Outbox) -> None:
    while True:
        job = inbox.jobs.get()
        if inbox.cancelled(job.id):
            continue
        outbox.send(Started(id=job.id))
        started = time.perf_counter()
        try:
            for event in engine.run(job, functools.partial(inbox.cancelled, job.id)):
                if isinstance(event, Done):
                    event = event.model_copy(update={"worker_ms": (time.perf_counter() - started) * 1000})
                outbox.send(event)
        except Exception as exc:  # a Python-level failure ends this job, not the worker
            outbox.send(Failed(id=job.id, error="error", message=f"llama.cpp worker: {exc}"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.answering.llamacpp.worker")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false")
    parser.add_argument("--flash-attn", action="store_true")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    events = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    outbox = Outbox(events)
    try:
        engine = LlamaEngine(args.model, args.threads, args.context, args.timeout, args.prefix_cache, args.flash_attn)
        rate = warm_up(engine)
    except (OSError, ValueError, RuntimeError) as exc:
        outbox.send(Unusable(reason=str(exc)))
        return 3
    inbox = Inbox(sys.stdin.buffer)  # reading from here on: the API's end closing ends us, even mid-answer
    outbox.send(Ready(model=engine.model, build=loaded_build(), decode_tokens_per_s=round(rate, 1)))
    serve(engine, inbox, outbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
