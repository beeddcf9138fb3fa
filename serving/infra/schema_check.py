"""Whether a SQLite file holds the state store's schema and nothing else, before it replaces the live one
(``ragops backup restore``): its applied migrations are ones this code knows, in order, and its ``sqlite_master``
is exactly what those migrations make on an empty database. A trigger, view, table or index that no migration
made (a trigger deleting new audit records, say), or a table whose definition was changed, is refused.

``sqlite_stat*`` tables are left out of the comparison: ``ANALYZE`` makes them, and they steer the query planner
only."""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.infra.migrations import MIGRATIONS
from serving.infra.state_store import StateStore

_SHOWN = 3  # unknown objects named in the one-line error; the rest are counted


class SchemaMismatchError(ValueError):
    """The file's schema is not one our migrations make: one line that says what differs."""


@dataclass(frozen=True, order=True, kw_only=True)
class SchemaObject:
    """One row of ``sqlite_master``."""

    kind: str  # table, index, trigger, view
    name: str
    table: str
    sql: str | None  # None for the indexes SQLite makes itself (primary keys, unique constraints)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, kw_only=True)
class SqliteSchema:
    versions: tuple[tuple[int, str], ...]  # (version, name) of each applied migration, in order
    objects: frozenset[SchemaObject]


def check_schema(path: Path) -> int:
    """The schema version of the SQLite state store at ``path``; ``SchemaMismatchError`` when it holds objects
    our migrations do not make or lacks some they do, or records a migration this code does not know."""
    found = read_schema(path)
    version = _known_version(found.versions)
    expected = expected_schema(version)
    unknown = sorted(found.objects - expected.objects)
    missing = sorted(expected.objects - found.objects)
    if unknown:
        changed = {obj.name for obj in missing}
        names = [f"{obj.describe()}{' (changed)' if obj.name in changed else ''}" for obj in unknown]
        more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
        raise SchemaMismatchError(f"schema objects no migration makes: {', '.join(names[:_SHOWN])}{more}")
    if missing:
        raise SchemaMismatchError(f"schema objects missing: {', '.join(obj.describe() for obj in missing[:_SHOWN])}")
    return version


def _known_version(applied: tuple[tuple[int, str], ...]) -> int:
    """The newest applied migration, when the applied ones are exactly ours up to it (same numbers, same names)."""
    known = tuple((migration.version, migration.name) for migration in MIGRATIONS)
    if not applied:
        raise SchemaMismatchError("no migration recorded: not a ragops state store")
    version = applied[-1][0]
    if version > known[-1][0]:
        raise SchemaMismatchError(f"schema version {version} is newer than this ragops knows ({known[-1][0]})")
    if applied != tuple(pair for pair in known if pair[0] <= version):
        raise SchemaMismatchError(f"schema version {version}: its migrations are not this ragops' own")
    return version


def read_schema(path: Path) -> SqliteSchema:
    """What the SQLite file at ``path`` holds: applied migrations and schema objects (``sqlite3.Error`` when it
    is not a database)."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        objects = frozenset(
            SchemaObject(kind=kind, name=name, table=table, sql=sql)
            for kind, name, table, sql in rows
            if not name.startswith("sqlite_stat")
        )
        if any(obj.kind == "table" and obj.name == "schema_migrations" for obj in objects):  # a view is not read
            versions = connection.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        else:
            versions = []
    finally:
        connection.close()
    return SqliteSchema(versions=tuple((int(version), str(name)) for version, name in versions), objects=objects)


def expected_schema(version: int) -> SqliteSchema:
    """What our migrations up to ``version`` make on an empty SQLite database."""
    with tempfile.TemporaryDirectory(prefix="ragops-schema-") as folder:
        store = StateStore("sqlite", Path(folder) / "expected.sqlite")
        try:
            store.migrate(up_to=version)
        finally:
            store.close()
        return read_schema(Path(folder) / "expected.sqlite")
