"""The embedded default index: Qdrant's engine in process (qdrant-edge), persisted under the data directory.

Its memory-mapped files turn a full disk into SIGBUS (see ``retrieval.storage``), so with a ``DiskGuard`` every
write, the open (which replays the WAL), a snapshot and a restore first check that the margin stays free. An
index that cannot be opened (corrupt, unreadable, locked) is one ``IndexUnavailableError`` line saying what to do.

Erasure (``purge_deleted``) needs the bytes of deleted points gone from every file, and the engine keeps them in
two places: a segment's payload and vector storage (a delete only marks the point), and the write-ahead log.

- Segments: the vacuum optimizer rewrites a segment without its deleted points and removes the old one. With
  ``deleted_threshold`` near zero it takes every segment that has any; what it costs is the size of those
  segments, so segments are kept small: the indexing optimizer turns the appendable segment into an immutable one
  once its vectors pass ``SEGMENT_KB``, and writes run it every ``OPTIMIZE_EVERY_POINTS`` points. HNSW is off
  (``m=0``): segments are searched exactly, as the appendable ones always were, and building one costs no graph.
- Write-ahead log: its files are 32 MiB, written in order and deleted whole once flushed and a newer closed one
  exists; a deleted point's upsert stays in the file it was written to until then. ``purge_deleted`` writes
  filler records (a payload update that matches no point) until every file that held records before it has
  been deleted. Removing or editing the log instead would reset the engine's operation numbers, after which
  it silently skips later writes to the points that already exist.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from retrieval.index import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    IndexBusyError,
    IndexUnavailableError,
    MetadataValue,
    SparseVector,
)
from retrieval.qdrant_common import (
    KEYWORD_FIELDS,
    SCROLL_PAGE_SIZE,
    PayloadPage,
    QdrantIndexBase,
    Ranking,
)
from retrieval.storage import MB, DiskGuard, allocated_bytes

log = logging.getLogger("ragops.index")

SEGMENT_KB = 10_000  # vectors per segment (~6,500 of 384 dims): what vacuuming one for an erasure rewrites
OPTIMIZE_EVERY_POINTS = 2048  # written points between optimizer runs: the appendable segment stays near SEGMENT_KB
DELETED_THRESHOLD = 1e-9  # any deleted point makes its segment due for vacuum
WAL_FILLER_BYTES = 4 * MB  # one filler record; the log's files are 32 MiB
WAL_FILLER_RECORDS = 8  # per flush
WAL_MAX_ROUNDS = 12  # 384 MiB: a log that has not rolled its old files over by then is reported, not waited on
SEGMENT_REMOVAL_WAIT_S = 5.0  # the engine deletes a vacuumed segment's directory just after the optimizer returns
# No point matches it: scope names never hold a NUL (retrieval.index.SCOPE_NAME_PATTERN).
_NO_POINT = qe.Filter(must=[qe.FieldCondition("collection", match=qe.MatchValue("\x00"))])


class EdgeDialect:
    """qdrant-edge's spelling of the shared requests (see ``retrieval.qdrant_common``)."""

    def match_value(self, key: str, value: MetadataValue) -> qe.FieldCondition:
        return qe.FieldCondition(key, match=qe.MatchValue(value))

    def match_any(self, key: str, values: list[MetadataValue]) -> qe.FieldCondition:
        # The stub says str or int lists; the engine takes what the metadata filter was given, as before.
        return qe.FieldCondition(key, match=qe.MatchAny(values))  # type: ignore[arg-type]

    def filter(self, must: list[Any], must_not: list[Any]) -> qe.Filter:
        return qe.Filter(must=must, must_not=must_not or None)

    def sparse_vector(self, vector: SparseVector) -> qe.SparseVector:
        return qe.SparseVector(vector.indices, vector.values)

    def point(self, point_id: str, vectors: dict[str, Any], payload: dict[str, Any]) -> qe.Point:
        return qe.Point(point_id, vectors, payload)

    def idf_params(self, corpus: qe.Filter) -> qe.SearchParams:
        return qe.SearchParams(idf=qe.IdfParams(corpus=corpus))

    def request(self, ranking: Ranking, limit: int, condition: qe.Filter, with_payload: bool) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=limit, query=_nearest(ranking), filter=condition, with_payload=with_payload, params=ranking.params
        )


def _nearest(ranking: Ranking) -> qe.Query:
    # The engine names the vector inside the query, where qdrant-client passes it beside it.
    return qe.Query.Nearest(ranking.vector, using=ranking.using)


class QdrantEdgeIndex(QdrantIndexBase[qe.Filter, qe.QueryRequest]):
    def __init__(self, path: Path, dimension: int, disk: DiskGuard | None = None) -> None:
        super().__init__(EdgeDialect())
        self._path = path
        self._dimension = dimension
        self._disk = disk
        self._write_lock = threading.RLock()
        self._written_since_optimize = 0
        self._shard = self._open()

    def _config(self) -> qe.EdgeConfig:
        # Given on every load too: a shard created by an earlier release takes the segment layout on from then on.
        return qe.EdgeConfig(
            vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=self._dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000, payload_m=0),
            optimizers=qe.EdgeOptimizersConfig(
                deleted_threshold=DELETED_THRESHOLD,
                vacuum_min_vector_number=1,
                indexing_threshold=SEGMENT_KB,
                max_segment_size=SEGMENT_KB,
            ),
        )

    def _open(self) -> Any:
        self._check_space(0, "open the index")  # opening replays the WAL into the segments: it writes
        try:
            return self._load_or_create()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the engine raises plain Exceptions; a Rust panic is a BaseException
            raise _open_error(self._path, exc) from exc

    def _load_or_create(self) -> Any:
        if (self._path / "edge_config.json").is_file():
            shard = qe.EdgeShard.load(str(self._path), self._config())
        else:
            shard = qe.EdgeShard.create(str(self._path), self._config())
        try:
            shard.count(qe.CountRequest(exact=True))  # reads every segment's id tracker: fails here, not mid-request
            indexed = shard.info().payload_schema
            for field_name, is_tenant in KEYWORD_FIELDS.items():
                if field_name not in indexed:  # a new shard, or one from a release with fewer indexes
                    shard.update(
                        qe.UpdateOperation.create_field_index(field_name, qe.KeywordIndexParams(is_tenant=is_tenant))
                    )
        except BaseException:
            shard.close()  # let go of the lock: the caller may move the directory aside and try again
            raise
        return shard

    def _check_space(self, needed_bytes: int, action: str) -> None:
        if self._disk is not None:
            self._disk.check(needed_bytes, action)

    # --- engine calls (QdrantIndexBase builds the VectorIndex operations on these) ----------------------
    def _before_write(self, needed_bytes: int) -> None:
        self._check_space(needed_bytes, "write to the index")

    def _write_points(self, points: list[Any]) -> None:
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(points))
            self._written_since_optimize += len(points)
            if self._written_since_optimize >= OPTIMIZE_EVERY_POINTS:
                # Seals the appendable segment once it passes SEGMENT_KB, and vacuums segments with deleted points
                # (older versions of updated documents): both keep an erasure's rewrite small.
                self._shard.optimize()
                self._written_since_optimize = 0

    def _delete_where(self, condition: qe.Filter) -> None:
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(condition))

    def _scroll_page(
        self, condition: qe.Filter, offset: Any, fields: list[str], limit: int = SCROLL_PAGE_SIZE
    ) -> PayloadPage:
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=condition, with_payload=fields)
        records, next_offset = self._shard.scroll(request)
        return [record.payload for record in records], next_offset

    def _run_query(self, request: qe.QueryRequest) -> list[Any]:
        return list(self._shard.query(request))

    def _count_where(self, condition: qe.Filter | None) -> int:
        return int(self._shard.count(qe.CountRequest(filter=condition, exact=True)))

    def _retrieve(self, ids: list[str]) -> list[Any]:
        return list(self._shard.retrieve(ids, True, False))

    # --- erasure ----------------------------------------------------------------------------------------
    def purge_deleted(self) -> None:
        """Make every deleted point's bytes go from the files under the index directory (see the module
        docstring): segments with deleted points are rewritten without them, then the write-ahead log rolls
        over every file that held records before. Idempotent; when nothing was deleted it costs the log's
        roll-over (about 64 MiB written)."""
        # The vacuum writes a copy of a segment and the roll-over fills up to three log files before old ones go.
        self._check_space(3 * 32 * MB + SEGMENT_KB * 1024 * 2, "erase from the index")
        with self._write_lock:
            self._shard.flush()
            self._shard.optimize()
            self._written_since_optimize = 0
            self._roll_wal()
        self._await_segment_removal()

    def _roll_wal(self) -> None:
        held = _wal_files_with_records(self._path / "wal")  # open: their inode numbers are not reused meanwhile
        try:
            filler = qe.UpdateOperation.set_payload_by_filter(_NO_POINT, {"_filler": "\x00" * WAL_FILLER_BYTES})
            # The file being written has to fill up, and then stop being the newest closed one: two files at least.
            for records in [2 * WAL_FILLER_RECORDS] + [WAL_FILLER_RECORDS] * (WAL_MAX_ROUNDS - 2):
                for _ in range(records):
                    self._shard.update(filler)
                self._shard.flush()  # acknowledges the records: the log deletes the files it no longer needs
                if all(os.fstat(fd).st_nlink == 0 for fd in held):
                    return
        finally:
            for fd in held:
                os.close(fd)
        raise IndexUnavailableError(
            f"index at {self._path}: its write-ahead log kept files from before the erasure after "
            f"{WAL_MAX_ROUNDS * WAL_FILLER_RECORDS * WAL_FILLER_BYTES // MB} MiB of filler; run the erasure again"
        )

    def _await_segment_removal(self) -> None:
        """The optimizer removes a vacuumed segment's directory just after it returns: wait for it, briefly."""
        deadline = time.monotonic() + SEGMENT_REMOVAL_WAIT_S
        while True:
            on_disk = sum(1 for entry in (self._path / "segments").iterdir() if entry.is_dir())
            if on_disk <= self._shard.info().segments_count:
                return
            if time.monotonic() > deadline:
                log.warning("index at %s: %d segment directories for %d segments after an erasure", self._path,
                            on_disk, self._shard.info().segments_count)  # fmt: skip
                return
            time.sleep(0.05)

    # --- lifecycle --------------------------------------------------------------------------------------
    def snapshot(self, target: Path) -> Path:
        """Write the whole index to one .tar.gz (the shard is closed while its files are read)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        # The archive is at most the index's size; the index reopens afterwards and must still find its margin.
        self._check_space(allocated_bytes(self._path), "write a snapshot")
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
                    self._check_space(sum(member.size for member in archive), "restore a snapshot")
                    archive.extractall(staging, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise IndexUnavailableError(f"not a ragops snapshot: {source} ({exc})") from exc
            restored = staging / "shard"
            if not (restored / "edge_config.json").is_file():
                raise IndexUnavailableError(f"not a ragops snapshot: {source} (no shard inside)")
            try:  # validate before touching the live index
                qe.EdgeShard.load(str(restored), self._config()).close()
            except Exception as exc:
                raise IndexUnavailableError(f"not a usable snapshot: {source} ({_one_line(exc)})") from exc
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


def _wal_files_with_records(wal: Path) -> list[int]:
    """Descriptors of the log's files that may hold records: every closed one, and the open one being written (the
    lowest numbered; higher ones are preallocated and empty). A file is gone once its link count is 0."""
    open_files = sorted(wal.glob("open-*"), key=lambda entry: int(entry.name.split("-", 1)[1]))
    return [os.open(entry, os.O_RDONLY) for entry in [*wal.glob("closed-*"), *open_files[:1]]]


def _open_error(path: Path, exc: BaseException) -> IndexUnavailableError:
    """One line that says what is wrong and what to do."""
    message = _one_line(exc)
    if "WouldBlock" in message:  # the WAL's file lock is held
        return IndexBusyError(
            f"index at {path} is in use by another process (is `ragops serve` running on "
            "this data dir? ingest through its API, or stop it first)"
        )
    return IndexUnavailableError(
        f"cannot open the index at {path} ({message}): it is corrupt or unreadable; move that directory aside, "
        "then run `ragops snapshot restore FILE` to restore a snapshot, or start again with an empty index and "
        "ingest again"
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    # The engine's messages can span lines and repeat whole paths; a log line or a CLI error wants one short line.
    message = " ".join(str(exc).split())
    return message if len(message) <= limit else message[:limit] + "..."
