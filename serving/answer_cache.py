"""Answer caches. The exact cache keys on (normalised question, collection, tenant, index version, prompt version,
generator): a change to the index or the prompt changes the key, so stale answers are never served. The
optional semantic layer also matches a new question whose embedding is close enough to a cached one's."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from retrieval.embedding import Vectors


def normalise_question(question: str) -> str:
    return re.sub(r"\s+", " ", question.lower()).strip().rstrip("?.! ")


@dataclass(frozen=True)
class CacheKey:
    question: str
    collection: str
    tenant: str
    index_version: int
    prompt: str
    generator: str
    top_k: int  # how many passages the answer was made from

    @property
    def context(self) -> tuple[str, str, int, str, str, int]:
        """Everything but the question: a semantic match must agree on all of it."""
        return (self.collection, self.tenant, self.index_version, self.prompt, self.generator, self.top_k)


class AnswerCache(Protocol):
    def get(self, key: CacheKey, query_vector: Vectors | None = None) -> Any | None: ...

    def put(self, key: CacheKey, value: Any, query_vector: Vectors | None = None) -> None: ...


class InMemoryAnswerCache:
    """LRU of answers; with ``semantic_threshold``, a miss looks for the most similar cached question."""

    def __init__(self, max_entries: int = 2048, semantic_threshold: float | None = None) -> None:
        self._entries: OrderedDict[CacheKey, tuple[Any, Vectors | None]] = OrderedDict()
        self._max_entries = max_entries
        self._semantic_threshold = semantic_threshold
        self._lock = threading.Lock()

    def get(self, key: CacheKey, query_vector: Vectors | None = None) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0]
            if self._semantic_threshold is None or query_vector is None:
                return None
            best, best_score = None, self._semantic_threshold
            for other, (value, vector) in self._entries.items():
                if vector is not None and other.context == key.context:
                    score = float(np.dot(vector, query_vector))
                    if score >= best_score:
                        best, best_score = value, score
            return best

    def put(self, key: CacheKey, value: Any, query_vector: Vectors | None = None) -> None:
        if self._max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = (value, query_vector)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
