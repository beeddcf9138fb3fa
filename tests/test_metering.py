"""Every answer paid for, over real HTTP: a stream its client closes before the answer is charged for what was
generated until then and audited as ``client_closed``; 32 parallel requests against Redis (token quota) and
Postgres (budget) overshoot neither by more than one reservation; keyless requests grow the audit trail by one
record per address and minute, not one each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from serving.governance.audit_chain import verify
from serving.governance.audit_export import export
from serving.infra.state_store import StateStore
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers
from tests.stub_openai import StubOpenAI

ADMIN, EDITOR, READER = "metering-test-admin-key", "metering-test-editor-key", "metering-test-reader-key"
KEYS = {ADMIN: "ops:admin", EDITOR: "acme:editor", READER: "acme:reader"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def audit_records(server: LiveServer, database_url: str | None = None) -> list[dict[str, Any]]:
    """The server's audit records, read from its state store once it stopped (its writer flushed)."""
    server.stop()
    store = StateStore.open(database_url, server.data_dir / "state.sqlite")
    try:
        assert verify(store).ok
        return list(export(store))  # each record's body with its personal fields (the client address) merged back
    finally:
        store.close()


def read_until_first_text(response: httpx.Response) -> None:
    """Up to the first event with answer text: ragops' ``delta``, or an OpenAI chunk with content."""
    for line in response.iter_lines():
        if not line.startswith("data: {"):
            continue
        event = json.loads(line.removeprefix("data: "))
        if event.get("type") == "delta" or any(c["delta"].get("content") for c in event.get("choices", [])):
            return
    raise AssertionError("the stream ended before its first text")


def test_a_stream_closed_early_is_charged_for_what_was_generated(
    stub_openai: Callable[..., StubOpenAI], live_server: LiveServers
) -> None:
    backend = stub_openai("stream", sentences=8, gap_s=0.4)
    settings = {
        "generator": "vllm", "vllm_base_url": backend.url, "vllm_max_retries": 0, "output_guard": "report",
        "prices": {"vllm": {"prompt_per_1k": 1.0, "completion_per_1k": 10.0}}, "api_keys": KEYS,
    }  # fmt: skip
    server = live_server(settings)
    server.ingest(load_sample_records(10), headers=bearer(EDITOR))
    chat = {"question": "Who were the Normans?", "stream": True}
    completion = {"model": "ragops", "messages": [{"role": "user", "content": "Who were the Normans?"}], "stream": True}
    for path, body in [("/v1/chat", chat), ("/v1/chat/completions", completion)]:
        with httpx.stream("POST", f"{server.url}{path}", json=body, headers=bearer(READER), timeout=60) as response:
            assert response.status_code == 200
            read_until_first_text(response)  # then the client goes away mid-answer
    time.sleep(1.0)  # the server notices at its next write
    cut = [r for r in audit_records(server) if r["route"] in ("/v1/chat", "/v1/chat/completions")]
    assert [r["outcome"] for r in cut] == ["client_closed", "client_closed"], cut
    for record in cut:
        assert record["status"] == 200 and record["generator"] == "vllm"
        assert 1 <= record["completion_tokens"] < 80 and record["prompt_tokens"] > 0  # what was generated, not all
        assert record["cost_usd"] == pytest.approx(
            (record["prompt_tokens"] * 1.0 + record["completion_tokens"] * 10.0) / 1000
        )


@pytest.fixture
def postgres_and_redis(postgres_url: str, redis_url: str) -> dict[str, str]:
    return {"database_url": postgres_url, "redis_url": redis_url}


def test_parallel_requests_overshoot_a_quota_or_budget_by_at_most_one_reservation(
    live_server: LiveServers, postgres_and_redis: dict[str, str]
) -> None:
    reservation = 256
    settings = {
        "generator": "extractive", "prices": {"extractive": {"completion_per_1k": 10.0}}, "api_keys": KEYS,
        "role_limits": {"reader": {"requests_per_minute": 1000, "tokens_per_day": 40},
                        "editor": {"requests_per_minute": 1000, "tokens_per_day": 10**9},
                        "admin": {"requests_per_minute": 1000, "tokens_per_day": 10**9}},
        "reservation_tokens": reservation, **postgres_and_redis,
    }  # fmt: skip
    server = live_server(settings)
    server.ingest(load_sample_records(40), headers=bearer(EDITOR))
    records = load_sample_records(40)
    questions = [f"What does this say: {r['text'][:60]}?" for r in records[:32]]  # 32 different: no cache hits

    def ask(question: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/chat", json={"question": question}, headers=bearer(READER), timeout=60)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, questions))
    served = [a.json() for a in answers if a.status_code == 200]
    refused = [a.json()["error"]["param"] for a in answers if a.status_code == 429]
    assert served and len(served) + len(refused) == 32 and set(refused) == {"tokens_per_day"}
    tokens = sum(a["usage"]["total_tokens"] for a in served)
    assert tokens < 40 + max(a["usage"]["total_tokens"] for a in served), tokens  # one answer past the quota

    # The budget: $0.05 left while an answer costs ~$0.3; a second key of the tenant, its token quota lifted.
    with httpx.Client(base_url=server.url, timeout=60) as client:
        created = client.post("/v1/admin/keys", json={"name": "budget", "tenant": "acme", "role": "reader",
                                                       "tokens_per_day": 10**9}, headers=bearer(ADMIN))  # fmt: skip
        assert created.is_success, created.text
        key = created.json()["key"]
        usage = client.get("/v1/admin/usage", params={"tenant": "acme"}, headers=bearer(ADMIN)).json()
        before = usage["total"]["cost_usd"]
        budget = {"monthly_usd": before + 0.05}
        assert client.put("/v1/admin/budgets/acme", json=budget, headers=bearer(ADMIN)).is_success

        def ask_within_budget(question: str) -> httpx.Response:
            return client.post("/v1/chat", json={"question": question}, headers=bearer(key))

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask_within_budget, [f"{q} (again)" for q in questions]))
        costs = [a.json()["cost_usd"] for a in answers if a.status_code == 200]
        assert {a.json()["error"]["param"] for a in answers if a.status_code == 429} == {"budget"}
        spent = client.get("/v1/admin/budgets", headers=bearer(ADMIN)).json()["budgets"][0]["spent_usd"] - before
    assert costs and spent == pytest.approx(sum(costs)) and spent < 0.05 + max(costs), (spent, costs)


def test_keyless_requests_add_one_record_per_address_and_minute(live_server: LiveServers) -> None:
    server = live_server({"generator": "extractive", "api_keys": KEYS, "auth_failures_per_minute": 20})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        statuses = [client.post("/v1/chat", json={"question": "hi"}).status_code for _ in range(400)]
        statuses += [client.post("/v1/chat", content=b"{not json").status_code for _ in range(50)]
    assert set(statuses) <= {400, 401, 422, 429} and statuses.count(429) >= 300
    records = [r for r in audit_records(server) if r["admin"] is None]  # not the server's retention run
    assert len(records) <= 6, [(r["status"], r["count"]) for r in records]  # a minute boundary may split them
    assert sum(r["count"] for r in records) == 450 and {r["client"] for r in records} == {"127.0.0.1"}
