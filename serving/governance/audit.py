"""The audit trail: one record per request and admin action, chained so that tampering shows, written durably
before the response goes out; and the usage ledger (``usage_daily``), added to in the same transaction.

The chain itself (hashing, its head, verification) is ``serving.governance.audit_chain``; reading the trail back,
exporting and pruning it, ``serving.governance.audit_export``.

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
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from safety.pii import redact
from serving.contracts.answer import Answer
from serving.governance.access import Principal
from serving.governance.audit_chain import AUDIT_LOCK, chain_hash, read_head
from serving.infra.clock import day_of, parse_stamp, utc_now
from serving.infra.state_store import Cursor, StateStore

if TYPE_CHECKING:
    from serving.observe.metrics import ServiceMetrics

log = logging.getLogger("ragops.audit")

AuditContent = Literal["hash", "redacted"]
MAX_BATCH = 512  # records per transaction: bounds one commit's time when a burst queues many
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
