"""Erasure (GDPR art. 17): a document's or a user's data removed from every store the service keeps, recorded by a
tombstone in the audit trail, and gone from the bytes on disk too.

One ``Eraser.erase`` runs these steps in order, each idempotent, so that a re-run after a crash (``kill -9``
between any two of them) finishes the work:

1. the journal row (table ``erasures``): the subject, until the erasure finished (then only its keyed hash);
2. the eval-suite files under ``evals/`` that hold the subject: listed, or with ``rewrite_suites`` rewritten with
   a note of what went (read before the kept answers are deleted: a user's lines are found by their answer ids);
3. a document's chunks, vectors and embedding-cache rows (``retrieval.ingest.Ingestor.erase_document``);
4. cached answers that show the document, or every cached answer of the user's tenant (a cache entry does not
   record who asked: ``serving.answering.answer_cache.Eviction``);
5. a user's question vectors in the embedding cache (found by the kept questions) and the in-memory ones;
6. kept answers that show the document or were given to the user, with their feedback;
7. a user's server-side conversations, by the subjects that name the user's kept answers (one for each key);
8. the audit trail: the tombstone appended, and the personal fields of the records that name the subject replaced
   by keyed hashes, in one transaction (``serving.governance.audit_personal``): ``audit verify`` still passes;
9. the journal row closed (the identifier dropped) and the state store's freed bytes reclaimed.

What it does not reach: another replica's in-process caches (a document's entries are never served again, the
index version in their key changed; they age out of the LRU), copies outside the data dir (backups made before,
traces already sent, exported files elsewhere) and records written before personal fields were kept apart
(counted in ``audit_legacy_kept``). The docs' Data protection page lists them.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_core import to_json
from redis import RedisError

from retrieval.embedding_cache import EmbeddingStore, text_key
from retrieval.index import IndexUnavailableError, Scope, StorageFullError
from retrieval.ingest import CrashHook, Ingestor
from serving.answering.answer_cache import AnswerCache, Eviction
from serving.answering.conversations import ConversationStore, ConversationStoreUnavailableError
from serving.contracts.answer import canary_subject
from serving.governance.access import ANONYMOUS_KEY_ID
from serving.governance.audit import AuditAction, AuditRecord, append_records
from serving.governance.audit_chain import ERASURE_ACTION
from serving.governance.audit_personal import PersonalPart, erased, read_personal
from serving.governance.subjects import SubjectKeys, SubjectKind
from serving.infra.clock import utc_now
from serving.infra.state_store import Cursor, StateStore, StateStoreUnavailableError
from serving.rights.erasure_suites import LineTest, files_holding, rewrite_without

IDENTIFIER_MAX_CHARS: dict[SubjectKind, int] = {"document": 512, "user": 256}  # as the API takes them
# What a store that cannot be reached (or refuses a write) raises: the erasure stops there, and a re-run resumes it.
STORE_FAILURES = (OSError, RuntimeError, sqlite3.Error, RedisError, IndexUnavailableError, StorageFullError,
                  StateStoreUnavailableError, ConversationStoreUnavailableError)  # fmt: skip

# The state store's tables an erasure deletes from or rewrites: their freed bytes are reclaimed at its end.
ERASED_TABLES = ("answers", "feedback", "conversations", "audit_records", "erasures")


class ErasureIncompleteError(Exception):
    """A store failed mid-erasure: what was done stays done, the journal keeps the rest, a re-run finishes it."""


def identifier_problem(kind: SubjectKind, identifier: str) -> str | None:
    """Why ``identifier`` cannot name a subject (None: it can): blank, too long, or holding a NUL character (which
    no store keeps: Postgres text refuses it)."""
    limit = IDENTIFIER_MAX_CHARS[kind]
    if not identifier.strip() or len(identifier) > limit:
        return f"a {kind} to erase is named by 1-{limit} characters, not blank"
    if "\x00" in identifier:
        return f"a {kind} to erase is never named with a NUL character"
    return None


@dataclass(frozen=True, kw_only=True)
class ErasureSubject:
    """What to erase: a document of a collection, or a user (the ``user`` of chat requests), in one tenant."""

    kind: SubjectKind
    tenant: str
    identifier: str
    collection: str | None = None  # a document's collection

    def describe(self) -> str:
        where = f" in collection {self.collection!r}" if self.collection else ""
        return f"{self.kind} {self.identifier!r}{where} of tenant {self.tenant!r}"


class ErasureReport(BaseModel):
    """What an erasure removed, store by store; the tombstone's seq names it in the audit trail."""

    id: str
    kind: SubjectKind
    tenant: str
    collection: str | None
    subject_ref: str = Field(description="The subject's keyed hash, as the tombstone names it.")
    resumed: bool = Field(description="This run finished an erasure an earlier run left unfinished.")
    removed: dict[str, int] = Field(description="Per store: chunks, embedding rows, cached answers, query vectors, "
                                    "kept answers, feedback, conversations, audit records erased.")  # fmt: skip
    audit_legacy_kept: int = Field(description="Audit records naming the subject written before personal fields "
                                   "were kept apart: their chain would break, they stay as written.")  # fmt: skip
    suites: list[str] = Field(description="Eval-suite files that held the subject (rewritten with rewrite_suites).")
    suites_rewritten: bool
    tombstone_seq: int | None = Field(description="The erasure's record in the audit trail (None: audit off).")
    reclaimed: bool = Field(description="The state store's write-ahead log was truncated: no old page is left.")
    seconds: float


@dataclass(kw_only=True)
class ErasureStores:
    """Where the service keeps data: what an erasure reaches. None: that store is not kept here."""

    state: StateStore
    subjects: SubjectKeys
    ingestor: Ingestor | None = None
    embeddings: EmbeddingStore | None = None
    forget_queries: Callable[[], None] | None = None  # empties the in-memory question vectors
    answer_cache: AnswerCache | None = None
    conversations: ConversationStore | None = None
    suites_dir: Path | None = None
    audit: bool = True  # write the tombstone and replace personal fields (off: the audit trail is not kept)


@dataclass
class _Journal:
    id: str
    resumed: bool


@dataclass
class _KeptAnswers:
    """A subject's kept answers: their ids, and (a user's) the questions asked and the subjects that name them."""

    ids: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)


class Eraser:
    """Runs erasures against ``stores``; ``erase`` is idempotent and finishes an interrupted one."""

    def __init__(self, stores: ErasureStores, crash: CrashHook | None = None) -> None:
        self._stores = stores
        self._crash = crash or CrashHook.from_environment()

    def erase(
        self, subject: ErasureSubject, rewrite_suites: bool = False, actor: AuditAction | None = None
    ) -> ErasureReport:
        """Erase ``subject`` from every store; ``actor`` says who asked (the tombstone keeps it).
        ``ErasureIncompleteError`` when a store failed on the way: a re-run finishes the erasure."""
        try:
            return self._erase(subject, rewrite_suites, actor)
        except STORE_FAILURES as exc:
            raise ErasureIncompleteError(
                f"the erasure of a {subject.kind} stopped: {str(exc)[:300] or type(exc).__name__}; what was erased "
                "stays erased: run it again to finish it"
            ) from exc

    def resume_unfinished(self) -> list[ErasureReport]:
        """Finish the erasures a crash interrupted (their journal rows still hold the subject): run at start,
        before anything is served."""
        with self._stores.state.transaction() as cur:
            rows = cur.execute(
                "SELECT kind, tenant, collection, identifier FROM erasures "
                "WHERE finished_at IS NULL AND identifier IS NOT NULL ORDER BY started_at"
            )
        subjects = [ErasureSubject(kind=row["kind"], tenant=row["tenant"], identifier=row["identifier"],
                                   collection=row["collection"]) for row in rows]  # fmt: skip
        return [self.erase(subject) for subject in subjects]

    def _erase(self, subject: ErasureSubject, rewrite_suites: bool, actor: AuditAction | None) -> ErasureReport:
        started = time.perf_counter()
        ref = self._stores.subjects.ref(subject.kind, subject.tenant, subject.identifier, subject.collection)
        journal = self._begin(subject, ref)
        kept = self._kept_answers(subject)
        suites = self._suites(subject, kept, ref, journal.id, rewrite_suites)
        self._crash.step()
        removed: dict[str, int] = {}
        removed.update(self._index(subject))
        self._crash.step()
        removed["cached_answers"] = self._answer_cache(subject)
        removed["query_vectors"] = self._query_vectors(kept)
        removed["answers"], removed["feedback"] = self._delete_answers(kept.ids)
        removed.update(self._conversations(subject, kept))
        self._crash.step()
        tombstone, removed["audit_records"], legacy = self._audit(subject, ref, journal.id, removed, actor)
        self._crash.step()
        self._finish(journal.id, removed)
        reclaimed = self._stores.state.reclaim(ERASED_TABLES)
        return ErasureReport(
            id=journal.id, kind=subject.kind, tenant=subject.tenant, collection=subject.collection, subject_ref=ref,
            resumed=journal.resumed, removed=removed, audit_legacy_kept=legacy, suites=[str(p) for p in suites],
            suites_rewritten=rewrite_suites and bool(suites), tombstone_seq=tombstone, reclaimed=reclaimed,
            seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip

    # --- 1. the journal ------------------------------------------------------------------------------------------

    def _begin(self, subject: ErasureSubject, ref: str) -> _Journal:
        """The unfinished erasure of this subject to finish, or a new journal row."""
        with self._stores.state.transaction(write=True) as cur:
            rows = cur.execute(
                "SELECT id FROM erasures WHERE subject_ref = ? AND kind = ? AND finished_at IS NULL",
                (ref, subject.kind),
            )
            if rows:
                return _Journal(id=str(rows[0]["id"]), resumed=True)
            erasure_id = f"er_{uuid.uuid4().hex[:24]}"
            cur.execute(
                "INSERT INTO erasures (id, kind, tenant, collection, subject_ref, identifier, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (erasure_id, subject.kind, subject.tenant, subject.collection, ref, subject.identifier, utc_now()),
            )
        return _Journal(id=erasure_id, resumed=False)

    def _finish(self, erasure_id: str, removed: dict[str, int]) -> None:
        with self._stores.state.transaction(write=True) as cur:
            cur.execute(
                "UPDATE erasures SET finished_at = ?, removed = ?, identifier = NULL WHERE id = ?",
                (utc_now(), json.dumps(removed, sort_keys=True), erasure_id),
            )

    # --- 2. eval suites ------------------------------------------------------------------------------------------

    def _suites(
        self, subject: ErasureSubject, kept: _KeptAnswers, ref: str, erasure_id: str, rewrite: bool
    ) -> list[Path]:
        root = self._stores.suites_dir
        if root is None or not root.is_dir():
            return []
        refs = self._suite_refs(subject, kept, ref, erasure_id)
        holds = _suite_line_matcher(subject, kept, refs, self._stores.subjects.keyed)
        found = files_holding(root, holds)
        if rewrite:
            rewrite_without(root, found, holds, ref, erasure_id)
        return found

    def _suite_refs(self, subject: ErasureSubject, kept: _KeptAnswers, ref: str, erasure_id: str) -> set[str]:
        """Keyed hashes of the user's answer ids, this run's (recorded in its journal row) and earlier runs'."""
        if subject.kind != "user":
            return set()
        keyed = self._stores.subjects.keyed
        mine = sorted({keyed(answer_id) for answer_id in kept.ids})
        with self._stores.state.transaction(write=True) as cur:
            if mine:
                cur.execute("UPDATE erasures SET suite_refs = ? WHERE id = ?", (json.dumps(mine), erasure_id))
            rows = cur.execute(
                "SELECT suite_refs FROM erasures WHERE subject_ref = ? AND suite_refs IS NOT NULL", (ref,)
            )
        return {str(r) for row in rows for r in json.loads(row["suite_refs"])}

    # --- 3-5. index, answer cache, question vectors ---------------------------------------------------------------

    def _index(self, subject: ErasureSubject) -> dict[str, int]:
        ingestor = self._stores.ingestor
        if subject.kind != "document" or ingestor is None or subject.collection is None:
            return {}
        erasure = ingestor.erase_document(Scope(subject.collection, subject.tenant), subject.identifier)
        return {"chunks": erasure.chunks_removed, "embedding_rows": erasure.embedding_rows_removed}

    def _answer_cache(self, subject: ErasureSubject) -> int:
        cache = self._stores.answer_cache
        if cache is None:
            return 0
        if subject.kind == "document":
            return cache.evict(
                Eviction(tenant=subject.tenant, collection=subject.collection, doc_id=subject.identifier)
            )
        return cache.evict(Eviction(tenant=subject.tenant))

    def _query_vectors(self, kept: _KeptAnswers) -> int:
        """A user's question vectors, found by the questions kept (a question whose kept copy was redacted, or
        not kept, is not found: question vectors age out with their retention period)."""
        if self._stores.forget_queries is not None and kept.questions:
            self._stores.forget_queries()
        if self._stores.embeddings is None or not kept.questions:
            return 0
        return self._stores.embeddings.delete_many(None, sorted({text_key(q) for q in kept.questions}))

    # --- 6-7. kept answers and feedback, conversations ---------------------------------------------------------------

    def _kept_answers(self, subject: ErasureSubject) -> _KeptAnswers:
        with self._stores.state.transaction() as cur:
            if subject.kind == "user":
                subjects, rows = _answers_of_user(cur, subject.tenant, subject.identifier)
            else:
                subjects, rows = [], _answers_showing(cur, subject.tenant, subject.collection, subject.identifier)
        kept = _KeptAnswers(ids=[str(row["id"]) for row in rows], subjects=subjects)
        if subject.kind == "user":
            kept.questions = [str(row["question"]) for row in rows]
        return kept

    def _delete_answers(self, ids: Sequence[str]) -> tuple[int, int]:
        answers = feedback = 0
        with self._stores.state.transaction(write=True) as cur:
            for batch in _batches(ids):
                marks = ", ".join("?" * len(batch))
                feedback += _count(cur, f"SELECT COUNT(*) AS n FROM feedback WHERE answer_id IN ({marks})", batch)
                cur.execute(f"DELETE FROM feedback WHERE answer_id IN ({marks})", batch)
                answers += _count(cur, f"SELECT COUNT(*) AS n FROM answers WHERE id IN ({marks})", batch)
                cur.execute(f"DELETE FROM answers WHERE id IN ({marks})", batch)
        return answers, feedback

    def _conversations(self, subject: ErasureSubject, kept: _KeptAnswers) -> dict[str, int]:
        store = self._stores.conversations
        if subject.kind != "user":
            return {}
        return {"conversations": sum(store.erase_user(subject.tenant, s) for s in kept.subjects) if store else 0}

    # --- 8. the audit trail ----------------------------------------------------------------------------------------

    def _audit(
        self, subject: ErasureSubject, ref: str, erasure_id: str, removed: dict[str, int], actor: AuditAction | None
    ) -> tuple[int | None, int, int]:
        """The tombstone's seq, the records whose personal fields it replaced, and the legacy records left."""
        if not self._stores.audit:
            return None, 0, 0
        keyed = self._stores.subjects.keyed
        with self._stores.state.transaction(write=True) as cur:
            matches, legacy = _audit_matches(cur, subject, ref)
            detail = {
                "erasure_id": erasure_id, "kind": subject.kind, "subject_ref": ref, "collection": subject.collection,
                "removed": {**removed, "audit_records": len(matches)}, "audit_legacy_kept": legacy,
                "erased_seqs": [seq for seq, _ in matches],  # verify holds each erased record to its tombstone
                "requested_by": actor.model_dump(mode="json") if actor is not None else None,
            }  # fmt: skip
            (tombstone,) = append_records(cur, [_tombstone(subject, ref, detail)])
            cur.executemany(
                "UPDATE audit_records SET personal = ? WHERE seq = ?",
                [(erased(part, tombstone, keyed).model_dump_json(), seq) for seq, part in matches],
            )
        return tombstone, len(matches), legacy


def _tombstone(subject: ErasureSubject, ref: str, detail: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        ts=utc_now(), request_id=str(detail["erasure_id"]), tenant=subject.tenant, method="ERASE",
        route=f"/v1/admin/subjects/{subject.kind}s", status=200, outcome="ok", latency_ms=0.0,
        admin=AuditAction(action=ERASURE_ACTION, target=f"{subject.kind}:{ref}", detail=detail),
    )  # fmt: skip


def _audit_matches(cur: Cursor, subject: ErasureSubject, ref: str) -> tuple[list[tuple[int, PersonalPart]], int]:
    """The tenant's records whose personal fields name the subject (the user's keyed hash, or the document among
    those cited), not erased yet; and how many records written before the split name it in their body."""
    # As pydantic wrote the column: UTF-8, not json.dumps' \u escapes (the bodies of legacy records are ASCII).
    needle = f'"user_ref":"{ref}"' if subject.kind == "user" else to_json(subject.identifier).decode()
    rows = cur.execute(
        "SELECT seq, personal FROM audit_records WHERE tenant = ? AND personal LIKE ? ESCAPE '!'",
        (subject.tenant, f"%{_like_escaped(needle)}%"),
    )
    matches = []
    for row in rows:
        part = read_personal(row["personal"])
        if isinstance(part, PersonalPart) and _names(part, subject, ref):
            matches.append((int(row["seq"]), part))
    legacy = 0
    if subject.kind == "document":
        legacy = _count(
            cur,
            "SELECT COUNT(*) AS n FROM audit_records WHERE tenant = ? AND personal IS NULL AND body LIKE ? ESCAPE '!'",
            (subject.tenant, f"%{_like_escaped(json.dumps(subject.identifier))}%"),
        )
    return matches, legacy


def _names(part: PersonalPart, subject: ErasureSubject, ref: str) -> bool:
    if subject.kind == "user":
        return part.fields.get("user_ref") == ref
    cited = part.fields.get("cited_documents")
    return isinstance(cited, list) and subject.identifier in cited


def _answers_of_user(cur: Cursor, tenant: str, user: str) -> tuple[list[str], list[Any]]:
    """The subjects that may name ``user``, and the kept answers given to them: answers (and conversations) name
    their user by the canary subject (tenant, key, user hashed), so every key that ever answered in the tenant is
    tried: the stored keys, the ones the usage ledger counted (keys from the environment, deleted ones) and the
    keyless principal."""
    keys = cur.execute(
        "SELECT id AS key_id FROM api_keys WHERE tenant = ? UNION SELECT key_id FROM usage_daily WHERE tenant = ?",
        (tenant, tenant),
    )
    subjects = [str(canary_subject(tenant, key, user)) for key in {ANONYMOUS_KEY_ID, *(r["key_id"] for r in keys)}]
    rows: list[Any] = []
    for batch in _batches(subjects):
        rows += cur.execute(
            f"SELECT id, question FROM answers WHERE tenant = ? AND user_hash IN ({', '.join('?' * len(batch))})",
            (tenant, *batch),
        )
    return subjects, rows


def _answers_showing(cur: Cursor, tenant: str, collection: str | None, doc_id: str) -> list[Any]:
    """Kept answers shown one of the document's passages (cited or not: its text is kept with them)."""
    rows = cur.execute(
        "SELECT id, collection, citations FROM answers WHERE tenant = ? AND citations LIKE ? ESCAPE '!'",
        (tenant, f"%{_like_escaped(json.dumps(doc_id, ensure_ascii=False))}%"),
    )
    return [
        row
        for row in rows
        if (collection is None or row["collection"] == collection)
        and any(p.get("doc_id") == doc_id for p in json.loads(row["citations"]))
    ]


def _suite_line_matcher(
    subject: ErasureSubject, kept: _KeptAnswers, refs: set[str], keyed: Callable[[object], str]
) -> LineTest:
    """Which lines of a suite file hold the subject. Only lines exported from the subject's tenant (and a
    document's collection) are candidates: ``metadata`` says where a line came from (``evals.feedback_suite``),
    and a suite written by hand, whose ids may well be the same, is never touched. Among them, a document by its
    id (a corpus line's ``id``, a dataset line's ``reference_doc_ids``); a user by the ids of the answers they
    were given, or by the keyed hash of one an earlier run recorded (its answers are gone since)."""
    ids = set(kept.ids)

    def exported_here(line: dict[str, Any]) -> bool:
        origin = line.get("metadata")
        if not isinstance(origin, dict) or origin.get("tenant") != subject.tenant:
            return False
        return subject.collection is None or origin.get("collection") == subject.collection

    def holds(line: dict[str, Any]) -> bool:
        if not exported_here(line):
            return False
        line_id = line.get("id")
        if subject.kind == "document":
            return line_id == subject.identifier or subject.identifier in (line.get("reference_doc_ids") or [])
        return line_id in ids or (bool(refs) and keyed(line_id) in refs)

    return holds


def _like_escaped(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _count(cur: Cursor, sql: str, params: Sequence[Any]) -> int:
    return int(cur.execute(sql, params)[0]["n"])


def _batches(values: Sequence[str], size: int = 500) -> Iterator[list[str]]:
    for begin in range(0, len(values), size):
        yield list(values[begin : begin + size])
