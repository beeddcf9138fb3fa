"""Work off the request path: a bounded queue drained by one daemon thread, in batches.

A request only enqueues; a full queue drops the item (and says so through ``on_drop``) rather than growing or
blocking. At shutdown the worker gets ``wait_s`` to finish what is pending, then the daemon thread dies with the
process: a slow or dead endpoint never holds up a request or an exit. Used by the tracer and the sampled judge.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class BackgroundWorker(Generic[Item]):
    def __init__(
        self,
        name: str,
        handle: Callable[[list[Item]], None],
        max_pending: int = 1000,
        batch_size: int = 1,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._handle = handle  # must not raise: whatever it calls, it catches and reports
        self._batch_size = batch_size
        self._on_drop = on_drop
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Item) -> bool:
        """Enqueue ``item``; False when the queue is full and it was dropped."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the consumer is not keeping up
            if self._on_drop is not None:
                self._on_drop()
            return False
        return True

    def flush(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` until every item put so far is handled; False if some are still pending."""
        deadline = time.monotonic() + wait_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, wait_s: float = 1.0) -> None:
        """Finish what is pending within ``wait_s``."""
        with contextlib.suppress(queue.Full):  # full: the daemon thread dies with the process instead
            self._queue.put_nowait(None)
        self._thread.join(wait_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            batch, closing = [item], False
            while len(batch) < self._batch_size and not closing:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                else:
                    batch.append(more)
            try:
                self._handle(batch)
            finally:
                for _ in range(len(batch) + closing):  # the close marker, when taken, was put too
                    self._queue.task_done()
            if closing:
                return
