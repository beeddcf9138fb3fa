"""Retention (``serving.rights.retention``): one table of every store (its settings, its docs page); a run that
removes what is past each period and keeps the rest, on a real SQLite state store; a dry run that changes nothing;
the audit chain still verifying after the prune; the ``retention.apply`` record with its counts, written even when
nothing was due; a store that fails reported while the others run; ``ragops retention`` and its exit codes; the
server's daily task outliving a store outage."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.cli import main as cli_main
from app.parts import build_retention
from app.settings import Settings, flat_fields, load_settings
from retrieval.embedding_cache import SqliteEmbeddingStore, text_key
from retrieval.index import Scope
from serving.contracts.answer import AnswerRequest
from serving.governance.audit import AuditLog, AuditRecord
from serving.governance.audit_chain import PRUNE_ACTION, verify
from serving.governance.audit_export import export
from serving.infra.clock import stamp
from serving.infra.state_store import Row, StateStore, StateStoreUnavailableError
from serving.loop.answer_log import AnswerLog
from serving.loop.feedback import FeedbackStore
from serving.rights import RETENTION_ACTION
from serving.rights.retention import CLI, SERVER, Actor, Retention, RetentionReport, RetentionTask, periods_from
from serving.rights.retention_rules import RETENTION_RULES
from tests.conftest import ROOT, make_answer

NOW = datetime.now(UTC)
MARKER = "zebra-quokka"  # in the old answer's question: gone from the database's bytes once it is pruned


class QueryVectors:
    """The embedding cache's side of retention (``prune_queries``), recording what it was asked."""

    def __init__(self, stored: list[datetime]) -> None:
        self.stored = stored
        self.calls: list[datetime] = []

    def prune_queries(self, before: datetime) -> int:
        self.calls.append(before)
        gone = [t for t in self.stored if t < before]
        self.stored = [t for t in self.stored if t >= before]
        return len(gone)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore.open(None, tmp_path / "state.sqlite")
    yield store
    store.close()


def keep_answer(state: StateStore, ago: timedelta, question: str, rating: str | None = "down") -> str:
    log = AnswerLog(state, retention_days=30)
    try:
        request = AnswerRequest(question=question, scope=Scope("c", "acme"))
        log.record(request, make_answer("The Normans [1].", id=request.id))
        assert log.flush()
        with state.transaction(write=True) as cur:
            cur.execute("UPDATE answers SET ts = ? WHERE id = ?", [stamp(NOW - ago), request.id])
        record = log.find(request.id, "acme")
        assert record is not None
        if rating is not None:
            FeedbackStore(state).rate(record, rating, comment=f"about {question}")  # type: ignore[arg-type]
    finally:
        log.close()
    return request.id


def audit_record(n: int, when: datetime) -> AuditRecord:
    return AuditRecord(
        ts=stamp(when), request_id=f"r{n}", key_id="k1", tenant="acme", role="reader", method="POST",
        route="/v1/chat", status=200, outcome="answered", latency_ms=1.0, prompt_tokens=3,
    )  # fmt: skip


def write_audit(state: StateStore, records: list[AuditRecord]) -> None:
    log = AuditLog(state, "hash")
    try:
        for future in [log.submit(r) for r in records]:
            future.result(timeout=30)
    finally:
        log.close()


@pytest.fixture
def seeded(state: StateStore) -> dict[str, str]:
    """Two answers (40 and 10 days old) rated down; audit records 400 days and 1 day old."""
    old = keep_answer(state, timedelta(days=40), f"Who keeps the {MARKER} ledger?")
    new = keep_answer(state, timedelta(days=10), "Who gave their name to Normandy?")
    write_audit(state, [audit_record(n, NOW - timedelta(days=400, minutes=n)) for n in range(1, 4)]
                + [audit_record(n, NOW - timedelta(days=1)) for n in range(4, 6)])  # fmt: skip
    return {"old": old, "new": new}


def retention(
    state: StateStore,
    vectors: Any = None,
    actor: Actor = CLI,
    forget: Callable[[], None] | None = None,
    **settings: Any,
) -> Retention:
    return build_retention(load_settings(**settings), state, vectors, actor, forget)


def rows(state: StateStore, sql: str) -> list[Row]:
    with state.transaction() as cur:
        return cur.execute(sql)


def snapshot(state: StateStore) -> tuple[Any, ...]:
    return tuple(
        json.dumps(rows(state, f"SELECT * FROM {table} ORDER BY 1"), sort_keys=True, default=str)
        for table in ("answers", "feedback", "audit_records", "audit_checkpoints", "usage_daily", "audit_head")
    )


def retention_records(state: StateStore) -> list[dict[str, Any]]:
    return [r for r in export(state) if (r.get("admin") or {}).get("action") == RETENTION_ACTION]


def run_of(report: RetentionReport, store: str) -> Any:
    return next(run for run in report.stores if run.store == store)


# The table ---------------------------------------------------------------------------------------------------------


def test_one_table_names_every_store_its_setting_and_default() -> None:
    stores = [rule.store for rule in RETENTION_RULES]
    assert len(stores) == len(set(stores))
    assert {"answers", "query_vectors", "audit", "answer_cache", "erasure_journal", "eval_suites", "backups",
            "traces", "audit_anchor", "server_logs", "passage_vectors", "usage_ledger"} <= set(stores)  # fmt: skip
    fields = flat_fields()
    for rule in RETENTION_RULES:
        assert rule.holds and rule.legal_note, rule.store
        if rule.enforced == "pruned":
            assert rule.setting is not None and rule.unit == "days", rule.store
        if rule.setting is None:
            assert rule.default_days is None, rule.store
            continue
        default = fields[rule.setting].default  # the table's default is the setting's
        assert rule.default_days == (default / 86_400 if rule.unit == "seconds" else default), rule.store
    # A fresh install keeps nothing personal longer than 30 days, except the audit trail (its own period).
    periods = periods_from({name: field.default for name, field in fields.items()})
    assert periods["audit"] == timedelta(days=365)
    assert all(p is None or p <= timedelta(days=30) for store, p in periods.items() if store != "audit")


def test_the_docs_page_renders_the_table_and_is_in_the_nav() -> None:
    spec = importlib.util.spec_from_file_location("ragops_docs_hooks_retention", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (ROOT / "docs" / "guides" / "retention.md").read_text(encoding="utf-8")
    assert page.count(hooks.RETENTION_MARKER) == 1
    assert hooks.MARKERS["guides/retention.md"] == hooks.RETENTION_MARKER
    table = hooks.retention_markdown()
    for rule in RETENTION_RULES:
        assert f"| `{rule.store}` |" in table
        if rule.setting:
            assert f"`{rule.setting}`" in table
    assert "guides/retention.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


# A run -------------------------------------------------------------------------------------------------------------


def test_a_dry_run_counts_what_is_past_its_period_and_changes_nothing(
    state: StateStore, seeded: dict[str, str]
) -> None:
    vectors = QueryVectors([NOW - timedelta(days=31)])
    before = snapshot(state)
    report = retention(state, vectors).apply(dry_run=True)
    assert snapshot(state) == before and vectors.calls == [] and report.audit_seq is None
    assert run_of(report, "answers").past_period == {"answers": 1, "feedback": 1}
    assert run_of(report, "audit").past_period == {"audit_records": 3}
    assert run_of(report, "query_vectors").past_period is None  # it cannot count without removing
    assert all(not run.removed for run in report.stores)
    assert retention_records(state) == []


def test_apply_removes_what_is_past_its_period_keeps_the_rest_and_records_it(
    state: StateStore, seeded: dict[str, str]
) -> None:
    vectors = QueryVectors([NOW - timedelta(days=31), NOW - timedelta(days=2)])
    forgotten: list[bool] = []
    path = state.sqlite_path
    assert path is not None
    assert MARKER.encode() in path.read_bytes() + path.with_name(path.name + "-wal").read_bytes()
    report = retention(state, vectors, forget=lambda: forgotten.append(True)).apply()
    assert report.ok, report
    assert forgotten == [True]  # the server's in-memory question vectors go with the stored ones
    assert [r["id"] for r in rows(state, "SELECT id FROM answers")] == [seeded["new"]]
    assert [r["answer_id"] for r in rows(state, "SELECT answer_id FROM feedback")] == [seeded["new"]]
    assert run_of(report, "answers").removed == {"answers": 1, "feedback": 1}
    assert run_of(report, "audit").removed == {"audit_records": 3}
    assert run_of(report, "query_vectors").removed == {"query_vectors": 1} and len(vectors.stored) == 1
    [cut_off] = vectors.calls
    assert abs(cut_off - (datetime.now(UTC) - timedelta(days=30))) < timedelta(minutes=1)
    # The chain verifies from the prune's checkpoint: the prune's record, then the retention record, at its head.
    result = verify(state)
    assert result.ok and result.checkpoint_seq == 3, result
    records = list(export(state))
    assert [r["admin"]["action"] for r in records if r.get("admin")] == [PRUNE_ACTION, RETENTION_ACTION]
    [record] = retention_records(state)
    assert record["seq"] == report.audit_seq == result.head_seq
    assert (record["method"], record["route"], record["status"]) == ("CLI", "ragops retention apply", 200)
    detail = record["admin"]["detail"]
    assert detail["complete"] is True
    assert detail["periods_days"] == {"answers": 30.0, "conversations": 7.0, "query_vectors": 30.0, "audit": 365.0}
    assert detail["removed"] == {"answers": {"answers": 1, "feedback": 1}, "conversations": {},  # no store given
                                 "query_vectors": {"query_vectors": 1}, "audit": {"audit_records": 3}}  # fmt: skip
    # Deleted rows are gone from the file's bytes too: secure_delete, and the log checkpointed and truncated.
    assert report.reclaimed is True
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert MARKER.encode() not in path.read_bytes()


def test_a_run_with_nothing_due_still_writes_its_record(state: StateStore, seeded: dict[str, str]) -> None:
    retention(state, QueryVectors([])).apply()
    second = retention(state, QueryVectors([])).apply()
    assert second.ok and all(not sum(run.removed.values()) for run in second.stores)
    assert second.reclaimed is None  # nothing deleted: nothing to reclaim
    records = retention_records(state)
    assert len(records) == 2 and records[-1]["admin"]["detail"]["removed"]["answers"] == {"answers": 0, "feedback": 0}
    assert verify(state).ok


def test_with_the_audit_setting_off_a_run_prunes_but_writes_no_record(
    state: StateStore, seeded: dict[str, str]
) -> None:
    report = retention(state, None, audit=False).apply()
    assert report.ok and report.audit_seq is None and run_of(report, "answers").removed["answers"] == 1
    assert retention_records(state) == []


def test_an_audit_period_of_0_keeps_the_trail_forever(state: StateStore, seeded: dict[str, str]) -> None:
    report = retention(state, None, audit_retention_days=0).apply()
    assert report.ok and run_of(report, "audit").period == "forever" and not run_of(report, "audit").removed
    assert len(rows(state, "SELECT seq FROM audit_records")) == 6  # 5, and the retention record
    assert retention_records(state)[0]["admin"]["detail"]["periods_days"]["audit"] is None
    assert run_of(report, "query_vectors").note == "no embedding cache on this machine"


def test_a_store_that_fails_is_reported_and_the_others_still_run(state: StateStore, seeded: dict[str, str]) -> None:
    class Broken:
        def prune_queries(self, before: datetime) -> int:
            raise OSError("disk I/O error")

    report = retention(state, Broken()).apply()
    assert report.failed == ["query_vectors"] and run_of(report, "query_vectors").error == "disk I/O error"
    assert [r["id"] for r in rows(state, "SELECT id FROM answers")] == [seeded["new"]]  # the answers still went
    [record] = retention_records(state)
    assert record["status"] == 500 and record["admin"]["detail"]["complete"] is False
    assert record["admin"]["detail"]["failed"] == {"query_vectors": "disk I/O error"}
    assert verify(state).ok


# The command -------------------------------------------------------------------------------------------------------


def test_the_cli_shows_applies_and_exits_with_its_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: StateStore, seeded: dict[str, str]
) -> None:
    cli = ["--data-dir", str(tmp_path)]  # the state fixture's file is tmp_path/state.sqlite
    assert cli_main([*cli, "retention", "show"]) == 0
    shown = capsys.readouterr().out
    assert "audit" in shown and "365 days" in shown and "feedback_retention_days" in shown
    assert cli_main([*cli, "retention", "list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["stores"]
    assert [row["store"] for row in table] == [rule.store for rule in RETENTION_RULES]
    assert cli_main([*cli, "retention", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "answers: 30 days" in out and "would remove 1 answers, 1 feedback" in out and "recorded" not in out
    assert cli_main([*cli, "retention", "apply", "--json"]) == 0
    report = RetentionReport.model_validate_json(capsys.readouterr().out)
    assert report.ok and run_of(report, "answers").removed == {"answers": 1, "feedback": 1}
    assert run_of(report, "query_vectors").note == "no embedding cache on this machine"  # none made to look
    assert not (tmp_path / "cache" / "embeddings.sqlite").exists()
    # The embedding cache: a question's vector past its period goes, a passage's stays.
    cache = SqliteEmbeddingStore(tmp_path / "cache" / "embeddings.sqlite")
    cache.put_many("m", [(text_key("an old question"), b"q" * 8)], kind="query")
    cache.put_many("m", [(text_key("a passage"), b"p" * 8)], kind="passage")
    cache._db.execute("UPDATE embeddings SET written_at = ?", (int((NOW - timedelta(days=40)).timestamp()),))
    cache.close()
    assert cli_main([*cli, "retention", "apply"]) == 0
    out = capsys.readouterr().out
    assert "removed 0 answers, 0 feedback" in out and "query_vectors: 30 days" in out
    assert "removed 1 query_vectors" in out
    cache = SqliteEmbeddingStore(tmp_path / "cache" / "embeddings.sqlite")
    kept = cache.get_many("m", [text_key("an old question"), text_key("a passage")])
    cache.close()
    assert list(kept) == [text_key("a passage")]
    # A bad value (a config file's): exit 2, one line. A state store that cannot open: exit 1, one line.
    config = tmp_path / "bad.toml"
    config.write_text("audit_retention_days = -1\n")
    assert cli_main([*cli, "--config", str(config), "retention", "apply"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ragops: error: invalid setting audit_retention_days")
    assert cli_main(["--data-dir", str(config), "retention", "apply"]) == 1  # a file, not a directory
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ragops: error: state store")
    assert len(retention_records(state)) == 2  # the runs that applied, none of the dry run or the refused ones


# The server's daily task -------------------------------------------------------------------------------------------


def wait_for(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_daily_task_outlives_a_store_outage(
    state: StateStore, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(write: bool = False) -> Any:
        raise StateStoreUnavailableError("state store unavailable: database is locked")

    monkeypatch.setattr(state, "transaction", down)
    task = RetentionTask(retention(state, QueryVectors([]), SERVER).apply, every_s=0.05)
    try:
        wait_for(lambda: task.runs >= 2)
        assert task.alive and task.last is not None
        assert set(task.last.failed) == {"answers", "audit", "audit_record"}  # reported, not raised
        monkeypatch.undo()  # the store is back: the next turn applies it
        wait_for(lambda: task.last is not None and task.last.ok)
    finally:
        task.close()
    assert [r["id"] for r in rows(state, "SELECT id FROM answers")] == [seeded["new"]]
    records = retention_records(state)
    assert records and records[0]["route"] == "retention.daily" and records[0]["method"] == "SYSTEM"
    assert verify(state).ok

    def crashes() -> RetentionReport:
        raise RuntimeError("anything else")

    task = RetentionTask(crashes, every_s=0.05)
    try:
        wait_for(lambda: task.runs >= 2)
        assert task.alive
    finally:
        task.close()


def test_the_server_applies_retention_at_start(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from app.container import build_services

    services = build_services(make_settings(generator="extractive", guards=False))
    try:
        task = services.retention
        wait_for(lambda: task.runs >= 1)
        [record] = retention_records(services.state)
        assert record["route"] == "retention.daily" and record["admin"]["detail"]["complete"] is True
        assert task.last is not None and task.last.ok, task.last
        assert run_of(task.last, "query_vectors").removed == {"query_vectors": 0}  # the server's own cache
    finally:
        services.close()
