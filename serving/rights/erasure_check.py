"""The erasure self-test the compliance report runs: on a scratch copy of the state store, plant a user's chats and
a document's kept answer in a tenant of its own, erase both, and check that the chain still verifies, that the
stores hold none of them and that the copy's bytes on disk hold neither marker. The deployment's own stores are
never written."""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from serving.contracts.answer import canary_subject
from serving.governance.access import ANONYMOUS_KEY_ID
from serving.governance.audit import AuditRecord, append_records
from serving.governance.audit_chain import verify
from serving.governance.subjects import SubjectKeys
from serving.infra.clock import stamp, utc_now
from serving.infra.state_store import StateStore
from serving.rights.erasure import Eraser, ErasureStores, ErasureSubject

SELF_TEST_TENANT = "ragops-erasure-self-test"
UNFINISHED_ERASURE_LIMIT = timedelta(days=1)  # a server start or a re-run finishes one long before this


def unfinished_erasures(store: StateStore, started_before: datetime) -> int:
    """Erasures started before ``started_before`` and not finished: their subject is still in the journal."""
    with store.transaction() as cur:
        rows = cur.execute(
            "SELECT COUNT(*) AS n FROM erasures WHERE finished_at IS NULL AND started_at < ?", (stamp(started_before),)
        )
    return int(rows[0]["n"])


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    reason: str
    evidence: tuple[str, ...] = ()


def erasure_self_test(source: StateStore, workdir: Path) -> SelfTest:
    """Run the self-test in ``workdir`` (an empty folder the caller removes) on a copy of ``source`` (SQLite), or
    on a fresh store when ``source`` is Postgres (its copy is the operator's ``pg_dump``)."""
    copy_path = workdir / "state.sqlite"
    copied = source.sqlite_path is not None and source.sqlite_path.exists()
    if copied:
        _copy_sqlite(source, copy_path)
    scratch = StateStore.open(None, copy_path)
    try:
        return _run(scratch, workdir, "a copy of the state store" if copied else "a fresh scratch store")
    finally:
        scratch.close()


def _run(store: StateStore, workdir: Path, what: str) -> SelfTest:
    marker = f"selftest-{uuid.uuid4().hex[:12]}"
    user, doc_id = f"{marker}-user", f"{marker}-doc"
    subjects = SubjectKeys(store)
    _plant(store, subjects, user, doc_id, marker)
    eraser = Eraser(ErasureStores(state=store, subjects=subjects))
    reports = [
        eraser.erase(ErasureSubject(kind="user", tenant=SELF_TEST_TENANT, identifier=user)),
        eraser.erase(ErasureSubject(kind="document", tenant=SELF_TEST_TENANT, identifier=doc_id, collection="c")),
    ]
    evidence = tuple(f"{r.kind}: removed {json.dumps(r.removed, sort_keys=True)}" for r in reports)
    problems = []
    if reports[0].removed["audit_records"] != 2 or reports[0].removed["answers"] != 1:
        problems.append("the user's planted records were not all erased")
    if reports[1].removed["answers"] != 1:
        problems.append("the document's planted answer was not erased")
    result = verify(store)
    if not result.ok:
        problems.append(f"the chain does not verify after the erasures: {result.first_bad}")
    store.close()  # its files are complete on disk before they are read
    on_disk = [path.name for path in workdir.iterdir() if path.is_file() and marker.encode() in path.read_bytes()]
    if on_disk:
        problems.append(f"the markers are still in {', '.join(sorted(on_disk))}")
    if problems:
        return SelfTest(False, f"erasure on {what}: {'; '.join(problems)}", evidence)
    return SelfTest(True, f"a planted user and document erased on {what}; the chain verifies, no byte of them left",
                    evidence)  # fmt: skip


def _plant(store: StateStore, subjects: SubjectKeys, user: str, doc_id: str, marker: str) -> None:
    """Two chats of the user (one citing the document), and one kept answer each."""
    user_ref = subjects.ref("user", SELF_TEST_TENANT, user)
    records = [
        AuditRecord(ts=utc_now(), request_id=uuid.uuid4().hex, tenant=SELF_TEST_TENANT, method="POST",
                    route="/v1/chat", status=200, outcome="answered", latency_ms=1.0, user_ref=user_ref,
                    question=f"{marker} question", cited_documents=cited)
        for cited in ([], ["other-doc"])
    ]  # fmt: skip
    passages = [{"index": 1, "doc_id": doc_id, "chunk_id": f"{doc_id}#0", "title": None, "text": f"{marker} passage",
                 "cited": True}]  # fmt: skip
    answers = [
        (f"ans_{uuid.uuid4().hex[:12]}", canary_subject(SELF_TEST_TENANT, ANONYMOUS_KEY_ID, user), "[]"),
        (f"ans_{uuid.uuid4().hex[:12]}", None, json.dumps(passages)),
    ]
    with store.transaction(write=True) as cur:
        append_records(cur, records)
        cur.executemany(
            "INSERT INTO answers (id, ts, tenant, collection, user_hash, question, answer, citations, outcome, "
            "prompt_name, prompt_version, prompt_hash, completion_tokens) "
            "VALUES (?, ?, ?, 'c', ?, ?, ?, ?, 'answered', 'p', 'v1', 'h', 0)",
            [(answer_id, utc_now(), SELF_TEST_TENANT, user_hash, f"{marker} asked", f"{marker} answer", citations)
             for answer_id, user_hash, citations in answers],
        )  # fmt: skip


def _copy_sqlite(source: StateStore, target: Path) -> None:
    """SQLite's online backup: one consistent copy while the server writes."""
    assert source.sqlite_path is not None
    with sqlite3.connect(source.sqlite_path) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)
    origin.close()
    copy.close()
