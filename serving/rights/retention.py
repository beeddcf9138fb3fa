"""Retention: every store that holds data, what it holds, how long, and who removes it (``RETENTION_RULES``, the one
table ``ragops retention show``, the docs page and the settings read); and the run that removes what is past its
period (``Retention.apply``: ``ragops retention apply`` and the server's daily ``RetentionTask``).

A run prunes the stores ragops removes data from itself: kept answers with their feedback, server-side
conversations past their expiry (``ConversationStore.prune``), the embedding cache's query vectors, and the audit
trail (by sequence, behind a checkpoint: ``serving.governance.audit_export.prune``, which writes its own record).
Then it appends one admin record (``RETENTION_ACTION``) with what each store removed and the periods it applied,
also when nothing was due: the compliance report reads when retention last ran from it. Every step is idempotent,
so each replica runs it; a store that fails is reported, the others still run. Deleted rows are then reclaimed on
disk (``StateStore.reclaim``: SQLite's log checkpointed and truncated).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, Field

from serving.answering.conversations import ConversationStore
from serving.governance.audit import AuditAction, AuditRecord, AuditUnavailableError, append_records, status_outcome
from serving.governance.audit_export import plan_prune, prune
from serving.infra.clock import stamp
from serving.infra.state_store import StateStore, StateStoreError
from serving.loop.answer_log import answers_before
from serving.rights import RETENTION_ACTION
from serving.rights.retention_rules import RETENTION_RULES, Enforcement, RetentionRule

__all__ = [
    "CLI",
    "RETENTION_RULES",
    "SERVER",
    "Actor",
    "QueryVectorStore",
    "Retention",
    "RetentionReport",
    "RetentionRule",
    "RetentionTask",
    "StoreRun",
    "periods_from",
]

log = logging.getLogger("ragops.retention")

Period = timedelta | None  # None: no period of ours (kept forever, or kept with something else)
STATE_TABLES = {"answers": ("answers", "feedback"), "conversations": ("conversations",), "audit": ("audit_records",)}


class QueryVectorStore(Protocol):
    """What retention needs of the embedding cache (``retrieval.embedding_cache.EmbeddingStore``): removing the
    question vectors it stored before a moment, bytes included; returns how many."""

    def prune_queries(self, before: datetime) -> int: ...


@dataclass(frozen=True)
class Actor:
    """Who ran retention, as its audit record says: the command, or a server's daily run."""

    method: str
    route: str


CLI = Actor("CLI", "ragops retention apply")
SERVER = Actor("SYSTEM", "retention.daily")


def periods_from(settings: Mapping[str, Any]) -> dict[str, Period]:
    """Each rule's period as configured, from the settings by flat name (``feedback_retention_days``); a rule
    without a setting has none."""
    periods: dict[str, Period] = {}
    for rule in RETENTION_RULES:
        if rule.setting is None:
            periods[rule.store] = None
            continue
        value = float(settings[rule.setting])
        if value == 0 and rule.zero_keeps_forever:
            periods[rule.store] = None
        else:
            periods[rule.store] = timedelta(days=value) if rule.unit == "days" else timedelta(seconds=value)
    return periods


def describe_period(period: Period, rule: RetentionRule) -> str:
    """``30 days``, ``1 day``, ``forever``; ``-`` for a rule with no period of ours."""
    if rule.setting is None:
        return "-"
    if period is None:
        return "forever"
    days = period / timedelta(days=1)
    if days == int(days):
        return f"{int(days)} day{'' if days == 1 else 's'}"
    return f"{period.total_seconds():g} s"


class StoreRun(BaseModel):
    """What a run did with one store. ``past_period``: rows past the period per table, counted before anything
    was removed (None: that store cannot count without removing); ``removed``: what went (empty in a dry run)."""

    store: str
    enforced: Enforcement
    setting: str | None
    period: str = Field(description="The configured period: '30 days', 'forever', or '-' (none of ours).")
    period_days: float | None = Field(description="The period in days; None: none of ours, or forever.")
    cut_off: str | None = Field(None, description="Rows stamped before this are past the period.")
    past_period: dict[str, int] | None = None
    removed: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    note: str | None = None


class RetentionReport(BaseModel):
    """One retention run: every rule's store, in ``RETENTION_RULES``' order."""

    ts: str
    dry_run: bool
    stores: list[StoreRun]
    reclaimed: bool | None = Field(None, description="Deleted rows' bytes reclaimed on disk (None: nothing to do).")
    audit_seq: int | None = Field(
        None, description=f"The {RETENTION_ACTION} record's seq (None: a dry run, or the audit setting off)."
    )
    audit_error: str | None = None

    @property
    def failed(self) -> list[str]:
        return [run.store for run in self.stores if run.error] + (["audit_record"] if self.audit_error else [])

    @property
    def ok(self) -> bool:
        return not self.failed


class Retention:
    """Retention over the state store and the embedding cache (``query_vectors``; None: none on this machine yet)
    with ``periods`` by store (``periods_from``). ``apply`` runs it; ``actor`` signs its audit record.
    ``forget_queries``: empties this process's in-memory question vectors once the stored ones were pruned (the
    server's ``CachedEmbedder.forget_queries``), so none outlives its period in memory either. ``record``: append
    the run's ``RETENTION_ACTION`` record (off with the ``audit`` setting off). ``conversations``: the server-side
    conversation store (None: conversations are not kept, or not by this process)."""

    def __init__(
        self,
        state: StateStore,
        query_vectors: QueryVectorStore | None,
        periods: Mapping[str, Period],
        actor: Actor,
        forget_queries: Callable[[], None] | None = None,
        record: bool = True,
        conversations: ConversationStore | None = None,
    ) -> None:
        self.state = state
        self.query_vectors = query_vectors
        self.periods = dict(periods)
        self.actor = actor
        self.forget_queries = forget_queries
        self.record = record
        self.conversations = conversations

    def apply(self, dry_run: bool = False, now: datetime | None = None) -> RetentionReport:
        """Remove what each store holds past its period (``dry_run``: count it, remove nothing); then, unless a dry
        run, append the ``RETENTION_ACTION`` record and reclaim the deleted rows' space."""
        started = time.perf_counter()
        now = now or datetime.now(UTC)
        runs = [self._run(rule, now, dry_run) for rule in RETENTION_RULES]
        report = RetentionReport(ts=stamp(now), dry_run=dry_run, stores=runs)
        if dry_run:
            return report
        touched = sorted({t for run in runs if sum(run.removed.values()) for t in STATE_TABLES.get(run.store, ())})
        try:
            if self.record:
                with self.state.transaction(write=True) as cur:
                    (report.audit_seq,) = append_records(cur, [self._record(report, started)])
        except (StateStoreError, AuditUnavailableError) as exc:
            report.audit_error = _first_line(exc)
        if touched:
            try:
                report.reclaimed = self.state.reclaim(touched)
            except Exception as exc:  # the rows are gone from every query; only their bytes wait for the next run
                log.warning("deleted rows not reclaimed", extra={"error": _first_line(exc)})
                report.reclaimed = False
        return report

    def _run(self, rule: RetentionRule, now: datetime, dry_run: bool) -> StoreRun:
        period = self.periods.get(rule.store)
        run = StoreRun(store=rule.store, enforced=rule.enforced, setting=rule.setting,
                       period=describe_period(period, rule),
                       period_days=None if period is None else period / timedelta(days=1))  # fmt: skip
        if rule.enforced != "pruned":
            return run
        if period is None:
            run.past_period, run.note = {}, "kept forever (its setting is 0)"
            return run
        cut_off = now - period
        run.cut_off = stamp(cut_off)
        try:
            if rule.store == "answers":
                self._answers(run, cut_off, dry_run)
            elif rule.store == "audit":
                self._audit(run, cut_off, now, dry_run)
            elif rule.store == "query_vectors":
                self._query_vectors(run, cut_off, dry_run)
            elif rule.store == "conversations":
                self._conversations(run, now, dry_run)
            else:
                raise NotImplementedError(f"no pruning for the store {rule.store!r}")
        except Exception as exc:  # a store that fails is reported; the other stores still run
            log.warning("retention failed", extra={"store": rule.store, "error": _first_line(exc)})
            run.error = _first_line(exc)
        return run

    def _answers(self, run: StoreRun, cut_off: datetime, dry_run: bool) -> None:
        counts = answers_before(self.state, cut_off, remove=not dry_run)
        run.past_period = counts
        if not dry_run:
            run.removed = counts

    def _conversations(self, run: StoreRun, now: datetime, dry_run: bool) -> None:
        """Each conversation expires a period after its last turn (stamped then): those expired at ``now`` go."""
        if self.conversations is None:
            run.past_period, run.note = {}, "no conversation store here (conversations not kept)"
        elif dry_run:
            run.note = "not counted in a dry run: the conversation store counts what it removes"
        else:
            run.removed = {"conversations": self.conversations.prune(now)}

    def _audit(self, run: StoreRun, cut_off: datetime, now: datetime, dry_run: bool) -> None:
        plan = plan_prune(self.state, cut_off, now)
        run.past_period = {"audit_records": plan.records if plan else 0}
        if dry_run:
            return
        # Verifies the whole chain first (only when something is due) and writes its own record.
        checkpoint = prune(self.state, cut_off, now) if plan is not None else None
        run.removed = {"audit_records": checkpoint.records if checkpoint else 0}
        if checkpoint is not None:
            run.note = f"checkpoint seq {checkpoint.seq}, attested by record {checkpoint.attested_by}"

    def _query_vectors(self, run: StoreRun, cut_off: datetime, dry_run: bool) -> None:
        store = self.query_vectors
        if store is None:
            run.past_period, run.note = {}, "no embedding cache on this machine"
            return
        if dry_run:
            run.note = "not counted in a dry run: the embedding cache counts what it removes"
            return
        run.removed = {"query_vectors": store.prune_queries(cut_off)}
        if self.forget_queries is not None:  # another replica on this host may have pruned the rows already
            self.forget_queries()

    def _record(self, report: RetentionReport, started: float) -> AuditRecord:
        """The run's admin record: the periods applied, what each store removed, which failed."""
        pruned = [run for run in report.stores if run.enforced == "pruned"]
        detail: dict[str, Any] = {
            "complete": not report.failed,
            "periods_days": {run.store: run.period_days for run in pruned},
            "cut_offs": {run.store: run.cut_off for run in pruned},
            "removed": {run.store: run.removed for run in pruned},
        }
        if report.failed:
            detail["failed"] = {run.store: run.error for run in pruned if run.error}
        status = 200 if not report.failed else 500
        return AuditRecord(
            ts=report.ts, request_id=uuid.uuid4().hex, method=self.actor.method, route=self.actor.route,
            status=status, outcome=status_outcome(status), latency_ms=round((time.perf_counter() - started) * 1000, 3),
            admin=AuditAction(action=RETENTION_ACTION, target=",".join(run.store for run in pruned), detail=detail),
        )  # fmt: skip


class RetentionTask:
    """Runs retention at start, then every ``every_s`` seconds, on a thread of its own (each replica runs it: every
    step is idempotent). A failure (a store outage) is logged and tried again next turn; it never stops the thread
    or the server. ``close`` stops it."""

    def __init__(self, run: Callable[[], RetentionReport], every_s: float = 86_400.0) -> None:
        self._run_once = run
        self._every_s = every_s
        self.runs = 0  # turns completed (failed or not)
        self.last: RetentionReport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ragops-retention", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, wait_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(wait_s)

    def _loop(self) -> None:
        while True:  # the first turn runs even when closed at once: a start always applies retention
            try:
                self.last = report = self._run_once()
                removed = {run.store: sum(run.removed.values()) for run in report.stores if run.removed}
                if report.ok:
                    log.info("retention applied", extra={"removed": removed, "audit_seq": report.audit_seq})
                else:
                    log.warning("retention partly failed", extra={"failed": report.failed, "removed": removed})
            except Exception as exc:  # the store is down: try again at the next turn, never stop the server
                log.warning("retention not applied", extra={"error": _first_line(exc)})
            self.runs += 1
            if self._stop.wait(self._every_s):
                return


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
