"""A write-ahead intent journal: each document's update is all or nothing, even across ``kill -9``.

Replacing a document takes several engine calls (write its new version's points, then delete its other
versions), and a process that dies between them used to leave both versions searchable. The journal, one SQLite
file beside the index, says what a batch is about to do before it does it:

1. ``begin``: one row per document of the batch (scope, id, new content hash), committed and fsynced
   (``synchronous=FULL``) before the first point is written;
2. the batch's points are written, then ``mark_written`` flags its rows: every new version is complete;
3. each document's other versions are deleted, then ``clear`` removes the batch's rows.

At start, before anything is served, ``Ingestor.recover`` settles every row left behind against what the index
holds: a new version that was written in full wins (the document's other versions are deleted); otherwise its
points, however many made it, are deleted and the version indexed before stays. Every document ends in exactly
one version, old or new; a brand-new document is either complete or not there. Deleting a document is one
engine call and needs no row.

An erasure (``Ingestor.erase_document``) is journaled too: one ``erasures`` row from before its first delete until
its bytes are gone, so ``recover`` finishes an erasure that a crash interrupted. The journal's connection runs with
``secure_delete``: a cleared row's document id is zeroed in the file, not just freed.

A data dir written by an earlier release has no journal file: there is nothing to replay, and the file is
created on first use. The format is the ``intents`` and ``erasures`` tables below; ``user_version`` numbers it
(format 1 had no ``erasures`` table: it is added when opened).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from retrieval.index import IndexUnavailableError, Scope, StorageFullError, StorageReadOnlyError

SCHEMA_VERSION = 2
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS intents (
    collection TEXT NOT NULL,
    tenant TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    new_hash TEXT NOT NULL,
    written INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (collection, tenant, doc_id)
)
""",
    """
CREATE TABLE IF NOT EXISTS erasures (
    collection TEXT NOT NULL,
    tenant TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    PRIMARY KEY (collection, tenant, doc_id)
)
""",
)


@dataclass(frozen=True)
class Intent:
    """One document's update in flight: its version ``new_hash`` replaces whatever ``scope`` holds of it."""

    scope: Scope
    doc_id: str
    new_hash: str
    written: bool = False


class Journal(Protocol):
    def begin(self, intents: Sequence[Intent]) -> None: ...

    def mark_written(self, intents: Sequence[Intent]) -> None: ...

    def clear(self, intents: Sequence[Intent]) -> None: ...

    def pending(self) -> list[Intent]: ...

    def begin_erasure(self, scope: Scope, doc_id: str) -> None: ...

    def end_erasure(self, scope: Scope, doc_id: str) -> None: ...

    def pending_erasures(self) -> list[tuple[Scope, str]]: ...

    def close(self) -> None: ...


class NoJournal:
    """No crash recovery: for an ingestor over a throwaway index (tests, evals in a temporary dir)."""

    def begin(self, intents: Sequence[Intent]) -> None:
        pass

    def mark_written(self, intents: Sequence[Intent]) -> None:
        pass

    def clear(self, intents: Sequence[Intent]) -> None:
        pass

    def pending(self) -> list[Intent]:
        return []

    def begin_erasure(self, scope: Scope, doc_id: str) -> None:
        pass

    def end_erasure(self, scope: Scope, doc_id: str) -> None:
        pass

    def pending_erasures(self) -> list[tuple[Scope, str]]:
        return []

    def close(self) -> None:
        pass


class IntentJournal:
    """The journal in a SQLite file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()  # one connection, shared by the server's worker threads
        with _storage_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")  # a committed intent is on disk before the engine writes
            self._db.execute("PRAGMA secure_delete=ON")  # an erased document's id does not stay in freed space
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise IndexUnavailableError(
                    f"journal {path} was written by a newer ragops (format {version}); upgrade ragops to open it"
                )
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def begin(self, intents: Sequence[Intent]) -> None:
        rows = [(i.scope.collection, i.scope.tenant, i.doc_id, i.new_hash) for i in intents]
        self._write(
            "INSERT OR REPLACE INTO intents (collection, tenant, doc_id, new_hash, written) VALUES (?, ?, ?, ?, 0)",
            rows,
        )

    def mark_written(self, intents: Sequence[Intent]) -> None:
        self._write("UPDATE intents SET written = 1 WHERE collection = ? AND tenant = ? AND doc_id = ?", _keys(intents))

    def clear(self, intents: Sequence[Intent]) -> None:
        self._write("DELETE FROM intents WHERE collection = ? AND tenant = ? AND doc_id = ?", _keys(intents))

    def pending(self) -> list[Intent]:
        """The rows a crash left behind (empty after a clean run)."""
        with self._lock, _storage_errors(self._path):
            rows = self._db.execute(
                "SELECT collection, tenant, doc_id, new_hash, written FROM intents ORDER BY rowid"
            ).fetchall()
        return [
            Intent(Scope(collection, tenant), doc_id, new_hash, bool(written))
            for collection, tenant, doc_id, new_hash, written in rows
        ]

    def begin_erasure(self, scope: Scope, doc_id: str) -> None:
        self._write("INSERT OR REPLACE INTO erasures VALUES (?, ?, ?)", [(scope.collection, scope.tenant, doc_id)])

    def end_erasure(self, scope: Scope, doc_id: str) -> None:
        self._write(
            "DELETE FROM erasures WHERE collection = ? AND tenant = ? AND doc_id = ?",
            [(scope.collection, scope.tenant, doc_id)],
        )

    def pending_erasures(self) -> list[tuple[Scope, str]]:
        """The erasures a crash interrupted."""
        with self._lock, _storage_errors(self._path):
            rows = self._db.execute("SELECT collection, tenant, doc_id FROM erasures ORDER BY rowid").fetchall()
        return [(Scope(collection, tenant), doc_id) for collection, tenant, doc_id in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statement: str, rows: Sequence[tuple[str, ...]]) -> None:
        if not rows:
            return
        with self._lock, _storage_errors(self._path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(statement, rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (disk full) can leave it open
                    self._db.execute("ROLLBACK")
                raise


def _keys(intents: Sequence[Intent]) -> list[tuple[str, ...]]:
    return [(i.scope.collection, i.scope.tenant, i.doc_id) for i in intents]


@contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    """SQLite's disk errors as the index's: a full disk and a read-only one are answered (503), not crashed on."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "full" in message:
            raise StorageFullError(f"journal {path}: {message}; free some space and try again") from exc
        if "readonly" in message or "read-only" in message:
            raise StorageReadOnlyError(f"journal {path}: {message}; make the data dir writable") from exc
        raise IndexUnavailableError(f"journal {path}: {message}") from exc
    except sqlite3.DatabaseError as exc:  # not a database: the file was overwritten or truncated
        raise IndexUnavailableError(
            f"journal {path} is unreadable ({exc}); move it aside (the index then starts without replaying it)"
        ) from exc
