"""Progress for a long CLI step: tqdm's bar on a terminal, plain lines everywhere else.

Without a terminal (``make run`` piped to a file, a container's log, CI) tqdm has nothing to redraw its bar on and
stays silent, so a first ingest looked hung for a minute. ``LineProgress`` writes one line every few seconds
instead, from a timer thread: one batch of embeddings can take longer than that, and the reader still gets a line.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from app.startup import HEARTBEAT_S


class LineProgress:
    """``update(n)`` and ``close()`` as tqdm has them; a line "desc: done/total unit (pct), N s" every ``every_s``."""

    def __init__(
        self, total: int, *, unit: str, desc: str, every_s: float = HEARTBEAT_S, stream: IO[str] | None = None
    ) -> None:
        self._total, self._unit, self._desc = total, unit, desc
        self._stream = stream or sys.stderr
        self._done = 0
        self._started = time.monotonic()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._ticker = threading.Thread(target=self._tick, args=(every_s,), name="progress-lines", daemon=True)
        self._write()  # at once: the reader learns the total before the first batch is done
        self._ticker.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self._done += n

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._ticker.join()
            self._write()

    def _tick(self, every_s: float) -> None:
        while not self._closed.wait(every_s):
            self._write()

    def _write(self) -> None:
        with self._lock:
            done = self._done
        share = f" ({100 * done / self._total:.0f}%)" if self._total else ""
        took = time.monotonic() - self._started
        print(f"{self._desc}: {done}/{self._total} {self._unit}s{share}, {took:.0f} s", file=self._stream, flush=True)


def progress_bar(total: int, *, unit: str, desc: str, quiet: bool = False) -> Any:
    """tqdm on a terminal, ``LineProgress`` otherwise, nothing at all when ``quiet`` (``--json`` output)."""
    from tqdm import tqdm

    if quiet or sys.stderr.isatty():
        return tqdm(total=total, unit=unit, desc=desc, disable=quiet)
    return LineProgress(total, unit=unit, desc=desc)
