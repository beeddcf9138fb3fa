"""The index on a Qdrant server or cluster through qdrant-client (also runs on qdrant-client's local mode)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models

from retrieval.index import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    FusionParams,
    IndexPoint,
    Scope,
    ScoredPayload,
    SearchFilter,
    SearchMode,
    SparseVector,
    add_document_hashes,
)


def _match(key: str, value: Any) -> models.FieldCondition:
    if isinstance(value, list):
        return models.FieldCondition(key=key, match=models.MatchAny(any=value))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _scope_filter(scope: Scope, search_filter: SearchFilter | None = None) -> models.Filter:
    must: list[Any] = [_match("collection", scope.collection), _match("tenant", scope.tenant)]
    if search_filter is not None:
        if search_filter.doc_ids:
            must.append(_match("doc_id", list(search_filter.doc_ids)))
        must.extend(_match(f"metadata.{key}", value) for key, value in search_filter.metadata.items())
    return models.Filter(must=must)


def _sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


class QdrantServerIndex:
    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        dimension: int,
        fusion: FusionParams = FusionParams(),
    ) -> None:
        self._client = client
        self._collection = collection
        self._fusion = fusion
        if not client.collection_exists(collection):
            client.create_collection(
                collection,
                vectors_config={DENSE_VECTOR: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
                sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            with warnings.catch_warnings():  # local mode ignores payload indexes and says so
                warnings.simplefilter("ignore", UserWarning)
                for field_name in ("collection", "tenant"):
                    client.create_payload_index(
                        collection,
                        field_name,
                        models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                    )
                client.create_payload_index(collection, "doc_id", models.PayloadSchemaType.KEYWORD)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        self._client.upsert(
            self._collection,
            [
                models.PointStruct(
                    id=point.id,
                    vector={DENSE_VECTOR: point.dense.tolist(), SPARSE_VECTOR: _sparse(point.sparse)},
                    payload=point.payload,
                )
                for point in points
            ],
            wait=True,
        )

    def delete_document(self, scope: Scope, doc_id: str, keep_hash: str | None = None) -> None:
        condition = _scope_filter(scope, SearchFilter(doc_ids=(doc_id,)))
        if keep_hash is not None:
            condition = models.Filter(must=[condition], must_not=[_match("content_hash", keep_hash)])
        self._client.delete(self._collection, models.FilterSelector(filter=condition), wait=True)

    def document_hashes(self, scope: Scope) -> dict[str, set[str]]:
        hashes: dict[str, set[str]] = {}
        offset: Any = None
        while True:
            records, offset = self._client.scroll(
                self._collection,
                scroll_filter=_scope_filter(scope),
                limit=1024,
                offset=offset,
                with_payload=["doc_id", "content_hash"],
            )
            add_document_hashes(hashes, (record.payload for record in records))
            if offset is None:
                return hashes

    def search(
        self,
        scope: Scope,
        mode: SearchMode,
        dense: npt.NDArray[np.float32] | None,
        sparse: SparseVector | None,
        limit: int,
        search_filter: SearchFilter,
    ) -> list[ScoredPayload]:
        condition = _scope_filter(scope, search_filter)
        dense_query = dense.tolist() if dense is not None else None
        sparse_query = _sparse(sparse) if sparse is not None else None
        if mode == "dense":
            response = self._client.query_points(
                self._collection, query=dense_query, using=DENSE_VECTOR, query_filter=condition, limit=limit
            )
        elif mode == "sparse":
            response = self._client.query_points(
                self._collection, query=sparse_query, using=SPARSE_VECTOR, query_filter=condition, limit=limit
            )
        else:
            prefetch_limit = max(limit, self._fusion.prefetch_limit)
            response = self._client.query_points(
                self._collection,
                prefetch=[
                    models.Prefetch(query=dense_query, using=DENSE_VECTOR, limit=prefetch_limit, filter=condition),
                    models.Prefetch(query=sparse_query, using=SPARSE_VECTOR, limit=prefetch_limit, filter=condition),
                ],
                query=models.RrfQuery(rrf=models.Rrf(k=self._fusion.rrf_k, weights=list(self._fusion.weights))),
                query_filter=condition,
                limit=limit,
            )
        return [ScoredPayload(str(p.id), float(p.score), p.payload or {}) for p in response.points]

    def count(self, scope: Scope | None = None) -> int:
        condition = _scope_filter(scope) if scope is not None else None
        return int(self._client.count(self._collection, count_filter=condition, exact=True).count)

    def close(self) -> None:
        self._client.close()
