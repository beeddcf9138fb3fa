"""The garbage collector's pauses: the heap built at start-up kept out of them, and each one timed.

A full (generation 2) collection traverses every container object the process holds, and every request thread
waits while it does. Once started, a ragops API process holds about 785,000 of them (the embedding model, the
tokenizers, the guards' validators and their vocabularies, ...), and one full collection took 370-390 ms on this
machine kind: the load test's p95 bursts at 40 req/s were such pauses, one or two landing in a step. Those objects
live as long as the process, so ``freeze_startup_heap`` moves them out of the collector's sight once the start is
over (``gc.freeze``), and a full collection then traverses only what requests, ingests and caches made since.

Frozen objects are still freed by reference counting; only a reference cycle among them would stay until the
process ends, which is why the heap is collected first and frozen once, not after every change.
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any

from prometheus_client import Histogram

GENERATIONS = ("0", "1", "2")


def freeze_startup_heap() -> int:
    """Collect what the start-up left as garbage, then freeze the rest; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class CollectorPauses:
    """While started, times each collection into ``histogram`` (labelled ``generation``) through ``gc.callbacks``.

    The callback runs inside the collection, in whichever thread's allocation set it off, so it takes no lock an
    allocating thread could be holding: the histogram's children are looked up here, once (``labels`` takes the
    metric's lock, which a ``/metrics`` scrape holds while it copies a dict), and a child's ``observe`` only locks
    around float arithmetic, which allocates nothing the collector tracks. Collections never overlap, so one start
    time is enough."""

    def __init__(self, histogram: Histogram) -> None:
        self._by_generation = {generation: histogram.labels(generation) for generation in GENERATIONS}
        self._started_at = 0.0

    def start(self) -> None:
        if self._on_phase not in gc.callbacks:
            gc.callbacks.append(self._on_phase)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_phase)

    def _on_phase(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        child = self._by_generation.get(str(info.get("generation")))
        if child is not None:
            child.observe(time.perf_counter() - self._started_at)
