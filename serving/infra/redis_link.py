"""Redis as the replicas' shared memory (rate limits, the answer cache): the one client setup, with short timeouts
and a single immediate retry, and the outage rule both parts follow. Redis is never on the critical path of an
answer: after a failure a part stays off Redis for ``RETRY_S`` (serving from process memory, or missing the cache),
then one request tries it again; each transition is logged once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

log = logging.getLogger("ragops.redis")

# On 127.0.0.1 or a LAN a command answers in well under a millisecond; a quarter second means Redis is not there.
TIMEOUT_S = 0.25
RETRY_S = 3.0  # how long a part stays off Redis after a failure before one request tries it again


def redis_client_options() -> dict[str, object]:
    """Options for ``redis.Redis``: short timeouts, and one immediate retry (a pooled connection that Redis closed
    on a restart fails once, the retry reconnects) instead of redis-py's default three with backoff from 1 s."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"socket_timeout": TIMEOUT_S, "socket_connect_timeout": TIMEOUT_S, "retry": Retry(NoBackoff(), 1)}


def redis_client(url: str) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, **redis_client_options())


class RedisOutage:
    """Whether a part may use Redis now. ``failed`` takes it off Redis for ``retry_s``; the first caller after
    that probes (the others stay off meanwhile); ``succeeded`` ends the outage. ``on_change(down)`` is called on
    each transition (a gauge)."""

    def __init__(
        self,
        part: str,
        fallback: str,
        on_change: Callable[[bool], None],
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._part = part
        self._fallback = fallback  # what the part does meanwhile, for the log line
        self._on_change = on_change
        self._retry_s = retry_s
        self._clock = clock
        self._down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def usable(self) -> bool:
        if not self._down:
            return True
        with self._lock:
            if self._clock() < self._retry_at:
                return False
            self._retry_at = self._clock() + self._retry_s  # this caller probes; the others wait for it
            return True

    def failed(self, error: Exception) -> None:
        with self._lock:
            self._retry_at = self._clock() + self._retry_s
            if self._down:
                return
            self._down = True
        log.warning(
            "redis unreachable for %s (%s: %s); %s, retrying every %.0f s",
            self._part, type(error).__name__, error, self._fallback, self._retry_s,
        )  # fmt: skip
        self._on_change(True)

    def succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("redis reachable again for %s; shared state resumed", self._part)
        self._on_change(False)
