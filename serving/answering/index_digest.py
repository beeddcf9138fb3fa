"""The index version that answer-cache keys hold: a digest of a (collection, tenant)'s document versions (each
document id and its content hashes). Replicas holding the same documents compute the same digest, and a restart
does not change it, so a cache shared through Redis stays valid across both; any ingest, update or delete in the
scope changes it, so no stale answer is served.

Computing it reads every chunk's (doc id, hash) of the scope, so it is kept per scope and recomputed when this
process's ingestor wrote (its ``version`` moved), or once it is ``max_age_s`` old: that is the bound on how long a
replica keys on the old digest after another replica wrote to a shared Qdrant."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from retrieval.index import Scope, VectorIndex

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
