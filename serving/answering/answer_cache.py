"""Answer caches. The exact cache keys on (normalised question, collection, tenant, index version, prompt version,
generator): a change to the index or the prompt changes the key, so stale answers are never served. The
optional semantic layer also matches a new question whose embedding is close enough to a cached one's.

In process by default; in Redis (``answer_cache_backend=redis``) the exact cache is shared by every replica, keyed
by a digest of the ``CacheKey``, since the index version in it is a digest of the scope's documents that replicas
holding the same documents compute alike (``IndexDigest``, below). The semantic layer stays in process: a
nearest-neighbour scan over every cached question's vector is not a Redis lookup."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError
from redis import RedisError

from retrieval.embedding import Vectors
from retrieval.index import Scope, VectorIndex
from serving.contracts.answer import Answer
from serving.infra.redis_link import RedisOutage, redis_client
from serving.observe.metrics import ServiceMetrics

# v2: the stored Answer's JSON under the tenant's name (erasure finds a tenant's entries); a new layout takes a new
# prefix (entries under an old one are never read again and expire with their TTL).
REDIS_KEY_PREFIX = "ragops:answer:v2:"
EVICT_SCAN_COUNT = 500  # keys per SCAN step when erasure looks through a tenant's entries


def normalise_question(question: str) -> str:
    return re.sub(r"\s+", " ", question.lower()).strip().rstrip("?.! ")


@dataclass(frozen=True, kw_only=True)
class CacheKey:
    question: str
    collection: str
    tenant: str
    index_version: str  # digest of the scope's document versions (``IndexDigest``)
    prompt: str
    generator: str
    top_k: int  # how many passages the answer was made from
    # A digest of the earlier turns when the answer was written from them (a model reads the history in its
    # prompt): its answer is that conversation's, never another's. Empty when the answer reads none of it.
    conversation: str = ""

    @property
    def context(self) -> tuple[str, str, str, str, str, int, str]:
        """Everything but the question: a semantic match must agree on all of it."""
        return (self.collection, self.tenant, self.index_version, self.prompt, self.generator, self.top_k,
                self.conversation)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Eviction:
    """Which cached answers an erasure removes: a tenant's answers that show a document's passages (cited or
    not: their text is in the answer), or, with no document, all of the tenant's (a cached answer does not
    record who asked it, so erasing a user empties the tenant's cache)."""

    tenant: str
    collection: str | None = None
    doc_id: str | None = None

    def matches(self, key: CacheKey, value: Any) -> bool:
        if key.tenant != self.tenant or (self.collection is not None and key.collection != self.collection):
            return False
        return self.doc_id is None or shows_document(value, self.doc_id)


def shows_document(value: Any, doc_id: str) -> bool:
    return isinstance(value, Answer) and any(c.doc_id == doc_id for c in value.citations)


class AnswerCache(Protocol):
    def get(self, key: CacheKey, query_vector: Vectors | None = None) -> Any | None: ...

    def put(self, key: CacheKey, value: Any, query_vector: Vectors | None = None) -> None: ...

    def evict(self, eviction: Eviction) -> int:
        """Remove the entries ``eviction`` matches; returns how many went."""


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

    def evict(self, eviction: Eviction) -> int:
        with self._lock:
            gone = [key for key, (value, _) in self._entries.items() if eviction.matches(key, value)]
            for key in gone:
                del self._entries[key]
        return len(gone)


def redis_key(key: CacheKey) -> str:
    """The Redis key of an answer: every field of its ``CacheKey``, hashed (a question may be long)."""
    fields = json.dumps(dataclasses.astuple(key), ensure_ascii=False).encode()
    return f"{REDIS_KEY_PREFIX}{key.tenant}:{hashlib.sha256(fields).hexdigest()}"


class RedisAnswerCache:
    """Exact answers in Redis, shared by replicas, each kept ``ttl_s``; with ``semantic``, the in-process semantic
    layer behind it. A Redis error is a miss (or a put not made), counted in ``ragops_redis_errors``, never a
    failed request; after one, Redis is left alone for a few seconds (``RedisOutage``)."""

    def __init__(
        self, redis_url: str, ttl_s: int, metrics: ServiceMetrics, semantic: InMemoryAnswerCache | None = None
    ) -> None:
        self._redis = redis_client(redis_url)
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._semantic = semantic
        self._outage = RedisOutage("answer cache", "answering without the shared cache", lambda down: None)

    def get(self, key: CacheKey, query_vector: Vectors | None = None) -> Answer | None:
        stored = self._shared_get(redis_key(key))
        if stored is not None:
            return stored
        return self._semantic.get(key, query_vector) if self._semantic is not None else None

    def put(self, key: CacheKey, value: Any, query_vector: Vectors | None = None) -> None:
        if self._semantic is not None:
            self._semantic.put(key, value, query_vector)
        if isinstance(value, Answer) and self._outage.usable():
            try:
                self._redis.set(redis_key(key), value.model_dump_json(), ex=self._ttl_s)
            except (RedisError, OSError) as error:
                self._failed(error)
            else:
                self._outage.succeeded()

    def evict(self, eviction: Eviction) -> int:
        """Remove the matching entries from Redis (every replica's shared cache) and from this process's semantic
        layer. Unlike a lookup, a Redis error here is raised: an erasure must not pass over a store it missed.
        Another replica's in-process semantic layer keeps its copies until they age out of its LRU."""
        gone = self._semantic.evict(eviction) if self._semantic is not None else 0
        names: list[bytes] = []
        for name in self._redis.scan_iter(match=f"{REDIS_KEY_PREFIX}{eviction.tenant}:*", count=EVICT_SCAN_COUNT):
            if eviction.doc_id is None:
                names.append(name)
                continue
            stored = self._redis.get(name)
            if isinstance(stored, bytes) and _stored_shows(stored, eviction):
                names.append(name)
        for begin in range(0, len(names), EVICT_SCAN_COUNT):
            deleted: Any = self._redis.delete(*names[begin : begin + EVICT_SCAN_COUNT])  # the sync client's int
            gone += int(deleted)
        return gone

    def _shared_get(self, name: str) -> Answer | None:
        if not self._outage.usable():
            return None
        try:
            stored = self._redis.get(name)
        except (RedisError, OSError) as error:
            self._failed(error)
            return None
        self._outage.succeeded()
        if not isinstance(stored, bytes):
            return None
        try:
            return Answer.model_validate_json(stored)
        except ValidationError:  # written by another layout of Answer: a miss, and the next put replaces it
            self._metrics.redis_errors.labels("answer_cache").inc()
            return None

    def _failed(self, error: Exception) -> None:
        self._metrics.redis_errors.labels("answer_cache").inc()
        self._outage.failed(error)


def _stored_shows(stored: bytes, eviction: Eviction) -> bool:
    """Whether an answer stored in Redis shows the evicted document. Its key hides the collection, so the same
    document id in another collection of the tenant goes too (a cache miss, not a loss). An unreadable entry is
    removed as well: it cannot be shown not to hold the document."""
    try:
        answer = Answer.model_validate_json(stored)
    except ValidationError:
        return True
    return eviction.doc_id is not None and shows_document(answer, eviction.doc_id)


# The index version that answer-cache keys hold: a digest of a (collection, tenant)'s document versions (each
# document id and its content hashes). Replicas holding the same documents compute the same digest, and a restart
# does not change it, so a cache shared through Redis stays valid across both; any ingest, update or delete in the
# scope changes it, so no stale answer is served. Computing it reads every chunk's (doc id, hash) of the scope, so
# it is kept per scope and recomputed when this process's ingestor wrote (its ``version`` moved), or once it is
# ``max_age_s`` old: that is the bound on how long a replica keys on the old digest after another replica wrote to
# a shared Qdrant.

MAX_AGE_S = 5.0


@dataclass(frozen=True)
class _Computed:
    digest: str
    local_version: int  # the ingestor's version when it was computed
    at: float  # clock time


def documents_digest(hashes: dict[str, set[str]]) -> str:
    """sha256 over the sorted (doc id, sorted content hashes) pairs; the same documents give the same digest."""
    digest = hashlib.sha256()
    for doc_id in sorted(hashes):
        digest.update(doc_id.encode())
        for content_hash in sorted(hashes[doc_id]):
            digest.update(b"\x1f" + content_hash.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:32]


class IndexDigest:
    """``digest(scope)``: the scope's current documents digest, from the per-scope memo while it is fresh."""

    def __init__(
        self,
        index: VectorIndex,
        local_version: Callable[[], int],
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._local_version = local_version
        self._max_age_s = max_age_s
        self._clock = clock
        self._memo: dict[Scope, _Computed] = {}
        self._lock = threading.Lock()

    def __call__(self, scope: Scope) -> str:
        version, now = self._local_version(), self._clock()
        with self._lock:
            known = self._memo.get(scope)
        if known is not None and known.local_version == version and now - known.at < self._max_age_s:
            return known.digest
        # Outside the lock: two requests may both compute it, which costs one scroll more, never a wrong digest.
        computed = _Computed(documents_digest(self._index.document_hashes(scope)), version, now)
        with self._lock:
            self._memo[scope] = computed
        return computed.digest
