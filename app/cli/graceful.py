"""uvicorn's server with a drain before its graceful shutdown, for ``ragops serve``.

On SIGTERM (what an orchestrator sends) ``/readyz`` answers 503 at once, new requests are still served for
``shutdown_drain_s`` so a load balancer sees the 503 and stops sending before the port closes; then uvicorn's own
graceful shutdown closes the port and gives requests in flight and open streams ``shutdown_grace_s`` to finish.
SIGINT (Ctrl-C) skips the drain; a second signal skips the rest. The signal is handled, not re-raised afterwards
as uvicorn does, so ``serve`` closes its services (the audit writer flushes) and exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn
from starlette.datastructures import State

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """Sets ``draining`` on the app's state (``/readyz`` reads it) when a shutdown begins."""

    def __init__(
        self, config: uvicorn.Config, app_state: State, drain_s: float, on_ready: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._app_state = app_state
        self._drain_s = drain_s
        self._drain_until: float | None = None
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit and self._on_ready is not None:  # bound and listening
            self._on_ready()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app_state.draining = True
        if sig == signal.SIGTERM and self._drain_until is None and self._drain_s > 0:
            self._drain_until = time.monotonic() + self._drain_s  # on_tick starts the shutdown when it ends
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)
