"""The audit trail against someone with write access to the database: an edit of any column of any table verify,
export, prune, usage or budgets read is reported; a checkpoint written by hand does not verify; backdated records
are not pruned; a tail removed with its head rewritten shows against an anchor kept elsewhere; pruning keeps the
usage ledger verifiable; unauthenticated refusals are counted per address and minute, not recorded one by one.
(SQLite and Postgres.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.cli import main as cli_main
from serving.governance.audit import AnchorSettings, AuditLog, AuditRecord, AuditUnavailableError
from serving.governance.audit_chain import check_anchor, head, verify
from serving.governance.audit_export import export, plan_prune, prune
from serving.governance.usage import usage_report
from serving.infra.clock import stamp
from serving.infra.state_store import Row, StateStore

OLD, NEW = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 6, 10, tzinfo=UTC)
CUT = datetime(2026, 3, 1, tzinfo=UTC)


def record(n: int, when: datetime = NEW, tenant: str = "acme", key_id: str = "k1") -> AuditRecord:
    return AuditRecord(
        ts=stamp(when.replace(second=n % 60)), request_id=f"r{n}", key_id=key_id, tenant=tenant, role="reader",
        method="POST", route="/v1/chat", status=200, outcome="answered", latency_ms=1.0, prompt_tokens=3,
        completion_tokens=n, cost_usd=n / 100,
    )  # fmt: skip


def write(store: StateStore, records: list[AuditRecord], anchor: AnchorSettings | None = None) -> list[int]:
    log = AuditLog(store, "hash", anchor=anchor)
    try:
        return [future.result(timeout=30) for future in [log.submit(r) for r in records]]
    finally:
        log.close()


def sql(store: StateStore, statement: str, *params: Any) -> list[Row]:
    with store.transaction(write=True) as cur:
        return cur.execute(statement, params)


@pytest.fixture
def pruned(store: StateStore) -> StateStore:
    """Records 1-4 (January, beta's key k2 among them) pruned behind checkpoint 4 (attested by record 9), 5-8 and
    10-11 kept: every table verify reads has rows."""
    write(store, [record(n, OLD, *(("beta", "k2") if n == 2 else ())) for n in range(1, 5)])
    write(store, [record(n) for n in range(5, 9)])
    assert prune(store, CUT) is not None
    write(store, [record(n) for n in range(10, 12)])
    assert verify(store).ok
    return store


# (table, SET clause, WHERE clause) as someone hiding, moving or cheapening requests would write them.
EDITS = [
    ("audit_records", "ts = '2026-01-01T00:00:00.000000Z'", "seq = 6"),  # backdated: a prune would take it
    ("audit_records", "tenant = 'beta'", "seq = 6"),  # moved to another tenant's export
    ("audit_records", "key_id = 'k9'", "seq = 6"),
    ("audit_records", "body = REPLACE(body, '\"status\":200', '\"status\":500')", "seq = 6"),
    ("audit_records", "prev_hash = hash", "seq = 6"),
    ("audit_records", "hash = prev_hash", "seq = 6"),
    ("audit_records", "seq = 100", "seq = 6"),
    ("audit_head", "seq = seq - 1", "id = 1"),
    ("audit_head", "hash = SUBSTR(hash, 2) || SUBSTR(hash, 1, 1)", "id = 1"),
    ("audit_checkpoints", "seq = 3", "seq = 4"),
    ("audit_checkpoints", "hash = SUBSTR(hash, 2) || SUBSTR(hash, 1, 1)", "seq = 4"),
    ("usage_daily", "requests = requests - 1", "tenant = 'acme' AND day = '2026-06-10'"),
    ("usage_daily", "cached = cached + 1", "tenant = 'acme' AND day = '2026-06-10'"),
    ("usage_daily", "prompt_tokens = 0", "tenant = 'acme' AND day = '2026-06-10'"),
    ("usage_daily", "completion_tokens = 0", "tenant = 'acme' AND day = '2026-06-10'"),
    ("usage_daily", "cost_usd = 0", "tenant = 'acme' AND day = '2026-06-10'"),  # what budgets read
    ("usage_daily", "cost_usd = 0", "tenant = 'beta'"),  # a pruned day: the prune record carries it
    ("usage_daily", "day = '2026-05-01'", "tenant = 'acme' AND day = '2026-06-10'"),  # moved to another month
    ("usage_daily", "tenant = 'beta'", "tenant = 'acme' AND day = '2026-06-10'"),
    ("usage_daily", "key_id = 'k9'", "tenant = 'acme' AND day = '2026-06-10'"),
]


@pytest.mark.parametrize(("table", "change", "where"), EDITS, ids=[f"{e[0]}.{e[1].split(' ')[0]}" for e in EDITS])
def test_an_edit_of_any_column_verify_reads_is_reported(
    pruned: StateStore, table: str, change: str, where: str
) -> None:
    assert sql(pruned, f"SELECT 1 AS one FROM {table} WHERE {where}"), "the edit must hit a row"
    sql(pruned, f"UPDATE {table} SET {change} WHERE {where}")
    result = verify(pruned)
    assert not result.ok and result.first_bad is not None, (table, change)


def test_deleting_a_usage_row_or_adding_one_is_reported(pruned: StateStore) -> None:
    sql(pruned, "DELETE FROM usage_daily WHERE tenant = 'beta'")
    bad = verify(pruned).first_bad
    assert bad is not None and bad.kind == "usage_mismatch" and "missing" in bad.reason
    sql(pruned, "INSERT INTO usage_daily VALUES ('2026-01-10', 'beta', 'k2', 1, 0, 3, 2, 0.02)")
    assert verify(pruned).ok
    sql(pruned, "INSERT INTO usage_daily VALUES ('2026-06-11', 'gamma', 'k3', 5, 0, 0, 0, 1.0)")
    bad = verify(pruned).first_bad
    assert bad is not None and "no records behind it" in bad.reason


def test_a_checkpoint_written_by_hand_to_hide_the_prefix_does_not_verify(store: StateStore) -> None:
    write(store, [record(n) for n in range(1, 9)])
    (hash_4,) = [r["hash"] for r in sql(store, "SELECT hash FROM audit_records WHERE seq = 4")]
    sql(store, "INSERT INTO audit_checkpoints (seq, hash, pruned_before, records, created_at) VALUES "
        "(4, ?, '2026-06-10T00:00:05Z', 4, '2026-06-11T00:00:00Z')", hash_4)  # fmt: skip
    sql(store, "DELETE FROM audit_records WHERE seq <= 4")
    sql(store, "DELETE FROM usage_daily")  # and the ledger made to match what is left
    sql(store, "INSERT INTO usage_daily VALUES ('2026-06-10', 'acme', 'k1', 4, 0, 12, 26, 0.26)")
    bad = verify(store).first_bad
    assert bad is not None and bad.kind == "removed" and "no prune record" in bad.reason, bad


def test_backdated_records_are_not_pruned_and_a_future_cut_off_is_refused(store: StateStore) -> None:
    write(store, [record(n) for n in range(1, 7)])
    sql(store, "UPDATE audit_records SET ts = '2026-01-01T00:00:00.000000Z' WHERE seq <= 5")
    with pytest.raises(AuditUnavailableError, match="does not verify"):
        prune(store, CUT)
    assert len(sql(store, "SELECT seq FROM audit_records")) == 6
    with pytest.raises(ValueError, match="in the future"):
        plan_prune(store, datetime(2099, 1, 1, tzinfo=UTC))


def test_prunes_keep_the_usage_ledger_verifiable_and_reports_unchanged(store: StateStore) -> None:
    write(store, [record(n, OLD) for n in range(1, 5)] + [record(n) for n in range(5, 9)])
    before = usage_report(store, OLD, NEW, None, "day").total
    plan = plan_prune(store, CUT)
    assert plan is not None and (plan.first_seq, plan.last_seq, plan.records) == (1, 4, 4)
    first = prune(store, CUT)
    assert first is not None and first.attested_by == 9
    write(store, [record(n) for n in range(10, 12)])
    # By seq: the first prune's own record (9, stamped now) ends the prefix older than the cut-off.
    second = prune(store, NEW.replace(minute=1))
    assert second is not None and (second.seq, second.records, second.attested_by) == (8, 4, 12)
    assert verify(store).ok  # the second prune carries the first one's usage on
    assert usage_report(store, OLD, NEW, None, "day").total.cost_usd == pytest.approx(before.cost_usd + 0.21)
    assert plan_prune(store, NEW.replace(minute=1)) is None


def test_a_removed_tail_with_its_head_rewritten_shows_against_an_anchor(store: StateStore, tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.jsonl"
    write(store, [record(n) for n in range(1, 7)], AnchorSettings(file=anchors, every_s=3600))
    kept = json.loads(anchors.read_text().splitlines()[-1])  # the writer's closing anchor: the head it left
    assert (kept["seq"], kept["hash"]) == head(store) and anchors.stat().st_mode & 0o777 == 0o600
    sql(store, "DELETE FROM audit_records WHERE seq >= 5")
    (hash_4,) = [r["hash"] for r in sql(store, "SELECT hash FROM audit_records WHERE seq = 4")]
    sql(store, "UPDATE audit_head SET seq = 4, hash = ? WHERE id = 1", hash_4)
    sql(store, "UPDATE usage_daily SET requests = 4, prompt_tokens = 12, completion_tokens = 10, cost_usd = 0.1")
    assert verify(store).ok  # consistent inside the database: only the anchor can tell
    bad = check_anchor(store, kept["seq"], kept["hash"])
    assert bad is not None and bad.kind == "removed" and "tail" in bad.reason


def test_the_cli_anchors_and_verifies_against_the_anchor_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    store = StateStore.open(None, tmp_path / "state.sqlite")
    try:
        write(store, [record(n) for n in range(1, 5)])
        anchors = tmp_path / "kept-elsewhere.jsonl"
        assert cli_main([*data, "audit", "anchor", "--out", str(anchors)]) == 0
        assert capsys.readouterr().out.strip() == "{}:{}".format(*head(store))
        assert cli_main([*data, "audit", "verify", "--anchor", str(anchors)]) == 0
        sql(store, "DELETE FROM audit_records WHERE seq = 4")
        (hash_3,) = [r["hash"] for r in sql(store, "SELECT hash FROM audit_records WHERE seq = 3")]
        sql(store, "UPDATE audit_head SET seq = 3, hash = ? WHERE id = 1", hash_3)
        sql(store, "UPDATE usage_daily SET requests = 3, prompt_tokens = 9, completion_tokens = 6, cost_usd = 0.06")
        capsys.readouterr()
        assert cli_main([*data, "audit", "verify", "--anchor", str(anchors)]) == 1
        assert "tail was removed" in capsys.readouterr().out
        assert cli_main([*data, "audit", "prune", "--before", "2099-01-01"]) == 2
        assert "in the future" in capsys.readouterr().err
        assert cli_main([*data, "audit", "prune", "--before", "2026-06-11", "--dry-run"]) == 0
        assert "would prune 3 records, seq 1..3" in capsys.readouterr().out
    finally:
        store.close()


def test_unauthenticated_refusals_are_counted_per_address_and_minute(store: StateStore) -> None:
    log = AuditLog(store, "hash")
    for n in range(4000):
        log.refused(f"192.0.2.{n % 3}", 401 if n < 3000 else 429)
    for n in range(100):  # an address per request: past 50 addresses in a minute, one "other" count
        log.refused(f"198.51.100.{n}", 401)
    log.close()
    rows = list(export(store))  # the client address is a personal field: beside the body, merged back by export
    assert len(rows) <= 3 * 2 * 2 + 51 * 2  # a minute boundary may split each count in two
    assert sum(r["count"] for r in rows) == 4100
    assert {r["outcome"] for r in rows} == {"unauthenticated", "limited"}
    assert "other" in {r["client"] for r in rows} and verify(store).ok
