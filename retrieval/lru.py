"""A bounded map that drops the least recently used entry first, safe to share between request threads: the one
memo behind the embedder's question vectors, the rerank's sentence splits, the input guard's verdicts, the
groundedness check's analysed passages and the retrieved passages' redactions. (``embedding_cache.MemoryFront``
is not one: its reads take no lock; nor is a pure function of a word, such as ``grounding_text.stem``:
``functools.lru_cache`` memoises those.)"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class Lru(Generic[Key, Value]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an Lru holds at least one entry, not {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Value | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Key, value: Value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get_or_make(self, key: Key, make: Callable[[], Value]) -> Value:
        """The value kept for ``key``, or ``make()``'s, kept. ``make`` runs outside the lock (two threads may both
        make a missing value; the last one is kept), so it should depend on the key alone."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
