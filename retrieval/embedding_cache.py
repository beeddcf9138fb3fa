"""Embedding cache: a persistent store keyed by (model identity, text hash), with an in-memory LRU in front.

Ingestion and queries share it. Keys include ``Embedder.model_id``, so a changed model (or backend) misses
instead of serving vectors from another model.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.embedding import Embedder, Vectors


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingStore(Protocol):
    def get_many(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, bytes]]) -> None: ...

    def close(self) -> None: ...


class SqliteEmbeddingStore:
    """Vectors as float32 blobs in one SQLite file (WAL mode: readers never wait for the writer)."""

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS embeddings ("
        " model_id TEXT NOT NULL, text_hash BLOB NOT NULL, vector BLOB NOT NULL,"
        " PRIMARY KEY (model_id, text_hash)) WITHOUT ROWID"
    )

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(self._SCHEMA)

    def get_many(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        with self._lock:
            for begin in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                batch = keys[begin : begin + 500]
                rows = self._db.execute(
                    "SELECT text_hash, vector FROM embeddings WHERE model_id = ? AND text_hash IN "
                    f"({','.join('?' * len(batch))})",
                    (model_id, *batch),
                )
                found.update(rows)
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (model_id, text_hash, vector) VALUES (?, ?, ?)",
                [(model_id, key, blob) for key, blob in items],
            )
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


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
        self._lru: OrderedDict[bytes, Vectors] = OrderedDict()
        self._lru_size = lru_size
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

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed through the store; texts go in the LRU only via ``embed_query`` (hot queries, not corpora)."""
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
            )
        with self._lock:
            self.stats.store_hits += hits
            self.stats.computed += len(missing)
        return out

    def embed_query(self, text: str) -> Vectors:
        """One text, through the LRU first: repeated queries cost a dictionary lookup."""
        key = text_key(text)
        with self._lock:
            cached = self._lru.get(key)
            if cached is not None:
                self._lru.move_to_end(key)
                self.stats.memory_hits += 1
                return cached
        vector: Vectors = self.embed([text])[0]
        with self._lock:
            self._lru[key] = vector
            if len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)
        return vector
