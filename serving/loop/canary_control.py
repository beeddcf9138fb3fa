"""The canary's live state and its decisions: the ``canaries`` table (one row per prompt: which version, against
which stable version, what share of users it gets now, running / rolled_back / promoted / stopped), and the
monitor that runs the analysis (``serving.loop.canary``) every ``canary_check_every`` answers, off the request path.

A rollback is one transaction: share 0, status rolled_back with the evidence, the canary label back to the stable
version, an audit record and a ``canary_decision`` lineage event; then an alert line (``ragops.alerts``). A
promotion (``canary_autopromote``) moves the stable label to the canary's version the same way. Every replica runs
the monitor; the first to decide wins (the row is re-read under a lock and must still be running).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import TypeAdapter

from serving.governance.audit import AuditAction, AuditRecord, append_records, status_outcome
from serving.infra.background import BackgroundWorker
from serving.infra.clock import parse_stamp, utc_now
from serving.infra.state_store import Cursor, Row, StateStore
from serving.loop.answer_log import kept_answers
from serving.loop.canary import Arm, CanaryAnalysis, Observation, Quorum, Tolerance, analyse
from serving.loop.labels import move_label
from serving.loop.lineage import append_event

if TYPE_CHECKING:
    from serving.contracts.answer import Answer
    from serving.loop.answer_log import AnswerLog, AnswerRecord
    from serving.observe.metrics import ServiceMetrics

alert_log = logging.getLogger("ragops.alerts")
log = logging.getLogger("ragops.canary")
CANARY_LOCK = "ragops.canaries"
CanaryStatus = Literal["running", "rolled_back", "promoted", "stopped"]
RatingsReader = Callable[[str, datetime], dict[str, float]]  # (prompt, answered since) -> {answer id: down share}
_COLUMNS = "prompt, version, stable_version, share, status, started_at, decided_at, decision"


@dataclass(frozen=True, kw_only=True)
class CanaryRow:
    prompt: str
    version: str
    stable_version: str
    share: float
    status: CanaryStatus
    started_at: datetime
    decided_at: datetime | None
    decision: CanaryAnalysis | None  # the analysis that decided

    @classmethod
    def from_row(cls, row: Row) -> CanaryRow:
        decided = None if row["decided_at"] is None else parse_stamp(row["decided_at"])
        analysis = None if row["decision"] is None else TypeAdapter(CanaryAnalysis).validate_json(row["decision"])
        return cls(
            prompt=row["prompt"], version=row["version"], stable_version=row["stable_version"],
            share=float(row["share"]), status=row["status"], started_at=parse_stamp(row["started_at"]),
            decided_at=decided, decision=analysis,
        )  # fmt: skip


@dataclass(frozen=True)
class CanaryLabels:
    """The labels a decision moves: the canary's (back to stable on rollback) and the stable one's (to the canary's
    version on promotion); None where the served reference names a version, not a label."""

    stable: str | None
    canary: str | None


def _read(cur: Cursor, prompt: str) -> CanaryRow | None:
    rows = cur.execute(f"SELECT {_COLUMNS} FROM canaries WHERE prompt = ?", (prompt,))
    return CanaryRow.from_row(rows[0]) if rows else None


def _start(cur: Cursor, prompt: str, version: str, stable: str, share: float, actor: str) -> CanaryRow:
    cur.execute("DELETE FROM canaries WHERE prompt = ?", (prompt,))
    now = utc_now()
    cur.execute(
        f"INSERT INTO canaries ({_COLUMNS}) VALUES (?, ?, ?, ?, 'running', ?, NULL, NULL)",
        (prompt, version, stable, share, now),
    )
    append_event(cur, "canary_started", prompt, version, {"stable_version": stable, "share": share, "by": actor})
    return CanaryRow(prompt=prompt, version=version, stable_version=stable, share=share, status="running",
                     started_at=parse_stamp(now), decided_at=None, decision=None)  # fmt: skip


class CanaryBook:
    """The ``canaries`` table."""

    def __init__(self, state: StateStore, start_share: float) -> None:
        self._state = state
        self.start_share = start_share  # a new canary's share (canary_share)

    def read(self, prompt: str) -> CanaryRow | None:
        with self._state.transaction() as cur:
            return _read(cur, prompt)

    def all(self) -> list[CanaryRow]:
        with self._state.transaction() as cur:
            return [CanaryRow.from_row(r) for r in cur.execute(f"SELECT {_COLUMNS} FROM canaries ORDER BY prompt")]

    def live_share(self, prompt: str, version: str, stable: str) -> float:
        """The share of users ``version`` serves now. A canary version the table does not know yet (new at
        start, or its label moved) starts running at ``start_share``; a decided one serves nobody."""
        row = self.read(prompt)
        if row is None or row.version != version or (row.status == "running" and row.stable_version != stable):
            row = self.start(prompt, version, stable, self.start_share, "label", only_if_new=True)
        return row.share if row.status == "running" else 0.0

    def start(
        self, prompt: str, version: str, stable: str, share: float, actor: str, only_if_new: bool = False
    ) -> CanaryRow:
        """(Re)start the canary of ``prompt``: running, at ``share``, its evidence from now on."""
        with self._state.transaction(write=True) as cur:
            cur.lock(CANARY_LOCK)
            row = _read(cur, prompt)
            if only_if_new and row is not None and row.version == version and row.stable_version == stable:
                return row  # another replica started it meanwhile
            return _start(cur=cur, prompt=prompt, version=version, stable=stable, share=share, actor=actor)

    def stop(self, prompt: str, actor: str) -> CanaryRow | None:
        """Send the running canary no more users (share 0, stopped); its label stays. A decided canary is left as
        it was decided (returned unchanged): its status and evidence are the record of that decision."""
        with self._state.transaction(write=True) as cur:
            cur.lock(CANARY_LOCK)
            row = _read(cur, prompt)
            if row is None or row.status != "running":
                return row
            cur.execute("UPDATE canaries SET share = 0, status = 'stopped', decided_at = ? WHERE prompt = ?",
                        (utc_now(), prompt))  # fmt: skip
            append_event(cur, "canary_decision", prompt, row.version, {"decision": "stop", "by": actor})
            return _read(cur, prompt)

    def decide(self, row: CanaryRow, analysis: CanaryAnalysis, labels: CanaryLabels) -> CanaryRow | None:
        """Apply a rollback or promotion in one transaction; None when the canary is no longer the running one
        (another replica decided first)."""
        with self._state.transaction(write=True) as cur:
            cur.lock(CANARY_LOCK)
            current = _read(cur, row.prompt)
            analysed = (row.version, row.started_at)  # a canary restarted since is another run: not this analysis'
            if current is None or current.status != "running" or (current.version, current.started_at) != analysed:
                return None
            return _apply(cur, current, analysis, labels)


def _apply(cur: Cursor, row: CanaryRow, analysis: CanaryAnalysis, labels: CanaryLabels) -> CanaryRow:
    status: CanaryStatus = "rolled_back" if analysis.decision == "rollback" else "promoted"
    now = utc_now()
    evidence = {**analysis.as_json(), "stable_version": row.stable_version}
    cur.execute(
        "UPDATE canaries SET share = 0, status = ?, decided_at = ?, decision = ? WHERE prompt = ?",
        (status, now, json.dumps(analysis.as_json()), row.prompt),
    )
    label, version = (labels.canary, row.stable_version) if status == "rolled_back" else (labels.stable, row.version)
    if label is not None:
        move_label(
            cur=cur,
            prompt=row.prompt,
            label=label,
            version=version,
            actor="canary",
            reason=f"canary {analysis.decision}",
        )
    append_records(cur, [_audit_record(row, analysis, now)])
    append_event(cur, "canary_decision", row.prompt, row.version, evidence)
    return replace(row, share=0.0, status=status, decided_at=parse_stamp(now), decision=analysis)


def _audit_record(row: CanaryRow, analysis: CanaryAnalysis, now: str) -> AuditRecord:
    worse = {t.signal: {"canary": t.canary_mean, "stable": t.stable_mean, "p_value": t.p_value} for t in analysis.worse}
    detail = {"stable_version": row.stable_version, "canary_answers": analysis.canary_answers,
              "stable_answers": analysis.stable_answers, "canary_users": analysis.canary_users,
              "stable_users": analysis.stable_users, "tenants": len(analysis.tenants), "worse": worse}  # fmt: skip
    return AuditRecord(
        ts=now, request_id=f"canary-{secrets.token_hex(8)}", method="SYSTEM", route=f"canary.{analysis.decision}",
        status=200, outcome=status_outcome(200), latency_ms=0.0, prompt_version=row.version,
        admin=AuditAction(action=f"canary.{analysis.decision}", target=f"{row.prompt}@{row.version}", detail=detail),
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class CanaryPolicy:
    """How the analysis decides (settings canary_*), and the groundedness threshold an answer is held to."""

    tolerance: Tolerance
    alpha: float
    min_answers: int
    quorum: Quorum
    autopromote: bool
    groundedness_threshold: float
    check_every: int


def ratings_by_answer(state: StateStore, prompt: str, since: datetime) -> dict[str, float]:
    """The ratings of ``prompt``'s answers given since ``since``: answer id -> the share of its ratings (one per
    rater) that are thumbs-down."""
    from serving.loop.feedback import answer_ratings

    rated: dict[str, list[bool]] = {}
    for rating in answer_ratings(state, prompt, since):
        rated.setdefault(rating.answer_id, []).append(rating.rating == "down")
    return {answer_id: sum(downs) / len(downs) for answer_id, downs in rated.items()}


def observations(
    records: list[AnswerRecord], row: CanaryRow, ratings: dict[str, float], threshold: float
) -> list[Observation]:
    """The kept answers of the two arms as the analysis sees them, each of its user (the canary subject the
    server made) and tenant. Only answers to users in the split count (anonymous requests always get the
    stable prompt: counted, they would make the arms differ by population, not by version); cached answers
    repeat earlier ones and are left out too."""
    arms: dict[str, Arm] = {row.version: "canary", row.stable_version: "stable"}
    return [
        _observation(r, arms[r.prompt_version], r.user_hash, ratings.get(r.id), threshold)
        for r in records
        if r.prompt_version in arms and r.outcome != "cached" and r.user_hash is not None
    ]


def _observation(record: AnswerRecord, arm: Arm, user: str, down_share: float | None, threshold: float) -> Observation:
    return Observation.of(
        arm=arm,
        user=user,
        tenant=record.tenant,
        outcome=record.outcome,
        groundedness=record.groundedness,
        cited=any(p.cited for p in record.passages),
        fallback=record.fallback,
        latency_ms=record.latency_ms,
        down_share=down_share,
        threshold=threshold,
    )


def current_analysis(row: CanaryRow, state: StateStore, ratings: RatingsReader, policy: CanaryPolicy) -> CanaryAnalysis:
    """The analysis of ``row``'s canary over every kept answer of both arms since it started."""
    records = kept_answers(state, since=row.started_at, prompt=row.prompt, limit=100_000)
    seen = observations(records, row, ratings(row.prompt, row.started_at), policy.groundedness_threshold)
    return analyse(seen, policy.tolerance, policy.alpha, policy.min_answers, policy.autopromote, policy.quorum)


class CanaryMonitor:
    """Counts answers on the request path; every ``check_every`` it asks its thread for an analysis."""

    def __init__(
        self, book: CanaryBook, answers: AnswerLog, ratings: RatingsReader, policy: CanaryPolicy,
        prompt: str, labels: CanaryLabels, metrics: ServiceMetrics | None = None,
    ) -> None:  # fmt: skip
        self._book, self._answers, self._ratings = book, answers, ratings
        self.policy, self.prompt, self.labels, self._metrics = policy, prompt, labels, metrics
        self._seen = itertools.count(1)
        self._worker: BackgroundWorker[bool] = BackgroundWorker("ragops-canary", self._check_batch, max_pending=1)

    def observe(self, answer: Answer) -> None:
        if answer.prompt.name == self.prompt and next(self._seen) % self.policy.check_every == 0:
            self._worker.put(True)  # full: a check is already queued, and it will see this answer too

    def analyse(self, row: CanaryRow) -> CanaryAnalysis:
        self._answers.flush()  # this replica's answers so far are in the store
        return current_analysis(row, self._answers.state, self._ratings, self.policy)

    def check(self) -> CanaryRow | None:
        """One analysis of the running canary, and its decision applied; the decided row, else None."""
        row = self._book.read(self.prompt)
        if row is None or row.status != "running":
            return None
        analysis = self.analyse(row)
        if analysis.decision == "continue":
            return None
        decided = self._book.decide(row, analysis, self.labels)
        if decided is not None:
            self._announce(decided, analysis)
        return decided

    def flush(self, wait_s: float) -> bool:
        """Wait for the check asked for so far (False: still running after ``wait_s``)."""
        return self._worker.flush(wait_s)

    def close(self) -> None:
        self._worker.close()

    def _check_batch(self, _: list[bool]) -> None:
        try:
            self.check()
        except Exception as exc:  # a store outage skips this check; the next one tries again
            log.warning("canary check failed", extra={"error": str(exc)[:200]})

    def _announce(self, row: CanaryRow, analysis: CanaryAnalysis) -> None:
        fields = {
            "alert": f"canary_{analysis.decision}", "prompt": row.prompt, "version": row.version,
            "stable_version": row.stable_version, "worse": [t.signal for t in analysis.worse],
            "canary_answers": analysis.canary_answers, "stable_answers": analysis.stable_answers,
            "canary_users": analysis.canary_users, "stable_users": analysis.stable_users,
            "tenants": [t.tenant for t in analysis.tenants],
        }  # fmt: skip
        level = logging.ERROR if analysis.decision == "rollback" else logging.INFO
        alert_log.log(level, f"canary {analysis.decision}", extra=fields)
        if self._metrics is not None:
            self._metrics.observe_canary_decision(row.prompt, analysis.decision)
