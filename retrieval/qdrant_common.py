"""What the two Qdrant adapters share: scope filters, the document-hash scroll, and the search requests.

qdrant-edge (the embedded engine) and qdrant-client (a server, or its local mode) speak the same Qdrant model
in different spellings. Each adapter gives a ``QdrantDialect``: how its library builds a match, a filter, a
sparse vector, a point, the IDF params and a query request. ``QdrantIndexBase`` composes the ``VectorIndex``
operations once from those builders and five engine calls the adapter supplies (write points, delete by
filter, scroll one page, run queries, retrieve points), so the two backends cannot drift apart. Hybrid search
asks for both retrievers' rankings with their raw scores (``search_both``) and fuses them client-side
(``retrieval.fusion``): the engine's own fusions (RRF, DBSF) cannot take a normalised convex combination. The
rankings come without payloads: fusion needs ids and scores only, and reading 200 candidates' payloads into
Python cost three quarters of the engine call (3.0 against 0.8 ms a ranking of 100, embedded); the searcher
fetches the payloads of the few it keeps (``payloads``). Against a server that is a second round trip a search
(measured only embedded); a replica behind the one that ranked may miss a point, which the searcher then replaces
with the next candidate. Before every write it asks ``_before_write`` with an estimate of the bytes the write
needs: the embedded engine refuses a write that would fill its disk there (``retrieval.storage``); a server minds
its own disk.

BM25's IDF is per scope on both backends. The sparse vector keeps the IDF modifier (the encoder emits BM25
term weights and the engine multiplies in IDF at query time), and every request that ranks by it carries
search params whose IDF corpus is the caller's (collection, tenant) filter: qdrant-edge's
``IdfParams(corpus=...)``, qdrant-client's ``IdfCorpusParams(corpus=...)`` (REST and gRPC; the client's
local mode honours it too). Document counts and frequencies then come from the caller's own documents, so
another tenant's documents never move its BM25 ranking. The corpus is the whole scope, not the narrower
``SearchFilter``: IDF describes the tenant's corpus, a filter only chooses which of its documents come back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from retrieval.index import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    CandidateLists,
    IndexPoint,
    MetadataValue,
    Retriever,
    Scope,
    ScoredPayload,
    SearchFilter,
    SparseVector,
    add_document_hashes,
)
from retrieval.storage import estimated_bytes

# field -> is_tenant: the keyword payload indexes every new index gets (tenant-optimised where reads are scoped).
# content_hash: erasure asks whether any other document, in any scope, holds the same content.
KEYWORD_FIELDS: dict[str, bool] = {"collection": True, "tenant": True, "doc_id": False, "content_hash": False}
SCROLL_PAGE_SIZE = 1024
_HASH_FIELDS = ("doc_id", "content_hash")
_CHUNK_FIELDS = ["content_hash", "text", "headings"]

FilterT = TypeVar("FilterT")
RequestT = TypeVar("RequestT")
RequestT_co = TypeVar("RequestT_co", covariant=True)
DenseQuery = npt.NDArray[np.float32] | None
PayloadPage = tuple[Iterable[dict[str, Any] | None], Any]  # payloads, and the offset of the next page (None: done)


@dataclass(frozen=True)
class Ranking:
    """One retriever: nearest neighbours of ``vector`` (in the library's spelling) on the named vector."""

    using: str
    vector: Any
    params: Any = None  # the library's search params; BM25's carry the IDF corpus


class QdrantDialect(Protocol[FilterT, RequestT_co]):
    """How one Qdrant library spells the pieces of a request; pure builders, no I/O."""

    def match_value(self, key: str, value: MetadataValue) -> Any: ...

    def match_any(self, key: str, values: list[MetadataValue]) -> Any: ...

    def filter(self, must: list[Any], must_not: list[Any]) -> FilterT: ...

    def sparse_vector(self, vector: SparseVector) -> Any: ...

    def point(self, point_id: str, vectors: dict[str, Any], payload: dict[str, Any]) -> Any: ...

    def idf_params(self, corpus: FilterT) -> Any:
        """Search params that compute IDF over the points matching ``corpus`` only."""
        ...

    def request(self, ranking: Ranking, limit: int, condition: FilterT, with_payload: bool) -> RequestT_co: ...


def match(dialect: QdrantDialect[Any, Any], key: str, value: MetadataValue | list[MetadataValue]) -> Any:
    """A keyword condition: the value itself, or any of a list."""
    if isinstance(value, list):
        return dialect.match_any(key, value)
    return dialect.match_value(key, value)


def scope_filter(
    dialect: QdrantDialect[FilterT, Any],
    scope: Scope,
    search_filter: SearchFilter | None = None,
    must_not: Sequence[Any] = (),
) -> FilterT:
    """The caller's (collection, tenant), narrowed by a search filter's document ids and metadata."""
    must = [match(dialect, "collection", scope.collection), match(dialect, "tenant", scope.tenant)]
    if search_filter is not None:
        if search_filter.doc_ids:
            must.append(match(dialect, "doc_id", list(search_filter.doc_ids)))
        must.extend(match(dialect, f"metadata.{key}", value) for key, value in search_filter.metadata.items())
    return dialect.filter(must, list(must_not))


def document_filter(
    dialect: QdrantDialect[FilterT, Any], scope: Scope, doc_id: str, keep_hash: str | None = None
) -> FilterT:
    """One document's points; with ``keep_hash``, only those of its other versions."""
    must_not = [match(dialect, "content_hash", keep_hash)] if keep_hash is not None else []
    return scope_filter(dialect, scope, SearchFilter(doc_ids=(doc_id,)), must_not=must_not)


def fold_document_hashes(fetch_page: Callable[[Any], PayloadPage]) -> dict[str, set[str]]:
    """Scroll to the end, from offset None, folding each page's payloads into doc_id -> content hashes."""
    hashes: dict[str, set[str]] = {}
    offset: Any = None
    while True:
        payloads, offset = fetch_page(offset)
        add_document_hashes(hashes, payloads)
        if offset is None:
            return hashes


def _required(vector: Any, retriever: Retriever) -> Any:
    # The searcher encodes exactly what the mode needs; a missing vector here is a caller bug, not an empty result.
    if vector is None:
        raise ValueError(f"{retriever} search needs its query vector")
    return vector


def scored_payloads(points: Iterable[Any]) -> list[ScoredPayload]:
    """Either library's scored points (id, score, payload) as the protocol's value type."""
    return [ScoredPayload(str(p.id), float(p.score), p.payload or {}) for p in points]


class QdrantIndexBase(ABC, Generic[FilterT, RequestT]):
    """The ``VectorIndex`` operations, built once over a dialect; a subclass supplies the engine calls."""

    def __init__(self, dialect: QdrantDialect[FilterT, RequestT]) -> None:
        self._dialect = dialect

    # --- engine calls -----------------------------------------------------------------------------------
    @abstractmethod
    def _write_points(self, points: list[Any]) -> None: ...

    @abstractmethod
    def _delete_where(self, condition: FilterT) -> None: ...

    @abstractmethod
    def _scroll_page(
        self, condition: FilterT, offset: Any, fields: list[str], limit: int = SCROLL_PAGE_SIZE
    ) -> PayloadPage: ...

    @abstractmethod
    def _run_query(self, request: RequestT) -> Iterable[Any]:
        """The scored points (id, score, payload) of one request."""

    def _run_queries(self, requests: list[RequestT]) -> list[Iterable[Any]]:
        """Several requests' scored points, in order; one after the other unless the engine batches them."""
        return [self._run_query(request) for request in requests]

    @abstractmethod
    def _count_where(self, condition: FilterT | None) -> int: ...

    @abstractmethod
    def _retrieve(self, ids: list[str]) -> Iterable[Any]:
        """The points (id, payload) of these ids that exist."""

    def _before_write(self, needed_bytes: int) -> None:
        """Refuse a write up front (``StorageFullError``); by default every write goes ahead."""

    # --- VectorIndex ------------------------------------------------------------------------------------
    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        self._before_write(estimated_bytes(points))
        dialect = self._dialect
        self._write_points(
            [
                dialect.point(
                    point.id,
                    {DENSE_VECTOR: point.dense.tolist(), SPARSE_VECTOR: dialect.sparse_vector(point.sparse)},
                    point.payload,
                )
                for point in points
            ]
        )

    def delete_document(self, scope: Scope, doc_id: str, keep_hash: str | None = None) -> None:
        # No free-space check: a delete frees space, and refusing it halfway through an update would leave both
        # versions searchable (the margin kept by every other write covers its small WAL record).
        self._delete_where(document_filter(self._dialect, scope, doc_id, keep_hash))

    def document_hashes(self, scope: Scope) -> dict[str, set[str]]:
        condition = scope_filter(self._dialect, scope)
        return fold_document_hashes(lambda offset: self._scroll_page(condition, offset, list(_HASH_FIELDS)))

    def document_chunks(self, scope: Scope, doc_id: str) -> list[dict[str, Any]]:
        """Every version's chunks of one document: their payloads' content_hash, text and headings."""
        condition = document_filter(self._dialect, scope, doc_id)
        chunks: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            payloads, offset = self._scroll_page(condition, offset, list(_CHUNK_FIELDS))
            chunks.extend(payload for payload in payloads if payload)
            if offset is None:
                return chunks

    def count_content(self, content_hash: str) -> int:
        """The points, in every collection and tenant, of documents with this content hash."""
        return self._count_where(self._dialect.filter([match(self._dialect, "content_hash", content_hash)], []))

    def purge_deleted(self) -> None:
        """Make deleted points' bytes go from the files the engine keeps; by default there is nothing to do (a
        server minds its own files)."""

    def search(
        self,
        scope: Scope,
        retriever: Retriever,
        dense: DenseQuery,
        sparse: SparseVector | None,
        limit: int,
        search_filter: SearchFilter,
    ) -> list[ScoredPayload]:
        """Dense or BM25 alone."""
        ranking = self._ranking(scope, retriever, dense, sparse)
        request = self._dialect.request(ranking, limit, scope_filter(self._dialect, scope, search_filter), True)
        return scored_payloads(self._run_query(request))

    def search_both(
        self,
        scope: Scope,
        dense: npt.NDArray[np.float32],
        sparse: SparseVector,
        limit: int,
        search_filter: SearchFilter,
    ) -> CandidateLists:
        """Both rankings with their raw scores, for client-side fusion; ids and scores only (empty payloads)."""
        condition = scope_filter(self._dialect, scope, search_filter)
        requests = [
            self._dialect.request(self._ranking(scope, retriever, dense, sparse), limit, condition, False)
            for retriever in ("dense", "sparse")
        ]
        dense_points, sparse_points = self._run_queries(requests)
        return CandidateLists(scored_payloads(dense_points), scored_payloads(sparse_points))

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {str(point.id): point.payload or {} for point in self._retrieve(list(ids))} if ids else {}

    def _ranking(self, scope: Scope, retriever: Retriever, dense: DenseQuery, sparse: SparseVector | None) -> Ranking:
        if retriever == "dense":
            return Ranking(DENSE_VECTOR, _required(dense, retriever).tolist())
        # IDF over the caller's whole scope (not the filtered slice): other tenants never shift its BM25 scores.
        idf = self._dialect.idf_params(scope_filter(self._dialect, scope))
        return Ranking(SPARSE_VECTOR, self._dialect.sparse_vector(_required(sparse, retriever)), idf)

    def count(self, scope: Scope | None = None) -> int:
        return self._count_where(scope_filter(self._dialect, scope) if scope is not None else None)

    def has_points(self, scope: Scope) -> bool:
        payloads, _ = self._scroll_page(scope_filter(self._dialect, scope), None, [], limit=1)
        return bool(payloads)

    def collections(self, tenant: str) -> list[str]:
        # A scroll over the tenant's points reading one payload field: no collection registry to keep in step.
        condition = self._dialect.filter([match(self._dialect, "tenant", tenant)], [])
        names: set[str] = set()
        offset: Any = None
        while True:
            payloads, offset = self._scroll_page(condition, offset, ["collection"])
            names.update(str(payload["collection"]) for payload in payloads if payload)
            if offset is None:
                return sorted(names)
