"""``ragops backup create|restore FILE``: the embedded index and the SQLite state store (keys, audit trail,
usage, budgets) in one archive, restored together. The state is copied with SQLite's online backup API, so the
copy is one consistent moment even in WAL mode. A Postgres state store is not in the archive: its own tools
(pg_dump / pg_restore) back it up, and the command says so.

Restore refuses a state store whose schema is not exactly what this version's migrations make (an extra trigger,
view, table or index; a changed table; an unknown schema version), and one whose keys were edited; it re-applies
the revocations and expiries made after the backup (``serving.governance.key_restore``) and prints which keys
change. Archives, the restored store and the folders made for them are private (0600, 0700)."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, settings_from, with_snapshot_index
from serving.infra.private_files import PRIVATE_FILE_MODE, fsync_dir, make_private_dir, open_private

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from retrieval.index import SnapshotIndex
    from serving.governance.key_restore import KeyRestorePlan
    from serving.governance.keys import StoredKey

INDEX_MEMBER, STATE_MEMBER, MANIFEST_MEMBER = "index.tar.gz", "state.sqlite", "manifest.json"
POSTGRES_NOTE = (
    "the state store is Postgres: this backup holds the index only; back the state up with "
    '`pg_dump -Fc "$RAGOPS_DATABASE_URL" -f state.dump` and restore it with '
    '`pg_restore --clean --if-exists -d "$RAGOPS_DATABASE_URL" state.dump`'
)


BACKUP_VERSION = 1  # the archive layout this code writes and reads


class Manifest(BaseModel):
    format: str = "ragops-backup"
    version: int = BACKUP_VERSION
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
    restore.add_argument(
        "--dry-run",
        action="store_true",
        help="check FILE as a restore would (manifest, index archive, state store integrity and schema); "
        "change nothing",
    )
    restore.set_defaults(handler=run_restore)


def run_create(args: argparse.Namespace) -> int:
    from serving.infra.clock import utc_now

    settings = settings_from(args)
    with_state = settings.database_url is None
    if not with_state:
        print(f"ragops: note: {POSTGRES_NOTE}", file=sys.stderr)
    make_private_dir(args.file.parent)
    staging = Path(tempfile.mkdtemp(dir=args.file.parent, prefix=".backup-"))
    try:
        with_snapshot_index(settings, lambda index: index.snapshot(staging / INDEX_MEMBER))
        if with_state:
            copy_sqlite(_existing_state(settings), staging / STATE_MEMBER)
        manifest = Manifest(created=utc_now(), state=with_state)
        (staging / MANIFEST_MEMBER).write_text(manifest.model_dump_json())
        partial = args.file.with_name(args.file.name + ".partial")
        partial.unlink(missing_ok=True)  # a crashed run's: the new one is created private, never reused
        with (
            os.fdopen(open_private(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as file,
            tarfile.open(fileobj=file, mode="w") as archive,
        ):
            for member in (MANIFEST_MEMBER, INDEX_MEMBER, STATE_MEMBER)[: 3 if with_state else 2]:
                archive.add(staging / member, arcname=member, filter=_private_member)
        partial.replace(args.file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{args.file}: index{' and state store' if with_state else ' only'}")
    return EXIT_OK


def run_restore(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.dry_run:
        manifest = dry_run_restore(args.file, settings)
        state = "and a state store that passes its integrity and schema checks" if manifest.state else "(no state)"
        print(f"{args.file}: restorable (dry run, nothing changed): backup of {manifest.created}, index {state}")
        return EXIT_OK
    make_private_dir(settings.data_dir)
    # In the data dir: the state store is swapped in by a rename, which needs the same filesystem.
    staging = Path(tempfile.mkdtemp(dir=settings.data_dir, prefix=".restore-"))
    try:
        manifest = _unpack(args.file, staging)
        if manifest.state and settings.database_url is not None:
            raise CliError(f"{args.file} holds a SQLite state store but {POSTGRES_NOTE}; restore its index with "
                           "`ragops snapshot restore` after extracting index.tar.gz")  # fmt: skip
        plan = _prepared_state(staging / STATE_MEMBER, settings.state_path) if manifest.state else None
        points = with_snapshot_index(settings, lambda index: _restored(index, staging / INDEX_MEMBER))
        if manifest.state:
            _swap_state(staging / STATE_MEMBER, settings.state_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = "state store restored" if manifest.state else "no state store in the backup (kept the current one)"
    print(f"restored {args.file}: {points} points; {state}")
    if plan is not None:
        print(f"keys: {len(plan.changes) or 'none'} changed, compared with the store it replaced")
        for change in plan.changes:
            print(f"  {change.line()}")
    return EXIT_OK


def dry_run_restore(archive_path: Path, settings: Settings) -> Manifest:
    """What a restore checks before it changes anything, in a temporary folder outside the data dir: the
    manifest and its members, the index snapshot readable to its end with its shard inside, and the state
    store's integrity and schema. ``CliError`` as a restore would refuse (the key ledger is not compared: that
    needs the live store a restore replaces)."""
    with tempfile.TemporaryDirectory(prefix="ragops-restore-check-") as folder:
        staging = Path(folder)
        manifest = _unpack(archive_path, staging)
        if manifest.state and settings.database_url is not None:
            raise CliError(f"{archive_path} holds a SQLite state store but {POSTGRES_NOTE}")
        _check_index_snapshot(staging / INDEX_MEMBER, archive_path)
        if manifest.state:
            check_sqlite(staging / STATE_MEMBER)
    return manifest


def _check_index_snapshot(snapshot: Path, archive_path: Path) -> None:
    """Every member of the index snapshot read through (the gzip checksum is checked at its end), and the
    shard's config among them, as ``SnapshotIndex.restore`` needs it."""
    try:
        with tarfile.open(snapshot, mode="r:gz") as archive:
            names = set()
            for member in archive:
                names.add(member.name)
                if (content := archive.extractfile(member)) is not None:
                    while content.read(1 << 20):
                        pass
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise CliError(f"not a usable backup: {archive_path} (the index snapshot: {exc})", EXIT_FAILURE) from exc
    if "shard/edge_config.json" not in names:
        raise CliError(f"not a usable backup: {archive_path} (no index shard in the snapshot)", EXIT_FAILURE)


def _prepared_state(staged: Path, live: Path) -> KeyRestorePlan:
    """The staged store checked (integrity, schema), its keys compared with the key ledger and the live store,
    and the revocations and expiries made after the backup re-applied to it; the live store is not touched.
    ``CliError`` (exit 2) for a store that is refused."""
    from serving.governance.key_ledger import KeyLedger, ledger_path
    from serving.governance.key_restore import KeyTermsError, apply_plan, plan_restore, stored_keys
    from serving.infra.state_store import StateStore, StateStoreError

    check_sqlite(staged)
    current = _live_keys(live)
    history = KeyLedger(ledger_path(live)).read()
    if history.unreadable:
        print(f"ragops: note: {history.unreadable} unreadable line(s) in the key ledger skipped", file=sys.stderr)
    try:
        store = StateStore.open(None, staged)  # migrates a backup of an older version to this one
    except StateStoreError as exc:
        raise CliError(f"the backup's state store is not usable: {exc}", EXIT_FAILURE) from exc
    try:
        plan = plan_restore(stored_keys(store), current, history)
        apply_plan(store, plan)
    except KeyTermsError as exc:
        raise CliError(f"refused: {exc}; nothing changed") from exc
    finally:
        store.close()
    return plan


def _live_keys(live: Path) -> list[StoredKey] | None:
    """The keys of the store a restore replaces: none when there is none; None (and a note) when it cannot be
    read, so that only the key ledger witnesses."""
    from serving.governance.key_restore import stored_keys
    from serving.infra.state_store import StateStore, StateStoreError

    if not live.exists():
        return []
    try:
        store = StateStore.open(None, live)
        try:
            return stored_keys(store)
        finally:
            store.close()
    except (StateStoreError, sqlite3.Error) as exc:
        print(f"ragops: note: the live state store cannot be read ({exc}): keys are checked against the key "
              "ledger only", file=sys.stderr)  # fmt: skip
        return None


def _swap_state(staged: Path, live: Path) -> None:
    """The staged copy (checked, on the data dir's filesystem) takes the live store's place in one rename; its
    old WAL and shared-memory files go first, or SQLite would replay the old WAL onto the restored file."""
    for leftover in (live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")):
        leftover.unlink(missing_ok=True)
    staged.chmod(PRIVATE_FILE_MODE)  # extracted with the archive member's mode
    staged.replace(live)
    fsync_dir(live.parent)


def _private_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.mode = PRIVATE_FILE_MODE
    return member


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
    if manifest.version != BACKUP_VERSION:
        raise CliError(f"{archive_path}: backup format version {manifest.version}; this ragops reads {BACKUP_VERSION}")
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
    """A state store that passes SQLite's integrity check (else exit 1) and holds exactly the schema this
    version's migrations make, at a schema version it knows (else exit 2)."""
    from serving.infra.schema_check import SchemaMismatchError, check_schema

    try:
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row  # rows read by column name
            ok = db.execute("PRAGMA integrity_check").fetchone()["integrity_check"] == "ok"
        db.close()
        if ok:
            check_schema(path)
    except sqlite3.Error as exc:
        raise CliError(f"the backup's state store is not usable: {exc}", EXIT_FAILURE) from exc
    except SchemaMismatchError as exc:
        raise CliError(f"refused: the backup's state store is not this ragops' schema: {exc}; nothing changed") from exc
    if not ok:
        raise CliError("the backup's state store is not usable: integrity check failed", EXIT_FAILURE)
