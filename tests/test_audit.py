"""The audit trail: a chain whose every kind of tampering ``verify`` names, pruning that keeps it verifiable,
export filters, one chain from concurrent writers (SQLite and Postgres); over real HTTP, the records of chat
requests and refusals; ``kill -9`` under load losing no record of a response that went out; backups."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import main as cli_main
from serving.governance.access import Principal, Role
from serving.governance.audit import AuditLog, AuditRecord, RequestFacts, build_record
from serving.governance.audit_chain import chain_hash, verify
from serving.governance.audit_export import export, prune
from serving.governance.audit_personal import chained_fields
from serving.infra.clock import stamp
from serving.infra.state_store import Row, StateStore
from tests.conftest import load_sample_records, make_answer
from tests.live_server import LiveServer, LiveServers

OLD, NEW = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 6, 10, tzinfo=UTC)


def record(n: int, tenant: str = "acme", when: datetime = NEW, key_id: str | None = "k1") -> AuditRecord:
    return AuditRecord(
        ts=stamp(when.replace(second=n % 60)), request_id=f"r{n}", key_id=key_id, tenant=tenant, role="reader",
        method="POST", route="/v1/chat", status=200, outcome="answered", latency_ms=1.0, prompt_tokens=3,
    )  # fmt: skip


def write(store: StateStore, records: list[AuditRecord]) -> list[int]:
    log = AuditLog(store, "hash")
    try:
        futures = [log.submit(r) for r in records]
        return [f.result(timeout=30) for f in futures]
    finally:
        log.close()


def sql(store: StateStore, statement: str, *params: Any) -> list[Row]:
    with store.transaction(write=True) as cur:
        return cur.execute(statement, params)


def row(store: StateStore, seq: int) -> Row:
    return sql(store, "SELECT seq, ts, tenant, key_id, body, prev_hash, hash FROM audit_records WHERE seq = ?", seq)[0]


def test_an_untouched_chain_verifies_and_links_each_record_to_the_last(store: StateStore) -> None:
    assert write(store, [record(n) for n in range(1, 8)]) == list(range(1, 8))
    result = verify(store)
    assert result.ok and result.records == 7 and result.head_seq == 7
    first, second = row(store, 1), row(store, 2)
    assert (
        first["prev_hash"] == "0" * 64
        and first["hash"] == chain_hash(first["prev_hash"], first["body"])
        and second["prev_hash"] == first["hash"]
    )
    assert json.loads(first["body"])["seq"] == 1  # the body holds its own place: a moved record shows


# Each tampering, done as someone with write access to the database would, and what verify names.
def edit_body(store: StateStore) -> None:
    sql(store, "UPDATE audit_records SET body = REPLACE(body, '\"status\":200', '\"status\":201') WHERE seq = 3")


def edit_and_rehash(store: StateStore) -> None:
    body, prev = row(store, 3)["body"], row(store, 3)["prev_hash"]
    forged = body.replace('"status":200', '"status":201')
    sql(store, "UPDATE audit_records SET body = ?, hash = ? WHERE seq = 3", forged, chain_hash(prev, forged))


def delete_middle(store: StateStore) -> None:
    sql(store, "DELETE FROM audit_records WHERE seq = 3")


def delete_and_renumber(store: StateStore) -> None:
    sql(store, "DELETE FROM audit_records WHERE seq = 3")
    for seq in range(4, 7):
        sql(store, "UPDATE audit_records SET seq = ? WHERE seq = ?", seq - 1, seq)
    sql(store, "UPDATE audit_head SET seq = 5, hash = ? WHERE id = 1", row(store, 5)["hash"])


def insert_forged(store: StateStore) -> None:
    for seq in range(6, 2, -1):  # make room at 3, as a forger must, and chain the forgery correctly
        sql(store, "UPDATE audit_records SET seq = ? WHERE seq = ?", seq + 1, seq)
    prev = row(store, 2)["hash"]
    forged = record(99).model_copy(update={"seq": 3})
    body = forged.canonical()
    sql(store, "INSERT INTO audit_records (seq, ts, tenant, key_id, body, prev_hash, hash) VALUES (3, ?, 'acme', "
        "'k1', ?, ?, ?)", forged.ts, body, prev, chain_hash(prev, body))  # fmt: skip


def swap_two(store: StateStore) -> None:
    sql(store, "UPDATE audit_records SET seq = -3 WHERE seq = 3")
    sql(store, "UPDATE audit_records SET seq = 3 WHERE seq = 4")
    sql(store, "UPDATE audit_records SET seq = 4 WHERE seq = -3")


def truncate_tail(store: StateStore) -> None:
    sql(store, "DELETE FROM audit_records WHERE seq >= 5")


def append_past_head(store: StateStore) -> None:
    prev = row(store, 6)["hash"]
    forged = record(99).model_copy(update={"seq": 7})
    body = forged.canonical()
    sql(store, "INSERT INTO audit_records (seq, ts, tenant, key_id, body, prev_hash, hash) VALUES (7, ?, 'acme', "
        "'k1', ?, ?, ?)", forged.ts, body, prev, chain_hash(prev, body))  # fmt: skip


TAMPERING: list[tuple[Callable[[StateStore], None], str, int]] = [
    (edit_body, "edited", 3),
    (edit_and_rehash, "edited", 3),
    (delete_middle, "removed", 3),
    (delete_and_renumber, "removed", 3),
    (insert_forged, "inserted", 4),  # the forgery itself chains; the record it pushed aside does not
    (swap_two, "reordered", 3),
    (truncate_tail, "head_mismatch", 5),
    (append_past_head, "head_mismatch", 7),
]


@pytest.mark.parametrize(("tamper", "kind", "seq"), TAMPERING, ids=[t[0].__name__ for t in TAMPERING])
def test_verify_names_the_first_bad_record_and_why(
    store: StateStore, tamper: Callable[[StateStore], None], kind: str, seq: int
) -> None:
    write(store, [record(n) for n in range(1, 7)])
    tamper(store)
    result = verify(store)
    assert not result.ok
    assert result.first_bad is not None
    assert (result.first_bad.kind, result.first_bad.seq) == (kind, seq), result.first_bad


def test_prune_keeps_a_checkpoint_the_rest_verifies_from(store: StateStore) -> None:
    write(store, [record(n, when=OLD) for n in range(1, 5)] + [record(n) for n in range(5, 9)])
    checkpoint = prune(store, datetime(2026, 3, 1, tzinfo=UTC))
    assert checkpoint is not None and (checkpoint.seq, checkpoint.records) == (4, 4)
    assert prune(store, datetime(2026, 3, 1, tzinfo=UTC)) is None  # nothing older is left
    write(store, [record(n) for n in range(10, 12)])
    result = verify(store)
    # 4 kept, the prune's own record (seq 9, attesting the checkpoint), 2 more
    assert result.ok and (result.checkpoint_seq, result.records, result.head_seq) == (4, 7, 11)
    sql(store, "UPDATE audit_checkpoints SET hash = ? WHERE seq = 4", "f" * 64)  # a forged checkpoint
    bad = verify(store).first_bad
    assert bad is not None and bad.kind == "edited" and bad.seq == 4


def test_prune_refuses_a_chain_that_does_not_verify(store: StateStore) -> None:
    write(store, [record(n, when=OLD) for n in range(1, 5)])
    edit_body(store)
    with pytest.raises(Exception, match="does not verify"):
        prune(store, NEW)


def test_export_filters_by_time_and_tenant_and_reverifies_offline(store: StateStore) -> None:
    write(store, [record(1, "acme", OLD), record(2, "beta", OLD), record(3, "acme"), record(4, "beta")])
    assert [r["seq"] for r in export(store, datetime(2026, 3, 1, tzinfo=UTC))] == [3, 4]
    assert [r["seq"] for r in export(store, None, "acme")] == [1, 3]
    lines = list(export(store))
    prev = "0" * 64
    for line in lines:  # anyone can check an unfiltered export without the database
        body = chained_fields(line)
        prev = hashlib.sha256((prev + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()
        assert prev == line["hash"]


def test_usage_is_counted_in_the_audit_transaction(store: StateStore) -> None:
    write(store, [record(1), record(2), record(3, key_id=None), record(4, tenant="beta")])
    rows = sql(store, "SELECT day, tenant, key_id, requests, prompt_tokens FROM usage_daily ORDER BY tenant")
    assert [tuple(r.values()) for r in rows] == [("2026-06-10", "acme", "k1", 2, 6), ("2026-06-10", "beta", "k1", 1, 3)]


def test_two_writers_on_one_database_keep_one_chain(database_url: str | None, tmp_path: Path) -> None:
    # Two stores, as two replicas have: separate connections contending for the chain's head.
    stores = [StateStore.open(database_url, tmp_path / "state.sqlite") for _ in range(2)]
    logs = [AuditLog(s, "hash") for s in stores]
    futures: list[Any] = []
    lock = threading.Lock()

    def replica(log: AuditLog, base: int) -> None:
        for n in range(150):
            future = log.submit(record(base + n))
            with lock:
                futures.append(future)
            if n % 10 == 0:
                future.result(timeout=30)

    threads = [threading.Thread(target=replica, args=(log, i * 1000)) for i, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wait(futures, timeout=60).not_done
    for log in logs:
        log.close()
    assert sorted(f.result() for f in futures) == list(range(1, 301))
    result = verify(stores[0])
    assert result.ok and result.records == 300
    for opened in stores:
        opened.close()


def test_verify_while_records_are_appended_finds_nothing_wrong(store: StateStore) -> None:
    write(store, [record(n) for n in range(1, 1200)])  # more than a page
    log, stop, appended = AuditLog(store, "hash"), threading.Event(), threading.Event()

    def append() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            log.submit(record(n)).result(timeout=30)
            appended.set()

    appender = threading.Thread(target=append)
    appender.start()
    try:
        results = [verify(store) for _ in range(2)]
        # On a loaded machine two verifies can end before the writer's first commit: the last one starts after it.
        assert appended.wait(timeout=30)
        results.append(verify(store))
    finally:
        stop.set()
        appender.join()
        log.close()
    assert all(r.ok for r in results), [r.first_bad for r in results]
    assert results[-1].head_seq > 1199


def rewrite_whole_chain(store: StateStore) -> None:
    """What someone with write access and the code can do: edit the first record, re-hash every one after it,
    move the head. Only a head kept elsewhere shows it."""
    seqs = [r["seq"] for r in sql(store, "SELECT seq FROM audit_records ORDER BY seq")]
    prev = row(store, seqs[0])["prev_hash"]
    for seq in seqs:
        body = (
            row(store, seq)["body"].replace('"status":200', '"status":201')
            if seq == seqs[0]
            else row(store, seq)["body"]
        )
        digest = chain_hash(prev, body)
        sql(store, "UPDATE audit_records SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?", body, prev, digest, seq)
        prev = digest
    sql(store, "UPDATE audit_head SET hash = ? WHERE id = 1", prev)


def test_the_cli_verifies_exports_prunes_and_checks_an_anchor(
    store: StateStore,
    database_url: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if database_url is not None:
        monkeypatch.setenv("RAGOPS_DATABASE_URL", database_url)
    cli = ["--data-dir", str(tmp_path)]  # the store fixture's SQLite file is tmp_path/state.sqlite
    write(store, [record(1, "acme", OLD), record(2, "beta", OLD), record(3, "acme"), record(4, "beta")])
    assert cli_main([*cli, "audit", "verify"]) == 0
    head = capsys.readouterr().out.splitlines()[-1].split()[1]
    assert head == f"4:{row(store, 4)['hash']}"
    out = tmp_path / "acme.jsonl"
    assert cli_main([*cli, "audit", "export", "--since", "2026-01-01", "--tenant", "acme", "--out", str(out)]) == 0
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 3]
    assert cli_main([*cli, "audit", "export", "--since", "yesterday"]) == 2
    assert cli_main([*cli, "audit", "prune", "--before", "2026-03-01"]) == 0
    assert "pruned 2 records" in capsys.readouterr().out
    assert cli_main([*cli, "audit", "verify", "--json", "--anchor", head]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_seq"] == 2
    rewrite_whole_chain(store)
    assert cli_main([*cli, "audit", "verify"]) == 0  # self-consistent: only the anchor can tell
    assert cli_main([*cli, "audit", "verify", "--anchor", head]) == 1
    assert "not the anchored one" in capsys.readouterr().out
    sql(store, "UPDATE audit_records SET body = REPLACE(body, '\"status\":201', '\"status\":202') WHERE seq = 3")
    assert cli_main([*cli, "audit", "verify"]) == 1
    assert "BROKEN at record 3: edited" in capsys.readouterr().out


def test_a_record_hashes_the_question_and_answer_or_keeps_them_redacted() -> None:
    answer = make_answer("Mail bob@example.com.", cost_usd=0.25)
    facts = RequestFacts("rid", "POST", "/v1/chat", 200, 12.5)
    principal = Principal("env-1234abcd", "acme", Role.reader)
    hashed = build_record(facts, principal, answer, "who is bob@example.com?", None, "hash")
    assert hashed.question is None and hashed.answer is None and hashed.cost_usd == 0.25
    assert hashed.question_sha256 == hashlib.sha256(b"who is bob@example.com?").hexdigest()
    redacted = build_record(facts, principal, answer, "who is bob@example.com?", None, "redacted")
    assert redacted.question == "who is [EMAIL]?" and redacted.answer == "Mail [EMAIL]."


def test_a_failed_write_fails_the_future_not_the_writer(tmp_path: Path) -> None:
    opened = StateStore.open(None, tmp_path / "state.sqlite")
    log = AuditLog(opened, "hash")
    try:
        sql(opened, "DROP TABLE usage_daily")  # the batch's transaction fails as a whole
        with pytest.raises(Exception, match="audit trail unavailable"):
            log.submit(record(1)).result(timeout=30)
        assert sql(opened, "SELECT COUNT(*) AS n FROM audit_records") == [{"n": 0}]  # nothing half-written
    finally:
        log.close()
        opened.close()


# --- over real HTTP -------------------------------------------------------------------------------------------

READER, ADMIN = "reader-secret-key", "admin-secret-key"
QUESTION = "What part of the Earth's atmosphere is oxygen?"


def env_key_id(key: str) -> str:
    return "env-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def start_server(live_server: LiveServers, data: Path, **settings: object) -> LiveServer:
    return live_server({"data_dir": data, "generator": "extractive", "default_collection": "sample", **settings})


def ingest(server: LiveServer, headers: dict[str, str]) -> None:
    server.ingest([{"id": r["id"], "text": r["text"]} for r in load_sample_records(20)], headers, timeout=300)


def records_of(data: Path) -> dict[str, dict[str, Any]]:
    opened = StateStore.open(None, data / "state.sqlite")
    try:
        return {r["request_id"]: r for r in export(opened)}
    finally:
        opened.close()


@pytest.mark.parametrize("content", ["hash", "redacted"])
def test_chat_and_refusals_are_recorded_over_http(tmp_path: Path, live_server: LiveServers, content: str) -> None:
    keys = {READER: "acme:reader", ADMIN: "acme:admin"}
    server = start_server(live_server, tmp_path, api_keys=keys, audit_content=content)
    ingest(server, {"Authorization": f"Bearer {ADMIN}"})
    reader = {"Authorization": f"Bearer {READER}"}
    chat = httpx.post(f"{server.url}/v1/chat", json={"question": QUESTION}, headers={**reader,
                      "X-Request-ID": "chat1"}, timeout=120)  # fmt: skip
    assert chat.status_code == 200, chat.text
    streamed = httpx.post(f"{server.url}/v1/chat", json={"question": QUESTION, "stream": True},
                          headers={**reader, "X-Request-ID": "stream1"}, timeout=120)  # fmt: skip
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert httpx.get(f"{server.url}/v1/models", headers={"X-Request-ID": "anon1"}).status_code == 401
    forbidden = httpx.delete(f"{server.url}/v1/documents/x", headers={**reader, "X-Request-ID": "forb1"})
    assert forbidden.status_code == 403
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    page = httpx.get(f"{server.url}/v1/admin/audit", params={"limit": 2},
                     headers={"Authorization": f"Bearer {ADMIN}", "X-Request-ID": "read1"}).json()  # fmt: skip
    assert len(page["records"]) == 2 and page["next_cursor"] == page["records"][-1]["seq"]
    assert httpx.get(f"{server.url}/v1/admin/audit", headers=reader).status_code == 403
    verified = httpx.get(f"{server.url}/v1/admin/audit/verify", headers={"Authorization": f"Bearer {ADMIN}"})
    assert verified.json()["ok"] is True
    created = httpx.post(f"{server.url}/v1/admin/keys", json={"tenant": "beta", "role": "editor"},
                         headers={"Authorization": f"Bearer {ADMIN}", "X-Request-ID": "admin1"})  # fmt: skip
    assert created.status_code == 201, created.text
    server.stop()
    recorded = records_of(tmp_path)
    answer = chat.json()
    first = recorded["chat1"]
    assert (first["key_id"], first["tenant"], first["role"]) == (env_key_id(READER), "acme", "reader")
    assert READER not in json.dumps(recorded)  # the key itself is never recorded
    assert first["route"] == "/v1/chat" and first["status"] == 200 and first["outcome"] == answer["outcome"]
    assert first["prompt_version"] == f"{answer['prompt']['name']}@{answer['prompt']['version']}"
    assert first["generator"] == "extractive" and first["cost_usd"] == answer["cost_usd"]
    assert first["cited_documents"] == list(dict.fromkeys(c["doc_id"] for c in answer["citations"] if c["cited"]))
    assert first["cited_documents"] and first["prompt_tokens"] == answer["usage"]["prompt_tokens"]
    assert first["question_sha256"] == hashlib.sha256(QUESTION.encode()).hexdigest()
    assert first["answer_sha256"] == hashlib.sha256(answer["answer"].encode()).hexdigest()
    assert (first["question"], first["answer"]) == ((None, None) if content == "hash" else (QUESTION, answer["answer"]))
    assert recorded["stream1"]["outcome"] == "cached" and recorded["stream1"]["cached"] is True
    # Keyless refusals are counted per address and minute (tests/test_metering.py), not recorded one by one.
    (anonymous,) = [r for r in recorded.values() if r["key_id"] is None and r["status"] == 401]
    assert (anonymous["outcome"], anonymous["count"], anonymous["client"]) == ("unauthenticated", 1, "127.0.0.1")
    assert (recorded["forb1"]["status"], recorded["forb1"]["route"]) == (403, "/v1/documents/{doc_id:path}")
    assert all(r["route"] != "/healthz" for r in recorded.values())
    action = recorded["admin1"]["admin"]
    assert action["action"] == "keys.create" and action["target"] == created.json()["id"]
    assert created.json()["key"] not in json.dumps(recorded)  # nor a key an admin created
    assert recorded["read1"]["admin"]["action"] == "audit.read"  # reading the trail is on the trail


def test_a_response_whose_record_cannot_be_written_is_a_503(tmp_path: Path, live_server: LiveServers) -> None:
    server = start_server(live_server, tmp_path)
    ingest(server, {})
    sql(broken := StateStore.open(None, tmp_path / "state.sqlite"), "DROP TABLE audit_head")
    broken.close()  # every audit transaction fails from now on
    plain = httpx.post(f"{server.url}/v1/chat", json={"question": QUESTION}, timeout=120)
    assert plain.status_code == 503, plain.text
    assert plain.json()["error"]["message"] == "audit trail unavailable"
    streamed = httpx.post(f"{server.url}/v1/chat", json={"question": QUESTION, "stream": True}, timeout=120)
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "audit_unavailable"
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # public routes are not audited


def test_with_audit_off_nothing_is_written(tmp_path: Path, live_server: LiveServers) -> None:
    server = start_server(live_server, tmp_path, audit=False)
    ingest(server, {})
    assert httpx.post(f"{server.url}/v1/chat", json={"question": QUESTION}, timeout=120).status_code == 200
    server.stop()
    assert records_of(tmp_path) == {}


def test_kill_9_under_load_loses_no_record_of_a_response(tmp_path: Path, live_server: LiveServers) -> None:
    # Each commit held 20 ms: the kill then always finds records pending, so a response released before its
    # record commits would be caught (without the delay the test passed even so: this disk syncs in ~1 ms).
    server = live_server(
        {"data_dir": tmp_path, "generator": "extractive", "default_collection": "sample"},
        {"RAGOPS_TEST_AUDIT_COMMIT_DELAY_MS": "20"},
    )
    ingest(server, {})
    answered: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                rid = f"c{number}n{n}"
                try:
                    response = http.post("/v1/chat", json={"question": QUESTION}, headers={"X-Request-ID": rid})
                except httpx.TransportError:
                    return  # the server died under this request: no response, no promise
                assert response.headers["x-request-id"] == rid
                with lock:
                    answered.append(rid)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(answered) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(server.process.pid, signal.SIGKILL)  # mid-flight: requests are queued, in batches, in commits
    stop.set()
    for thread in threads:
        thread.join()
    server.process.wait()
    assert len(answered) >= 300
    recorded = records_of(tmp_path)
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} answered requests have no audit record, e.g. {missing[:5]}"
    opened = StateStore.open(None, tmp_path / "state.sqlite")
    try:
        assert verify(opened).ok
    finally:
        opened.close()
    assert cli_main(["--data-dir", str(tmp_path), "audit", "verify"]) == 0


def test_backup_round_trip_restores_index_and_state_together(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    data, corpus = tmp_path / "data", tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in load_sample_records(6)))
    cli = ["--data-dir", str(data)]
    assert cli_main([*cli, "ingest", str(corpus)]) == 0
    opened = StateStore.open(None, data / "state.sqlite")
    write(opened, [record(n) for n in range(1, 4)])
    opened.close()
    archive = tmp_path / "backup.tar"
    assert cli_main([*cli, "backup", "create", str(archive)]) == 0
    corpus.write_text(corpus.read_text().splitlines()[0] + "\n")
    assert cli_main([*cli, "ingest", str(corpus), "--prune"]) == 0  # the index changes after the backup...
    opened = StateStore.open(None, data / "state.sqlite")
    write(opened, [record(n) for n in range(4, 6)])  # ...and so does the state
    opened.close()
    capsys.readouterr()
    assert cli_main([*cli, "backup", "restore", str(archive)]) == 0
    assert "state store restored" in capsys.readouterr().out
    opened = StateStore.open(None, data / "state.sqlite")
    try:
        result = verify(opened)
        assert result.ok and result.head_seq == 3
    finally:
        opened.close()
    assert cli_main([*cli, "search", "oxygen", "--json"]) == 0
    hits = capsys.readouterr().out
    assert len({hit["doc_id"] for hit in json.loads(hits)["hits"]}) > 1  # the six documents are back
    assert cli_main([*cli, "backup", "restore", str(corpus)]) == 2  # not an archive: one line, nothing changed


def test_backup_with_postgres_state_holds_the_index_only_and_says_how(
    tmp_path: Path,
    models_dir: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in load_sample_records(3)))
    cli, archive = ["--data-dir", str(tmp_path / "data")], tmp_path / "backup.tar"
    assert cli_main([*cli, "ingest", str(corpus)]) == 0
    assert cli_main([*cli, "backup", "create", str(archive)]) == 0  # SQLite state: both parts
    monkeypatch.setenv("RAGOPS_DATABASE_URL", postgres_url)
    capsys.readouterr()
    assert cli_main([*cli, "backup", "restore", str(archive)]) == 2  # a SQLite state cannot go into Postgres
    assert "pg_restore" in capsys.readouterr().err
    index_only = tmp_path / "index-only.tar"
    assert cli_main([*cli, "backup", "create", str(index_only)]) == 0
    assert "pg_dump" in capsys.readouterr().err
    assert cli_main([*cli, "backup", "restore", str(index_only)]) == 0
    assert "no state store in the backup" in capsys.readouterr().out
