"""The state store: API keys, the audit trail, usage totals and budgets, in one database.

Embedded SQLite under the data dir by default; Postgres (psycopg 3, a small connection pool) when a
``postgresql://`` URL is given. The rest of the service sees one interface, ``StateStore.transaction()``, whose
cursor takes SQL written once with ``?`` placeholders and portable types (TEXT, BIGINT, DOUBLE PRECISION), and
hands rows read by column name (``row["tenant"]``) on both: a query names each column once (an aggregate or a
join's clashing column gets an ``AS``).

Schema changes are versioned migrations (``serving.infra.migrations``), applied at open inside one transaction each,
recorded in ``schema_migrations``; on Postgres under an advisory lock, so replicas starting together apply each
once.

Durability: SQLite runs in WAL mode with ``synchronous=FULL`` (every commit is fsynced), so a committed
transaction survives a power cut; Postgres' own ``synchronous_commit`` decides there.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from serving.infra.clock import utc_now
from serving.infra.migrations import MIGRATIONS
from serving.infra.private_files import create_private_file

Dialect = Literal["sqlite", "postgres"]
Row = Mapping[str, Any]
"""A row, read by column name: the column's name as selected (its ``AS`` name, else the bare column name)."""


class StateStoreError(Exception):
    """The store cannot open or migrate: one line that says why."""


class StateStoreUnavailableError(StateStoreError):
    """The database stopped answering (or its disk refused a write) while the service runs."""


class Cursor(Protocol):
    """What a transaction offers: SQL with ``?`` placeholders, rows read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def lock(self, name: str) -> None:
        """Serialise this transaction with every other one taking the same lock, across processes."""


class _SqliteCursor:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._connection.execute(sql, tuple(params))
        _check_names(cursor.description, sql)
        rows: list[Row] = cursor.fetchall()  # dicts: the connection's row factory (_sqlite_row)
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql, [tuple(row) for row in rows])

    def lock(self, name: str) -> None:
        pass  # every write transaction is BEGIN IMMEDIATE: SQLite already lets one writer in at a time


class _PostgresCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(_postgres_sql(sql), tuple(params))
        if self._cursor.description is None:
            return []
        _check_names(self._cursor.description, sql)
        return list(self._cursor.fetchall())  # dicts: the cursor's row factory (psycopg's dict_row)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(_postgres_sql(sql), [tuple(row) for row in rows])

    def lock(self, name: str) -> None:
        self._cursor.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(name.encode()),))


def _sqlite_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> dict[str, Any]:
    """SQLite's row factory: the row as a dict by column name, as psycopg's ``dict_row`` hands it on Postgres."""
    return {column[0]: value for column, value in zip(cursor.description, values, strict=True)}


def _check_names(description: Sequence[Sequence[Any]] | None, sql: str) -> None:
    """A query whose columns share a name would lose all but one of them in a row read by name: a bug in it."""
    names = [column[0] for column in description or ()]
    if len(set(names)) != len(names):
        clashing = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"columns selected twice under one name ({', '.join(clashing)}; use AS): {sql[:200]}")


def _postgres_sql(sql: str) -> str:
    # The store's SQL never holds a literal '?' or '%': placeholders are the only ones.
    return sql.replace("?", "%s")


class StateStore:
    """One database for the service's state. Thread-safe: SQLite gets a connection per thread, Postgres a pool."""

    def __init__(self, dialect: Dialect, opener: Any) -> None:
        self.dialect = dialect
        self._opener = opener
        self._local = threading.local()
        self._pool: Any = None
        self._sqlite_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._unavailable = _unavailable_errors(dialect)

    @classmethod
    def open(cls, database_url: str | None, sqlite_path: Path) -> StateStore:
        """The Postgres database at ``database_url``, else SQLite at ``sqlite_path``; migrated to the current
        schema. A database that cannot be reached or migrated is a ``StateStoreError``."""
        store = cls("sqlite", sqlite_path) if database_url is None else cls("postgres", database_url)
        try:
            if database_url is not None:
                store._pool = _postgres_pool(database_url)
            store.migrate()
        except Exception as exc:
            store.close()
            raise StateStoreError(f"state store {store.describe()}: {_first_line(exc)}") from exc
        return store

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file; None on Postgres."""
        return Path(self._opener) if self.dialect == "sqlite" else None

    def describe(self) -> str:
        """Where the state lives, without credentials."""
        if self.dialect == "sqlite":
            return f"sqlite:{self._opener}"
        from urllib.parse import urlsplit

        parts = urlsplit(str(self._opener))
        return f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Cursor]:
        """One transaction: committed when the block ends, rolled back when it raises. A database that cannot
        be reached, or a disk that refuses the write, is a ``StateStoreUnavailableError`` (the API's 503)."""
        try:
            with self._transaction(write) as cursor:
                yield cursor
        except self._unavailable as exc:
            raise StateStoreUnavailableError(f"state store {self.describe()} unavailable: {exc}") from exc

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        if self.dialect == "postgres":
            from psycopg.rows import dict_row

            with (
                self._pool.connection() as connection,
                connection.transaction(),
                connection.cursor(row_factory=dict_row) as cursor,
            ):
                yield _PostgresCursor(cursor)
            return
        connection = self._sqlite()
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _SqliteCursor(connection)
            connection.commit()
        except BaseException:
            if connection.in_transaction:  # a failed COMMIT (disk full) leaves it open: the next BEGIN would fail
                connection.rollback()
            raise

    def migrate(self, up_to: int | None = None) -> list[int]:
        """Apply the migrations not applied yet (those up to version ``up_to`` when given), each in its own
        transaction; returns their versions."""
        applied: list[int] = []
        with self.transaction(write=True) as cursor:
            cursor.lock("ragops.migrations")
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {int(row["version"]) for row in cursor.execute("SELECT version FROM schema_migrations")}
            for migration in MIGRATIONS:
                if migration.version in done or (up_to is not None and migration.version > up_to):
                    continue
                for statement in migration.sql:
                    cursor.execute(statement)
                cursor.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, utc_now()),
                )
                applied.append(migration.version)
        return applied

    def reclaim(self, tables: Sequence[str]) -> bool:
        """Make rows deleted from ``tables`` gone from the disk too, not only from queries: SQLite zeroes freed
        cells as it goes (``secure_delete``), and the write-ahead log that still holds the pages as they were is
        checkpointed and truncated here; Postgres' dead tuples are vacuumed. False when another connection kept
        the log from being truncated (run it again when the server is idle)."""
        if self.dialect == "postgres":
            import psycopg

            with psycopg.connect(str(self._opener), autocommit=True) as connection:
                for table in tables:
                    connection.execute(f"VACUUM {table}")  # our own table names, never input
            return True
        row = self._sqlite().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(row) and row["busy"] == 0

    def schema_version(self) -> int:
        with self.transaction() as cursor:
            rows = cursor.execute("SELECT MAX(version) AS version FROM schema_migrations")
        return int(rows[0]["version"] or 0)

    def _sqlite(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            path = Path(self._opener)
            create_private_file(path)  # 0600: it holds key hashes and the audit trail
            # isolation_level=None: transactions are the explicit BEGINs above, nothing implicit.
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            connection.row_factory = _sqlite_row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a commit is on disk before a response says so
            connection.execute("PRAGMA busy_timeout=30000")
            # A deleted or overwritten row's bytes are zeroed, not left in free pages: erasure means gone from disk.
            connection.execute("PRAGMA secure_delete=ON")
            self._local.connection = connection
            with self._lock:
                self._sqlite_connections.append(connection)
        return connection

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            for connection in self._sqlite_connections:
                connection.close()
            self._sqlite_connections.clear()
        self._local = threading.local()


def _first_line(error: Exception) -> str:
    # Driver messages run over several lines (libpq adds hints); the CLI's error is one.
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _unavailable_errors(dialect: Dialect) -> tuple[type[Exception], ...]:
    """The driver's errors that mean the database is not there for us (not a bug in our SQL)."""
    if dialect == "sqlite":
        return (sqlite3.OperationalError,)
    import psycopg
    import psycopg_pool

    return (psycopg.OperationalError, psycopg_pool.PoolTimeout)


def _postgres_pool(database_url: str) -> Any:
    import psycopg
    from psycopg_pool import ConnectionPool

    # One direct connection first: an unreachable database fails here, at once, rather than after the pool's
    # retries (each of which logs a warning).
    psycopg.connect(database_url, connect_timeout=10).close()
    return ConnectionPool(database_url, min_size=1, max_size=8, open=True, timeout=10)
