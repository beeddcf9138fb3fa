"""The embedded default index: Qdrant's engine in process (qdrant-edge), persisted under the data directory."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from retrieval.index import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    FusionParams,
    IndexPoint,
    IndexUnavailableError,
    Scope,
    ScoredPayload,
    SearchFilter,
    SearchMode,
    SparseVector,
    add_document_hashes,
)

_KEYWORD_FIELDS = {"collection": True, "tenant": True, "doc_id": False}  # field -> is_tenant


def _match(key: str, value: Any) -> qe.FieldCondition:
    if isinstance(value, list):
        return qe.FieldCondition(key, match=qe.MatchAny(value))
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def _scope_filter(scope: Scope, search_filter: SearchFilter | None = None) -> qe.Filter:
    must: list[Any] = [_match("collection", scope.collection), _match("tenant", scope.tenant)]
    if search_filter is not None:
        if search_filter.doc_ids:
            must.append(_match("doc_id", list(search_filter.doc_ids)))
        must.extend(_match(f"metadata.{key}", value) for key, value in search_filter.metadata.items())
    return qe.Filter(must=must)


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(vector.indices, vector.values)


class QdrantEdgeIndex:
    def __init__(
        self,
        path: Path,
        dimension: int,
        fusion: FusionParams = FusionParams(),
    ) -> None:
        self._path = path
        self._dimension = dimension
        self._fusion = fusion
        self._write_lock = threading.RLock()
        self._shard = self._open()

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=self._dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )

    def _open(self) -> Any:
        try:
            if (self._path / "edge_config.json").is_file():
                shard = qe.EdgeShard.load(str(self._path), self._config())
            else:
                shard = qe.EdgeShard.create(str(self._path), self._config())
                for field_name, is_tenant in _KEYWORD_FIELDS.items():
                    shard.update(
                        qe.UpdateOperation.create_field_index(field_name, qe.KeywordIndexParams(is_tenant=is_tenant))
                    )
        except Exception as exc:  # the engine raises plain RuntimeErrors/ValueErrors
            message = str(exc)
            if "WouldBlock" in message or "lock" in message.lower():
                raise IndexUnavailableError(
                    f"index at {self._path} is in use by another process (is `ragops serve` running on "
                    "this data dir? ingest through its API, or stop it first)"
                ) from exc
            raise IndexUnavailableError(f"cannot open index at {self._path}: {message}") from exc
        return shard

    # --- writes -----------------------------------------------------------------------------------------
    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        edge_points = [
            qe.Point(
                point.id,
                {DENSE_VECTOR: point.dense.tolist(), SPARSE_VECTOR: _sparse(point.sparse)},
                point.payload,
            )
            for point in points
        ]
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(edge_points))

    def delete_document(self, scope: Scope, doc_id: str, keep_hash: str | None = None) -> None:
        condition = _scope_filter(scope, SearchFilter(doc_ids=(doc_id,)))
        if keep_hash is not None:
            condition = qe.Filter(must=[condition], must_not=[_match("content_hash", keep_hash)])
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(condition))

    # --- reads ------------------------------------------------------------------------------------------
    def document_hashes(self, scope: Scope) -> dict[str, set[str]]:
        hashes: dict[str, set[str]] = {}
        offset = None
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=1024,
                    filter=_scope_filter(scope),
                    with_payload=["doc_id", "content_hash"],
                )
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
        # IDF over the caller's own scope: another tenant's documents never shift its BM25 scores.
        sparse_params = qe.SearchParams(idf=qe.IdfParams(corpus=_scope_filter(scope)))
        dense_query = qe.Query.Nearest(dense.tolist(), using=DENSE_VECTOR) if dense is not None else None
        sparse_query = qe.Query.Nearest(_sparse(sparse), using=SPARSE_VECTOR) if sparse is not None else None
        if mode == "dense":
            request = qe.QueryRequest(limit=limit, query=dense_query, filter=condition, with_payload=True)
        elif mode == "sparse":
            request = qe.QueryRequest(
                limit=limit, query=sparse_query, filter=condition, with_payload=True, params=sparse_params
            )
        else:
            prefetch_limit = max(limit, self._fusion.prefetch_limit)
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=prefetch_limit, query=dense_query, filter=condition),
                    qe.Prefetch(limit=prefetch_limit, query=sparse_query, filter=condition, params=sparse_params),
                ],
                query=qe.Fusion.Rrf(k=self._fusion.rrf_k, weights=list(self._fusion.weights)),  # type: ignore[arg-type]
                filter=condition,
                with_payload=True,
            )
        return [ScoredPayload(str(p.id), float(p.score), p.payload or {}) for p in self._shard.query(request)]

    def count(self, scope: Scope | None = None) -> int:
        condition = _scope_filter(scope) if scope is not None else None
        return int(self._shard.count(qe.CountRequest(filter=condition, exact=True)))

    # --- lifecycle --------------------------------------------------------------------------------------
    def snapshot(self, target: Path) -> Path:
        """Write the whole index to one .tar.gz (the shard is closed while its files are read)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            self._shard.flush()
            self._shard.close()
            try:
                partial = target.with_name(target.name + ".partial")
                with tarfile.open(partial, mode="w:gz") as archive:
                    archive.add(self._path, arcname="shard")
                partial.replace(target)
            finally:
                self._shard = self._open()
        return target

    def restore(self, source: Path) -> None:
        """Replace the index with a snapshot's; the current index is kept until the new one has loaded."""
        if not source.is_file():
            raise IndexUnavailableError(f"snapshot not found: {source}")
        staging = Path(tempfile.mkdtemp(dir=self._path.parent, prefix=".restore-"))
        try:
            try:
                with tarfile.open(source, mode="r:gz") as archive:
                    archive.extractall(staging, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise IndexUnavailableError(f"not a ragops snapshot: {source} ({exc})") from exc
            restored = staging / "shard"
            if not (restored / "edge_config.json").is_file():
                raise IndexUnavailableError(f"not a ragops snapshot: {source} (no shard inside)")
            qe.EdgeShard.load(str(restored), self._config()).close()  # validate before touching the live index
            with self._write_lock:
                self._shard.close()
                retired = staging / "retired"
                self._path.replace(retired)
                restored.replace(self._path)
                self._shard = self._open()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        with self._write_lock:
            self._shard.flush()
            self._shard.close()
