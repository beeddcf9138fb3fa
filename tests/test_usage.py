"""Cost and budgets: what answers cost (the pricing step), tenants' monthly budgets (soft threshold, hard limit,
an admin raising it) and usage reports, on SQLite and Postgres, in process and over real HTTP."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cli import main as cli
from app.container import Services
from retrieval.index import Scope
from serving.contracts.answer import AnswerRequest
from serving.contracts.generation import Usage
from serving.governance.access import LimitExceededError
from serving.governance.usage import AnswerPricing, Budgets, BudgetUpdate, ModelPrice, usage_report
from serving.infra.clock import day_of, month_start, next_month_start
from serving.infra.state_store import StateStore
from serving.observe.metrics import ServiceMetrics
from tests.conftest import load_sample_records, make_answer, sample_documents
from tests.live_server import LiveServer, LiveServers

NOW = datetime.now(UTC)
THIS_MONTH, LAST_MONTH = day_of(month_start(NOW)), day_of(month_start(NOW) - timedelta(days=1))
ADMIN, EDITOR, READER = "usage-test-admin-key", "usage-test-editor-key", "usage-test-reader-key"
METRICS_TOKEN = "usage-test-scrape-token"  # keys are on: /metrics needs it
QUESTIONS = (
    "What part of the Earth's atmosphere is oxygen?",
    "Who were the Normans?",
    "What is the largest city of Normandy?",
    "When was the University of Chicago founded?",
    "What is the Amazon rainforest?",
)


# --- pricing ---------------------------------------------------------------------------------------------------


def test_token_prices_by_model_then_generator() -> None:
    pricing = AnswerPricing({"smollm2": ModelPrice(prompt_per_1k=1.0, completion_per_1k=2.0),
                             "vllm": ModelPrice(prompt_per_1k=5.0)})  # fmt: skip
    answer = make_answer(generator="vllm", model="smollm2", usage=Usage(prompt_tokens=300, completion_tokens=50))
    assert pricing.cost(answer) == pytest.approx(0.3 + 0.1)  # the model's price wins over the generator's
    other = answer.model_copy(update={"model": "another-model"})
    assert pricing.cost(other) == pytest.approx(1.5)  # no price for the model: the generator's


def test_per_hour_price_is_charged_by_generation_time() -> None:
    pricing = AnswerPricing({"vllm": ModelPrice(per_hour=3.6, completion_per_1k=1.0)})
    answer = make_answer(generator="vllm", usage=Usage(completion_tokens=10), timings_ms={"generate": 2500.0})
    assert pricing.cost(answer) == pytest.approx(3.6 * 2.5 / 3600 + 0.01)


def test_cached_refused_abstained_and_unpriced_answers_cost_nothing() -> None:
    pricing = AnswerPricing({"llamacpp": ModelPrice(per_hour=10, prompt_per_1k=1)})
    generated: dict[str, Any] = {
        "generator": "llamacpp",
        "usage": Usage(prompt_tokens=100),
        "timings_ms": {"generate": 900.0},
    }
    assert pricing.cost(make_answer(**generated)) > 0
    cached = make_answer(outcome="cached", cached=True, **generated)  # even if usage were left on it
    refused = make_answer(outcome="refused", refused=True, timings_ms={"generate": 900.0})  # output guard: no generator
    abstained = make_answer(outcome="abstained", abstained=True)  # the similarity rule: no model called
    unpriced = make_answer(generator="extractive", model="extractive", usage=Usage(completion_tokens=30))
    assert [pricing.cost(a) for a in (cached, refused, abstained, unpriced)] == [0, 0, 0, 0]


def test_priced_answers_are_counted_per_tenant() -> None:
    metrics = ServiceMetrics(0.5)
    pricing = AnswerPricing({"extractive": ModelPrice(completion_per_1k=10)}, metrics)
    priced = pricing.price(make_answer(generator="extractive", usage=Usage(completion_tokens=40)), "acme")
    pricing.price(make_answer(outcome="cached", cached=True, generator="extractive"), "acme")
    assert priced.cost_usd == pytest.approx(0.4)
    assert metrics.registry.get_sample_value("ragops_cost_usd_total", {"tenant": "acme"}) == pytest.approx(0.4)


def test_the_pipeline_prices_every_final_answer_before_the_observer(make_services: Callable[..., Services]) -> None:
    services = make_services(generator="extractive", prices={"extractive": ModelPrice(completion_per_1k=1.0)})
    scope = Scope("sample", "acme")
    services.ingestor.ingest_documents(sample_documents(40), scope)
    seen = []
    services.observe = lambda request, answer: seen.append(answer)  # type: ignore[method-assign]
    services.__dict__.pop("pipeline", None)
    first = services.pipeline.answer(AnswerRequest(question=QUESTIONS[0], scope=scope))
    again = services.pipeline.answer(AnswerRequest(question=QUESTIONS[0], scope=scope))
    assert first.cost_usd == pytest.approx(first.usage.completion_tokens / 1000) and first.cost_usd > 0
    assert again.cached and again.cost_usd == 0
    assert [a.cost_usd for a in seen] == [first.cost_usd, 0]


# --- budgets and reports over the ledger -----------------------------------------------------------------------


def spend(store: StateStore, day: str, tenant: str, key_id: str, cost: float, requests: int = 1) -> None:
    """A ledger row, as the audit writer adds it."""
    with store.transaction(write=True) as cur:
        cur.execute(
            "INSERT INTO usage_daily (day, tenant, key_id, requests, cached, prompt_tokens, completion_tokens, "
            "cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (day, tenant, key_id, requests, 0, 100 * requests, 10 * requests, cost),
        )


def test_budget_soft_threshold_then_hard_limit_then_raised(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServiceMetrics(0.5)
    budgets = Budgets(store, 0.8, metrics, cache_s=0)
    budgets.check("acme")  # no budget: unlimited
    budgets.set("acme", BudgetUpdate(monthly_usd=1.0), "admin-key")
    spend(store, LAST_MONTH, "acme", "k1", 50.0)  # last month's spend does not count
    spend(store, THIS_MONTH, "acme", "k1", 0.5)
    with caplog.at_level(logging.WARNING, "ragops.budgets"):
        budgets.check("acme")
        assert metrics.registry.get_sample_value("ragops_budget_used_ratio", {"tenant": "acme"}) == 0.5
        spend(store, THIS_MONTH, "acme", "k2", 0.375)
        budgets.check("acme")  # 87.5 %: over the soft ratio, still served
        budgets.check("acme")
        assert metrics.registry.get_sample_value("ragops_budget_used_ratio", {"tenant": "acme"}) == 0.875
        assert [r.getMessage() for r in caplog.records] == ["budget soft threshold reached"]
        spend(store, day_of(NOW), "acme", "k3", 0.125)  # sums of halves, quarters, eighths: exactly 1.0
        with pytest.raises(LimitExceededError) as refused:
            budgets.check("acme")
    error = refused.value
    assert error.limit == "budget" and error.status == 429
    assert "$1.0000 of its $1.0000 monthly budget" in error.message and "an admin raises" in error.message
    assert abs(error.retry_after_s - (next_month_start(NOW) - datetime.now(UTC)).total_seconds()) < 60
    budgets.check("other-tenant")  # budgets are per tenant
    standing = budgets.set("acme", BudgetUpdate(monthly_usd=2.0), "admin-key")
    assert (standing.state, standing.soft_ratio) == ("within", 0.8) and standing.spent_usd == pytest.approx(1.0)
    budgets.check("acme")  # raised: served again
    assert budgets.clear("acme") and not budgets.clear("acme")
    assert metrics.registry.get_sample_value("ragops_budget_used_ratio", {"tenant": "acme"}) == 0.5
    budgets.check("acme")  # a fresh read without a budget removes the tenant's gauge
    assert metrics.registry.get_sample_value("ragops_budget_used_ratio", {"tenant": "acme"}) is None


def test_a_check_reads_the_store_at_most_once_a_period(store: StateStore) -> None:
    budgets = Budgets(store, 0.8, None, cache_s=3600)
    budgets.set("acme", BudgetUpdate(monthly_usd=1.0, soft_ratio=0.5), None)
    budgets.check("acme")
    spend(store, THIS_MONTH, "acme", "k1", 5.0)
    budgets.check("acme")  # still the cached standing (the overshoot the cache allows)
    other = Budgets(store, 0.8, None, cache_s=3600)
    with pytest.raises(LimitExceededError):
        other.check("acme")
    budgets.set("acme", BudgetUpdate(monthly_usd=0.5), None)  # an admin's change is seen at once here
    with pytest.raises(LimitExceededError):
        budgets.check("acme")
    assert budgets.standings()[0].soft_ratio == 0.5  # kept when the update leaves it out


def test_usage_report_per_day_and_month(store: StateStore) -> None:
    spend(store, "2026-10-30", "acme", "k1", 0.25, requests=2)
    spend(store, "2026-11-01", "acme", "k1", 0.5)
    spend(store, "2026-11-02", "acme", "k1", 0.125)
    spend(store, "2026-11-02", "acme", "k2", 1.0)
    spend(store, "2026-11-02", "beta", "k3", 2.0, requests=4)
    since, until = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)
    monthly = usage_report(store, since, until, None, "month")
    assert [(r.period, r.tenant, r.key_id, r.requests, r.cost_usd) for r in monthly.rows] == [
        ("2026-10", "acme", "k1", 2, 0.25), ("2026-11", "acme", "k1", 2, 0.625),
        ("2026-11", "acme", "k2", 1, 1.0), ("2026-11", "beta", "k3", 4, 2.0),
    ]  # fmt: skip
    assert (monthly.total.requests, monthly.total.cost_usd, monthly.total.prompt_tokens) == (9, 3.875, 900)
    daily = usage_report(store, datetime(2026, 11, 2, 5, tzinfo=UTC), until, "acme", "day")
    assert [(r.key_id, r.cost_usd) for r in daily.rows] == [("k1", 0.125), ("k2", 1.0)]
    assert {r.period for r in daily.rows} == {"2026-11-02"} == {daily.since}
    assert isinstance(daily.rows[0].requests, int)
    with pytest.raises(ValueError, match="after until"):
        usage_report(store, until, since, None, "day")


def test_cli_budgets_and_usage(
    store: StateStore,
    database_url: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if database_url is not None:
        monkeypatch.setenv("RAGOPS_DATABASE_URL", database_url)
    data = ["--data-dir", str(tmp_path)]  # the SQLite store is data_dir/state.sqlite: the fixture's
    spend(store, THIS_MONTH, "acme", "k1", 0.75)

    assert cli([*data, "budgets", "set", "--tenant", "acme", "--monthly", "1.5", "--soft", "0.4"]) == 0
    assert "soft_limit" in capsys.readouterr().out
    assert cli([*data, "budgets", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["budgets"]
    assert [listed[k] for k in ("tenant", "monthly_usd", "spent_usd", "used_ratio")] == ["acme", 1.5, 0.75, 0.5]
    assert cli([*data, "usage", "--tenant", "acme", "--by", "day", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["cost_usd"] == 0.75 and report["rows"][0]["period"] == THIS_MONTH
    assert cli([*data, "usage"]) == 0 and "total" in capsys.readouterr().out
    assert cli([*data, "budgets", "clear", "--tenant", "acme"]) == 0
    assert cli([*data, "budgets", "list"]) == 0 and "unlimited" in capsys.readouterr().out

    for args, code, message in [
        (["budgets", "clear", "--tenant", "acme"], 1, "has no budget"),
        (["budgets", "set", "--tenant", "acme", "--monthly", "-1"], 2, "--monthly: Input should be greater than 0"),
        (["budgets", "set", "--tenant", "acme", "--monthly", "1", "--soft", "1.5"], 2, "--soft"),
        (["budgets", "set", "--tenant", "a b", "--monthly", "1"], 2, "--tenant must be"),
        (["usage", "--since", "yesterday"], 2, "--since: expected a date"),
        (["usage", "--since", "999999999d"], 2, "--since"),
        (["usage", "--since", "2026-11-02", "--until", "2026-11-01"], 2, "after until"),
    ]:
        capsys.readouterr()
        assert cli([*data, *args]) == code, args
        err = capsys.readouterr().err
        assert err.startswith("ragops: error: ") and message in err and err.count("\n") == 1, err


# --- over real HTTP: budgets reached, raised, and usage equal to what clients were charged ----------------------


@pytest.fixture
def priced_server(database_url: str | None, live_server: LiveServers) -> LiveServer:
    settings = {
        "default_collection": "sample",
        "generator": "extractive",
        "prices": {"extractive": {"completion_per_1k": 10.0}},
        "api_keys": {ADMIN: "ops:admin", EDITOR: "acme:editor", READER: "acme:reader"},
        "metrics_token": METRICS_TOKEN,
        **({"database_url": database_url} if database_url else {}),
    }
    server = live_server(settings)
    server.ingest(load_sample_records(40), headers=bearer(EDITOR))
    return server


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Reader:
    """A reader of tenant acme asking questions, and the cost each answer said it had."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.charged: list[float] = []

    def ask(self, question: str) -> httpx.Response:
        response = self.client.post("/v1/chat", json={"question": question}, headers=bearer(READER))
        if response.status_code == 200:
            self.charged.append(response.json()["cost_usd"])
        return response

    def ask_openai(self, question: str) -> httpx.Response:
        body = {"model": "ragops", "messages": [{"role": "user", "content": question}]}
        response = self.client.post("/v1/chat/completions", json=body, headers=bearer(READER))
        self.charged.append(response.json()["ragops"]["cost_usd"])
        return response


def set_budget(client: httpx.Client, monthly_usd: float) -> dict[str, Any]:
    response = client.put("/v1/admin/budgets/acme", json={"monthly_usd": monthly_usd}, headers=bearer(ADMIN))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_budgets_and_usage_over_http(
    priced_server: LiveServer,
    database_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with priced_server.client(timeout=60) as client:
        reader = Reader(client)
        assert client.put("/v1/admin/budgets/acme", json={"monthly_usd": 1}, headers=bearer(READER)).status_code == 403
        set_budget(client, 1000)
        assert reader.ask(QUESTIONS[0]).json()["cost_usd"] > 0
        assert reader.ask(QUESTIONS[0]).json()["cached"] and reader.charged[-1] == 0  # a cache hit costs nothing
        reach_soft_then_hard_limit(client, reader)

        assert set_budget(client, 1000)["state"] == "within"  # an admin raises it: served again at once
        assert reader.ask(QUESTIONS[3]).status_code == 200
        assert reader.ask_openai(QUESTIONS[4]).status_code == 200 and reader.charged[-1] > 0

        usage = client.get("/v1/admin/usage", params={"tenant": "acme", "by": "day"}, headers=bearer(ADMIN)).json()
        assert usage["total"]["cost_usd"] == pytest.approx(sum(reader.charged))
        assert {row["tenant"] for row in usage["rows"]} == {"acme"}
        listed = client.get("/v1/admin/budgets", headers=bearer(ADMIN)).json()["budgets"]
        assert [(b["tenant"], b["spent_usd"]) for b in listed] == [("acme", pytest.approx(sum(reader.charged)))]
        assert_bad_admin_input(client, bearer(ADMIN))

    if database_url is not None:
        monkeypatch.setenv("RAGOPS_DATABASE_URL", database_url)
    capsys.readouterr()
    assert cli(["--data-dir", str(priced_server.data_dir), "usage", "--tenant", "acme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["cost_usd"] == pytest.approx(sum(reader.charged))

    log = priced_server.log_lines()
    soft = [line for line in log if line["message"] == "budget soft threshold reached"]
    assert len(soft) == 1 and soft[0]["tenant"] == "acme"
    assert sum(line["message"] == "budget used up: requests refused" for line in log) == 1


def reach_soft_then_hard_limit(client: httpx.Client, reader: Reader) -> None:
    """Spend at 90 % of the budget: served (over the soft ratio, 0.8); the next answer takes it over: within
    the budget cache's second, the tenant is refused with 429 ``budget`` until the month ends."""
    lowered = set_budget(client, reader.charged[0] / 0.9)
    assert lowered["state"] == "soft_limit" and lowered["used_ratio"] == pytest.approx(0.9)
    assert reader.ask(QUESTIONS[1]).status_code == 200
    assert used_ratio(client) == pytest.approx(0.9)
    deadline = time.monotonic() + 10
    refused = reader.ask(QUESTIONS[2])
    while refused.status_code == 200 and time.monotonic() < deadline:  # the cache's second: served, and charged
        time.sleep(0.2)
        refused = reader.ask(QUESTIONS[2])
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["param"] == "budget" and error["type"] == "rate_limit_error"
    assert "monthly budget" in error["message"] and "until the period ends at" in error["message"]
    seconds_left = (next_month_start(NOW) - datetime.now(UTC)).total_seconds()
    assert abs(int(refused.headers["retry-after"]) - seconds_left) < 120


def used_ratio(client: httpx.Client) -> float | None:
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).raise_for_status()
    families = text_string_to_metric_families(scraped.text)
    values = [s.value for f in families for s in f.samples
              if s.name == "ragops_budget_used_ratio" and s.labels == {"tenant": "acme"}]  # fmt: skip
    return values[0] if values else None


def assert_bad_admin_input(client: httpx.Client, admin: dict[str, str]) -> None:
    """Bad input is an OpenAI-style 4xx naming the parameter, never a 500."""
    cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        ("PUT", "/v1/admin/budgets/acme", {"json": {"monthly_usd": -1}}, 400, "monthly_usd"),
        ("PUT", "/v1/admin/budgets/acme", {"json": {"monthly_usd": 1, "soft_ratio": 2}}, 400, "soft_ratio"),
        ("PUT", "/v1/admin/budgets/acme", {"json": {"monthly_usd": 1, "extra": 1}}, 400, "extra"),
        ("PUT", "/v1/admin/budgets/acme", {"content": b"not json"}, 400, None),
        ("PUT", "/v1/admin/budgets/a%20b", {"json": {"monthly_usd": 1}}, 400, "tenant"),
        ("DELETE", "/v1/admin/budgets/nobody", {}, 404, "tenant"),
        ("GET", "/v1/admin/usage", {"params": {"by": "week"}}, 400, "by"),
        ("GET", "/v1/admin/usage", {"params": {"since": "yesterday"}}, 400, "since"),
        ("GET", "/v1/admin/usage", {"params": {"since": "999999999d"}}, 400, "since"),
        ("GET", "/v1/admin/usage", {"params": {"since": "2026-11-02", "until": "2026-11-01"}}, 400, "since"),
        ("GET", "/v1/admin/usage", {"params": {"tenant": "a b"}}, 400, "tenant"),
    ]
    for method, path, kwargs, status, param in cases:
        response = client.request(method, path, headers=admin, **kwargs)
        assert response.status_code == status, (path, kwargs, response.text)
        assert response.json()["error"]["param"] == param, response.text
