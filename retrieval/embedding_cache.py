"""Embedding cache: a persistent store keyed by (model identity, text hash), with an in-memory LRU in front.

Ingestion and queries share it. Keys include ``Embedder.model_id``, so a changed model (or backend) misses
instead of serving vectors from another model.

Each row says what it holds and when it was written: a passage's vector (a chunk's embedding text, or one of its
sentences, embedded at ingest for the reranker, the context compressor and the groundedness check) is kept as
long as the cache is; a question's vector (``CachedEmbedder.embed_query``) is personal data with a retention
period (``prune_queries``). Deletes leave no bytes behind: the connection runs with ``secure_delete`` (freed
cells and pages are zeroed) and every delete is followed by a truncating checkpoint, so a deleted row is in
neither the database file nor its -wal.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from retrieval.embedding import Embedder, Vectors
from retrieval.lru import Lru

VectorKind = Literal["passage", "query"]
_KIND_CODES: dict[VectorKind, int] = {"passage": 0, "query": 1}
SCHEMA_VERSION = 2  # 1: (model_id, text_hash, vector); 2: + kind, written_at, the models and meta tables


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCacheBusyError(RuntimeError):
    """Rows were deleted, but another connection kept SQLite from truncating its -wal, which may still hold their
    bytes: run the deletion again (it checkpoints again) once the other process is done."""


class EmbeddingStore(Protocol):
    def get_many(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, bytes]], kind: VectorKind = "passage") -> None: ...

    def delete_many(self, model_id: str | None, keys: Sequence[bytes]) -> int:
        """Remove the rows of ``keys`` (of every model when ``model_id`` is None), bytes included; how many."""
        ...

    def prune_queries(self, before: datetime) -> int:
        """Remove the question vectors written before ``before``, bytes included; how many."""
        ...

    def close(self) -> None: ...


class SqliteEmbeddingStore:
    """Vectors as float32 blobs in one SQLite file (WAL mode: readers never wait for the writer).

    ``kind`` is 0 for a passage, 1 for a question, NULL for a row written before format 2 (not known: it is
    pruned as a question would be, counting from the upgrade, whose time the meta table keeps). ``written_at`` is
    Unix seconds. A format-1 file is upgraded when opened (two ``ALTER TABLE ... ADD COLUMN``: no row is
    rewritten)."""

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS embeddings ("
        " model_id TEXT NOT NULL, text_hash BLOB NOT NULL, vector BLOB NOT NULL, kind INTEGER, written_at INTEGER,"
        " PRIMARY KEY (model_id, text_hash)) WITHOUT ROWID",
        # Only question rows are indexed: a passage row costs no more to write than before.
        "CREATE INDEX IF NOT EXISTS embeddings_queries ON embeddings (written_at) WHERE kind = 1",
        "CREATE TABLE IF NOT EXISTS models (model_id TEXT PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value)",
    )
    _CHECKPOINT_TRIES = 20  # x 0.1 s: a reader of another process finishing its transaction

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted row's cells and pages are zeroed, not just freed
        self._upgrade()
        self._models = {row[0] for row in self._db.execute("SELECT model_id FROM models")}
        # Reads go through one connection per thread, without the lock: in WAL mode they never wait for the
        # writer, and under load the request threads' lookups no longer queue behind each other (one lock was
        # a third of a loaded server's samples). Writes and deletions keep the one locked connection.
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []

    def _upgrade(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(embeddings)")}
            if version < SCHEMA_VERSION and columns:  # a format-1 file with its rows
                for column in ("kind", "written_at"):
                    if column not in columns:
                        self._db.execute(f"ALTER TABLE embeddings ADD COLUMN {column} INTEGER")
            for statement in self._SCHEMA:
                self._db.execute(statement)
            if version < SCHEMA_VERSION and columns:
                self._db.execute("INSERT OR IGNORE INTO models SELECT DISTINCT model_id FROM embeddings")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('legacy_rows_since', ?)", (int(time.time()),))
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def get_many(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        reader = self._reader()
        for begin in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            batch = keys[begin : begin + 500]
            rows = reader.execute(
                "SELECT text_hash, vector FROM embeddings WHERE model_id = ? AND text_hash IN "
                f"({','.join('?' * len(batch))})",
                (model_id, *batch),
            )
            found.update(rows.fetchall())  # fetched at once: no read transaction is left open
        return found

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (made on its first read)."""
        reader: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if reader is None:
            reader = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._readers.connection = reader
            with self._lock:
                self._reader_connections.append(reader)
        return reader

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, bytes]], kind: VectorKind = "passage") -> None:
        code, now = _KIND_CODES[kind], int(time.time())
        with self._lock:
            self._db.execute("BEGIN")
            if model_id not in self._models:
                self._db.execute("INSERT OR IGNORE INTO models VALUES (?)", (model_id,))
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (model_id, text_hash, vector, kind, written_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(model_id, key, blob, code, now) for key, blob in items],
            )
            self._db.execute("COMMIT")
            self._models.add(model_id)

    def delete_many(self, model_id: str | None, keys: Sequence[bytes]) -> int:
        """Remove the rows of ``keys`` of ``model_id`` (of every model the cache holds when None); returns how
        many there were. Their bytes go too: zeroed in the file, and the -wal truncated
        (``EmbeddingCacheBusyError`` when another connection kept it from being truncated)."""
        removed = 0
        with self._erasing():
            models = sorted(self._models) if model_id is None else [model_id]
            for model in models:
                for begin in range(0, len(keys), 500):
                    batch = keys[begin : begin + 500]
                    cursor = self._db.execute(
                        f"DELETE FROM embeddings WHERE model_id = ? AND text_hash IN ({','.join('?' * len(batch))})",
                        (model, *batch),
                    )
                    removed += max(cursor.rowcount, 0)
        return removed

    def prune_queries(self, before: datetime) -> int:
        """Remove the question vectors written before ``before`` (a naive datetime is taken as UTC); returns how
        many. Rows written before the upgrade to format 2 (kind not known) go once ``before`` passes the
        upgrade. Passage rows stay."""
        cut_off = int((before if before.tzinfo else before.replace(tzinfo=UTC)).timestamp())
        with self._erasing():
            removed = max(
                self._db.execute("DELETE FROM embeddings WHERE kind = 1 AND written_at < ?", (cut_off,)).rowcount, 0
            )
            legacy = self._db.execute("SELECT value FROM meta WHERE name = 'legacy_rows_since'").fetchone()
            if legacy is not None and int(legacy[0]) < cut_off:
                removed += max(self._db.execute("DELETE FROM embeddings WHERE kind IS NULL").rowcount, 0)
                self._db.execute("DELETE FROM meta WHERE name = 'legacy_rows_since'")
        return removed

    @contextmanager
    def _erasing(self) -> Iterator[None]:
        """One write transaction under the lock whose deleted rows leave the disk too: committed, then the -wal
        truncated (rolled back when the block raises)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._truncate_wal()

    def _truncate_wal(self) -> None:
        """Copy the -wal into the file and truncate it to nothing: deleted rows' old frames go with it."""
        for _ in range(self._CHECKPOINT_TRIES):
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.1)
        raise EmbeddingCacheBusyError(
            f"embedding cache {self._path}: rows deleted, but another process kept its -wal from being truncated; "
            "run the deletion again when it is done"
        )

    def close(self) -> None:
        with self._lock:
            for reader in self._reader_connections:
                reader.close()
            self._db.close()


class SeededEmbeddingStore:
    """A data dir's own store over a seed shared between data dirs (``embedding_seed``): the passage vectors of a
    public corpus, such as the bundled sample's, computed once by ``make`` and found again by every new data dir.

    A miss in the own store is looked up in the seed, and what is found there is copied into the own store: the
    data dir keeps every vector it uses, so its erasure, retention and backups see them all and never reach into
    the seed. That is why the seed must hold public text only: an erased passage it holds is copied back when its
    text is embedded again (as a passage, even when a question asked it word for word). Passage vectors computed
    while the seed is set go to both; question vectors never go to the seed (they are personal). Rows are keyed
    by model id, whose fingerprint changes with the weights: a seed made by another model is never read back."""

    def __init__(self, own: EmbeddingStore, seed: EmbeddingStore) -> None:
        self._own = own
        self._seed = seed

    def get_many(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found = self._own.get_many(model_id, keys)
        missing = [key for key in keys if key not in found]
        seeded = self._seed.get_many(model_id, missing) if missing else {}
        if seeded:
            self._own.put_many(model_id, list(seeded.items()), "passage")
            found.update(seeded)
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, bytes]], kind: VectorKind = "passage") -> None:
        self._own.put_many(model_id, items, kind)
        if kind == "passage":
            self._seed.put_many(model_id, items, kind)

    def delete_many(self, model_id: str | None, keys: Sequence[bytes]) -> int:
        return self._own.delete_many(model_id, keys)

    def prune_queries(self, before: datetime) -> int:
        return self._own.prune_queries(before)

    def close(self) -> None:
        self._own.close()
        self._seed.close()


class MemoryFront:
    """The rows of a store last written or read, in memory in front of it: under load every question re-reads
    the vectors of its candidates' sentences, and those reads no longer reach SQLite. Writes, deletions and prunes
    go through it: an erased row leaves memory with the store's, and a prune empties it (a row does not say
    whether it is a question's; prunes are daily). A deletion made by another process (``ragops erase`` beside
    a running server) reaches this process's memory only when its rows age out, or at the next restart."""

    def __init__(self, inner: EmbeddingStore, capacity: int = 32_768) -> None:  # ~50 MB of 384-d vectors
        self._inner = inner
        self._capacity = capacity
        # Oldest written first out (not least recently used): reads take no lock, since a dict lookup is atomic
        # under the GIL, and a lock around a request's few hundred lookups was a tenth of a loaded server's samples.
        self._rows: dict[tuple[str, bytes], bytes] = {}
        self._lock = threading.Lock()  # writers and deletions

    def get_many(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        rows = self._rows
        found = {key: row for key in keys if (row := rows.get((model_id, key))) is not None}
        missing = [key for key in keys if key not in found]
        if missing:
            read = self._inner.get_many(model_id, missing)
            self._remember(model_id, read.items())
            found.update(read)
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, bytes]], kind: VectorKind = "passage") -> None:
        self._inner.put_many(model_id, items, kind)
        self._remember(model_id, items)

    def delete_many(self, model_id: str | None, keys: Sequence[bytes]) -> int:
        removed = self._inner.delete_many(model_id, keys)
        gone = set(keys)
        with self._lock:
            for row in [row for row in self._rows if row[1] in gone and model_id in (None, row[0])]:
                del self._rows[row]
        return removed

    def prune_queries(self, before: datetime) -> int:
        with self._lock:
            self._rows.clear()
        return self._inner.prune_queries(before)

    def close(self) -> None:
        self._inner.close()

    def _remember(self, model_id: str, rows: Iterable[tuple[bytes, bytes]]) -> None:
        with self._lock:
            for key, blob in rows:
                self._rows[(model_id, key)] = blob
            while len(self._rows) > self._capacity:
                del self._rows[next(iter(self._rows))]


@dataclass
class CacheStats:
    memory_hits: int = 0  # queries answered by the LRU
    store_hits: int = 0  # texts served without running the model (stored, or repeated within a call)
    computed: int = 0  # texts the model embedded


class CachedEmbedder:
    """An ``Embedder`` that asks the LRU, then the store, and computes only what neither holds."""

    def __init__(self, embedder: Embedder, store: EmbeddingStore, lru_size: int = 4096) -> None:
        self._embedder = embedder
        self._store = store
        self._lru: Lru[bytes, Vectors] = Lru(lru_size)
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @property
    def inner(self) -> Embedder:
        return self._embedder

    @property
    def store(self) -> EmbeddingStore:
        return self._store

    @property
    def model_id(self) -> str:
        return self._embedder.model_id

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    def count_tokens(self, text: str) -> int:
        return self._embedder.count_tokens(text)

    def embed(self, texts: Sequence[str], kind: VectorKind = "passage") -> Vectors:
        """Embed through the store; texts go in the LRU only via ``embed_query`` (hot queries, not corpora).
        ``kind``: what the vectors it computes are stored as (a question's are pruned after their period)."""
        keys = [text_key(t) for t in texts]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        stored = self._store.get_many(self.model_id, list(set(keys)))
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            blob = stored.get(key)
            if blob is None:
                missing.setdefault(key, []).append(i)
            else:
                out[i] = np.frombuffer(blob, dtype=np.float32)
        hits = len(texts) - len(missing)  # found in the store, or a repeat of a text in this call
        if missing:
            computed = self._embedder.embed([texts[positions[0]] for positions in missing.values()])
            for positions, vector in zip(missing.values(), computed, strict=True):
                out[positions] = vector
            self._store.put_many(
                self.model_id,
                [(key, vector.tobytes()) for key, vector in zip(missing, computed, strict=True)],
                kind,
            )
        with self._lock:
            self.stats.store_hits += hits
            self.stats.computed += len(missing)
        return out

    def embed_questions(self, texts: Sequence[str]) -> Vectors:
        """Questions (or other personal text, such as answers), stored as question vectors: pruned after their
        retention period, erased with their user."""
        return self.embed(texts, kind="query")

    def embed_query(self, text: str) -> Vectors:
        """One text, through the LRU first: repeated queries cost a dictionary lookup. Stored as a question."""
        key = text_key(text)
        cached = self._lru.get(key)
        if cached is not None:
            with self._lock:
                self.stats.memory_hits += 1
            return cached
        vector: Vectors = self.embed([text], kind="query")[0]
        self._lru.put(key, vector)
        return vector

    def forget_queries(self) -> None:
        """Empty the LRU of question vectors (after ``prune_queries``: none outlives its period in memory)."""
        self._lru.clear()
