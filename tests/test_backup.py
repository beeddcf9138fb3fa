"""``ragops backup restore`` cannot resurrect: revocations and rotations made after a backup outlive its restore
(the key ledger), an archive whose keys were edited or whose schema holds objects no migration makes is refused
with nothing changed, and archives, the state store and the ledger are private (0600). The round trip of index
and state together is in test_audit.py."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from app.cli import main
from app.cli.backup import BACKUP_VERSION, MANIFEST_MEMBER, STATE_MEMBER, Manifest, copy_sqlite
from serving.governance.access import KeyLimits, Role
from serving.governance.key_ledger import KeyHistory, KeyLedger, ledger_path
from serving.governance.key_restore import KeyTermsError, plan_restore, stored_keys
from serving.governance.keys import Authenticator, KeyStore
from serving.infra.migrations import MIGRATIONS
from serving.infra.schema_check import check_schema
from serving.infra.state_store import StateStore, StateStoreUnavailableError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_restore_keeps_revocations_and_rotations_made_after_the_backup(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    data, archive = tmp_path / "data", tmp_path / "backups" / "backup.tar"
    made: dict[str, dict[str, str]] = {}
    for role in ("admin", "reader", "editor"):
        code, out, _ = run(capsys, data, "keys", "create", "--tenant", "acme", "--role", role, "--json")
        made[role] = json.loads(out)
    assert run(capsys, data, "backup", "create", str(archive))[0] == 0
    assert run(capsys, data, "keys", "revoke", made["reader"]["id"])[0] == 0
    assert run(capsys, data, "keys", "rotate", made["editor"]["id"], "--grace", "0", "--json")[0] == 0
    later = json.loads(run(capsys, data, "keys", "create", "--tenant", "acme", "--role", "reader", "--json")[1])

    code, out, err = run(capsys, data, "backup", "restore", str(archive))
    assert code == 0, err
    assert f"re revoked    {made['reader']['id']} (acme, reader)" in out
    assert f"cut short     {made['editor']['id']} (acme, editor)" in out
    assert f"removed       {later['id']} (acme, reader)" in out
    assert_only_the_admin_works(data, made)
    for private in (archive, data / "state.sqlite", data / "state.sqlite-wal", ledger_path(data / "state.sqlite")):
        assert not private.exists() or mode(private) == 0o600, private
    assert mode(archive.parent) == 0o700
    for lost in data.glob("state.sqlite*"):  # the disaster a backup is for: the live store is gone
        lost.unlink()
    code, out, err = run(capsys, data, "backup", "restore", str(archive))
    assert code == 0 and out.count("added") == 3 and out.count("re revoked") == 1, out + err  # the ledger alone
    assert_only_the_admin_works(data, made)


def assert_only_the_admin_works(data: Path, made: dict[str, dict[str, str]]) -> None:
    store = StateStore.open(None, data / "state.sqlite")
    try:
        auth = Authenticator(KeyStore(store), {}, cache_s=0)
        assert auth.authenticate(made["admin"]["key"]) is not None
        assert auth.authenticate(made["reader"]["key"]) is None  # revoked after the backup: stays revoked
        assert auth.authenticate(made["editor"]["key"]) is None  # rotated away after the backup: stays expired
    finally:
        store.close()


def state_archive(tmp_path: Path, state: Path, version: int = BACKUP_VERSION) -> Path:
    """An archive around a copy of ``state`` (a dummy index: every refusal comes before the index is read)."""
    staging, archive = tmp_path / "staging", tmp_path / "tampered.tar"
    staging.mkdir()
    manifest = Manifest(created="2026-01-01T00:00:00Z", state=True, version=version)
    (staging / MANIFEST_MEMBER).write_text(manifest.model_dump_json())
    (staging / "index.tar.gz").write_bytes(b"not read")
    copy_sqlite(state, staging / STATE_MEMBER)
    with tarfile.open(archive, "w") as tar:
        for member in (MANIFEST_MEMBER, "index.tar.gz", STATE_MEMBER):
            tar.add(staging / member, arcname=member)
    return archive


def tampered(tmp_path: Path, *statements: str) -> Path:
    source = tmp_path / "source.sqlite"
    StateStore.open(None, source).close()
    with sqlite3.connect(source) as db:
        for statement in statements:
            db.execute(statement)
    db.close()
    return state_archive(tmp_path, source)


@pytest.mark.parametrize(
    ("statements", "said"),
    [
        (["CREATE TRIGGER wipe AFTER INSERT ON audit_records BEGIN DELETE FROM audit_records; END"], "trigger wipe"),
        (["CREATE VIEW every_key AS SELECT * FROM api_keys"], "view every_key"),
        (["CREATE TABLE stash (x TEXT)"], "table stash"),
        (["CREATE INDEX api_keys_role ON api_keys (role)"], "index api_keys_role"),
        (["ALTER TABLE api_keys ADD COLUMN note TEXT"], "table api_keys (changed)"),
        (["DROP INDEX api_keys_tenant"], "missing: index api_keys_tenant"),
        (["INSERT INTO schema_migrations VALUES (999, 'future', '2030-01-01')"], "schema version 999 is newer"),
        (["UPDATE schema_migrations SET name = 'other' WHERE version = 1"], "not this ragops' own"),
        (["DELETE FROM schema_migrations"], "no migration recorded"),
    ],
)
def test_restore_refuses_a_schema_no_migration_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], statements: list[str], said: str
) -> None:
    data = tmp_path / "data"
    live = data / "state.sqlite"
    StateStore.open(None, live).close()
    before = hashlib.sha256(live.read_bytes()).hexdigest()
    code, out, err = run(capsys, data, "backup", "restore", str(tampered(tmp_path, *statements)))
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert said in err and "nothing changed" in err, err
    assert hashlib.sha256(live.read_bytes()).hexdigest() == before


def test_an_older_schema_version_is_known_and_a_newer_archive_format_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = StateStore("sqlite", tmp_path / "older.sqlite")
    older.migrate(up_to=1)  # a backup taken before the later migrations: restored, then migrated
    older.close()
    assert check_schema(tmp_path / "older.sqlite") == 1
    StateStore.open(None, tmp_path / "older.sqlite").close()
    assert check_schema(tmp_path / "older.sqlite") == MIGRATIONS[-1].version
    archive = state_archive(tmp_path, tmp_path / "older.sqlite", version=BACKUP_VERSION + 1)
    code, _, err = run(capsys, tmp_path / "data", "backup", "restore", str(archive))
    assert code == 2 and f"backup format version {BACKUP_VERSION + 1}" in err, err


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ("UPDATE api_keys SET role = 'admin'", "another role than in the key ledger"),
        ("UPDATE api_keys SET tenant = 'other'", "another tenant"),
        ("UPDATE api_keys SET secret_hash = 'f' || substr(secret_hash, 2)", "another secret_hash"),
        ("UPDATE api_keys SET requests_per_minute = 1000000", "another requests_per_minute"),
    ],
)
@pytest.mark.parametrize("witness", ["ledger", "live store"])
def test_restore_refuses_keys_whose_terms_were_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, said: str, witness: str
) -> None:
    data = tmp_path / "data"
    live = data / "state.sqlite"
    store = StateStore.open(None, live)
    keys = KeyStore(store)
    for role in (Role.reader, Role.editor):
        keys.create("acme", role, "", None, KeyLimits(requests_per_minute=5))
    store.close()
    source = tmp_path / "source.sqlite"
    copy_sqlite(live, source)
    with sqlite3.connect(source) as db:
        db.execute(edit)
    db.close()
    archive = state_archive(tmp_path, source)
    if witness == "live store":
        ledger_path(live).unlink()
        said = said.replace("the key ledger", "the live store")
    code, out, err = run(capsys, data, "backup", "restore", str(archive))
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert said in err and "nothing changed" in err, err
    assert "f" * 8 not in err  # names the term, never a hash


def test_the_ledger_decides_between_an_edited_live_store_and_the_backup(tmp_path: Path) -> None:
    store = StateStore.open(None, tmp_path / "state.sqlite")
    keys = KeyStore(store)
    reader = keys.create("acme", Role.reader, "", None, KeyLimits()).record
    history = KeyLedger.beside(store).read()
    restored = stored_keys(store)
    with store.transaction(write=True) as cursor:
        cursor.execute("UPDATE api_keys SET role = 'admin'")  # the live store was edited, not the backup
    current = stored_keys(store)
    store.close()
    plan = plan_restore(restored, current, history)
    assert [(c.kind, c.key_id) for c in plan.changes] == [("changed", reader.id)]
    assert "role as in the key ledger" in plan.changes[0].line()
    with pytest.raises(KeyTermsError, match="another role than in the live store"):
        plan_restore(restored, current, KeyHistory())  # no ledger: the live store is the witness
    assert [c.kind for c in plan_restore(restored, None, KeyHistory()).changes] == ["added"]


def test_a_revocation_the_ledger_cannot_keep_is_not_made(tmp_path: Path) -> None:
    store = StateStore.open(None, tmp_path / "state.sqlite")
    keys = KeyStore(store)
    record, key = keys.create("acme", Role.reader, "", None, KeyLimits())
    ledger = ledger_path(tmp_path / "state.sqlite")
    ledger.write_bytes(ledger.read_bytes() + b'{"event": "rev')  # a torn last line, as a crash leaves it
    ledger.rename(tmp_path / "kept")
    ledger.mkdir()  # the disk refuses the append: the revocation fails whole
    with pytest.raises(StateStoreUnavailableError, match="key ledger"):
        keys.revoke(record.id)
    assert Authenticator(keys, {}, cache_s=0).authenticate(key) is not None
    ledger.rmdir()
    (tmp_path / "kept").rename(ledger)
    assert keys.revoke(record.id).revoked_at is not None
    history = KeyLedger(ledger).read()
    assert history.unreadable == 1 and record.id in history.revoked and record.id in history.terms
    store.close()


def test_the_state_store_is_created_private(tmp_path: Path) -> None:
    store = StateStore.open(None, tmp_path / "fresh" / "state.sqlite")
    try:
        KeyStore(store).create("acme", Role.reader, "", None, KeyLimits())
        for path in (tmp_path / "fresh" / "state.sqlite", tmp_path / "fresh" / "state.sqlite-wal"):
            assert mode(path) == 0o600, path
        assert mode(tmp_path / "fresh") == 0o700
    finally:
        store.close()
