"""Erasure end to end: a server with a day's traffic (chats by two users, cached answers in Redis, feedback, an
exported eval suite), then one document and one user erased over the API; nothing of them is found afterwards in
any store, any file of the data dir, Redis, a backup made afterwards or the logs written afterwards, and the audit
chain still verifies. Then the same through the CLI with ``kill -9`` in the middle: a re-run finishes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

ADMIN, READER = "admin-erasure-key", "reader-erasure-key"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_READER = {"Authorization": f"Bearer {READER}"}
DOC_ID = "doc-erase-me-7c1"
DOC_TEXT = (
    "The Quillmere Observatory was founded by Ottoline Vraskova in 1911. Its brass telescope, nicknamed Old "
    "Zephyr, sits on Brindlecombe Hill above the harbour."
)
QUESTION = "Who founded the Quillmere Observatory?"
OTHER_QUESTION = "What is the capital of France?"
ALICE, BOB = "user-alice-5f3a", "user-bob-91c2"
# What must be gone: the document's words and id, the user's identifier (her question is about the document).
NEEDLES = ("Vraskova", "Quillmere", "Brindlecombe", DOC_ID, ALICE)


def settings_of(data: Path, evals: Path, redis_url: str) -> dict[str, object]:
    return {
        "data_dir": data, "generator": "extractive", "default_collection": "sample", "evals_dir": evals,
        "api_keys": {ADMIN: "acme:admin", READER: "acme:reader"}, "redis_url": redis_url,
        "answer_cache_backend": "redis",
    }  # fmt: skip


def day_of_traffic(server: LiveServer, out: Path) -> None:
    """Documents, chats by two users (each question twice: the second from the cache), feedback, an export."""
    sample = [{"id": r["id"], "text": r["text"]} for r in load_sample_records(12)]
    server.ingest([*sample, {"id": DOC_ID, "text": DOC_TEXT}], AS_ADMIN, timeout=300)
    http = server.client(timeout=120, headers=AS_READER)
    answers = []
    for user, question in ((ALICE, QUESTION), (ALICE, OTHER_QUESTION), (BOB, QUESTION), (BOB, OTHER_QUESTION)):
        for _ in range(2):
            reply = http.post("/v1/chat", json={"question": question, "user": user})
            assert reply.status_code == 200, reply.text
            answers.append((user, reply.json()))
    alice_answer = answers[0][1]
    assert any(c["doc_id"] == DOC_ID for c in alice_answer["citations"])
    rating = {"id": alice_answer["id"], "rating": "down", "comment": "It was Ottoline Vraskova"}
    rated = http.post("/v1/feedback", json={**rating, "correction": "Ottoline Vraskova"})
    assert rated.status_code == 200, rated.text
    exported = ragops(
        server, "feedback", "export", "--tenant", "acme", "--rating", "down", "--suite", "erase_me", "--out", str(out)
    )
    assert exported.returncode == 0, exported.stderr


def ragops(server: LiveServer, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI on the server's data dir and settings (a subprocess: ``kill -9`` must not take the test with it)."""
    full = {**os.environ, **server_env(server), **(env or {})}
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], env=full, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def server_env(server: LiveServer) -> dict[str, str]:
    return {name: value for name, value in server.env.items() if name.startswith("RAGOPS_")}


def found_in_files(root: Path, needles: tuple[str, ...] = NEEDLES) -> dict[str, list[str]]:
    """Which needles occur in the raw bytes of which files under ``root`` (UTF-8 and UTF-16 both looked for)."""
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        found = [n for n in needles if n.encode() in raw or n.encode("utf-16-le") in raw]
        if found:
            hits[str(path.relative_to(root))] = found
    return hits


def found_in_redis(url: str, needles: tuple[str, ...] = NEEDLES) -> list[str]:
    client = redis.Redis.from_url(url)
    hits = []
    for name in client.scan_iter(count=500):
        dumped: Any = client.dump(name)  # the sync client's bytes
        value = bytes(dumped or b"")
        hits += [f"{name!r}: {n}" for n in needles if n.encode() in name or n.encode() in value]
    return hits


def test_erasing_a_document_and_a_user_leaves_nothing_of_them(
    tmp_path: Path, live_server: LiveServers, redis_url: str
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    server = live_server(settings_of(data, out / "evals", redis_url), log_level="info")
    day_of_traffic(server, out)
    assert found_in_files(data) and found_in_files(out) and found_in_redis(redis_url)  # there is something to erase
    admin = server.client(timeout=120, headers=AS_ADMIN)
    log_lines_before = len(server.log_lines())

    document = admin.delete(f"/v1/admin/subjects/documents/{DOC_ID}", params={"rewrite_suites": "true"})
    assert document.status_code == 200, document.text
    user = admin.delete(f"/v1/admin/subjects/users/{ALICE}", params={"rewrite_suites": "true"})
    assert user.status_code == 200, user.text
    erased_document, erased_user = document.json(), user.json()
    assert erased_document["removed"]["chunks"] == 1 and erased_document["removed"]["answers"] >= 2
    assert erased_document["removed"]["audit_records"] >= 4 and erased_document["removed"]["cached_answers"] >= 1
    assert erased_document["suites"] and erased_document["suites_rewritten"] and erased_document["reclaimed"]
    # Her other question, asked twice (her chats about the document went with it): records, kept answers.
    assert erased_user["removed"]["audit_records"] == 2 and erased_user["removed"]["answers"] == 2
    assert json.dumps(erased_user).count(ALICE) == 0 and DOC_ID not in json.dumps(erased_document)

    # Every way of reading the service back.
    search = admin.post("/v1/search", json={"query": "Quillmere Observatory Vraskova", "top_k": 10})
    assert search.status_code == 200 and DOC_ID not in search.text
    asked = {"question": "Who founded the observatory with the brass telescope?", "user": BOB}  # names no needle
    again = server.client(timeout=120, headers=AS_READER).post("/v1/chat", json=asked)
    assert again.status_code == 200 and not again.json()["cached"] and "Vraskova" not in again.text
    audit = admin.get("/v1/admin/audit", params={"limit": 1000})
    assert audit.status_code == 200 and not [n for n in NEEDLES if n in audit.text]
    assert admin.get("/v1/admin/audit/verify").json()["ok"] is True
    tombstones = [r for r in audit.json()["records"] if (r.get("admin") or {}).get("action") == "subject.erase"]
    assert [t["seq"] for t in tombstones] == [erased_document["tombstone_seq"], erased_user["tombstone_seq"]]
    usage = admin.get("/v1/admin/usage")
    assert usage.status_code == 200 and not [n for n in NEEDLES if n in usage.text]
    after = tmp_path / "out-after"
    export = ragops(server, "feedback", "export", "--tenant", "acme", "--suite", "after", "--out", str(after))
    assert "nothing to export" in export.stderr and not after.exists()  # her rating went with her answer
    assert not found_in_redis(redis_url)
    server.stop()
    written_after = [json.dumps(line) for line in server.log_lines()[log_lines_before:]]
    assert "/v1/admin/subjects/users/{user}" in "".join(written_after)  # erasure requests: logged by their template
    assert not [needle for needle in NEEDLES for line in written_after if needle in line]

    # On disk: the data dir, the rewritten suites (a note says what went), a backup made afterwards.
    assert found_in_files(data) == {}
    assert found_in_files(out) == {} and (out / "evals" / "erasures.jsonl").is_file()
    archive = tmp_path / "after.tar"
    made = ragops(server, "backup", "create", str(archive))
    assert made.returncode == 0, made.stderr
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as outer:
        outer.extractall(unpacked, filter="data")
    for inner in unpacked.rglob("*.tar.gz"):
        with tarfile.open(inner) as nested:
            nested.extractall(unpacked / f"{inner.name}.d", filter="data")
    assert found_in_files(unpacked) == {}
    verified = ragops(server, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_killed_erasure_is_finished_by_a_rerun(tmp_path: Path, live_server: LiveServers, redis_url: str) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    server = live_server(settings_of(data, out / "evals", redis_url))
    day_of_traffic(server, out)
    server.stop()  # the CLI opens the index itself
    for argv, kill_at in ((("--document", DOC_ID, "--tenant", "acme"), 2), (("--user", ALICE, "--tenant", "acme"), 3)):
        killed = ragops(server, "erase", *argv, "--suites", "--json", env={"RAGOPS_TEST_KILL_AT_STEP": str(kill_at)})
        assert killed.returncode == -9, killed.stderr
        rerun = ragops(server, "erase", *argv, "--suites", "--json")
        assert rerun.returncode == 0, rerun.stderr
        assert json.loads(rerun.stdout)["resumed"] is True
        twice = ragops(server, "erase", *argv, "--json")
        assert twice.returncode == 0 and json.loads(twice.stdout)["resumed"] is False  # idempotent: nothing left
    # Killed again, and a server started on the data dir finishes it before it answers.
    killed = ragops(server, "erase", "--user", BOB, "--tenant", "acme", env={"RAGOPS_TEST_KILL_AT_STEP": "3"})
    assert killed.returncode == -9, killed.stderr
    restarted = live_server(settings_of(data, out / "evals", redis_url), log_level="info")
    assert any(line["message"] == "interrupted erasure finished" for line in restarted.log_lines())
    restarted.stop()
    assert found_in_files(data, (*NEEDLES, BOB)) == {} and found_in_files(out) == {} and not found_in_redis(redis_url)
    verified = ragops(server, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("DELETE", f"/v1/admin/subjects/users/{ALICE}", AS_READER, 403),
        ("DELETE", f"/v1/admin/subjects/users/{ALICE}", {}, 401),
        ("DELETE", f"/v1/admin/subjects/users/{'x' * 300}", AS_ADMIN, 400),
        ("DELETE", f"/v1/admin/subjects/documents/{DOC_ID}?tenant=no%20such", AS_ADMIN, 400),
        ("DELETE", f"/v1/admin/subjects/documents/{DOC_ID}?collection=../etc", AS_ADMIN, 400),
        ("GET", f"/v1/admin/subjects/users/{ALICE}", AS_ADMIN, 405),
    ],
)
def test_bad_erasure_requests_are_refused_and_change_nothing(
    module_live_server: LiveServers, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    server = shared_server(module_live_server)
    before = server.client(headers=AS_ADMIN).get("/v1/admin/audit/verify").json()["records"]
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    chunks = server.client(headers=AS_ADMIN).get("/v1/documents", params={"collection": "sample"}).json()
    assert DOC_ID in {d["id"] for d in chunks["documents"]}  # the document is still there
    after = server.client(headers=AS_ADMIN).get("/v1/admin/audit/verify").json()
    assert after["ok"] and not _tombstones_since(server, before)


def test_another_tenants_document_of_the_same_id_is_untouched(module_live_server: LiveServers) -> None:
    server = shared_server(module_live_server)
    erased = server.client(headers=AS_ADMIN, timeout=120).delete(
        f"/v1/admin/subjects/documents/{DOC_ID}", params={"tenant": "beta", "collection": "sample"}
    )
    assert erased.status_code == 200 and erased.json()["removed"]["chunks"] == 0
    listed = server.client(headers=AS_ADMIN).get("/v1/documents", params={"collection": "sample"}).json()
    assert DOC_ID in {d["id"] for d in listed["documents"]}


def shared_server(servers: LiveServers) -> LiveServer:
    if not servers.started:
        server = servers({"generator": "extractive", "default_collection": "sample",
                          "api_keys": {ADMIN: "acme:admin", READER: "acme:reader"}})  # fmt: skip
        server.ingest([{"id": DOC_ID, "text": DOC_TEXT}], AS_ADMIN)
    return servers.started[0]


def _tombstones_since(server: LiveServer, records_before: int) -> list[dict[str, Any]]:
    page = server.client(headers=AS_ADMIN).get("/v1/admin/audit", params={"limit": 1000}).json()["records"]
    return [r for r in page[records_before:] if (r.get("admin") or {}).get("action") == "subject.erase"]
