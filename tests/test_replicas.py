"""Two ``ragops serve`` replicas sharing one Redis and one Postgres, as behind a load balancer: one rate limit
across both, one answer cache (a question answered by one is a cache hit on the other), one audit chain. Each
replica holds its own embedded index with the same documents (no Qdrant server binary is obtainable here; with
``RAGOPS_QDRANT_URL`` they would share one index): the cache key's index version is a digest of the documents,
so both compute the same one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.container import Services
from retrieval.documents import Document, Section
from retrieval.index import Scope
from serving.answering.answer_cache import IndexDigest
from tests.conftest import ROOT, load_sample_records, sample_documents
from tests.live_server import LiveServer, LiveServers

READER_RPM = 6
KEYS = {"editor-key": "acme:editor", "reader-1": "acme:reader", "reader-2": "acme:reader"}
ROLE_LIMITS = {
    "reader": {"requests_per_minute": READER_RPM, "tokens_per_day": 1_000_000},
    "editor": {"requests_per_minute": 1000, "tokens_per_day": 1_000_000},
    "admin": {"requests_per_minute": 1000, "tokens_per_day": 1_000_000},
}
QUESTION = "What part of the Earth's atmosphere is oxygen?"


@pytest.fixture
def replicas(live_server: LiveServers, redis_url: str, postgres_url: str) -> tuple[LiveServer, LiveServer]:
    settings = {
        "generator": "extractive",
        "default_collection": "sample",
        "api_keys": KEYS,
        "role_limits": ROLE_LIMITS,
        "database_url": postgres_url,
        "redis_url": redis_url,
        "answer_cache_backend": "redis",
    }
    started = []
    for name in ("a", "b"):
        started.append(live_server(settings, name=name))
        started[-1].ingest(load_sample_records(40), headers=headers("editor-key", f"ingest{name}"))
    return started[0], started[1]


def headers(key: str, request_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Request-ID": request_id}


def test_two_replicas_share_one_rate_limit_one_answer_cache_and_one_audit_chain(
    replicas: tuple[LiveServer, LiveServer], postgres_url: str, tmp_path: Path
) -> None:
    a, b = replicas
    sent: dict[str, list[str]] = {"a": ["ingesta", "ingestc"], "b": ["ingestb"]}

    def models(server: LiveServer, name: str, i: int) -> httpx.Response:
        sent[name].append(f"models{name}{i}")
        return httpx.get(f"{server.url}/v1/models", headers=headers("reader-1", sent[name][-1]), timeout=10)

    # One limit across both: requests alternating between the replicas are refused at the shared limit.
    statuses = [models(a if i % 2 == 0 else b, "a" if i % 2 == 0 else "b", i).status_code for i in range(READER_RPM)]
    assert statuses == [200] * READER_RPM
    for i, (server, name) in enumerate(((a, "a"), (b, "b"))):
        refused = models(server, name, READER_RPM + i)
        assert refused.status_code == 429 and refused.json()["error"]["param"] == "requests_per_minute"

    # One answer cache: answered by A, a hit on B (same documents, so the same index digest in the key).
    first = ask(a, "chata", sent["a"])
    second = ask(b, "chatb", sent["b"])
    assert first.json()["outcome"] == "answered" and second.json()["outcome"] == "cached"
    assert second.json()["usage"]["total_tokens"] == 0
    made_anew = {"id", "outcome", "cached", "usage", "timings_ms", "cost_usd"}  # what a hit says of itself
    assert {k: v for k, v in second.json().items() if k not in made_anew} | {"generated_by": None} == {
        k: v for k, v in first.json().items() if k not in made_anew
    } | {"generated_by": None}
    assert second.json()["generated_by"] == {**first.json()["generated_by"], "cached": True}
    # A document changed on A changes A's digest (its answers are made anew); B's documents and hits are as before.
    changed = {"documents": [{"id": "extra", "text": "Oxygen makes up about 21% of the air we breathe."}]}
    update = httpx.post(f"{a.url}/v1/documents", json=changed, headers=headers("editor-key", "ingestc"), timeout=60)
    assert update.status_code == 200, update.text
    assert ask(a, "chatc", sent["a"]).json()["outcome"] == "answered"
    assert ask(b, "chatd", sent["b"]).json()["outcome"] == "cached"

    # One audit chain: both replicas' requests, in one chain that verifies.
    env = {**os.environ, "RAGOPS_DATABASE_URL": postgres_url, "RAGOPS_DATA_DIR": str(tmp_path / "cli")}
    verified = ragops(["audit", "verify", "--json"], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = ragops(["audit", "export", "--since", "1h"], env)
    assert exported.returncode == 0, exported.stderr
    audited = {record["request_id"] for record in json_lines(exported.stdout)}
    assert set(sent["a"]) <= audited and set(sent["b"]) <= audited, (sent, audited)


def ask(server: LiveServer, request_id: str, sent: list[str]) -> httpx.Response:
    sent.append(request_id)
    body = {"question": QUESTION}
    return httpx.post(f"{server.url}/v1/chat", json=body, headers=headers("reader-2", request_id), timeout=60)


def ragops(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_index_digest_is_the_documents_not_the_process(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    """What replicas and a restarted process agree on: the same documents give the same digest; a change in the
    scope changes it, at once for this process's own writes, within ``max_age_s`` for another writer's."""
    scope, documents = Scope("docs", "acme"), sample_documents(20)
    a, b = (make_services(data_dir=tmp_path / name) for name in ("a", "b"))
    for services in (a, b):
        services.ingestor.ingest_documents(documents, scope)
    now = [0.0]
    digest_a, digest_b = (IndexDigest(s.index, writes_of(s), max_age_s=5, clock=lambda: now[0]) for s in (a, b))
    assert digest_a(scope) == digest_b(scope) != digest_a(Scope("docs", "other"))
    assert IndexDigest(a.index, writes_of(a))(scope) == digest_a(scope)  # a fresh process computes the same
    a.ingestor.ingest_documents([Document("new", (Section("Owls hunt at night."),))], scope)
    assert digest_a(scope) != digest_b(scope)  # this process wrote: at once
    before = digest_b(scope)
    b.index.delete_document(scope, documents[0].id)  # another writer: b's ingestor does not know
    assert digest_b(scope) == before
    now[0] = 5.0
    assert digest_b(scope) != before


def writes_of(services: Services) -> Callable[[], int]:
    return lambda: services.ingestor.version
