"""Reading the audit trail back: a page of records (``read_page``), every record (``export``), and pruning the
chain's old prefix behind a checkpoint that a record in the chain attests (``plan_prune``, ``prune``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from serving.governance.audit import AuditAction, AuditRecord, AuditUnavailableError, append_records
from serving.governance.audit_chain import (
    AUDIT_LOCK,
    PAGE,
    PRUNE_ACTION,
    PruneAttestation,
    last_checkpoint,
    prune_attestation,
    verify,
)
from serving.governance.audit_personal import exported
from serving.governance.audit_usage import UsageTally, usage_of
from serving.infra.clock import stamp, utc_now
from serving.infra.state_store import Cursor, StateStore


def read_page(
    store: StateStore, since: datetime | None, tenant: str | None, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` records after ``after_seq`` (oldest first), from ``since`` on and of ``tenant`` when
    given; each its body's fields, with its personal fields (``audit_personal.exported``), ``prev_hash`` and
    ``hash``."""
    sql = "SELECT body, personal, prev_hash, hash FROM audit_records WHERE seq > ?"
    params: list[Any] = [after_seq]
    if since is not None:
        sql, params = sql + " AND ts >= ?", [*params, stamp(since)]
    if tenant is not None:
        sql, params = sql + " AND tenant = ?", [*params, tenant]
    with store.transaction() as cur:
        rows = cur.execute(sql + " ORDER BY seq LIMIT ?", [*params, limit])
    return [
        {**exported(json.loads(row["body"]), row["personal"]), "prev_hash": row["prev_hash"], "hash": row["hash"]}
        for row in rows
    ]


def export(store: StateStore, since: datetime | None = None, tenant: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record from ``since`` on (of ``tenant`` when given), oldest first, read a page at a time."""
    after = 0
    while True:
        page = read_page(store, since, tenant, after, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = int(page[-1]["seq"])


class AdminActionRecord(AuditAction):
    """An admin action as the trail holds it, with its record's place, time and status (500: it failed, in part)."""

    seq: int
    ts: str
    status: int


def newest_admin_action(store: StateStore, action: str) -> AdminActionRecord | None:
    """The newest admin record of ``action`` (``retention.apply``, say); None when the trail has none. Read from
    the newest record back, so finding yesterday's run scans none of the years before it."""
    pattern = f"%{json.dumps({'action': action}, separators=(',', ':'))[1:-1]}%"  # as the canonical body has it
    before: int | None = None
    while True:
        params: list[Any] = [pattern] if before is None else [pattern, before]
        older = "" if before is None else " AND seq < ?"
        with store.transaction() as cur:
            rows = cur.execute(
                f"SELECT seq, ts, body FROM audit_records WHERE body LIKE ?{older} ORDER BY seq DESC LIMIT ?",
                [*params, PAGE],
            )
        for row in rows:
            fields = json.loads(row["body"])
            admin = fields.get("admin")
            if isinstance(admin, dict) and admin.get("action") == action:  # not a detail that nests the words
                return AdminActionRecord(seq=int(row["seq"]), ts=str(row["ts"]), status=int(fields["status"]), **admin)
        if len(rows) < PAGE:
            return None
        before = int(rows[-1]["seq"])


class PrunePlan(BaseModel):
    """What a prune removes: the chain's prefix after the last checkpoint, through ``last_seq``."""

    first_seq: int
    last_seq: int
    records: int
    first_ts: str
    last_ts: str
    cut_off: str = Field(description="Records stamped before this go.")

    def describe(self) -> str:
        return (f"{self.records} records, seq {self.first_seq}..{self.last_seq}, stamped {self.first_ts} .. "
                f"{self.last_ts} (before {self.cut_off})")  # fmt: skip


class Checkpoint(BaseModel):
    """What a prune removed: the chain now starts after ``seq``, whose hash is kept; ``attested_by`` is the prune's
    own record in the chain, which names this checkpoint."""

    seq: int
    hash: str
    pruned_before: str
    records: int
    created_at: str
    attested_by: int


def plan_prune(store: StateStore, before: datetime, now: datetime | None = None) -> PrunePlan | None:
    """What ``prune`` would remove (None: nothing). ``ValueError`` for a cut-off in the future: it would remove
    every record, the ones being written included."""
    now = now or datetime.now(UTC)
    if before > now:
        raise ValueError(f"the cut-off {stamp(before)} is in the future (now {stamp(now)}): nothing written later "
                         "could be kept")  # fmt: skip
    with store.transaction() as cur:
        return _plan(cur, stamp(before))


def prune(store: StateStore, before: datetime, now: datetime | None = None) -> Checkpoint | None:
    """Delete the records older than ``before`` (the chain's prefix up to the first record from ``before`` on, by
    seq) behind a checkpoint the rest verifies from, and append a record that attests the checkpoint and carries
    the pruned records' usage (the ledger still counts it). None: nothing to prune. Refused
    (``AuditUnavailableError``) when the chain does not verify: pruning would hide the evidence; ``ValueError``
    for a cut-off in the future."""
    plan_prune(store, before, now)  # the future check, before anything is read for writing
    result = verify(store)
    if not result.ok:
        raise AuditUnavailableError(f"the audit chain does not verify ({result.first_bad}); not pruning")
    with store.transaction(write=True) as cur:
        cur.lock(AUDIT_LOCK)
        plan = _plan(cur, stamp(before))
        if plan is None:
            return None
        digest = str(cur.execute("SELECT hash FROM audit_records WHERE seq = ?", (plan.last_seq,))[0]["hash"])
        carried = UsageTally()
        carried.add_all(_last_attestation(cur).carried_usage)
        for fields in _bodies(cur, plan.first_seq - 1, plan.last_seq):
            carried.add(usage_of(fields))
        attestation = PruneAttestation(through_seq=plan.last_seq, through_hash=digest, records=plan.records,
                                       carried_usage=carried.sorted())  # fmt: skip
        (attested_by,) = append_records(cur, [_prune_record(plan, attestation)])
        checkpoint = Checkpoint(seq=plan.last_seq, hash=digest, pruned_before=plan.cut_off, records=plan.records,
                                created_at=utc_now(), attested_by=attested_by)  # fmt: skip
        cur.execute(
            "INSERT INTO audit_checkpoints (seq, hash, pruned_before, records, created_at) VALUES (?, ?, ?, ?, ?)",
            (checkpoint.seq, checkpoint.hash, checkpoint.pruned_before, checkpoint.records, checkpoint.created_at),
        )
        cur.execute("DELETE FROM audit_records WHERE seq <= ?", (plan.last_seq,))
    return checkpoint


def _plan(cur: Cursor, before: str) -> PrunePlan | None:
    start_seq, _ = last_checkpoint(cur)
    last = _last_prunable(cur, before)
    if last <= start_seq:
        return None
    span = cur.execute(
        "SELECT COUNT(*) AS n, MIN(seq) AS first_seq, MIN(ts) AS first_ts, MAX(ts) AS last_ts FROM audit_records "
        "WHERE seq <= ?",
        (last,),
    )[0]
    return PrunePlan(first_seq=int(span["first_seq"]), last_seq=last, records=int(span["n"]),
                     first_ts=str(span["first_ts"]), last_ts=str(span["last_ts"]), cut_off=before)  # fmt: skip


def _last_attestation(cur: Cursor) -> PruneAttestation:
    """The newest prune record's attestation (what earlier prunes carried), or an empty one."""
    rows = cur.execute(
        "SELECT body FROM audit_records WHERE body LIKE ? ORDER BY seq DESC LIMIT 1", (f'%"{PRUNE_ACTION}"%',)
    )
    found = prune_attestation(json.loads(rows[0]["body"])) if rows else None
    return found or PruneAttestation(through_seq=0, through_hash="", records=0)


def _bodies(cur: Cursor, after: int, last: int) -> Iterator[dict[str, Any]]:
    while True:
        rows = cur.execute(
            "SELECT seq, body FROM audit_records WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", (after, last, PAGE)
        )
        for row in rows:
            yield json.loads(row["body"])
        if len(rows) < PAGE:
            return
        after = int(rows[-1]["seq"])


def _prune_record(plan: PrunePlan, attestation: PruneAttestation) -> AuditRecord:
    """The prune's own record (an operator's command: no key, no route)."""
    return AuditRecord(
        ts=utc_now(), request_id=uuid.uuid4().hex, method="CLI", route="ragops audit prune", status=200, outcome="ok",
        latency_ms=0.0, admin=AuditAction(action=PRUNE_ACTION, target=f"seq {plan.first_seq}..{plan.last_seq}",
                                          detail=attestation.model_dump(mode="json")),
    )  # fmt: skip


def _last_prunable(cur: Cursor, before: str) -> int:
    """The last seq of the chain's prefix older than ``before``: replicas' clocks and batches interleave, so it
    ends just before the first record stamped ``before`` or later, not at the last one stamped earlier."""
    first_kept = cur.execute("SELECT MIN(seq) AS seq FROM audit_records WHERE ts >= ?", (before,))[0]["seq"]
    if first_kept is not None:
        return int(first_kept) - 1
    return int(cur.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit_records")[0]["seq"])
