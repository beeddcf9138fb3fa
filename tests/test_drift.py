"""Drift detection (serving/loop/drift.py): the statistics on SQuADShifts, profiles in the state store, the server's
periodic check, and ``ragops drift baseline|check``'s exit codes.

SQuADShifts' Wikipedia questions against its Amazon product-review questions must be detected within 200
questions; 20 random same-stream splits may raise at most one false alarm (<= 5%)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from app.cli import main
from app.container import Services
from evals.drift_baseline import suite_reference
from retrieval.embedding import Embedder
from retrieval.index import Scope
from serving.contracts.answer import AnswerRequest
from serving.infra.state_store import StateStore
from serving.loop.answer_log import AnswerLog
from serving.loop.drift import DriftError, DriftProfiles, ProfileLineage, check
from serving.loop.drift_stats import AnswerSignals, DriftSample, compare, holm
from serving.loop.lineage import Lineage
from tests.conftest import load_sample_records, make_answer, sample_documents, sample_questions
from tests.live_server import LiveServers

ROOT = Path(__file__).resolve().parents[1]
SHIFTS = ROOT / "data" / "squad_shifts"
SCOPE = Scope("sample", "default")
ALPHA = 0.01  # the drift_alpha default


def shift_questions(domain: str, first: int, count: int) -> list[str]:
    with (SHIFTS / f"{domain}_questions.jsonl").open() as handle:
        lines = [line for _, line in zip(range(first + count), handle, strict=False)][first:]
    return [json.loads(line)["question"] for line in lines]


def shuffled_wiki(count: int, seed: int = 3) -> list[str]:
    """Wikipedia questions from 3000 on, in a seeded random order: the file is ordered by article, a stream of
    users' questions is not (consecutive questions of the file are one topic, which a drift check rightly sees)."""
    wiki = shift_questions("new_wiki", 3000, 5000)
    return [wiki[i] for i in np.random.default_rng(seed).permutation(len(wiki))[:count]]


def table_embed(embedder: Embedder, questions: Sequence[str]) -> Callable[[Sequence[str]], NDArray[np.float32]]:
    """Embed once, look up after: the same vectors as the embedder's, for many checks."""
    unique = sorted(set(questions))
    table = dict(zip(unique, embedder.embed(unique), strict=True))
    return lambda texts: np.stack([table[t] for t in texts])


def profile_of(questions: Sequence[str], embed: Callable[[Sequence[str]], NDArray[np.float32]]) -> DriftSample:
    return DriftSample.of([AnswerSignals(question=q) for q in questions], embed)


@dataclass(frozen=True)
class Shifts:
    wiki: list[str]
    amazon: list[str]
    embed: Callable[[Sequence[str]], NDArray[np.float32]]


@pytest.fixture(scope="module")
def shifts(embedder: Embedder) -> Shifts:
    # Questions 3000 on: the statistics were tried out on 0-2999 (bench/drift.py reports on these too).
    wiki, amazon = shuffled_wiki(1200), shift_questions("amazon", 3000, 200)
    return Shifts(wiki, amazon, table_embed(embedder, wiki + amazon))


def test_holm_adjusts_step_down() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept at 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_wikipedia_to_reviews_detected_within_200_questions(shifts: Shifts) -> None:
    wiki, amazon, embed = shifts.wiki, shifts.amazon, shifts.embed
    reference = profile_of(wiki[:500], embed)
    stream = wiki[500:700] + amazon  # 200 more Wikipedia questions, then the shift
    verdicts = []
    for seen in range(50, len(stream) + 1, 50):  # a check every 50 answers over the latest 200
        results = compare(reference, profile_of(stream[max(0, seen - 200) : seen], embed), ALPHA)
        verdicts.append((seen, results[0]))
    before = [r for seen, r in verdicts if seen <= 200]
    after = [(seen, r) for seen, r in verdicts if seen > 200]
    assert not any(r.drifted for r in before), [(r.statistic, r.p_value) for r in before]
    first = next(seen - 200 for seen, r in after if r.drifted)
    assert first <= 200
    assert after[-1][1].statistic is not None and after[-1][1].statistic > 0.9  # ROC AUC of the classifier


def test_same_stream_splits_raise_at_most_one_false_alarm(shifts: Shifts) -> None:
    wiki, embed = shifts.wiki, shifts.embed
    rng = np.random.default_rng(13)
    alarms = 0
    for _ in range(20):
        order = rng.permutation(len(wiki))
        reference = profile_of([wiki[i] for i in order[:500]], embed)
        window = profile_of([wiki[i] for i in order[500:700]], embed)
        alarms += any(r.drifted for r in compare(reference, window, ALPHA))
    assert alarms <= 1


@pytest.fixture(scope="module")
def served(embedder: Embedder) -> list[AnswerSignals]:
    """The retrieval suite's 200 committed answers (extractive), every answer signal with them."""
    return suite_reference(ROOT / "evals/suites/retrieval.yaml", embedder.embed, embedder.model_id, None).answers


def test_answer_signals_same_stream_quiet_and_a_shift_caught(embedder: Embedder, served: list[AnswerSignals]) -> None:
    embed = table_embed(embedder, [a.question for a in served])
    rng = np.random.default_rng(7)
    alarms = 0
    for _ in range(20):
        order = rng.permutation(len(served))
        reference = DriftSample.of([served[i] for i in order[:100]], embed)
        window = DriftSample.of([served[i] for i in order[100:]], embed)
        results = compare(reference, window, ALPHA)
        assert {r.signal for r in results if r.p_value is not None} >= {"query_embedding", "top_score", "abstention"}
        alarms += any(r.drifted for r in results)
    assert alarms <= 1
    # The same questions, but half the answers now abstain: only the abstention (and answer length) move.
    abstaining = [
        AnswerSignals(question=a.question, outcome="abstained", top_score=a.top_score) if i % 2 else a
        for i, a in enumerate(served)
    ]
    shifted = {r.signal: r for r in compare(DriftSample.of(served, embed), DriftSample.of(abstaining, embed), ALPHA)}
    assert shifted["abstention"].drifted and shifted["abstention"].statistic == pytest.approx(0.5, abs=0.05)
    assert not shifted["query_embedding"].drifted and not shifted["top_score"].drifted


def test_profile_round_trip_with_lineage(
    embedder: Embedder, served: list[AnswerSignals], database_url: str | None, tmp_path: Path
) -> None:
    store = StateStore.open(database_url, tmp_path / "state.sqlite")
    try:
        sample = DriftSample.of(served[:60], embedder.embed)
        lineage = ProfileLineage(source="suite", embedder=embedder.model_id, suite="retrieval", prompt="rag_answer",
                                 version="v2", questions=60)  # fmt: skip
        profiles = DriftProfiles(store)
        assert profiles.latest() is None
        saved = profiles.save("default", sample, lineage)
        loaded = profiles.latest()
        assert loaded is not None and loaded.id == saved.id and loaded.lineage == lineage
        assert np.allclose(loaded.sample.embeddings, sample.embeddings, atol=1e-3)  # stored as float16
        assert loaded.sample.abstention == sample.abstention and loaded.sample.top_score == sample.top_score
        events = Lineage(store).history("rag_answer", "v2")
        assert [(e.kind, e.body["profile"], e.body["suite"]) for e in events] == [
            ("drift_baseline", saved.id, "retrieval")
        ]
        report = check(loaded, served[60:120], embedder.embed, embedder.model_id, ALPHA)
        assert report.answers == 60 and len(report.signals) == 6
        with pytest.raises(DriftError, match="make a new baseline"):
            check(loaded, served[60:120], embedder.embed, "another-model", ALPHA)
    finally:
        store.close()


def test_server_checks_every_n_answers_off_the_request_path(
    make_services: Callable[..., Services], embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    services = make_services(generator="extractive", drift_every=20, drift_window=20)
    documents = sample_documents(40)
    services.ingestor.ingest_documents(documents, SCOPE)
    # The reference: product-review questions; the traffic: Disfl-QA's Wikipedia questions. Drift.
    reviews = shift_questions("amazon", 0, 100)
    lineage = ProfileLineage(source="suite", embedder=embedder.model_id, prompt="rag_answer", version="v2")
    DriftProfiles(services.state).save("default", profile_of(reviews, embedder.embed), lineage)
    questions = [q["question"] for q in sample_questions({d.id for d in documents}, limit=20)]
    assert len(questions) == 20
    with caplog.at_level(logging.INFO, logger="ragops.alerts"):
        for question in questions:
            services.pipeline.answer(AnswerRequest(question=question, scope=SCOPE))
        monitor = services.drift_monitor
        assert monitor is not None and monitor.flush(60)
    exposition = services.metrics.exposition().decode()
    assert 'ragops_drift_detected{signal="query_embedding"} 1.0' in exposition
    assert "ragops_drift_check_seconds_count 1.0" in exposition
    assert any(r.getMessage() == "alert firing" and getattr(r, "alert", None) == "drift" for r in caplog.records)
    kinds = [e.kind for e in services.lineage.history("rag_answer", "v2")]
    assert [k for k in kinds if k.startswith("drift")] == ["drift_baseline", "drift_check"]


def test_served_drift_reaches_metrics(embedder: Embedder, live_server: LiveServers) -> None:
    """``ragops serve`` with RAGOPS_DRIFT_EVERY: the check runs in the server and ``/metrics`` shows it."""
    settings = {"generator": "extractive", "default_collection": "sample", "drift_every": 20, "drift_window": 20}
    server = live_server(settings)
    records = load_sample_records(40)
    server.ingest(records)
    store = StateStore.open(None, server.data_dir / "state.sqlite")  # beside the server, as `ragops drift baseline` is
    lineage = ProfileLineage(source="suite", embedder=embedder.model_id)
    DriftProfiles(store).save("default", profile_of(shift_questions("amazon", 0, 100), embedder.embed), lineage)
    store.close()
    for question in sample_questions({r["id"] for r in records}, limit=20):
        assert httpx.post(f"{server.url}/v1/chat", json={"question": question["question"]}, timeout=60).is_success
    deadline, exposition = time.monotonic() + 60, ""
    while time.monotonic() < deadline and "ragops_drift_check_seconds_count 1.0" not in exposition:
        time.sleep(0.2)
        exposition = httpx.get(f"{server.url}/metrics").text
    assert 'ragops_drift_detected{signal="query_embedding"} 1.0' in exposition, server.log_tail()


def _keep_answers(data_dir: Path, questions: Sequence[str]) -> None:
    store = StateStore.open(None, data_dir / "state.sqlite")
    log = AnswerLog(store, 30)
    for question in questions:
        request = AnswerRequest(question=question, scope=SCOPE)
        log.record(request, make_answer("An answer. [1]", id=request.id, relevance=0.6))
    log.close(10)
    store.close()


def test_cli_exit_codes(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    data = tmp_path / "data"
    base = ["--data-dir", str(data), "drift"]
    assert main([*base, "check"]) == 2  # no profile
    assert "no drift profile" in capsys.readouterr().err
    assert main([*base, "baseline", "--from-traffic"]) == 2  # needs --since
    assert main([*base, "baseline", "--from-suite", str(tmp_path / "none.yaml")]) == 2
    qa_suite = str(ROOT / "evals/suites/qa.yaml")
    assert main([*base, "baseline", "--from-suite", qa_suite, "--results", str(tmp_path / "gone.json")]) == 2
    assert main([*base, "check", "--window", str(10**23)]) == 2  # past SQLite's integers: refused, not a traceback
    assert main([*base, "baseline", "--from-suite", str(ROOT / "evals/suites/qa.yaml"), "--name", "qa"]) == 0
    assert "from suite qa: 40 questions, 40 answers" in capsys.readouterr().out
    wiki = shuffled_wiki(300)
    _keep_answers(data, wiki[:200])
    assert main([*base, "baseline", "--from-traffic", "--since", "1d", "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["values"]["questions"] == 200 and saved["lineage"]["source"] == "traffic"
    _keep_answers(data, wiki[200:300])  # the same stream: no drift
    assert main([*base, "check", "--window", "100"]) == 0
    assert "no drift" in capsys.readouterr().out
    _keep_answers(data, shift_questions("amazon", 3000, 100))  # reviews: drift
    assert main([*base, "check", "--window", "100", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["drifted"] and report["signals"][0]["signal"] == "query_embedding"
    assert report["signals"][0]["drifted"]
    assert main([*base, "check", "--name", "other"]) == 2


def test_check_with_every_signal_skipped_could_not_check(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    data = tmp_path / "data"
    base = ["--data-dir", str(data), "drift"]
    _keep_answers(data, shuffled_wiki(5))  # fewer than MIN_SAMPLES on each side: nothing can be tested
    assert main([*base, "baseline", "--from-traffic", "--since", "1d"]) == 0
    capsys.readouterr()
    assert main([*base, "check"]) == 2  # "could not check", never 0 "no drift"
    out, err = capsys.readouterr()
    assert "verdict: could not check" in out and "no drift" not in out
    assert len(err.strip().splitlines()) == 1 and "every signal was skipped" in err
    assert "query_embedding 5/5" in err and "at least 20 values" in err, err


def test_check_names_the_profiles_there_are_or_takes_the_only_one(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs' sequence, a profile from the qa suite then a check named qa, works only with one name for both:
    a check of a name that has no profile exits 2 on one line naming the profiles there are and the command that
    makes the one asked for; without --name and no ``default``, the check takes the only profile and says so."""
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    base = ["--data-dir", str(tmp_path / "data"), "drift"]
    qa_suite = str(ROOT / "evals/suites/qa.yaml")
    assert main([*base, "check", "--name", "qa"]) == 2
    err = capsys.readouterr().err
    assert "no drift profile yet" in err and "--name qa" in err
    assert main([*base, "baseline", "--from-suite", qa_suite]) == 0  # saved as default
    capsys.readouterr()
    assert main([*base, "check", "--name", "qa"]) == 2
    out, err = capsys.readouterr()
    assert not out and len(err.strip().splitlines()) == 1, err
    assert "no drift profile named 'qa' (profiles: default (from suite))" in err
    assert "`ragops drift baseline --from-suite SUITE.yaml --name qa`" in err
    other = ["--data-dir", str(tmp_path / "other"), "drift"]
    assert main([*other, "baseline", "--from-suite", qa_suite, "--name", "qa"]) == 0
    capsys.readouterr()
    assert main([*other, "check"]) == 2  # the only profile, qa, is taken; this data dir has kept no answers
    err = capsys.readouterr().err
    assert "checking against 'qa', the only one" in err and "no kept answers" in err
