"""The audit trail: one record per request and admin action, chained so that tampering shows, written durably
before the response goes out; and the usage ledger (``usage_daily``), added to in the same transaction.

Chain: a record's ``body`` is its canonical JSON (sorted keys, compact, ASCII) and its ``hash`` is
sha256(previous record's hash + body), the first record's previous hash being 64 zeros (or, after pruning, the
hash of the last pruned record, kept as a checkpoint). ``audit_head`` holds the last seq and hash; writers lock
it (``cur.lock("audit")``), so replicas sharing one Postgres append to one chain. Anyone can re-check an export
offline: drop ``prev_hash`` and ``hash`` from a line, re-serialise canonically, hash.

Writing: ``AuditLog.submit`` queues a record and returns a future; one writer thread takes everything queued
into one transaction (group commit: one fsync for the batch) and resolves the futures once it committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from safety.pii import redact
from serving.contracts.answer import Answer
from serving.governance.access import Principal
from serving.infra.clock import day_of, parse_stamp, stamp, utc_now
from serving.infra.state_store import Cursor, StateStore

if TYPE_CHECKING:
    from serving.observe.metrics import ServiceMetrics

log = logging.getLogger("ragops.audit")

AuditContent = Literal["hash", "redacted"]
GENESIS_HASH = "0" * 64
AUDIT_LOCK = "audit"
MAX_BATCH = 512  # records per transaction: bounds one commit's time when a burst queues many
PAGE = 1000  # records read per query by verify and export
# A test hook only: hold each batch this long before its commit, so that tests/test_audit.py's kill -9 lands while
# records are pending (on a fast disk the window is too short to hit) and would catch a response sent early.
COMMIT_DELAY_ENV = "RAGOPS_TEST_AUDIT_COMMIT_DELAY_MS"


class AuditUnavailableError(Exception):
    """The audit record could not be made durable: the request must not get its normal response."""


class GuardFiring(BaseModel):
    model_config = ConfigDict(frozen=True)

    guard: str
    validator: str
    action: str


class AuditAction(BaseModel):
    """What an admin route changed (never a key's secret)."""

    model_config = ConfigDict(frozen=True)

    action: str
    target: str
    detail: dict[str, Any] | None = None


class AuditRecord(BaseModel):
    """One request as the audit trail keeps it. ``seq`` is 0 until the writer gives the record its place."""

    model_config = ConfigDict(frozen=True)

    seq: int = 0
    ts: str
    request_id: str
    key_id: str | None = None
    tenant: str | None = None
    role: str | None = None
    method: str
    route: str = Field(description="The route's path template where one matched, else the redacted path.")
    status: int
    outcome: str
    prompt_version: str | None = None
    prompt_hash: str | None = None
    generator: str | None = None
    cached: bool = False
    cited_documents: list[str] = Field(default_factory=list)
    guards: list[GuardFiring] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float
    question_sha256: str | None = None
    answer_sha256: str | None = None
    question: str | None = Field(None, description="The redacted question (audit_content=redacted only).")
    answer: str | None = Field(None, description="The redacted answer (audit_content=redacted only).")
    admin: AuditAction | None = None

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RequestFacts:
    """What the HTTP layer knows of a request that is not in the answer."""

    request_id: str
    method: str
    route: str
    status: int
    latency_ms: float


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def status_outcome(status: int) -> str:
    """The outcome of a request without an answer, from its status (0: its client left before a response)."""
    named = {0: "disconnected", 401: "unauthenticated", 403: "forbidden", 429: "limited"}
    if status in named:
        return named[status]
    return "ok" if status < 400 else "rejected" if status < 500 else "error"


def build_record(
    facts: RequestFacts,
    principal: Principal | None,
    answer: Answer | None,
    question: str | None,
    action: AuditAction | None,
    content: AuditContent,
) -> AuditRecord:
    """The record of one request; questions and answers hashed, or redacted with ``content="redacted"``."""
    text = answer.answer if answer is not None else None
    fields: dict[str, Any] = {
        "ts": utc_now(), "request_id": facts.request_id, "method": facts.method, "route": facts.route,
        "status": facts.status, "latency_ms": round(facts.latency_ms, 3), "admin": action,
        "outcome": answer.outcome if answer is not None and facts.status < 400 else status_outcome(facts.status),
        "question_sha256": _sha256(question), "answer_sha256": _sha256(text),
    }  # fmt: skip
    if content == "redacted":
        fields["question"] = None if question is None else redact(question)
        fields["answer"] = None if text is None else redact(text)
    if principal is not None:
        fields.update(key_id=principal.key_id, tenant=principal.tenant, role=principal.role.value)
    if answer is not None:
        fields.update(_answer_fields(answer))
    return AuditRecord(**fields)


def _answer_fields(answer: Answer) -> dict[str, Any]:
    cited = dict.fromkeys(c.doc_id for c in answer.citations if c.cited)
    fired = answer.guards.fired() if answer.guards is not None else []
    return {
        "prompt_version": f"{answer.prompt.name}@{answer.prompt.version}", "prompt_hash": answer.prompt.hash,
        "generator": answer.generator, "cached": answer.cached, "cited_documents": list(cited),
        "guards": [GuardFiring(guard=g, validator=f.validator, action=f.action) for g, f in fired],
        "prompt_tokens": answer.usage.prompt_tokens, "completion_tokens": answer.usage.completion_tokens,
        "cost_usd": answer.cost_usd,
    }  # fmt: skip


# --- writing ---------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    record: AuditRecord
    future: Future[int]  # resolved with the record's seq once committed


@dataclass
class _UsageRow:
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


_STOP = object()


class AuditLog:
    """The audit trail's writer: ``submit`` a record, wait on its future; ``close`` writes what is queued."""

    def __init__(self, store: StateStore, content: AuditContent, metrics: ServiceMetrics | None = None) -> None:
        self.store = store
        self.content: AuditContent = content
        self._metrics = metrics
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._closed = False
        delay = os.environ.get(COMMIT_DELAY_ENV, "")
        self._commit_delay_s = int(delay) / 1000 if delay.isdigit() else 0.0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, record: AuditRecord) -> Future[int]:
        future: Future[int] = Future()
        if self._closed:
            future.set_exception(AuditUnavailableError("the audit log is closed"))
        else:
            self._queue.put(_Pending(record, future))
        return future

    def close(self) -> None:
        """Write every queued record, then stop the writer. A record submitted while it closed is refused, never
        left waiting."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
            closed = AuditUnavailableError("the audit log is closed")
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, _Pending):
                    _settle(item.future, closed)

    def _run(self) -> None:
        while True:
            batch, stop = self._take()
            try:
                if batch:
                    self._write(batch)
            except Exception as exc:  # the writer must outlive any failure: its waiters get an answer
                log.error("audit writer failed", exc_info=exc)
                for pending in batch:
                    _settle(pending.future, AuditUnavailableError(f"audit trail unavailable: {exc}"))
            if stop:
                return

    def _take(self) -> tuple[list[_Pending], bool]:
        """Everything queued (at least one item, waiting for it), up to ``MAX_BATCH``; and whether to stop."""
        batch: list[_Pending] = []
        item = self._queue.get()
        while True:
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Pending)
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _write(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            with self.store.transaction(write=True) as cur:
                seqs = append_records(cur, [p.record for p in batch])
                if self._commit_delay_s:
                    time.sleep(self._commit_delay_s)
        except Exception as exc:
            log.error("audit write failed: %d record(s) not written", len(batch), exc_info=exc)
            self._observe(len(batch), started, ok=False)
            failure = AuditUnavailableError(f"audit trail unavailable: {exc}")
            for pending in batch:
                _settle(pending.future, failure)
            return
        self._observe(len(batch), started, ok=True)
        for pending, seq in zip(batch, seqs, strict=True):
            _settle(pending.future, seq)

    def _observe(self, records: int, started: float, ok: bool) -> None:
        if self._metrics is not None:
            self._metrics.observe_audit_batch(records, time.perf_counter() - started, ok)


def _settle(future: Future[int], outcome: int | Exception) -> None:
    # A waiter that was cancelled (its client went away) no longer listens; the record was written all the same.
    if not future.done() and future.set_running_or_notify_cancel():
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def append_records(cur: Cursor, records: Sequence[AuditRecord]) -> list[int]:
    """Append ``records`` to the chain inside the caller's write transaction; returns their seqs. Usage rows of
    admitted requests (key known) are added to in the same transaction."""
    cur.lock(AUDIT_LOCK)
    seq, prev_hash = read_head(cur)
    rows, seqs = [], []
    for record in records:
        seq += 1
        body = record.model_copy(update={"seq": seq}).canonical()
        digest = chain_hash(prev_hash, body)
        rows.append((seq, record.ts, record.tenant, record.key_id, body, prev_hash, digest))
        seqs.append(seq)
        prev_hash = digest
    cur.executemany(
        "INSERT INTO audit_records (seq, ts, tenant, key_id, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
    )
    cur.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        (seq, prev_hash),
    )
    _add_usage(cur, records)
    return seqs


def read_head(cur: Cursor) -> tuple[int, str]:
    """The chain's last (seq, hash); (0, genesis) before the first record."""
    rows = cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)


_USAGE_UPSERT = (
    "INSERT INTO usage_daily (day, tenant, key_id, requests, cached, prompt_tokens, completion_tokens, cost_usd) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, tenant, key_id) DO UPDATE SET "
    "requests = usage_daily.requests + excluded.requests, cached = usage_daily.cached + excluded.cached, "
    "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
    "cost_usd = usage_daily.cost_usd + excluded.cost_usd"
)


def _add_usage(cur: Cursor, records: Sequence[AuditRecord]) -> None:
    totals: dict[tuple[str, str, str], _UsageRow] = {}
    for record in records:
        if record.key_id is None or record.tenant is None or record.status >= 400:
            continue  # refused or rejected: not a request served to the key
        row = totals.setdefault((day_of(parse_stamp(record.ts)), record.tenant, record.key_id), _UsageRow())
        row.requests += 1
        row.cached += int(record.cached)
        row.prompt_tokens += record.prompt_tokens
        row.completion_tokens += record.completion_tokens
        row.cost_usd += record.cost_usd
    if totals:
        cur.executemany(
            _USAGE_UPSERT,
            [
                (*key, r.requests, r.cached, r.prompt_tokens, r.completion_tokens, r.cost_usd)
                for key, r in totals.items()
            ],
        )


# --- verifying -------------------------------------------------------------------------------------------------

TamperKind = Literal["edited", "removed", "inserted", "reordered", "head_mismatch"]


class BadRecord(BaseModel):
    seq: int
    kind: TamperKind
    reason: str


class VerifyResult(BaseModel):
    """The chain checked from its start (or last checkpoint) to its head."""

    ok: bool
    records: int = Field(description="Records checked.")
    checkpoint_seq: int = Field(description="The chain starts after this seq (0: never pruned).")
    head_seq: int
    head_hash: str
    first_bad: BadRecord | None = None


@dataclass(frozen=True)
class _Row:
    seq: int
    body: str
    prev_hash: str
    hash: str


def verify(store: StateStore) -> VerifyResult:
    """Re-hash the chain from its start (or its last checkpoint) and compare with its head: the first record that
    was edited, removed, inserted or moved, or a head that does not match the last record. Records appended while
    it runs are past the snapshot it checks, not an error."""
    with store.transaction() as cur:
        start_seq, start_hash = _last_checkpoint(cur)
        # One statement, so one snapshot on Postgres too: a writer moves the head and adds records atomically.
        head = cur.execute(
            "SELECT (SELECT seq FROM audit_head WHERE id = 1), (SELECT hash FROM audit_head WHERE id = 1), "
            "(SELECT MAX(seq) FROM audit_records)"
        )[0]
    head_seq, head_hash = (int(head[0]), str(head[1])) if head[0] is not None else (0, GENESIS_HASH)
    expected_seq, expected_prev, checked = start_seq + 1, start_hash, 0
    for row in _rows_between(store, start_seq, head_seq):
        bad = _check_row(store, row, expected_seq, expected_prev)
        if bad is not None:
            return VerifyResult(ok=False, records=checked, checkpoint_seq=start_seq, head_seq=head_seq,
                                head_hash=head_hash, first_bad=bad)  # fmt: skip
        checked, expected_seq, expected_prev = checked + 1, row.seq + 1, row.hash
    last_seq = max(expected_seq - 1, int(head[2] or 0))  # records past the head count as the chain's end
    bad = _check_head(last_seq, expected_prev, head_seq, head_hash)
    return VerifyResult(ok=bad is None, records=checked, checkpoint_seq=start_seq, head_seq=head_seq,
                        head_hash=head_hash, first_bad=bad)  # fmt: skip


def hash_at(store: StateStore, seq: int) -> str | None:
    """The chain's hash at ``seq`` (a record's, or a checkpoint's once pruned); None when there is none. An
    operator who kept (seq, hash) elsewhere checks with it that the chain up to there was not rewritten whole."""
    with store.transaction() as cur:
        rows = cur.execute(
            "SELECT hash FROM audit_records WHERE seq = ? UNION ALL SELECT hash FROM audit_checkpoints WHERE seq = ?",
            (seq, seq),
        )
    return str(rows[0][0]) if rows else None


def check_anchor(store: StateStore, seq: int, digest: str) -> BadRecord | None:
    """The chain against a (seq, hash) kept elsewhere: None when it still holds that hash there, else why not.
    ``ValueError`` when ``seq`` was pruned: that anchor can no longer be checked (anchor a newer head)."""
    with store.transaction() as cur:
        pruned_to, _ = _last_checkpoint(cur)
    if seq < pruned_to:
        raise ValueError(f"seq {seq} was pruned (the chain now starts after {pruned_to}): anchor a newer head")
    if hash_at(store, seq) == digest:
        return None
    return BadRecord(seq=seq, kind="edited", reason=f"the chain's hash at seq {seq} is not the anchored one: it was "
                     "rewritten")  # fmt: skip


def _last_checkpoint(cur: Cursor) -> tuple[int, str]:
    rows = cur.execute("SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)


def _rows_between(store: StateStore, after: int, last: int) -> Iterator[_Row]:
    """The records after seq ``after`` up to ``last``, a page (and a short read transaction) at a time."""
    while True:
        with store.transaction() as cur:
            rows = cur.execute(
                "SELECT seq, body, prev_hash, hash FROM audit_records WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, last, PAGE),
            )
        for row in rows:
            yield _Row(int(row[0]), str(row[1]), str(row[2]), str(row[3]))
        if len(rows) < PAGE:
            return
        after = int(rows[-1][0])


def _check_row(store: StateStore, row: _Row, expected_seq: int, expected_prev: str) -> BadRecord | None:
    if row.seq > expected_seq:
        return BadRecord(seq=expected_seq, kind="removed", reason=f"records {expected_seq}..{row.seq - 1} are missing")
    if chain_hash(row.prev_hash, row.body) != row.hash:
        return BadRecord(seq=row.seq, kind="edited", reason="its body does not match its hash")
    written_as = _body_seq(row.body)
    if written_as != row.seq:
        return _moved(store, row, written_as)
    if row.prev_hash != expected_prev:
        before = f"record {row.seq - 1}" if row.seq - 1 > 0 else "the chain's start"
        return BadRecord(
            seq=max(row.seq - 1, 0),
            kind="edited",
            reason=f"{before} was replaced or edited and re-hashed: record {row.seq} was chained to another hash",
        )
    return None


def _body_seq(body: str) -> int | None:
    try:
        seq = json.loads(body).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _moved(store: StateStore, row: _Row, written_as: int | None) -> BadRecord:
    """A self-consistent record at another place than it was written for: records before it were inserted (it
    moved up), removed (it moved down, its predecessor is gone) or swapped with it (its predecessor is elsewhere)."""
    where = f"record {row.seq} was written as seq {written_as}"
    if written_as is None or written_as < row.seq:
        return BadRecord(seq=row.seq, kind="inserted", reason=f"{where}: records were inserted before it")
    with store.transaction() as cur:
        predecessor = cur.execute("SELECT seq FROM audit_records WHERE hash = ?", (row.prev_hash,))
    if predecessor:
        return BadRecord(
            seq=row.seq, kind="reordered", reason=f"{where}; the record it follows is at seq {predecessor[0][0]}"
        )
    return BadRecord(seq=row.seq, kind="removed", reason=f"{where}: the record before it was removed")


def _check_head(last_seq: int, last_hash: str, head_seq: int, head_hash: str) -> BadRecord | None:
    if (last_seq, last_hash) == (head_seq, head_hash):
        return None
    if last_seq < head_seq:
        reason = f"the head is record {head_seq} but the chain ends at {last_seq}: its tail was removed"
        return BadRecord(seq=last_seq + 1, kind="head_mismatch", reason=reason)
    if last_seq > head_seq:
        reason = f"records {head_seq + 1}..{last_seq} are past the head: appended outside the writer"
        return BadRecord(seq=head_seq + 1, kind="head_mismatch", reason=reason)
    return BadRecord(seq=head_seq, kind="head_mismatch", reason=f"the head's hash is not record {head_seq}'s")


# --- reading, pruning ------------------------------------------------------------------------------------------


def read_page(
    store: StateStore, since: datetime | None, tenant: str | None, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` records after ``after_seq`` (oldest first), from ``since`` on and of ``tenant`` when
    given; each its body's fields plus ``prev_hash`` and ``hash``."""
    sql = "SELECT body, prev_hash, hash FROM audit_records WHERE seq > ?"
    params: list[Any] = [after_seq]
    if since is not None:
        sql, params = sql + " AND ts >= ?", [*params, stamp(since)]
    if tenant is not None:
        sql, params = sql + " AND tenant = ?", [*params, tenant]
    with store.transaction() as cur:
        rows = cur.execute(sql + " ORDER BY seq LIMIT ?", [*params, limit])
    return [{**json.loads(body), "prev_hash": prev, "hash": digest} for body, prev, digest in rows]


def export(store: StateStore, since: datetime | None = None, tenant: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record from ``since`` on (of ``tenant`` when given), oldest first, read a page at a time."""
    after = 0
    while True:
        page = read_page(store, since, tenant, after, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = int(page[-1]["seq"])


class Checkpoint(BaseModel):
    """What a prune removed: the chain now starts after ``seq``, whose hash is kept."""

    seq: int
    hash: str
    pruned_before: str
    records: int
    created_at: str


def prune(store: StateStore, before: datetime) -> Checkpoint | None:
    """Delete the records older than ``before`` (the chain's prefix up to the first record from ``before`` on)
    and keep a checkpoint (the last pruned record's seq and hash) the rest verifies from. None: nothing to
    prune. Refused (``AuditUnavailableError``) when the chain does not verify: pruning would hide the evidence."""
    result = verify(store)
    if not result.ok:
        raise AuditUnavailableError(f"the audit chain does not verify ({result.first_bad}); not pruning")
    with store.transaction(write=True) as cur:
        cur.lock(AUDIT_LOCK)
        start_seq, _ = _last_checkpoint(cur)
        last = _last_prunable(cur, stamp(before))
        if last <= start_seq:
            return None
        digest = str(cur.execute("SELECT hash FROM audit_records WHERE seq = ?", (last,))[0][0])
        removed = int(cur.execute("SELECT COUNT(*) FROM audit_records WHERE seq <= ?", (last,))[0][0])
        checkpoint = Checkpoint(seq=last, hash=digest, pruned_before=stamp(before), records=removed,
                                created_at=utc_now())  # fmt: skip
        cur.execute(
            "INSERT INTO audit_checkpoints (seq, hash, pruned_before, records, created_at) VALUES (?, ?, ?, ?, ?)",
            (checkpoint.seq, checkpoint.hash, checkpoint.pruned_before, checkpoint.records, checkpoint.created_at),
        )
        cur.execute("DELETE FROM audit_records WHERE seq <= ?", (last,))
    return checkpoint


def _last_prunable(cur: Cursor, before: str) -> int:
    """The last seq of the chain's prefix older than ``before``: replicas' clocks and batches interleave, so it
    ends just before the first record stamped ``before`` or later, not at the last one stamped earlier."""
    first_kept = cur.execute("SELECT MIN(seq) FROM audit_records WHERE ts >= ?", (before,))[0][0]
    if first_kept is not None:
        return int(first_kept) - 1
    return int(cur.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_records")[0][0])
