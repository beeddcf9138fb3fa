"""The state store on both databases: versioned migrations applied once (also by replicas starting together),
transactions, and a database that cannot be reached said in one line (never its password)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving.infra.migrations import MIGRATIONS
from serving.infra.state_store import StateStore, StateStoreError
from tests.live_server import free_port


def test_migrations_apply_once_and_transactions_commit_or_roll_back(database_url: str | None, tmp_path: Path) -> None:
    store = StateStore.open(database_url, tmp_path / "state.sqlite")
    try:
        assert store.schema_version() == MIGRATIONS[-1].version
        assert store.migrate() == []  # nothing left to apply
        with store.transaction(write=True) as cursor:
            cursor.execute(
                "INSERT INTO budgets (tenant, monthly_usd, soft_ratio, updated_at) VALUES (?, ?, ?, ?)",
                ("acme", 1.5, 0.8, "2026-11-27T00:00:00.000000Z"),
            )
        with pytest.raises(RuntimeError), store.transaction(write=True) as cursor:
            cursor.execute("UPDATE budgets SET monthly_usd = ? WHERE tenant = ?", (9.0, "acme"))
            raise RuntimeError("the caller failed: nothing it wrote stays")
        with store.transaction() as cursor:
            assert cursor.execute("SELECT tenant, monthly_usd FROM budgets") == [{"tenant": "acme", "monthly_usd": 1.5}]
    finally:
        store.close()


def test_rows_are_read_by_column_name_and_a_name_selected_twice_is_refused(
    database_url: str | None, tmp_path: Path
) -> None:
    store = StateStore.open(database_url, tmp_path / "state.sqlite")
    try:
        with store.transaction() as cursor:
            (row,) = cursor.execute("SELECT MAX(version) AS version, COUNT(*) AS applied FROM schema_migrations")
            assert row == {"version": MIGRATIONS[-1].version, "applied": len(MIGRATIONS)}
        with pytest.raises(ValueError, match="selected twice"), store.transaction() as cursor:
            cursor.execute("SELECT a.version, b.version FROM schema_migrations a JOIN schema_migrations b ON 1 = 1")
    finally:
        store.close()


def test_replicas_starting_together_migrate_once(postgres_url: str, tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: StateStore.open(postgres_url, tmp_path / "unused.sqlite"), range(4)))
    try:
        with stores[0].transaction() as cursor:
            rows = cursor.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in rows] == [m.version for m in MIGRATIONS]
    finally:
        for store in stores:
            store.close()


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://ragops:s3cret-pass@127.0.0.1:{free_port()}/ragops?connect_timeout=2"
    with pytest.raises(StateStoreError) as raised:
        StateStore.open(url, tmp_path / "unused.sqlite")
    assert "s3cret-pass" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        env={"RAGOPS_DATABASE_URL": url, "RAGOPS_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ragops: error: state store postgresql://127.0.0.1:")
    assert "s3cret-pass" not in done.stderr
