"""A small thread-safe cache whose values expire: what a replica trusts for a while without asking the store."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class TtlCache(Generic[Value]):
    """Values loaded on a miss and kept ``ttl_s`` seconds; the least recently used go beyond ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Value]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], Value]) -> Value:
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and now - cached[0] < self._ttl_s:
                self._entries.move_to_end(key)
                return cached[1]
        value = load()  # outside the lock: concurrent misses may both load, none waits on another's query
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value
