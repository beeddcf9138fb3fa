"""Logs the garbage collector's pauses of every Python process started with this directory on ``PYTHONPATH``.

One file per process, ``gc-PID.log`` in ``$GC_LOG_DIR`` (default: the temp dir), a line per collection of 5 ms or
more and per full one: ``epoch_s genN ms collected=K``. For benchmarks (docs/benchmarks.md, garbage collection);
``ragops serve`` itself counts every pause in ``ragops_gc_pause_seconds``.
"""

import gc
import os
import tempfile
import time
from pathlib import Path

_log = Path(os.environ.get("GC_LOG_DIR", tempfile.gettempdir())) / f"gc-{os.getpid()}.log"
_started = [0.0]


def _on_phase(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _started[0]) * 1000
    if ms >= 5 or info.get("generation") == 2:
        with _log.open("a") as log:
            log.write(f"{time.time():.3f} gen{info.get('generation')} {ms:.1f}ms collected={info.get('collected')}\n")


gc.callbacks.append(_on_phase)
