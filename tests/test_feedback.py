"""Feedback: ``POST /v1/feedback`` (tenants, roles, errors), what is kept (redacted, one rating per answer and rater
key: another reader's rating never replaces one), the ratings the canary analysis reads, metrics and the alert
(which needs several raters), retention, ``ragops feedback export|prune``, and the
production loop's goal: a thumbs-down given on the chat page reaches an exported suite, and a prompt that
regresses on it fails the gate."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.container import Services
from app.main import create_app
from app.parts import build_retention
from app.settings import load_settings
from evals.feedback_suite import one_case_per_answer
from evals.suite import load_dataset, load_suite
from retrieval.index import Scope
from serving.contracts.answer import AnswerRequest, Citation, PromptInfo
from serving.governance.access import ANONYMOUS_KEY_ID
from serving.infra.clock import stamp
from serving.infra.migrations import MIGRATIONS
from serving.infra.state_store import StateStore
from serving.loop.answer_log import AnswerLog
from serving.loop.feedback import DownRate, FeedbackStore, Rated, answer_ratings, down_rates
from serving.observe.metrics import AlertThresholds, ServiceMetrics
from serving.rights.retention import SERVER, RetentionTask
from tests.browser import launch, needs_chromium
from tests.conftest import ROOT, make_answer
from tests.live_server import LiveServers
from tests.test_evals import planted_prompts, ragops_eval

KEYS = {"acme-reader": "acme:reader", "acme-editor": "acme:editor", "globex-reader": "globex:reader",
        "acme-reader-2": "acme:reader"}  # fmt: skip
DOCS = [
    {"id": "normans", "text": "The Normans gave their name to Normandy, a region in France, in the 10th century."},
    {"id": "oxygen", "text": "Oxygen makes up about 21 percent of the Earth's atmosphere by volume."},
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(make_services: Callable[..., Services]) -> Iterator[tuple[TestClient, Services]]:
    services = make_services(generator="extractive", guards=False, api_keys=KEYS)
    with TestClient(create_app(services=services)) as client:
        ingested = client.post("/v1/documents", json={"documents": DOCS}, headers=bearer("acme-editor"))
        assert ingested.status_code == 200, ingested.text
        yield client, services


def ask(client: TestClient, key: str = "acme-reader") -> dict[str, Any]:
    response = client.post("/v1/chat", json={"question": "Who gave their name to Normandy?"}, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_rating_is_kept_redacted_once_per_answer_and_counted(api: tuple[TestClient, Services]) -> None:
    client, services = api
    answer = ask(client)
    down = {"id": answer["id"], "rating": "down", "comment": "wrong, mail me at jane@example.com",
            "correction": "the Normans"}  # fmt: skip
    rated = client.post("/v1/feedback", json=down, headers=bearer("acme-reader"))
    assert rated.status_code == 200, rated.text
    receipt = rated.json()
    assert receipt["comment"] == "wrong, mail me at [EMAIL]" and receipt["correction"] == "the Normans"
    assert receipt["prompt"] == f"{answer['prompt']['name']}@{answer['prompt']['version']}"
    again = client.post("/v1/feedback", json={"id": answer["id"], "rating": "up"}, headers=bearer("acme-reader"))
    assert again.status_code == 200 and again.json()["rating"] == "up"
    assert services.feedback is not None
    [case] = services.feedback.cases()  # the second rating replaced the first
    assert case.feedback.rating == "up" and case.feedback.comment is None and case.answer.id == answer["id"]
    assert case.feedback.tenant == "acme" and case.feedback.key_id is not None
    metrics = services.metrics.registry
    labels = {"prompt": answer["prompt"]["name"], "version": answer["prompt"]["version"]}
    assert metrics.get_sample_value("ragops_feedback_total", {**labels, "rating": "down"}) == 1
    assert metrics.get_sample_value("ragops_thumbs_down_rate", labels) == 0.0  # the latest rating is up


def test_two_readers_ratings_of_one_answer_are_both_kept(api: tuple[TestClient, Services]) -> None:
    """Another reader's rating is a rating of its own: it never replaces the first; each replaces only its own."""
    client, services = api
    answer = ask(client)
    first = {"id": answer["id"], "rating": "down", "correction": "the Normans"}
    assert client.post("/v1/feedback", json=first, headers=bearer("acme-reader")).status_code == 200
    second = client.post("/v1/feedback", json={"id": answer["id"], "rating": "up"}, headers=bearer("acme-reader-2"))
    assert second.status_code == 200 and second.json()["rating"] == "up"
    assert services.feedback is not None
    kept = {c.feedback.key_id: c.feedback for c in services.feedback.cases()}
    assert len(kept) == 2 and sorted(f.rating for f in kept.values()) == ["down", "up"]
    [by_first] = [f for f in kept.values() if f.rating == "down"]
    assert by_first.correction == "the Normans"  # the second reader did not overwrite it
    again = client.post("/v1/feedback", json={"id": answer["id"], "rating": "down"}, headers=bearer("acme-reader-2"))
    assert again.status_code == 200
    assert sorted(c.feedback.rating for c in services.feedback.cases()) == ["down", "down"]  # its own, replaced
    [one] = one_case_per_answer(services.feedback.cases())  # an export has one sample per answer: the correction
    assert one.feedback.correction == "the Normans"


def test_one_raters_thumbs_down_do_not_raise_the_alert(make_services: Callable[..., Services]) -> None:
    """The probe: 22 thumbs-down from one key raised the alert. Now it needs ratings from alert_min_raters (5) keys."""
    readers = [f"acme-r{i}" for i in range(5)]
    keys = {"acme-editor": "acme:editor", **dict.fromkeys(readers, "acme:reader")}
    services = make_services(generator="extractive", guards=False, api_keys=keys)
    with TestClient(create_app(services=services)) as client:
        assert client.post("/v1/documents", json={"documents": DOCS}, headers=bearer("acme-editor")).status_code == 200
        answers = [ask(client, readers[0]) for _ in range(22)]
        for answer in answers:
            rated = client.post("/v1/feedback", json={"id": answer["id"], "rating": "down"}, headers=bearer(readers[0]))
            assert rated.status_code == 200, rated.text
        labels = {"prompt": answers[0]["prompt"]["name"], "version": answers[0]["prompt"]["version"]}
        metrics = services.metrics.registry
        assert metrics.get_sample_value("ragops_thumbs_down_rate", labels) == 1.0
        assert metrics.get_sample_value("ragops_thumbs_down_raters", labels) == 1
        assert metrics.get_sample_value("ragops_thumbs_down_alert", labels) == 0
        for reader, answer in zip(readers[1:], answers, strict=False):  # four more readers agree
            client.post("/v1/feedback", json={"id": answer["id"], "rating": "down"}, headers=bearer(reader))
        assert metrics.get_sample_value("ragops_thumbs_down_raters", labels) == 5
        assert metrics.get_sample_value("ragops_thumbs_down_alert", labels) == 1


def test_ratings_kept_before_one_per_rater_survive_the_migration(tmp_path: Path) -> None:
    """A store from before: ratings one per answer (key_id NULL where no key was recorded). The migration keeps
    every one, as its key's (the anonymous key's when none), and the next key's rating is a rating of its own."""
    state = StateStore("sqlite", tmp_path / "state.sqlite")
    before = next(m.version for m in MIGRATIONS if m.name == "ratings_per_rater") - 1
    try:
        state.migrate(up_to=before)
        with state.transaction(write=True) as cur:
            for answer_id, key_id in (("ans_1", None), ("ans_2", "key_a")):
                cur.execute("INSERT INTO feedback (answer_id, tenant, ts, rating, comment, correction, key_id) "
                            "VALUES (?, 'acme', '2026-01-01T00:00:00+00:00', 'down', NULL, NULL, ?)",
                            [answer_id, key_id])  # fmt: skip
        assert state.migrate() == [m.version for m in MIGRATIONS if m.version > before]
        with state.transaction(write=True) as cur:
            cur.execute("INSERT INTO feedback (answer_id, tenant, ts, rating, comment, correction, key_id) "
                        "VALUES ('ans_2', 'acme', '2026-01-02T00:00:00+00:00', 'up', NULL, NULL, 'key_b')")  # fmt: skip
            rows = cur.execute("SELECT answer_id, key_id, rating FROM feedback ORDER BY answer_id, key_id")
    finally:
        state.close()
    assert [tuple(r.values()) for r in rows] == [
        ("ans_1", ANONYMOUS_KEY_ID, "down"), ("ans_2", "key_a", "down"), ("ans_2", "key_b", "up"),
    ]  # fmt: skip


def test_feedback_refers_only_to_the_callers_tenants_answers(api: tuple[TestClient, Services]) -> None:
    client, _ = api
    answer = ask(client)
    openai = client.post(
        "/v1/chat/completions", headers=bearer("acme-reader"),
        json={"model": "ragops", "messages": [{"role": "user", "content": "How much of the air is oxygen?"}]},
    )  # fmt: skip
    completion_id = openai.json()["id"]
    assert completion_id.startswith("chatcmpl-")
    assert client.post("/v1/feedback", json={"id": completion_id, "rating": "down"}, headers=bearer("acme-reader"))
    cases: list[tuple[dict[str, Any], dict[str, str], int, str | None]] = [
        ({"id": answer["id"], "rating": "down"}, bearer("globex-reader"), 404, "id"),  # another tenant's answer
        ({"id": "ans_" + "f" * 32, "rating": "down"}, bearer("acme-reader"), 404, "id"),
        ({"id": answer["id"], "rating": "meh"}, bearer("acme-reader"), 400, "rating"),
        ({"id": "ans_123", "rating": "up"}, bearer("acme-reader"), 400, "id"),
        ({"id": answer["id"], "rating": "up", "comment": "x" * 2001}, bearer("acme-reader"), 400, "comment"),
        ({"id": answer["id"], "rating": "up", "score": 5}, bearer("acme-reader"), 400, "score"),
        ({"id": answer["id"], "rating": "up", "comment": "a\u0000b"}, bearer("acme-reader"), 400, "comment"),
        ({"rating": "up"}, bearer("acme-reader"), 400, "id"),
        ({"id": answer["id"], "rating": "up"}, {}, 401, None),
    ]
    for body, headers, status, param in cases:
        response = client.post("/v1/feedback", json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param, response.text


def test_answers_not_kept_means_nothing_to_rate(make_services: Callable[..., Services]) -> None:
    services = make_services(generator="extractive", guards=False, feedback_retention_days=0)
    with TestClient(create_app(services=services)) as client:
        client.post("/v1/documents", json={"documents": DOCS})
        answer = client.post("/v1/chat", json={"question": "Who gave their name to Normandy?"}).json()
        refused = client.post("/v1/feedback", json={"id": answer["id"], "rating": "down"})
    assert refused.status_code == 404 and "feedback_retention_days = 0" in refused.json()["error"]["message"]


# --- the store: ratings for the canary analysis, retention -----------------------------------------------------


@dataclass
class Kept:
    """Answers kept through the real answer log, then moved back in time where a test needs old ones."""

    state: StateStore
    log: AnswerLog

    def answer(self, version: str = "v2", ago: timedelta = timedelta(0), tenant: str = "acme", **fields: Any) -> str:
        passages = fields.pop("citations", None) or [
            Citation(index=1, doc_id="normans", chunk_id="c1", title="Normans", source=None, text=DOCS[0]["text"],
                     score=0.9, cited=True),
        ]  # fmt: skip
        prompt = PromptInfo(name="rag_answer", version=version, hash="0" * 64)
        request = AnswerRequest(
            question=fields.pop("question", "Who gave their name to Normandy?"), scope=Scope("c", tenant)
        )
        answer = make_answer(fields.pop("text", "The Normans [1]."), id=request.id, prompt=prompt,
                             citations=passages, **fields)  # fmt: skip
        self.log.record(request, answer)
        assert self.log.flush()
        with self.state.transaction(write=True) as cur:
            cur.execute("UPDATE answers SET ts = ? WHERE id = ?", [stamp(datetime.now(UTC) - ago), answer.id])
        return answer.id

    def rate(self, answer_id: str, rating: str, **fields: Any) -> Rated:
        record = self.log.find(answer_id, "acme") or self.log.find(answer_id, "globex")
        assert record is not None
        return FeedbackStore(self.state, window=4).rate(record, rating, **fields)  # type: ignore[arg-type]


@pytest.fixture
def kept(tmp_path: Path, database_url: str | None) -> Iterator[Kept]:
    state = StateStore.open(database_url, tmp_path / "state.sqlite")
    log = AnswerLog(state, retention_days=30)
    yield Kept(state, log)
    log.close()
    state.close()


def test_an_answer_is_found_as_soon_as_it_is_given_and_a_miss_answers_at_once(kept: Kept) -> None:
    """Feedback right after its answer, while the writer is busy with others: this process waits for that id
    alone (not for the whole queue); an id it never gave is a miss at once."""
    prompt = PromptInfo(name="rag_answer", version="v2", hash="0" * 64)
    given = []
    for i in range(300):
        request = AnswerRequest(question=f"question {i}?", scope=Scope("c", "acme"))
        kept.log.record(request, make_answer("An answer [1].", id=request.id, prompt=prompt))
        given.append(request.id)
    assert kept.log.find(given[-1], "acme") is not None  # the newest of 300 pending writes
    started = time.perf_counter()
    assert kept.log.find("ans_" + "0" * 32, "acme") is None and time.perf_counter() - started < 0.5
    assert kept.log.find(given[0], "globex") is None  # another tenant's answer is not found


def test_ratings_per_version_since_a_moment_for_the_canary(kept: Kept) -> None:
    started = datetime.now(UTC) - timedelta(hours=1)
    before = kept.answer("v2", ago=timedelta(hours=2))  # before the canary started: left out
    stable = [kept.answer("v2", ago=timedelta(minutes=m)) for m in (50, 40, 30)]
    canary = [kept.answer("v9", ago=timedelta(minutes=m)) for m in (45, 35)]
    kept.answer("v9")  # not rated: not in the rates
    for answer_id, rating in [(before, "down"), (stable[0], "down"), (stable[1], "up"), (stable[2], "up"),
                              (canary[0], "down"), (canary[1], "up"), (canary[1], "down")]:  # fmt: skip
        kept.rate(answer_id, rating)
    assert down_rates(kept.state, "rag_answer", started) == {  # one rater: the anonymous key's user (none here)
        "v2": DownRate("v2", rated=3, down=1, raters=1), "v9": DownRate("v9", rated=2, down=2, raters=1),
    }  # fmt: skip
    assert down_rates(kept.state, "rag_answer", started)["v9"].rate == 1.0
    assert down_rates(kept.state, "other_prompt", started) == {}
    ratings = answer_ratings(kept.state, "rag_answer", started, version="v9")
    assert [(r.answer_id, r.rating) for r in ratings] == [(canary[0], "down"), (canary[1], "down")]
    assert [r.answer_id for r in answer_ratings(kept.state, "rag_answer", started)] == [
        stable[0], canary[0], stable[1], canary[1], stable[2],
    ]  # fmt: skip  # in the order the answers were given
    recent = kept.rate(stable[2], "down").recent  # the window (4) holds the version's latest ratings
    assert recent == DownRate("v2", rated=4, down=3, raters=1)


def test_retention_prunes_old_answers_with_their_feedback(kept: Kept) -> None:
    old, recent = kept.answer(ago=timedelta(days=31)), kept.answer(ago=timedelta(days=29))
    kept.rate(old, "down")
    kept.rate(recent, "down")
    retention = build_retention(load_settings(), kept.state, None, SERVER)  # feedback_retention_days: 30
    RetentionTask(retention.apply, every_s=3600).close()  # applies it at start, then every hour
    assert kept.log.find(old, "acme") is None and kept.log.find(recent, "acme") is not None
    assert [c.answer.id for c in FeedbackStore(kept.state).cases()] == [recent]
    with kept.state.transaction() as cur:
        assert cur.execute("SELECT answer_id FROM feedback") == [{"answer_id": recent}]


def test_thumbs_down_alert_fires_once_past_the_threshold_and_resolves(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServiceMetrics(0.5, AlertThresholds(window=10, min_answers=3, thumbs_down_rate=0.3))

    def rated(down: int, of: int) -> DownRate:
        return DownRate("v9", of, down, raters=5)  # alert_min_raters' default

    labels = {"prompt": "rag_answer", "version": "v9"}
    with caplog.at_level(logging.INFO, logger="ragops.alerts"):
        for down, of in [(2, 2), (3, 3), (4, 4), (4, 10)]:  # 2 rated: too few to alert; then 1.0 twice; then 0.4
            metrics.observe_feedback("rag_answer", "down", rated(down, of))
        assert metrics.registry.get_sample_value("ragops_thumbs_down_alert", labels) == 1
        metrics.observe_feedback("rag_answer", "down", rated(2, 10))
    assert metrics.registry.get_sample_value("ragops_thumbs_down_alert", labels) == 0
    assert metrics.registry.get_sample_value("ragops_thumbs_down_rate", labels) == 0.2
    alerts = [(r.getMessage(), getattr(r, "prompt", None)) for r in caplog.records if r.name == "ragops.alerts"]
    assert alerts == [("alert firing", "rag_answer@v9"), ("alert resolved", "rag_answer@v9")]


# --- ragops feedback export | prune ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def ragops(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> Ran:
    """The CLI in process (as ``ragops --data-dir DATA ...``), its exit code and what it printed."""
    code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    return Ran(code, out, err)


@pytest.fixture
def kept_in_data_dir(tmp_path: Path) -> Iterator[tuple[Kept, Path]]:
    data = tmp_path / "data"
    state = StateStore.open(None, data / "state.sqlite")
    log = AnswerLog(state, retention_days=30)
    yield Kept(state, log), data
    log.close()
    state.close()


def test_export_writes_a_suite_that_loads(
    kept_in_data_dir: tuple[Kept, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, data = kept_in_data_dir
    other = Citation(index=2, doc_id="oxygen", chunk_id="c2", title=None, source=None, text=DOCS[1]["text"],
                     score=0.5, cited=False)  # fmt: skip
    first = Citation(index=1, doc_id="normans", chunk_id="c1", title="Normans", source=None, text=DOCS[0]["text"],
                     score=0.9, cited=True)  # fmt: skip
    wrong = kept.answer(text="Oxygen [2].", citations=[first, other])
    good = kept.answer(question="What share of the air is oxygen?", text="About 21 percent [1].")
    abstained = kept.answer(question="Who won in 2030?", text="The documents do not contain the answer.",
                            outcome="abstained", abstained=True)  # fmt: skip
    kept.rate(wrong, "down", comment="mail jane@example.com", correction="The Normans")
    kept.rate(good, "up")
    kept.rate(abstained, "up")
    out = tmp_path / "out"

    def export(*argv: str, tenant: str = "acme") -> Ran:
        return ragops(capsys, data, "feedback", "export", "--out", str(out), "--tenant", tenant, *argv)

    assert export("--suite", "complaints", tenant="default").returncode == 1  # one tenant a suite: none rated here
    done = export("--suite", "complaints", "--json")
    assert done.returncode == 0, done.stderr
    suite = load_suite(Path(json.loads(done.stdout)["suite"]), out)
    assert (suite.name, suite.collection) == ("complaints", "feedback-complaints")
    assert suite.prompt == "rag_answer@production"
    samples = {s.id: s for s in load_dataset(suite.dataset)}
    assert samples[wrong].answers == ("The Normans",) and samples[wrong].reference_doc_ids == ("normans",)
    assert samples[good].answers == () and samples[good].reference_doc_ids == ("normans",)
    assert samples[abstained].expected == "abstain" and samples[wrong].expected == "answer"
    records = {r["id"]: r for r in map(json.loads, suite.dataset.read_text().splitlines())}
    assert records[wrong]["feedback"]["answer_given"] == "Oxygen [2]."
    assert records[wrong]["feedback"]["rating"] == "down" and "jane@example.com" not in suite.dataset.read_text()
    corpus = [json.loads(line) for line in suite.corpus[0].read_text().splitlines()]
    assert sorted(d["id"] for d in corpus) == ["normans", "oxygen"]  # shown to two answers, kept once
    assert json.loads(export("--suite", "downs", "--rating", "down", "--json").stdout)["samples"] == 1
    again = export("--suite", "complaints")
    assert again.returncode == 2 and "exists (pass --force" in again.stderr
    assert export("--suite", "complaints", "--force").returncode == 0
    for argv, code in [(("--suite", "Bad Name"), 2), (("--suite", "x", "--since", "soon"), 2),
                       (("--suite", "later", "--since", "2099-01-01"), 1)]:  # fmt: skip
        failed = export(*argv)
        assert failed.returncode == code and len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_prune_command(kept_in_data_dir: tuple[Kept, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kept, data = kept_in_data_dir
    old = kept.answer(ago=timedelta(days=40))
    kept.rate(old, "down")
    kept.answer()
    pruned = ragops(capsys, data, "feedback", "prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["answers"] == 1 and kept.log.find(old, "acme") is None
    assert FeedbackStore(kept.state).cases() == []


# --- the goal: a thumbs-down on the page becomes a regression case the gate enforces ---------------------------


QA_QUESTION = "In the fall quarter of 2015 or rather of 2014 , how many students signed up for the university ' s professional schools ?"  # noqa: E501


@needs_chromium
def test_thumbs_down_on_the_page_reaches_an_exported_suite_that_gates_a_regression(
    tmp_path: Path, models_dir: Path, live_server: LiveServers, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    expired = answer_past_retention(data / "state.sqlite")  # the server prunes it when it starts
    server = live_server({"data_dir": data, "generator": "extractive"})
    qa_corpus = [json.loads(line) for line in (ROOT / "evals" / "corpora" / "qa_corpus.jsonl").open()]
    server.ingest(qa_corpus[:24], collection="sample")  # the answer's passage (p1138) among others
    posted = rate_on_the_page(server.url, QA_QUESTION, "down", "Wrong number.", "5,984")
    server.stop()
    assert posted == {"rating": "down", "comment": "Wrong number.", "correction": "5,984"}
    state = StateStore.open(None, data / "state.sqlite")
    with state.transaction() as cur:
        kept_ids = {row["id"] for row in cur.execute("SELECT id FROM answers")}
    state.close()
    assert expired not in kept_ids and len(kept_ids) == 1  # pruned at start; the page's answer is kept
    out = tmp_path / "out"
    exported = ragops(capsys, data, "feedback", "export", "--rating", "down", "--suite", "page_down", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    suite_file = out / "evals" / "suites" / "page_down.yaml"
    [sample] = load_dataset(load_suite(suite_file, out).dataset)
    assert sample.question == QA_QUESTION and sample.answers == ("5,984",) and sample.reference_doc_ids == ("p1138",)
    prompts = planted_prompts(tmp_path / "prompts")
    common: dict[str, Any] = {"data_dir": tmp_path / "eval-data", "models_dir": models_dir, "prompts_dir": prompts}
    # v94, the planted version that drops citations, weakens the answering policy: the override lets the exported
    # suite judge it too (tests/test_prompt_policy.py tests the policy check itself).
    gate = ragops_eval("gate", str(suite_file), "--baseline", "rag_answer@production", "--candidate",
                       "rag_answer@v94", "--allow-policy-change", "tests: the suite judges it too",
                       **common)  # fmt: skip
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "citation_format" in gate.stdout and "regression" in gate.stdout
    same = ragops_eval("gate", str(suite_file), "--baseline", "rag_answer@production", **common)
    assert same.returncode == 0, same.stdout + same.stderr


def answer_past_retention(path: Path) -> str:
    state = StateStore.open(None, path)
    log = AnswerLog(state, retention_days=30)
    try:
        return Kept(state, log).answer(ago=timedelta(days=31))
    finally:
        log.close()
        state.close()


def rate_on_the_page(url: str, question: str, rating: str, comment: str, correction: str) -> dict[str, Any]:
    """Ask on the chat page, click the thumb, fill comment and correction, send: the last feedback body posted."""
    from playwright.sync_api import sync_playwright

    posted: list[dict[str, Any]] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: remember_feedback(request, posted))
            page.goto(url + "/")
            page.fill("#question", question)
            page.click("#send")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            assert page.is_visible(f"#thumbs-{rating}") and not page.is_visible("#feedback-details")
            page.click(f"#thumbs-{rating}")
            page.wait_for_selector("body[data-feedback=sent]", timeout=10_000)
            assert page.get_attribute(f"#thumbs-{rating}", "aria-pressed") == "true"
            page.fill("#feedback-comment", comment)
            page.fill("#feedback-correction", correction)
            page.evaluate("document.body.dataset.feedback = ''")
            page.click("#feedback-send")
            page.wait_for_selector("body[data-feedback=sent]", timeout=10_000)
            assert page.inner_text("#feedback-status") == "Thanks, sent." and not errors, errors
        finally:
            browser.close()
    return {k: v for k, v in posted[-1].items() if k != "id"}


def remember_feedback(request: Any, posted: list[dict[str, Any]]) -> None:
    if request.url.endswith("/v1/feedback"):
        posted.append(json.loads(request.post_data))
