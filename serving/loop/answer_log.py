"""Answers kept for the production loop: feedback refers to them by id, feedback export turns them into eval
cases, drift checks and the canary analysis read their signals.

Kept redacted (question, answer and cited passages go through ``safety.pii.redact`` once more, whatever the
guards did) for ``feedback_retention_days``, in the state store's ``answers`` table; the audit trail keeps hashes
only and is separate. Written off the request path: ``record`` enqueues, one background thread inserts in
batches (one transaction per batch). ``find`` waits for this process's pending writes before it gives up on an
id, so feedback sent right after its answer finds it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from safety.pii import RedactionMemo, redact
from serving.contracts.answer import Answer, AnswerRequest, Outcome
from serving.infra.background import BackgroundWorker
from serving.infra.clock import parse_stamp, stamp, utc_now
from serving.infra.state_store import Row, StateStore

log = logging.getLogger("ragops.answer_log")

_COLUMNS = (
    "id, ts, tenant, collection, user_hash, question, answer, citations, outcome, prompt_name, prompt_version, "
    "prompt_hash, generator, model, fallback, groundedness, relevance, latency_ms, completion_tokens"
)


_COLUMN_NAMES = tuple(column.strip() for column in _COLUMNS.split(","))


def answer_columns(alias: str, prefix: str = "") -> str:
    """The columns ``AnswerRecord.from_row`` reads, qualified by a table alias (for joins, e.g. feedback's), each
    selected as ``prefix`` + its name (``from_row(row, prefix)`` reads them)."""
    return ", ".join(f"{alias}.{column} AS {prefix}{column}" for column in _COLUMN_NAMES)


@dataclass(frozen=True, kw_only=True)
class KeptPassage:
    """A passage the answer was shown (``[index]`` in its text), as kept: redacted."""

    index: int
    doc_id: str
    chunk_id: str
    title: str | None
    text: str
    cited: bool


@dataclass(frozen=True)
class _Kept:
    """An answer waiting for the writer."""

    request: AnswerRequest
    answer: Answer
    ts: datetime


@dataclass(frozen=True, kw_only=True)
class AnswerRecord:
    """One kept answer: what was asked and answered, how, and the signals drift and canary analysis read."""

    id: str
    ts: datetime
    tenant: str
    collection: str
    user_hash: str | None  # the request's canary subject (tenant, key and user, hashed): counts users, names none
    question: str
    answer: str
    passages: tuple[KeptPassage, ...]
    outcome: Outcome
    prompt_name: str
    prompt_version: str
    prompt_hash: str
    generator: str | None
    model: str | None
    fallback: str | None  # the fallback's reason; None when the first generator answered
    groundedness: float | None
    relevance: float | None
    latency_ms: float | None
    completion_tokens: int

    @classmethod
    def of(
        cls, request: AnswerRequest, answer: Answer, now: datetime | None = None,
        redact_passage: Callable[[str], str] = redact,
    ) -> AnswerRecord:  # fmt: skip
        """``redact_passage``: how the passages' titles and texts are redacted (``redact``, or a memo of it)."""
        keep = partial(kept_text, redacted=redact_passage)
        passages = tuple(
            KeptPassage(index=c.index, doc_id=c.doc_id, chunk_id=c.chunk_id,
                        title=None if c.title is None else keep(c.title), text=keep(c.text), cited=c.cited)
            for c in answer.citations
        )  # fmt: skip
        return cls(
            id=answer.id, ts=now or parse_stamp(utc_now()), tenant=request.scope.tenant,
            collection=request.scope.collection, user_hash=request.canary_subject,
            question=kept_text(request.question), answer=kept_text(answer.answer), passages=passages,
            outcome=answer.outcome, prompt_name=answer.prompt.name, prompt_version=answer.prompt.version,
            prompt_hash=answer.prompt.hash, generator=answer.generator, model=answer.model,
            fallback=answer.fallback.reason if answer.fallback else None,
            groundedness=answer.groundedness.score if answer.groundedness else None, relevance=answer.relevance,
            latency_ms=answer.timings_ms.get("total"), completion_tokens=answer.usage.completion_tokens,
        )  # fmt: skip

    def row(self) -> tuple[object, ...]:
        passages = json.dumps([p.__dict__ for p in self.passages], ensure_ascii=False)
        return (
            self.id, stamp(self.ts), self.tenant, self.collection, self.user_hash, self.question, self.answer,
            passages, self.outcome, self.prompt_name, self.prompt_version, self.prompt_hash, self.generator,
            self.model, self.fallback, self.groundedness, self.relevance, self.latency_ms, self.completion_tokens,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: Row, prefix: str = "") -> AnswerRecord:
        """From a row holding ``_COLUMNS`` (each named ``prefix`` + column, see ``answer_columns``)."""
        fields = {column: row[prefix + column] for column in _COLUMN_NAMES}
        passages = tuple(KeptPassage(**p) for p in json.loads(fields.pop("citations")))
        ts, tokens = parse_stamp(fields.pop("ts")), int(fields.pop("completion_tokens"))
        return cls(**fields, ts=ts, passages=passages, completion_tokens=tokens)


def kept_answers(
    state: StateStore,
    since: datetime | None = None,
    prompt: str | None = None,
    version: str | None = None,
    limit: int = 10_000,
) -> list[AnswerRecord]:
    """The newest ``limit`` kept answers (since ``since``; of one prompt, or one version of it), oldest first.
    A reader needs no ``AnswerLog`` (whose writer thread only a server needs)."""
    where, params = ["ts >= ?"], [stamp(since or datetime(1970, 1, 1))]
    if prompt is not None:
        where.append("prompt_name = ?")
        params.append(prompt)
    if version is not None:
        where.append("prompt_version = ?")
        params.append(version)
    sql = f"SELECT {_COLUMNS} FROM answers WHERE {' AND '.join(where)} ORDER BY ts DESC LIMIT ?"
    with state.transaction() as cur:
        rows = cur.execute(sql, [*params, limit])
    return [AnswerRecord.from_row(row) for row in reversed(rows)]


def prune_answers(state: StateStore, before: datetime) -> int:
    """Delete the answers kept before ``before``, with their feedback; returns how many answers went."""
    return answers_before(state, before, remove=True)["answers"]


def answers_before(state: StateStore, before: datetime, remove: bool) -> dict[str, int]:
    """How many answers were kept before ``before`` and how many ratings of them there are (``answers``,
    ``feedback``), counted in the transaction that deletes them when ``remove``."""
    cutoff = stamp(before)
    with state.transaction(write=remove) as cur:
        counts = cur.execute(
            "SELECT (SELECT COUNT(*) FROM answers WHERE ts < ?) AS answers, "
            "(SELECT COUNT(*) FROM feedback WHERE answer_id IN (SELECT id FROM answers WHERE ts < ?)) AS feedback",
            [cutoff, cutoff],
        )[0]
        if remove:
            cur.execute("DELETE FROM feedback WHERE answer_id IN (SELECT id FROM answers WHERE ts < ?)", [cutoff])
            cur.execute("DELETE FROM answers WHERE ts < ?", [cutoff])
    return {"answers": int(counts["answers"]), "feedback": int(counts["feedback"])}


def kept_text(text: str, redacted: Callable[[str], str] = redact) -> str:
    """Text as the store keeps it: redacted (by ``redacted``: ``redact``, or a memo of it), and without NUL
    characters (Postgres text cannot hold them)."""
    return redacted(text).replace("\x00", "")


class AnswerLog:
    """The ``answers`` table: ``record`` (off the request path), ``find``, ``window`` and ``prune``."""

    def __init__(
        self, state: StateStore, retention_days: int, max_pending: int = 10_000,
        redact_passage: Callable[[str], str] | None = None,
    ) -> None:  # fmt: skip
        """``redact_passage``: how passages are redacted (the service's shared ``RedactionMemo``)."""
        self.state = state
        self.retention = timedelta(days=retention_days)
        self.dropped = 0
        self._pending: set[str] = set()  # ids enqueued and not yet written: what ``find`` may wait for
        self._written = threading.Condition()
        self._worker: BackgroundWorker[_Kept] = BackgroundWorker(
            "ragops-answer-log", self._insert, max_pending, batch_size=200
        )
        # The same passages come back answer after answer (a cached answer cites the same ones every time), and
        # redacting them was a seventh of a cached chat's CPU: a memo redacts each once.
        self._redact_passage = redact_passage or RedactionMemo()

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        """Enqueue the answer; redacting and writing it happen on the worker's thread."""
        if self.retention and answer.id:
            with self._written:
                self._pending.add(answer.id)
            if not self._worker.put(_Kept(request, answer, parse_stamp(utc_now()))):
                self.dropped += 1  # the writer is not keeping up: this answer is not kept
                self._settle([answer.id])

    def find(self, answer_id: str, tenant: str, wait_s: float = 2.0) -> AnswerRecord | None:
        """The kept answer with this id in this tenant (another tenant's answer is not found). Feedback sent
        right after its answer may arrive before the answer is written: an id this process has yet to write is
        waited for (up to ``wait_s``), any other miss answers at once."""
        with self._written:
            self._written.wait_for(lambda: answer_id not in self._pending, wait_s)
        return self._select(answer_id, tenant)

    def window(
        self, since: datetime | None = None, prompt: str | None = None, version: str | None = None, limit: int = 10_000
    ) -> list[AnswerRecord]:
        return kept_answers(self.state, since, prompt, version, limit)

    def prune(self, now: datetime) -> int:
        """Delete answers (and their feedback) older than the retention; returns how many answers went."""
        return prune_answers(self.state, now - self.retention)

    def flush(self, wait_s: float = 2.0) -> bool:
        return self._worker.flush(wait_s)

    def close(self, wait_s: float = 2.0) -> None:
        self._worker.close(wait_s)

    def _select(self, answer_id: str, tenant: str) -> AnswerRecord | None:
        with self.state.transaction() as cur:
            rows = cur.execute(f"SELECT {_COLUMNS} FROM answers WHERE id = ? AND tenant = ?", [answer_id, tenant])
        return AnswerRecord.from_row(rows[0]) if rows else None

    def _insert(self, kept: list[_Kept]) -> None:
        placeholders = ", ".join("?" * len(_COLUMN_NAMES))
        try:
            records = [AnswerRecord.of(k.request, k.answer, k.ts, self._redact_passage) for k in kept]
            with self.state.transaction(write=True) as cur:
                cur.executemany(f"INSERT INTO answers ({_COLUMNS}) VALUES ({placeholders})", [r.row() for r in records])
        except Exception as exc:  # a store outage loses these records, never a request
            self.dropped += len(kept)
            log.warning("answers not kept", extra={"error": str(exc)[:200], "answers": len(kept)})
        finally:
            self._settle(k.answer.id for k in kept)

    def _settle(self, ids: Iterable[str]) -> None:
        with self._written:
            self._pending.difference_update(ids)
            self._written.notify_all()
