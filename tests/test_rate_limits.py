"""Rate limits and quotas over real HTTP: 429 with ``Retry-After`` naming the limit (requests per minute, tokens
per day, failed authentications per minute), a cache hit counted as a request without tokens; in process and in
a real Redis alike. Then Redis killed under load: the service keeps answering on local limits (fail-open, the
metric says degraded, one log line each way) and recovers when Redis is back; fail-closed answers 503 meanwhile."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from serving.governance.rate_limits import KEY_PREFIX
from tests.backing_services import RedisServer
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

QUESTION = "What part of the Earth's atmosphere is oxygen?"
OTHER_QUESTION = "Who were the Normans?"
READER_RPM = 5
AUTH_FAILURES = 20
METRICS_TOKEN = "rate-limits-scrape-token"  # keys are on: /metrics needs it
KEYS = {
    "editor-key": "acme:editor",  # ingests the documents
    "reader-1": "acme:reader",
    "reader-2": "acme:reader",
    "quota-1": "acme:admin",  # admins here have a quota of one token a day: one answer uses it up
    "quota-2": "acme:admin",
}
ROLE_LIMITS = {
    "reader": {"requests_per_minute": READER_RPM, "tokens_per_day": 1_000_000},
    "editor": {"requests_per_minute": 1000, "tokens_per_day": 1_000_000},
    "admin": {"requests_per_minute": 1000, "tokens_per_day": 1},
}


def start(servers: LiveServers, **settings: object) -> LiveServer:
    settings = {
        "generator": "extractive",
        "default_collection": "sample",
        "api_keys": KEYS,
        "auth_failures_per_minute": AUTH_FAILURES,
        "trusted_proxies": ["127.0.0.0/8"],  # each test acts from its own client address
        "metrics_token": METRICS_TOKEN,
        **settings,
    }
    server = servers(settings)
    server.ingest(load_sample_records(40), headers=bearer("editor-key"))
    return server


def bearer(key: str, address: str = "192.0.2.1") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Forwarded-For": address}


def chat(server: LiveServer, key: str, question: str = QUESTION, address: str = "192.0.2.1") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat", json={"question": question}, headers=bearer(key, address), timeout=60)


def metric(server: LiveServer, name: str, labels: dict[str, str] | None = None) -> float:
    scraped = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    text = scraped.raise_for_status().text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def assert_refused(response: httpx.Response, limit: str, max_retry_after_s: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["param"] == limit and error["type"] == "rate_limit_error" and limit in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= max_retry_after_s


@pytest.fixture(scope="module", params=["in_process", "redis"])
def limited(request: pytest.FixtureRequest, module_live_server: LiveServers) -> Iterator[tuple[LiveServer, str | None]]:
    """One server per backend with small limits; tests use their own keys and addresses so they do not meet."""
    redis_url = None
    if request.param == "redis":
        shared: RedisServer = request.getfixturevalue("redis_server")
        shared.flush()
        redis_url = shared.url
    settings: dict[str, object] = {"role_limits": ROLE_LIMITS}
    if redis_url is not None:
        settings["redis_url"] = redis_url
    server = start(module_live_server, **settings)
    yield server, redis_url
    server.stop()  # before the other backend's server starts


def test_requests_per_minute_count_cache_hits_and_answer_429(limited: tuple[LiveServer, str | None]) -> None:
    server, redis_url = limited
    outcomes = [chat(server, "reader-1").json()["outcome"] for _ in range(READER_RPM)]
    assert outcomes == ["answered"] + ["cached"] * (READER_RPM - 1)  # a cache hit is a request all the same
    assert_refused(chat(server, "reader-1"), "requests_per_minute", 60)
    assert chat(server, "reader-2").status_code == 200  # per key
    assert metric(server, "ragops_rate_limit_refusals_total", {"limit": "requests_per_minute"}) >= 1
    if redis_url is not None:  # counted in Redis, not in the process
        assert redis.Redis.from_url(redis_url).keys(f"{KEY_PREFIX}:*requests*")


def test_tokens_per_day_checked_before_and_counted_after_cache_hits_free(limited: tuple[LiveServer, str]) -> None:
    server, _ = limited
    first = chat(server, "quota-1", OTHER_QUESTION)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 1
    assert_refused(chat(server, "quota-1", QUESTION), "tokens_per_day", 86_400)
    # Another key with the same one-token quota: cache hits cost no tokens, so it can ask again and again...
    for _ in range(3):
        hit = chat(server, "quota-2", OTHER_QUESTION)
        assert hit.status_code == 200 and hit.json()["cached"] and hit.json()["usage"]["total_tokens"] == 0
    # ...until an answer that was generated uses its quota up.
    generated = chat(server, "quota-2", "Who was the duke of Normandy in the 1060s?")
    assert generated.status_code == 200 and generated.json()["usage"]["total_tokens"] > 0
    assert_refused(chat(server, "quota-2", OTHER_QUESTION), "tokens_per_day", 86_400)


def test_a_thousand_wrong_keys_are_not_all_401(limited: tuple[LiveServer, str]) -> None:
    server, _ = limited
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(1000):
            response = client.get("/v1/models", headers=bearer(f"guess-{i}", "203.0.113.50"))
            statuses[response.status_code] += 1
        assert statuses == {401: AUTH_FAILURES, 429: 1000 - AUTH_FAILURES}
        refused = client.get("/v1/models", headers=bearer("reader-2", "203.0.113.50"))  # even with a good key
        assert_refused(refused, "auth_failures_per_minute", 60)
        assert client.get("/v1/models", headers=bearer("reader-2", "203.0.113.51")).status_code == 200


class Load:
    """Requests in a loop from a thread (chat, a cached answer after the first, and search) until stopped;
    every status is recorded."""

    def __init__(self, server: LiveServer) -> None:
        self._server = server
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = bearer("editor-key")
        search = {"query": "oxygen in the atmosphere", "top_k": 3}
        with httpx.Client(base_url=self._server.url, headers=headers, timeout=30) as client:
            while not self._stop.is_set():
                self.statuses[client.post("/v1/chat", json={"question": QUESTION}).status_code] += 1
                self.statuses[client.post("/v1/search", json=search).status_code] += 1

    def stop(self) -> Counter[int]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.statuses


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may kill (the session's is shared)."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_redis_killed_mid_load_fail_open_keeps_answering(
    own_redis: RedisServer, tmp_path: Path, live_server: LiveServers
) -> None:
    unlimited = {"requests_per_minute": 1_000_000, "tokens_per_day": 1_000_000}
    server = start(
        live_server,
        redis_url=own_redis.url,
        answer_cache_backend="redis",
        role_limits=dict.fromkeys(ROLE_LIMITS, unlimited),
    )
    load = Load(server)
    wait_for(lambda: sum(load.statuses.values()) >= 20)
    assert metric(server, "ragops_rate_limiter_degraded") == 0
    own_redis.stop()
    wait_for(lambda: metric(server, "ragops_rate_limiter_degraded") == 1)
    during = sum(load.statuses.values())
    wait_for(lambda: sum(load.statuses.values()) >= during + 20)  # still answering, on local limits
    restarted = RedisServer(tmp_path / "redis", port=own_redis.port)
    wait_for(lambda: metric(server, "ragops_rate_limiter_degraded") == 0)
    after = sum(load.statuses.values())
    wait_for(lambda: sum(load.statuses.values()) >= after + 20)
    statuses = load.stop()
    assert set(statuses) == {200}, statuses
    assert metric(server, "ragops_redis_errors_total", {"part": "rate_limits"}) >= 1
    log = server.log_path.read_text()
    assert log.count("redis unreachable for rate limits") == 1, log[-3000:]
    assert log.count("redis reachable again for rate limits") == 1
    assert redis.Redis.from_url(restarted.url).keys(f"{KEY_PREFIX}:*")  # counting in Redis again
    restarted.stop()


def test_redis_down_fail_closed_answers_503(own_redis: RedisServer, tmp_path: Path, live_server: LiveServers) -> None:
    server = start(live_server, redis_url=own_redis.url, rate_limit_fail="closed")
    assert chat(server, "reader-1").status_code == 200
    own_redis.stop()
    refused = chat(server, "reader-1")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "limiter_unavailable"
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200  # public routes need no limiter
    assert metric(server, "ragops_rate_limiter_degraded") == 1
    restarted = RedisServer(tmp_path / "redis", port=own_redis.port)
    wait_for(lambda: chat(server, "reader-1").status_code == 200)
    restarted.stop()
