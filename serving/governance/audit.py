"""The audit trail: one record per request and admin action, chained so that tampering shows, written durably
before the response goes out; and the usage ledger (``usage_daily``), added to in the same transaction.

The chain itself (hashing, its head, verification) is ``serving.governance.audit_chain``; reading the trail back,
exporting and pruning it, ``serving.governance.audit_export``.

Writing: ``AuditLog.submit`` queues a record and returns a future; one writer thread takes everything queued
into one transaction (group commit: one fsync for the batch) and resolves the futures once it committed. The same
thread writes the counted unauthenticated refusals (``serving.governance.refusal_tally``) once their minute ended,
and publishes the chain's head (log line, anchor file) at most every ``AnchorSettings.every_s``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from safety.pii import redact
from serving.contracts.answer import Answer
from serving.governance.access import Principal
from serving.governance.audit_chain import AUDIT_LOCK, Anchor, append_anchor, chain_hash, read_head
from serving.governance.audit_personal import canonical_json, split_personal
from serving.governance.audit_usage import UsageTally, add_to_ledger, usage_of
from serving.governance.refusal_tally import RefusalCount, RefusalTally
from serving.governance.subjects import SubjectKeys
from serving.infra.clock import stamp, utc_now
from serving.infra.state_store import Cursor, StateStore

if TYPE_CHECKING:
    from serving.observe.metrics import ServiceMetrics

log = logging.getLogger("ragops.audit")

AuditContent = Literal["hash", "redacted"]
MAX_BATCH = 512  # records per transaction: bounds one commit's time when a burst queues many
HOUSEKEEPING_S = 1.0  # how often an idle writer wakes to write ended minutes' refusal counts and the head
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
    count: int = Field(1, description="Requests the record stands for: above 1 only for unauthenticated refusals, "
                       "recorded once per client address and minute.")  # fmt: skip
    client: str | None = Field(None, description="The client address, of unauthenticated refusals only (the "
                               "records without a key to say who called).")  # fmt: skip
    user_ref: str | None = Field(None, description="Who the answer was for: a keyed hash of the tenant and the "
                                 "request's `user` (serving.governance.subjects), never the id itself.")  # fmt: skip
    # Not part of the record (never hashed, never exported): the budget reservation its commit releases.
    reservation: str | None = Field(None, exclude=True)

    def canonical(self) -> str:
        """The record as one body (personal fields in it: how records were hashed before they were kept apart)."""
        return canonical_json(self.model_dump(mode="json"))

    def chained(self) -> tuple[str, str]:
        """The body the chain hashes (personal fields replaced by their salted digest) and the ``personal``
        column (``serving.governance.audit_personal``)."""
        body, personal = split_personal(self.model_dump(mode="json"))
        return canonical_json(body), personal


@dataclass(frozen=True)
class RequestFacts:
    """What the HTTP layer knows of a request that is not in the answer."""

    request_id: str
    method: str
    route: str
    status: int
    latency_ms: float


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
    reservation: str | None = None,
    user_ref: str | None = None,
) -> AuditRecord:
    """The record of one request; questions and answers hashed, or redacted with ``content="redacted"``;
    ``user_ref`` the keyed hash of the request's ``user``."""
    text = answer.answer if answer is not None else None
    fields: dict[str, Any] = {
        "ts": utc_now(), "request_id": facts.request_id, "method": facts.method, "route": facts.route,
        "status": facts.status, "latency_ms": round(facts.latency_ms, 3), "admin": action,
        "outcome": answer.outcome if answer is not None and facts.status < 400 else status_outcome(facts.status),
        "question_sha256": _sha256(question), "answer_sha256": _sha256(text), "reservation": reservation,
        "user_ref": user_ref,
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


_STOP = object()


@dataclass(frozen=True, kw_only=True)
class AnchorSettings:
    """Where and how often the writer publishes the chain's head (``audit_anchor_file``, ``audit_anchor_every_s``)."""

    file: Path | None = None
    every_s: float = 60.0


class AuditLog:
    """The audit trail's writer: ``submit`` a record, wait on its future; ``refused`` counts an unauthenticated
    refusal (``serving.governance.refusal_tally``); ``close`` writes what is queued. Once a second it writes the
    refusal counts of minutes that ended, and at most every ``anchor.every_s`` logs the chain's head (and appends
    it to the anchor file) when it moved."""

    def __init__(
        self,
        store: StateStore,
        content: AuditContent,
        metrics: ServiceMetrics | None = None,
        anchor: AnchorSettings | None = None,
    ) -> None:
        self.store = store
        self.content: AuditContent = content
        self._metrics = metrics
        self._anchor = anchor or AnchorSettings()
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._closed = False
        self._refusals = RefusalTally()
        self._head: tuple[int, str] | None = None  # the head after this writer's last commit
        self._anchored: tuple[int, str] | None = None
        self._anchored_at = 0.0
        delay = os.environ.get(COMMIT_DELAY_ENV, "")
        self._commit_delay_s = int(delay) / 1000 if delay.isdigit() else 0.0
        self.subjects = SubjectKeys(store)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def user_ref(self, principal: Principal | None, user: str | None) -> str | None:
        """How a record names the request's ``user``: a keyed hash within the caller's tenant."""
        if principal is None or user is None:
            return None
        return self.subjects.ref("user", principal.tenant, user)

    def refused(self, client: str, status: int) -> None:
        """Count an unauthenticated refusal (401, or the 429 of an address out of failed authentications): no
        record of its own, no wait."""
        if not self._closed:
            self._refusals.add(client, status, datetime.now(UTC))

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
            for pending in self._refusal_records(None):
                self._queue.put(pending)
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
            if not stop:
                batch.extend(self._refusal_records(datetime.now(UTC)))
            try:
                if batch:
                    self._write(batch)
                self._publish_head(force=stop)
            except Exception as exc:  # the writer must outlive any failure: its waiters get an answer
                log.error("audit writer failed", exc_info=exc)
                for pending in batch:
                    _settle(pending.future, AuditUnavailableError(f"audit trail unavailable: {exc}"))
            if stop:
                return

    def _refusal_records(self, now: datetime | None) -> list[_Pending]:
        return [_Pending(refusal_record(counted), Future()) for counted in self._refusals.take(now)]

    def _publish_head(self, force: bool) -> None:
        """Log the head (and append it to the anchor file) when it moved and ``anchor.every_s`` has passed."""
        if self._head is None or self._head == self._anchored:
            return
        if not force and time.monotonic() - self._anchored_at < self._anchor.every_s:
            return
        seq, digest = self._head
        log.info("audit head", extra={"seq": seq, "hash": digest})
        if self._anchor.file is not None:
            try:
                append_anchor(self._anchor.file, Anchor(seq=seq, hash=digest, ts=utc_now()))
            except OSError as exc:
                log.error("audit anchor not written to %s: %s", self._anchor.file, exc.strerror)
        self._anchored, self._anchored_at = self._head, time.monotonic()

    def _take(self) -> tuple[list[_Pending], bool]:
        """Everything queued (waiting up to ``HOUSEKEEPING_S`` for the first item), up to ``MAX_BATCH``; and
        whether to stop."""
        batch: list[_Pending] = []
        try:
            item = self._queue.get(timeout=HOUSEKEEPING_S)
        except queue.Empty:
            return batch, False
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
                head = read_head(cur)
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
        self._head = head
        for pending, seq in zip(batch, seqs, strict=True):
            _settle(pending.future, seq)

    def _observe(self, records: int, started: float, ok: bool) -> None:
        if self._metrics is not None:
            self._metrics.observe_audit_batch(records, time.perf_counter() - started, ok)


def refusal_record(counted: RefusalCount) -> AuditRecord:
    """The record of one address's unauthenticated refusals in one minute."""
    bucket = counted.bucket
    return AuditRecord(
        ts=stamp(bucket.minute), request_id=uuid.uuid4().hex, method="*", route="*", status=bucket.status,
        outcome=status_outcome(bucket.status), latency_ms=0.0, count=counted.count, client=bucket.client,
    )  # fmt: skip


def _settle(future: Future[int], outcome: int | Exception) -> None:
    # A waiter that was cancelled (its client went away) no longer listens; the record was written all the same.
    if not future.done() and future.set_running_or_notify_cancel():
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def append_records(cur: Cursor, records: Sequence[AuditRecord]) -> list[int]:
    """Append ``records`` to the chain inside the caller's write transaction; returns their seqs. In the same
    transaction the usage ledger gets the records' totals and the budget reservations of their requests are
    released: a request's spend moves from reserved to spent at once, never counted twice or not at all."""
    cur.lock(AUDIT_LOCK)
    seq, prev_hash = read_head(cur)
    rows, seqs = [], []
    usage = UsageTally()
    for record in records:
        seq += 1
        placed = record.model_copy(update={"seq": seq})
        body, personal = placed.chained()
        digest = chain_hash(prev_hash, body)
        rows.append((seq, record.ts, record.tenant, record.key_id, body, personal, prev_hash, digest))
        seqs.append(seq)
        prev_hash = digest
        usage.add(usage_of(placed.model_dump(include=USAGE_FIELDS)))
    cur.executemany(
        "INSERT INTO audit_records (seq, ts, tenant, key_id, body, personal, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    cur.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        (seq, prev_hash),
    )
    add_to_ledger(cur, usage)
    released = [(r.reservation,) for r in records if r.reservation is not None]
    if released:
        cur.executemany("DELETE FROM budget_reservations WHERE request_id = ?", released)
    return seqs


# The fields ``usage_of`` reads: a record's usage without dumping all of it.
USAGE_FIELDS = {"ts", "tenant", "key_id", "status", "cached", "prompt_tokens", "completion_tokens", "cost_usd"}
