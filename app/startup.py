"""A start that talks: each slow step of bringing the service up says what it does, and keeps saying it.

A first start exports the embedding model to int8 ONNX, loads the generator and opens the index: tens of seconds
in which a silent process looks hung. ``start_step`` names a step that has run a second, a "still …" line every few
seconds while it runs (from a timer thread: the step itself is one blocking call that cannot report), and how
long it took, so whoever watches ``make run`` or the container's log never waits more than ``HEARTBEAT_S`` for a
line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Its lines go to the server's JSON log (``app.logs.configure_logging``), or plain to a CLI command's stderr
# (``configure_cli_progress``); a child of the server's logger, so they are logged unredacted as its own are.
START_LOGGER = "ragops.server.start"
HEARTBEAT_S = 4.0  # the goal is a line at least every 5 s: a second of slack for a loaded machine
# A step that ends sooner says nothing: a warm start stays quiet, a slow one is named before a second is out.
ANNOUNCE_AFTER_S = 1.0


@contextmanager
def start_step(
    what: str, *, announce_after_s: float = ANNOUNCE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
) -> Iterator[None]:
    """Once ``what`` (e.g. "opening the index") has run ``announce_after_s``, log it, then "still <what> (N s)"
    every ``heartbeat_s``, then how long it took."""
    log = logging.getLogger(START_LOGGER)
    started = time.monotonic()
    finished = threading.Event()
    announced = threading.Event()

    def heartbeat() -> None:
        if finished.wait(announce_after_s):
            return
        announced.set()
        log.info("start: %s", what)
        while not finished.wait(heartbeat_s):
            log.info("start: still %s (%.0f s)", what, time.monotonic() - started)

    beating = threading.Thread(target=heartbeat, name="start-heartbeat", daemon=True)
    beating.start()
    try:
        yield
    finally:
        finished.set()
        beating.join()
        if announced.is_set():
            log.info("start: %s took %.1f s", what, time.monotonic() - started)
