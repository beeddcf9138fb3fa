"""Search: a query through the embedding cache and the BM25 encoder into the index, back as hits.

Dense and BM25 are ranked by the index alone. Hybrid takes both rankings with their raw scores, fuses them
client-side (``retrieval.fusion``: the dense weight chosen per query from both lists' scores) and, with a
reranker, re-scores the fused top candidates by their best sentence (``retrieval.rerank``); a hybrid hit's score
is the fused (or reranked) score. The rankings carry ids and scores only: the payloads of the fused head (what
the rerank reads and the hits return) are fetched in one call after fusion (``with_payloads``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.fusion import FusedCandidate, fuse
from retrieval.index import FusionParams, Scope, ScoredPayload, SearchFilter, SearchMode, SparseVector, VectorIndex
from retrieval.rerank import SentenceReranker
from retrieval.sparse import SparseEncoder


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)


def _hit(point: ScoredPayload, score: float) -> Hit:
    payload = point.payload
    return Hit(
        doc_id=payload["doc_id"],
        chunk_id=point.id,
        score=score,
        text=payload.get("text", ""),
        title=payload.get("title"),
        source=payload.get("source"),
        metadata=payload.get("metadata") or {},
        headings=tuple(payload.get("headings") or ()),
        chunk_index=int(payload.get("chunk_index", 0)),
    )


def with_payloads(index: VectorIndex, fused: list[FusedCandidate], size: int) -> list[FusedCandidate]:
    """The best ``size`` candidates with their points' payloads, in order; one whose point went since it was ranked
    (an ingest replaced its document) gives its place to the next."""
    head: list[FusedCandidate] = []
    start = 0
    while len(head) < size and start < len(fused):
        taken = fused[start : start + size - len(head)]
        payloads = index.payloads([candidate.point.id for candidate in taken])
        head += [
            replace(candidate, point=replace(candidate.point, payload=payloads[candidate.point.id]))
            for candidate in taken
            if candidate.point.id in payloads
        ]
        start += len(taken)
    return head


class Searcher:
    def __init__(
        self,
        index: VectorIndex,
        embedder: CachedEmbedder,
        sparse: SparseEncoder,
        fusion: FusionParams = FusionParams(),
        reranker: SentenceReranker | None = None,
    ) -> None:
        self._index = index
        self._embedder = embedder
        self._sparse = sparse
        self._fusion = fusion
        self._reranker = reranker

    def search(
        self,
        query: str,
        scope: Scope,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
        search_filter: SearchFilter | None = None,
    ) -> SearchResult:
        started = time.perf_counter()
        dense = self._embedder.embed_query(query) if mode in ("hybrid", "dense") else None
        sparse = self._sparse.encode_query(query) if mode in ("hybrid", "sparse") else None
        encoded = time.perf_counter()
        narrowed = search_filter or SearchFilter()
        if mode != "hybrid":
            points = self._index.search(
                scope=scope, retriever=mode, dense=dense, sparse=sparse, limit=top_k, search_filter=narrowed
            )
            hits = [_hit(point, point.score) for point in points]
        else:
            assert dense is not None and sparse is not None  # hybrid: both were encoded above
            hits = [_hit(c.point, c.score) for c in self._hybrid(scope, dense, sparse, top_k, narrowed)]
        done = time.perf_counter()
        return SearchResult(
            hits=hits,
            timings_ms={
                "embed": round((encoded - started) * 1000, 3),
                "search": round((done - encoded) * 1000, 3),
            },
        )

    def _hybrid(
        self,
        scope: Scope,
        dense: npt.NDArray[np.float32],
        sparse: SparseVector,
        top_k: int,
        search_filter: SearchFilter,
    ) -> list[FusedCandidate]:
        """Both rankings fused, then reranked when a reranker is set; the best ``top_k``."""
        limit = max(top_k, self._fusion.prefetch_limit)
        fused = fuse(self._index.search_both(scope, dense, sparse, limit, search_filter), self._fusion)
        # Below the head nothing is read: the rerank moves only its top ``depth``, the rest keep their order.
        head = with_payloads(self._index, fused, max(top_k, self._reranker.depth if self._reranker else 0))
        if self._reranker is not None:
            head = self._reranker.rerank(dense, sparse, head)
        return head[:top_k]
