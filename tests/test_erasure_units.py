"""Erasure (``serving.rights.erasure``) store by store, in process, on real SQLite and Postgres (and Redis for the
shared answer cache): the audit trail keeps verifying while a subject's personal fields become keyed hashes that a
tombstone names; tampering with the personal column still shows; kept answers, feedback, cached answers and
eval-suite lines of the subject go, everyone else's stay."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retrieval.index import Scope
from serving.answering.answer_cache import CacheKey, Eviction, InMemoryAnswerCache, RedisAnswerCache
from serving.contracts.answer import Answer, AnswerRequest, Citation, canary_subject
from serving.governance.access import ANONYMOUS_KEY_ID, KeyLimits, Principal, Role
from serving.governance.audit import AuditRecord, RequestFacts, append_records, build_record
from serving.governance.audit_chain import ERASURE_ACTION, chain_hash, read_head, verify
from serving.governance.audit_export import export
from serving.governance.audit_personal import (
    ERASED_FIELD,
    NONCE_FIELD,
    PERSONAL_FIELDS,
    ErasedPart,
    PersonalPart,
    canonical_json,
    chained_fields,
)
from serving.governance.keys import KeyStore
from serving.governance.subjects import SubjectKeys
from serving.infra.state_store import Row, StateStore
from serving.loop.answer_log import AnswerLog
from serving.loop.feedback import FeedbackStore
from serving.observe.metrics import ServiceMetrics
from serving.rights.erasure import Eraser, ErasureReport, ErasureStores, ErasureSubject
from serving.rights.erasure_suites import SUITE_NOTE
from tests.conftest import make_answer

TENANT, OTHER_TENANT = "acme", "globex"
USER, OTHER_USER = "alice@example.org", "bob@example.org"
DOC, OTHER_DOC = "contract-7741", "handbook-1"
COLLECTION, OTHER_COLLECTION = "docs", "archive"


def citation(doc_id: str, cited: bool = True) -> Citation:
    return Citation(index=1, doc_id=doc_id, chunk_id=f"{doc_id}#0", title=None, source=None, text=f"text of {doc_id}",
                    score=0.9, cited=cited)  # fmt: skip


def chat_record(store: StateStore, tenant: str, user: str | None, question: str, cited: Sequence[str]) -> AuditRecord:
    """A chat request's record as the middleware builds it: redacted content, the user's keyed hash."""
    principal = Principal(key_id="k1", tenant=tenant, role=Role.reader)
    answer = make_answer(f"answer to {question}", citations=[citation(doc_id) for doc_id in cited])
    user_ref = SubjectKeys(store).ref("user", tenant, user) if user is not None else None
    request_id = hashlib.sha256(question.encode()).hexdigest()[:16]
    facts = RequestFacts(request_id=request_id, method="POST", route="/v1/chat", status=200, latency_ms=2.0)
    return build_record(facts, principal, answer, question, None, "redacted", user_ref=user_ref)


def append(store: StateStore, records: Sequence[AuditRecord]) -> list[int]:
    with store.transaction(write=True) as cur:
        return append_records(cur, records)


def sql(store: StateStore, statement: str, *params: Any) -> list[Row]:
    with store.transaction(write=True) as cur:
        return cur.execute(statement, params)


def eraser(store: StateStore, **stores: Any) -> Eraser:
    return Eraser(ErasureStores(state=store, subjects=SubjectKeys(store), **stores))


def erase_user(store: StateStore, tenant: str = TENANT, user: str = USER, **stores: Any) -> ErasureReport:
    return eraser(store, **stores).erase(ErasureSubject(kind="user", tenant=tenant, identifier=user))


def erase_document(store: StateStore, collection: str | None = COLLECTION, **stores: Any) -> ErasureReport:
    subject = ErasureSubject(kind="document", tenant=TENANT, identifier=DOC, collection=collection)
    return eraser(store, **stores).erase(subject)


def without(line: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {name: value for name, value in line.items() if name not in names}


def exported_by_seq(store: StateStore) -> dict[int, dict[str, Any]]:
    return {int(line["seq"]): line for line in export(store)}


def personal_column(store: StateStore, seq: int) -> str | None:
    column = sql(store, "SELECT personal FROM audit_records WHERE seq = ?", seq)[0]["personal"]
    return None if column is None else str(column)


def set_personal(store: StateStore, seq: int, column: str | None) -> None:
    sql(store, "UPDATE audit_records SET personal = ? WHERE seq = ?", column, seq)


def everything_stored(store: StateStore, table: str) -> str:
    """Every row of ``table`` as one string: what a search for an identifier in it reads."""
    return json.dumps(sql(store, f"SELECT * FROM {table}"), default=str)  # our own table names


# --- the audit trail ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trail:
    """Seqs of the records written by ``trail``, by whose they are."""

    user: list[int]  # the user's, in the tenant (one cites DOC)
    other_user: list[int]  # another user's in the tenant (one cites DOC)
    other_tenant: list[int]  # the same user id in another tenant (cites DOC)
    impersonal: list[int]  # a request without user or content


@pytest.fixture
def trail(store: StateStore) -> Trail:
    seqs = append(store, [
        chat_record(store, TENANT, USER, "alice asks about her lease", [DOC]),
        chat_record(store, TENANT, OTHER_USER, "bob asks about holidays", [OTHER_DOC]),
        chat_record(store, TENANT, USER, "alice asks about parking", [OTHER_DOC]),
        chat_record(store, OTHER_TENANT, USER, "globex alice asks about lunch", [DOC]),
        chat_record(store, TENANT, OTHER_USER, "bob asks about the contract", [DOC, OTHER_DOC]),
        AuditRecord(ts="2026-06-10T00:00:00Z", request_id="health", method="GET", route="/v1/health", status=200,
                    outcome="ok", latency_ms=0.1),
    ])  # fmt: skip
    return Trail(user=[seqs[0], seqs[2]], other_user=[seqs[1], seqs[4]], other_tenant=[seqs[3]], impersonal=[seqs[5]])


def test_erasing_a_user_replaces_their_personal_fields_by_keyed_hashes_and_the_chain_verifies(
    store: StateStore, trail: Trail
) -> None:
    before = exported_by_seq(store)
    report = erase_user(store)

    assert verify(store).ok, verify(store).first_bad
    assert report.removed["audit_records"] == 2 and report.audit_legacy_kept == 0
    after = exported_by_seq(store)
    assert report.tombstone_seq == max(before) + 1 and after[report.tombstone_seq]["admin"]["action"] == ERASURE_ACTION
    for seq in trail.user:
        line = after[seq]
        assert line["erased_by"] == report.tombstone_seq
        for name in ("user_ref", "question", "answer", "question_sha256", "answer_sha256", "cited_documents"):
            assert str(line[name]).startswith("erased:"), name  # each a keyed hash (none was empty)
        assert "alice" not in json.dumps(line) and DOC not in json.dumps(line)
        # Everything else as it was: the hashed body is never rewritten.
        assert without(line, {*PERSONAL_FIELDS, ERASED_FIELD}) == without(before[seq], {*PERSONAL_FIELDS, NONCE_FIELD})
    for seq in trail.other_user + trail.other_tenant + trail.impersonal:
        assert after[seq] == before[seq], seq  # another user's, another tenant's (the same user id) untouched
    # Gone from the rows too, not only from the export (the other tenant's alice keeps hers).
    personal = [personal_column(store, seq) or "" for seq in trail.user]
    assert not any("alice" in column for column in personal)
    assert "globex alice asks about lunch" in (personal_column(store, trail.other_tenant[0]) or "")
    if store.sqlite_path is not None:  # secure_delete and the truncated log: gone from the bytes on disk too
        on_disk = b"".join(path.read_bytes() for path in store.sqlite_path.parent.glob(f"{store.sqlite_path.name}*"))
        assert b"alice asks about her lease" not in on_disk and b"alice asks about parking" not in on_disk
        assert USER.encode() not in on_disk  # the journal's copy of the identifier too


def test_the_tombstone_names_the_subject_by_its_keyed_hash_only(store: StateStore, trail: Trail) -> None:
    report = erase_user(store)
    document = erase_document(store)

    for erased, identifier in ((report, USER), (document, DOC)):
        assert erased.tombstone_seq is not None
        tombstone = exported_by_seq(store)[erased.tombstone_seq]
        shown = json.dumps(tombstone)
        assert identifier not in shown and "alice" not in shown
        assert tombstone["admin"]["target"] == f"{erased.kind}:{erased.subject_ref}"
        assert tombstone["admin"]["detail"]["subject_ref"] == erased.subject_ref
        assert tombstone["admin"]["detail"]["removed"]["audit_records"] == erased.removed["audit_records"]
        body = sql(store, "SELECT body, personal FROM audit_records WHERE seq = ?", erased.tombstone_seq)[0]
        assert identifier not in json.dumps(body)
    # The journal keeps the identifier only while the erasure runs.
    journal = sql(store, "SELECT identifier, finished_at, subject_ref FROM erasures ORDER BY started_at")
    assert [row["identifier"] for row in journal] == [None, None] and all(row["finished_at"] for row in journal)
    assert USER not in everything_stored(store, "erasures") and DOC not in everything_stored(store, "erasures")


def test_a_second_erasure_matches_nothing_and_the_chain_still_verifies(store: StateStore, trail: Trail) -> None:
    first = erase_user(store)
    erased = {seq: personal_column(store, seq) for seq in trail.user}

    again = erase_user(store)

    assert again.removed["audit_records"] == 0 and not again.resumed
    assert again.tombstone_seq is not None and first.tombstone_seq is not None
    assert again.tombstone_seq > first.tombstone_seq
    assert {seq: personal_column(store, seq) for seq in trail.user} == erased  # still naming the first tombstone
    assert verify(store).ok


def test_erasing_a_document_without_an_index_erases_the_records_that_cite_it(store: StateStore, trail: Trail) -> None:
    report = erase_document(store)  # ingestor=None: a state store without the index (the CLI on another host)

    assert verify(store).ok
    assert "chunks" not in report.removed and report.removed["audit_records"] == 2
    after = exported_by_seq(store)
    citing = [trail.user[0], trail.other_user[1]]
    for seq in citing:
        assert after[seq]["erased_by"] == report.tombstone_seq and DOC not in json.dumps(after[seq])
    for seq in [trail.user[1], trail.other_user[0], *trail.other_tenant]:
        assert "erased_by" not in after[seq], seq
    assert after[trail.other_tenant[0]]["cited_documents"] == [DOC]


def write_legacy(store: StateStore, record: AuditRecord) -> int:
    """A record as written before personal fields were kept apart: all of it in the hashed body, no column."""
    with store.transaction(write=True) as cur:
        seq, prev = read_head(cur)
        body = record.model_copy(update={"seq": seq + 1}).canonical()
        digest = chain_hash(prev, body)
        cur.execute(
            "INSERT INTO audit_records (seq, ts, tenant, key_id, body, personal, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
            (seq + 1, record.ts, record.tenant, record.key_id, body, prev, digest),
        )
        cur.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq + 1, digest),
        )
    return seq + 1


def test_records_written_before_the_split_are_counted_and_kept_as_written(store: StateStore) -> None:
    legacy = chat_record(store, TENANT, None, "an old question", [DOC]).model_copy(update={"key_id": None})
    legacy_seq = write_legacy(store, legacy)
    (current,) = append(store, [chat_record(store, TENANT, USER, "a new question", [DOC])])
    assert verify(store).ok

    report = erase_document(store)

    assert report.audit_legacy_kept == 1 and report.removed["audit_records"] == 1
    assert report.tombstone_seq is not None
    assert verify(store).ok
    lines = exported_by_seq(store)
    assert lines[legacy_seq]["cited_documents"] == [DOC]  # rewriting it would break the chain
    assert lines[current]["erased_by"] == report.tombstone_seq
    assert lines[report.tombstone_seq]["admin"]["detail"]["audit_legacy_kept"] == 1


# --- tampering with the personal column --------------------------------------------------------------------------


def test_an_edited_personal_field_fails_verify(store: StateStore, trail: Trail) -> None:
    seq = trail.other_user[0]
    part = PersonalPart.model_validate_json(personal_column(store, seq) or "")
    forged = part.model_copy(update={"fields": {**part.fields, "cited_documents": [DOC]}})
    set_personal(store, seq, forged.model_dump_json())

    result = verify(store)

    assert not result.ok and result.first_bad is not None
    assert (result.first_bad.seq, result.first_bad.kind) == (seq, "edited")
    assert "digest" in result.first_bad.reason


@pytest.mark.parametrize("names", ["an ordinary record after it", "a seq past the head", "a tombstone before it"])
def test_personal_fields_replaced_without_an_erasure_after_them_fail_verify(
    store: StateStore, trail: Trail, names: str
) -> None:
    report = erase_user(store)
    assert report.tombstone_seq is not None
    (later,) = append(store, [chat_record(store, TENANT, OTHER_USER, "bob asks later", [])])
    victim, named = {
        "an ordinary record after it": (trail.other_user[0], trail.other_user[1]),
        "a seq past the head": (trail.other_user[0], later + 10),
        "a tombstone before it": (later, report.tombstone_seq),
    }[names]
    set_personal(store, victim, ErasedPart(erased_by=named, keyed={"user_ref": "0" * 32}).model_dump_json())

    result = verify(store)

    assert not result.ok and result.first_bad is not None
    assert (result.first_bad.seq, result.first_bad.kind) == (victim, "edited")
    assert f"naming erasure record {named}" in result.first_bad.reason


def test_a_record_pointed_at_a_real_tombstone_it_was_not_erased_by_fails_verify(
    store: StateStore, trail: Trail
) -> None:
    report = erase_user(store)  # forging: hide who made another request behind the user's real tombstone
    assert report.tombstone_seq is not None
    set_personal(store, trail.other_user[0], ErasedPart(erased_by=report.tombstone_seq, keyed={}).model_dump_json())

    result = verify(store)

    assert not result.ok and result.first_bad is not None and result.first_bad.kind == "edited"
    assert "does not list it among the records it erased" in result.first_bad.reason


def test_a_personal_column_removed_from_a_record_that_has_a_digest_fails_verify(
    store: StateStore, trail: Trail
) -> None:
    seq = trail.user[1]
    set_personal(store, seq, None)

    result = verify(store)

    assert not result.ok and result.first_bad is not None
    assert (result.first_bad.seq, result.first_bad.kind) == (seq, "edited")


def test_an_export_after_an_erasure_still_re_hashes_offline(store: StateStore, trail: Trail) -> None:
    erase_user(store)
    erase_document(store)
    append(store, [chat_record(store, TENANT, OTHER_USER, "bob asks afterwards", [OTHER_DOC])])

    prev = "0" * 64
    for line in export(store):  # without the database: drop prev_hash, hash and the personal fields, re-hash
        assert line["prev_hash"] == prev
        prev = hashlib.sha256((prev + canonical_json(chained_fields(line))).encode()).hexdigest()
        assert prev == line["hash"], line["seq"]
    assert verify(store).ok


# --- kept answers and their feedback -----------------------------------------------------------------------------


def keep(log: AnswerLog, tenant: str, key_id: str, user: str | None, doc_id: str,
         collection: str = COLLECTION) -> str:  # fmt: skip
    """A kept answer as the chat route leaves it: its request's canary subject names (tenant, key, user)."""
    request = AnswerRequest(question=f"what does {doc_id} say, {user}?", scope=Scope(collection, tenant), user=user,
                            canary_subject=canary_subject(tenant, key_id, user))  # fmt: skip
    log.record(request, make_answer(f"It says so [1]. ({user})", id=request.id, citations=[citation(doc_id, False)]))
    return request.id


@dataclass(frozen=True)
class Kept:
    user: list[str]  # the user's answers in the tenant, under a stored key and keyless
    showing_doc: list[str]  # others' answers in the tenant's collection that were shown DOC
    others: list[str]  # everything else: another user, another collection, another tenant
    rated: list[str]  # the answers with feedback


@pytest.fixture
def kept(store: StateStore) -> Kept:
    key_id = KeyStore(store).create(TENANT, Role.reader, "app", None, KeyLimits()).record.id
    other_key = KeyStore(store).create(OTHER_TENANT, Role.reader, "app", None, KeyLimits()).record.id
    log = AnswerLog(store, retention_days=30)
    try:
        user = [keep(log, TENANT, key_id, USER, OTHER_DOC), keep(log, TENANT, ANONYMOUS_KEY_ID, USER, OTHER_DOC)]
        showing = [keep(log, TENANT, key_id, OTHER_USER, DOC), keep(log, TENANT, key_id, None, DOC)]
        others = [
            keep(log, TENANT, key_id, OTHER_USER, OTHER_DOC),
            keep(log, TENANT, key_id, OTHER_USER, DOC, collection=OTHER_COLLECTION),
            keep(log, OTHER_TENANT, other_key, USER, DOC),
        ]
        assert log.flush()
        rated = [user[0], showing[0], others[0], others[2]]
        for answer_id in rated:
            found = log.find(answer_id, TENANT if answer_id != others[2] else OTHER_TENANT)
            assert found is not None
            FeedbackStore(store).rate(found, "down", comment="wrong")
    finally:
        log.close()
    return Kept(user=user, showing_doc=showing, others=others, rated=rated)


def answer_ids(store: StateStore) -> set[str]:
    return {str(row["id"]) for row in sql(store, "SELECT id FROM answers")}


def rated_ids(store: StateStore) -> set[str]:
    return {str(row["answer_id"]) for row in sql(store, "SELECT answer_id FROM feedback")}


def test_erasing_a_user_deletes_their_kept_answers_and_feedback_under_every_key(store: StateStore, kept: Kept) -> None:
    report = erase_user(store)

    assert (report.removed["answers"], report.removed["feedback"]) == (2, 1)
    assert answer_ids(store) == {*kept.showing_doc, *kept.others}  # the same user id in globex stays
    assert rated_ids(store) == set(kept.rated) - set(kept.user)


def test_erasing_a_document_without_an_index_deletes_the_answers_shown_it(store: StateStore, kept: Kept) -> None:
    (cited,) = append(store, [chat_record(store, TENANT, OTHER_USER, "bob asks about the contract", [DOC])])

    report = erase_document(store)  # ingestor=None

    assert (report.removed["answers"], report.removed["feedback"]) == (2, 1)
    assert answer_ids(store) == {*kept.user, *kept.others}  # another collection's, another tenant's stay
    assert rated_ids(store) == set(kept.rated) - set(kept.showing_doc)
    assert exported_by_seq(store)[cited]["erased_by"] == report.tombstone_seq
    assert verify(store).ok


def test_erasing_a_document_of_every_collection_reaches_them_all(store: StateStore, kept: Kept) -> None:
    report = erase_document(store, collection=None)

    assert report.removed["answers"] == 3
    assert answer_ids(store) == {*kept.user, kept.others[0], kept.others[2]}


def test_a_users_answers_given_under_a_settings_key_are_erased(store: StateStore) -> None:
    env_key = "env-1a2b3c4d"  # as serving.governance.keys names a RAGOPS_API_KEYS key; it is in no table
    record = chat_record(store, TENANT, USER, "alice asks via the env key", []).model_copy(update={"key_id": env_key})
    append(store, [record])  # every request of the key leaves its id in the trail and the usage ledger
    log = AnswerLog(store, retention_days=30)
    try:
        answer_id = keep(log, TENANT, env_key, USER, OTHER_DOC)
        assert log.flush()
    finally:
        log.close()

    report = erase_user(store)

    assert report.removed["answers"] == 1 and answer_id not in answer_ids(store)


# --- cached answers ----------------------------------------------------------------------------------------------


def cache_key(tenant: str, collection: str, question: str) -> CacheKey:
    return CacheKey(question=question, collection=collection, tenant=tenant, index_version="v1", prompt="rag@v1",
                    generator="extractive", top_k=4)  # fmt: skip


CACHED = {  # name -> (key, the document its answer shows)
    "doc": (cache_key(TENANT, COLLECTION, "q1"), DOC),
    "other_doc": (cache_key(TENANT, COLLECTION, "q2"), OTHER_DOC),
    "doc_other_collection": (cache_key(TENANT, OTHER_COLLECTION, "q3"), DOC),
    "doc_other_tenant": (cache_key(OTHER_TENANT, COLLECTION, "q4"), DOC),
}


def cached_answer(doc_id: str) -> Answer:
    return make_answer("cached [1].", citations=[citation(doc_id, cited=False)])


def fill(cache: InMemoryAnswerCache | RedisAnswerCache) -> None:
    for key, doc_id in CACHED.values():
        cache.put(key, cached_answer(doc_id))


def still_cached(cache: InMemoryAnswerCache | RedisAnswerCache) -> set[str]:
    return {name for name, (key, _) in CACHED.items() if cache.get(key) is not None}


def test_the_in_memory_cache_evicts_a_documents_answers_then_a_tenants() -> None:
    cache = InMemoryAnswerCache()
    fill(cache)

    assert cache.evict(Eviction(tenant=TENANT, collection=COLLECTION, doc_id=DOC)) == 1
    assert still_cached(cache) == {"other_doc", "doc_other_collection", "doc_other_tenant"}
    assert cache.evict(Eviction(tenant=TENANT)) == 2
    assert still_cached(cache) == {"doc_other_tenant"}


def test_the_redis_cache_evicts_a_documents_answers_then_a_tenants(redis_url: str) -> None:
    cache = RedisAnswerCache(redis_url, ttl_s=300, metrics=ServiceMetrics(0.5))
    fill(cache)
    assert still_cached(cache) == set(CACHED)

    # The Redis key hides the collection: the document's answers of every collection of the tenant go.
    assert cache.evict(Eviction(tenant=TENANT, collection=COLLECTION, doc_id=DOC)) == 2
    assert still_cached(cache) == {"other_doc", "doc_other_tenant"}
    assert cache.evict(Eviction(tenant=TENANT)) == 1
    assert still_cached(cache) == {"doc_other_tenant"}
    assert cache.evict(Eviction(tenant=TENANT)) == 0


def test_an_erasure_empties_the_users_tenant_from_the_shared_cache(store: StateStore, redis_url: str) -> None:
    semantic = InMemoryAnswerCache()
    cache = RedisAnswerCache(redis_url, ttl_s=300, metrics=ServiceMetrics(0.5), semantic=semantic)
    fill(cache)

    report = erase_user(store, answer_cache=cache)

    # Each of the tenant's 3 entries from Redis and from this process's semantic layer.
    assert report.removed["cached_answers"] == 6
    assert still_cached(cache) == {"doc_other_tenant"}


# --- eval suites ---------------------------------------------------------------------------------------------------


def write_lines(path: Path, lines: Sequence[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return text


@dataclass(frozen=True)
class Suites:
    root: Path
    corpus: Path
    dataset: Path
    feedback_cases: Path
    untouched: Path


@pytest.fixture
def suites(tmp_path: Path, kept: Kept) -> Suites:
    root = tmp_path / "evals"
    corpus, dataset = root / "corpora" / "acme.jsonl", root / "datasets" / "acme_questions.jsonl"
    cases, untouched = root / "datasets" / "from_feedback.jsonl", root / "datasets" / "other.jsonl"
    here = {"metadata": {"tenant": TENANT, "collection": COLLECTION}}  # as feedback export writes its lines
    elsewhere = {"metadata": {"tenant": OTHER_TENANT, "collection": COLLECTION}}
    write_lines(
        corpus, [{"id": DOC, "text": "the contract", **here}, {"id": OTHER_DOC, "text": "the handbook", **here}]
    )
    write_lines(dataset, [{"id": "q1", "question": "what is in the contract?", "reference_doc_ids": [DOC], **here},
                          {"id": "q2", "question": "holidays?", "reference_doc_ids": [OTHER_DOC], **here}])  # fmt: skip
    write_lines(cases, [{"id": kept.user[0], "question": "asked by alice", **here},
                        {"id": kept.others[0], "question": "asked by bob", **here}])  # fmt: skip
    # Never touched: a suite written by hand (no metadata) and another tenant's export, both naming the document.
    write_lines(untouched, [{"id": "q9", "question": "unrelated", "reference_doc_ids": [OTHER_DOC]},
                            {"id": "q8", "question": "by hand", "reference_doc_ids": [DOC]},
                            {"id": DOC, "text": "another tenant's contract", **elsewhere}])  # fmt: skip
    return Suites(root=root, corpus=corpus, dataset=dataset, feedback_cases=cases, untouched=untouched)


def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_suites_holding_the_document_are_listed_and_left_as_they_are(store: StateStore, suites: Suites) -> None:
    before = {path: path.read_bytes() for path in suites.root.rglob("*.jsonl")}

    report = erase_document(store, suites_dir=suites.root)

    assert sorted(report.suites) == sorted([str(suites.corpus), str(suites.dataset)])
    assert not report.suites_rewritten
    assert {path: path.read_bytes() for path in suites.root.rglob("*.jsonl")} == before
    assert not (suites.root / SUITE_NOTE).exists()


def test_suites_are_rewritten_without_the_documents_lines_and_the_note_names_no_identifier(
    store: StateStore, suites: Suites
) -> None:
    subject = ErasureSubject(kind="document", tenant=TENANT, identifier=DOC, collection=COLLECTION)
    report = eraser(store, suites_dir=suites.root).erase(subject, rewrite_suites=True)

    assert report.suites_rewritten and len(report.suites) == 2
    assert ids_in(suites.corpus) == [OTHER_DOC] and ids_in(suites.dataset) == ["q2"]
    assert ids_in(suites.untouched) == ["q9", "q8", DOC]  # by hand, and another tenant's
    notes = [json.loads(line) for line in (suites.root / SUITE_NOTE).read_text(encoding="utf-8").splitlines()]
    assert sorted((note["file"], note["lines_removed"]) for note in notes) == sorted(
        [(str(suites.corpus), 1), (str(suites.dataset), 1)]
    )
    assert {note["erasure_id"] for note in notes} == {report.id}
    assert {note["subject_ref"] for note in notes} == {report.subject_ref}
    assert DOC not in (suites.root / SUITE_NOTE).read_text(encoding="utf-8")
    assert not list(suites.root.rglob(".*.erasing"))


def test_a_document_listed_first_is_rewritten_by_a_later_run(store: StateStore, suites: Suites) -> None:
    subject = ErasureSubject(kind="document", tenant=TENANT, identifier=DOC, collection=COLLECTION)
    eraser(store, suites_dir=suites.root).erase(subject)

    later = eraser(store, suites_dir=suites.root).erase(subject, rewrite_suites=True)

    assert later.suites_rewritten and ids_in(suites.corpus) == [OTHER_DOC]


def test_a_users_suite_lines_listed_first_are_rewritten_by_a_later_run(
    store: StateStore, suites: Suites, kept: Kept
) -> None:
    subject = ErasureSubject(kind="user", tenant=TENANT, identifier=USER)
    listed = eraser(store, suites_dir=suites.root).erase(subject)
    assert listed.suites == [str(suites.feedback_cases)] and not listed.suites_rewritten
    assert ids_in(suites.feedback_cases) == [kept.user[0], kept.others[0]]

    later = eraser(store, suites_dir=suites.root).erase(subject, rewrite_suites=True)

    assert ids_in(suites.feedback_cases) == [kept.others[0]], later.suites


def test_a_users_suite_lines_go_with_rewrite_suites(store: StateStore, suites: Suites, kept: Kept) -> None:
    report = eraser(store, suites_dir=suites.root).erase(
        ErasureSubject(kind="user", tenant=TENANT, identifier=USER), rewrite_suites=True
    )

    assert report.suites == [str(suites.feedback_cases)] and report.suites_rewritten
    assert ids_in(suites.feedback_cases) == [kept.others[0]]
    note = (suites.root / SUITE_NOTE).read_text(encoding="utf-8")
    assert USER not in note and kept.user[0] not in note and json.loads(note)["lines_removed"] == 1


# --- identifiers as the columns hold them --------------------------------------------------------------------


def test_a_document_id_outside_ascii_is_erased_from_the_audit_trail(store: StateStore) -> None:
    (seq,) = append(store, [chat_record(store, TENANT, OTHER_USER, "bob asks about the menu", ["menü-café"])])

    report = eraser(store).erase(ErasureSubject(kind="document", tenant=TENANT, identifier="menü-café"))

    assert report.removed["audit_records"] == 1 and exported_by_seq(store)[seq]["erased_by"] == report.tombstone_seq
