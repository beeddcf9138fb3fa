"""Search: a query through the embedding cache and the BM25 encoder into the index, back as hits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import Scope, ScoredPayload, SearchFilter, SearchMode, VectorIndex
from retrieval.sparse import SparseEncoder


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)


def _hit(point: ScoredPayload) -> Hit:
    payload = point.payload
    return Hit(
        doc_id=payload["doc_id"],
        chunk_id=point.id,
        score=point.score,
        text=payload.get("text", ""),
        title=payload.get("title"),
        source=payload.get("source"),
        metadata=payload.get("metadata") or {},
        headings=tuple(payload.get("headings") or ()),
        chunk_index=int(payload.get("chunk_index", 0)),
    )


class Searcher:
    def __init__(self, index: VectorIndex, embedder: CachedEmbedder, sparse: SparseEncoder) -> None:
        self._index = index
        self._embedder = embedder
        self._sparse = sparse

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
        points = self._index.search(scope, mode, dense, sparse, top_k, search_filter or SearchFilter())
        done = time.perf_counter()
        return SearchResult(
            hits=[_hit(point) for point in points],
            timings_ms={
                "embed": round((encoded - started) * 1000, 3),
                "search": round((done - encoded) * 1000, 3),
            },
        )
