"""The index on a Qdrant server or cluster through qdrant-client (also runs on qdrant-client's local mode).

Erasure (``purge_deleted``): qdrant-client's local mode keeps each point as a row of a SQLite file, and a deleted
row's bytes go when its connection runs with ``secure_delete`` (set here when the index opens: most SQLite builds
leave it off) under the default rollback journal, which is deleted at each commit. A server keeps deleted
points in its segments until its own vacuum and the upserts in its write-ahead log until that rolls over; neither
can be forced through the client, so there ``purge_deleted`` does nothing.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterable
from typing import Any

from qdrant_client import QdrantClient, models

from retrieval.index import DENSE_VECTOR, SPARSE_VECTOR, MetadataValue, SparseVector
from retrieval.qdrant_common import KEYWORD_FIELDS, SCROLL_PAGE_SIZE, PayloadPage, QdrantIndexBase, Ranking


class ClientDialect:
    """qdrant-client's spelling of the shared requests (see ``retrieval.qdrant_common``)."""

    def match_value(self, key: str, value: MetadataValue) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    def match_any(self, key: str, values: list[MetadataValue]) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))

    def filter(self, must: list[Any], must_not: list[Any]) -> models.Filter:
        return models.Filter(must=must, must_not=must_not or None)

    def sparse_vector(self, vector: SparseVector) -> models.SparseVector:
        return models.SparseVector(indices=vector.indices, values=vector.values)

    def point(self, point_id: str, vectors: dict[str, Any], payload: dict[str, Any]) -> models.PointStruct:
        return models.PointStruct(id=point_id, vector=vectors, payload=payload)

    def idf_params(self, corpus: models.Filter) -> models.SearchParams:
        return models.SearchParams(idf=models.IdfCorpusParams(corpus=corpus))

    def request(
        self, ranking: Ranking, limit: int, condition: models.Filter, with_payload: bool
    ) -> models.QueryRequest:
        return models.QueryRequest(
            query=ranking.vector,
            using=ranking.using,
            filter=condition,
            params=ranking.params,
            limit=limit,
            with_payload=with_payload,
        )


class QdrantServerIndex(QdrantIndexBase[models.Filter, models.QueryRequest]):
    def __init__(self, client: QdrantClient, collection: str, dimension: int) -> None:
        super().__init__(ClientDialect())
        self._client = client
        self._collection = collection
        if not client.collection_exists(collection):
            self._create_collection(dimension)
        self._secure_local_storage()

    def _local_storage(self) -> sqlite3.Connection | None:
        """Local mode's SQLite connection for this collection; None on a server (or a local mode without one)."""
        local = getattr(self._client, "_client", None)
        collection = getattr(local, "collections", {}).get(self._collection)
        storage = getattr(getattr(collection, "storage", None), "storage", None)
        return storage if isinstance(storage, sqlite3.Connection) else None

    def _secure_local_storage(self) -> None:
        storage = self._local_storage()
        if storage is not None:
            storage.execute("PRAGMA secure_delete=ON")  # deleted points' rows are zeroed, not just freed

    def purge_deleted(self) -> None:
        """Local mode: deletes already zeroed their rows (``secure_delete``); a server minds its own files."""
        self._secure_local_storage()

    def _create_collection(self, dimension: int) -> None:
        self._client.create_collection(
            self._collection,
            vectors_config={DENSE_VECTOR: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
            # Collection-wide IDF statistics; every BM25 request narrows them to its scope (IdfCorpusParams).
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        with warnings.catch_warnings():  # local mode ignores payload indexes and says so
            warnings.simplefilter("ignore", UserWarning)
            for field_name, is_tenant in KEYWORD_FIELDS.items():
                self._client.create_payload_index(
                    self._collection,
                    field_name,
                    models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=is_tenant),
                )

    # --- engine calls (QdrantIndexBase builds the VectorIndex operations on these) ----------------------
    def _write_points(self, points: list[Any]) -> None:
        self._client.upsert(self._collection, points, wait=True)

    def _delete_where(self, condition: models.Filter) -> None:
        self._client.delete(self._collection, models.FilterSelector(filter=condition), wait=True)

    def _scroll_page(
        self, condition: models.Filter, offset: Any, fields: list[str], limit: int = SCROLL_PAGE_SIZE
    ) -> PayloadPage:
        records, next_offset = self._client.scroll(
            self._collection, scroll_filter=condition, limit=limit, offset=offset, with_payload=fields
        )
        return [record.payload for record in records], next_offset

    def _run_query(self, request: models.QueryRequest) -> Iterable[Any]:
        (points,) = self._run_queries([request])
        return points

    def _run_queries(self, requests: list[models.QueryRequest]) -> list[Iterable[Any]]:
        # The batch endpoint takes request models whole (query_points would want them taken apart again), and
        # hybrid's two rankings cost one round trip.
        return [response.points for response in self._client.query_batch_points(self._collection, requests)]

    def _count_where(self, condition: models.Filter | None) -> int:
        return int(self._client.count(self._collection, count_filter=condition, exact=True).count)

    def _retrieve(self, ids: list[str]) -> list[Any]:
        return self._client.retrieve(self._collection, ids, with_payload=True, with_vectors=False)

    def close(self) -> None:
        self._client.close()
