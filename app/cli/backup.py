"""``ragops backup create|restore FILE``: the embedded index and the SQLite state store (keys, audit trail,
usage, budgets) in one archive, restored together. The state is copied with SQLite's online backup API, so the
copy is one consistent moment even in WAL mode. A Postgres state store is not in the archive: its own tools
(pg_dump / pg_restore) back it up, and the command says so."""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, settings_from, with_snapshot_index

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from retrieval.index import SnapshotIndex

INDEX_MEMBER, STATE_MEMBER, MANIFEST_MEMBER = "index.tar.gz", "state.sqlite", "manifest.json"
POSTGRES_NOTE = (
    "the state store is Postgres: this backup holds the index only; back the state up with "
    '`pg_dump -Fc "$RAGOPS_DATABASE_URL" -f state.dump` and restore it with '
    '`pg_restore --clean --if-exists -d "$RAGOPS_DATABASE_URL" state.dump`'
)


class Manifest(BaseModel):
    format: str = "ragops-backup"
    version: int = 1
    created: str
    state: bool  # whether the archive holds the SQLite state store


def add_parser(commands: Commands) -> None:
    backup = commands.add_parser("backup", help="back up or restore the index and the state store together")
    actions = backup.add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="write the index and the SQLite state store to FILE")
    create.add_argument("file", type=Path)
    create.set_defaults(handler=run_create)
    restore = actions.add_parser("restore", help="replace the index and the state store with FILE's")
    restore.add_argument("file", type=Path)
    restore.set_defaults(handler=run_restore)


def run_create(args: argparse.Namespace) -> int:
    from serving.infra.clock import utc_now

    settings = settings_from(args)
    with_state = settings.database_url is None
    if not with_state:
        print(f"ragops: note: {POSTGRES_NOTE}", file=sys.stderr)
    args.file.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=args.file.parent, prefix=".backup-"))
    try:
        with_snapshot_index(settings, lambda index: index.snapshot(staging / INDEX_MEMBER))
        if with_state:
            copy_sqlite(_existing_state(settings), staging / STATE_MEMBER)
        manifest = Manifest(created=utc_now(), state=with_state)
        (staging / MANIFEST_MEMBER).write_text(manifest.model_dump_json())
        partial = args.file.with_name(args.file.name + ".partial")
        with tarfile.open(partial, mode="w") as archive:
            for member in (MANIFEST_MEMBER, INDEX_MEMBER, STATE_MEMBER)[: 3 if with_state else 2]:
                archive.add(staging / member, arcname=member)
        partial.replace(args.file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{args.file}: index{' and state store' if with_state else ' only'}")
    return EXIT_OK


def run_restore(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # In the data dir: the state store is swapped in by a rename, which needs the same filesystem.
    staging = Path(tempfile.mkdtemp(dir=settings.data_dir, prefix=".restore-"))
    try:
        manifest = _unpack(args.file, staging)
        if manifest.state and settings.database_url is not None:
            raise CliError(f"{args.file} holds a SQLite state store but {POSTGRES_NOTE}; restore its index with "
                           "`ragops snapshot restore` after extracting index.tar.gz")  # fmt: skip
        if manifest.state:
            check_sqlite(staging / STATE_MEMBER)
        points = with_snapshot_index(settings, lambda index: _restored(index, staging / INDEX_MEMBER))
        if manifest.state:
            _swap_state(staging / STATE_MEMBER, settings.state_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = "state store restored" if manifest.state else "no state store in the backup (kept the current one)"
    print(f"restored {args.file}: {points} points; {state}")
    return EXIT_OK


def _swap_state(staged: Path, live: Path) -> None:
    """The staged copy (checked, on the data dir's filesystem) takes the live store's place in one rename; its
    old WAL and shared-memory files go first, or SQLite would replay the old WAL onto the restored file."""
    for leftover in (live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")):
        leftover.unlink(missing_ok=True)
    staged.replace(live)


def _restored(index: SnapshotIndex, snapshot: Path) -> int:
    index.restore(snapshot)  # validated before the live index is touched
    return index.count()


def _existing_state(settings: Settings) -> Path:
    """The SQLite state store, created (migrated, empty) when this data dir never had one."""
    from serving.infra.state_store import StateStore

    if not settings.state_path.exists():
        StateStore.open(None, settings.state_path).close()
    return settings.state_path


def _unpack(archive_path: Path, staging: Path) -> Manifest:
    try:
        with tarfile.open(archive_path, mode="r:") as archive:
            archive.extractall(staging, filter="data")
        manifest = Manifest.model_validate_json((staging / MANIFEST_MEMBER).read_text())
    except (OSError, tarfile.TarError, ValidationError) as exc:
        raise CliError(f"not a ragops backup: {archive_path} ({exc})") from exc
    if manifest.format != "ragops-backup" or not (staging / INDEX_MEMBER).is_file():
        raise CliError(f"not a ragops backup: {archive_path}")
    if manifest.state and not (staging / STATE_MEMBER).is_file():
        raise CliError(f"not a ragops backup: {archive_path} (the state store is missing)")
    return manifest


def copy_sqlite(source: Path, target: Path) -> None:
    """One consistent copy of ``source`` into ``target`` (SQLite's online backup: a WAL database's committed
    state, whatever other connections do meanwhile)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def check_sqlite(path: Path) -> None:
    try:
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row  # rows read by column name
            ok = db.execute("PRAGMA integrity_check").fetchone()["integrity_check"] == "ok"
            migrated = db.execute("SELECT COUNT(*) AS n FROM schema_migrations").fetchone()["n"] > 0
        db.close()
    except sqlite3.Error as exc:
        raise CliError(f"the backup's state store is not usable: {exc}", EXIT_FAILURE) from exc
    if not (ok and migrated):
        raise CliError("the backup's state store is not usable: integrity check failed", EXIT_FAILURE)
