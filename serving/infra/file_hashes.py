"""SHA-256 of model files, computed once per file version: kept in SQLite under the cache dir by (path, size,
mtime), so lineage costs a stat per file after the first run (a 100 MB GGUF takes about 0.1 s to hash)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS file_hashes ("
    " path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,"
    " PRIMARY KEY (path, size, mtime_ns))"
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileHashes:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute(_SCHEMA)

    def sha256(self, path: Path) -> str:
        """The file's SHA-256; hashed again only when its size or modification time changed."""
        resolved = path.resolve()
        stat = resolved.stat()
        key = (str(resolved), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?", key
            ).fetchone()
        if row is not None:
            return str(row[0])
        digest = sha256_of(resolved)
        with self._lock:
            self._db.execute("DELETE FROM file_hashes WHERE path = ?", key[:1])  # earlier versions of the file
            self._db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (*key, digest))
        return digest

    def close(self) -> None:
        self._db.close()
