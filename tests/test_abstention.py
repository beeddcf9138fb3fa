"""Abstention calibrated per collection (serving.answering.abstention), and the small user-like corpora it is
measured on (bench/build_small_corpora.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from app.container import Services
from bench.build_small_corpora import built
from retrieval.index import Scope
from retrieval.loaders import load_paths
from serving.answering.abstention import CEILING, OFF_TOPIC_PROBES, AbstentionCalibration, CalibrationRefresh
from serving.answering.answer_cache import IndexDigest
from serving.contracts.answer import AnswerRequest
from serving.contracts.generation import NOT_IN_DOCUMENTS
from tests.conftest import sample_documents

ROOT = Path(__file__).resolve().parents[1]
SMALL = Scope("vantrel", "tenant-a")
LARGE = Scope("sample", "tenant-a")


@pytest.fixture
def extractive(make_services: Callable[..., Services]) -> Services:
    services = make_services(generator="extractive")
    documents, errors = load_paths([ROOT / "evals" / "corpora" / "small" / "vantrel"])
    assert not errors
    services.ingestor.ingest_documents(documents, SMALL)
    return services


def calibration(services: Services, default: float = 0.0, margin: float = 0.06) -> AbstentionCalibration:
    return AbstentionCalibration(services.searcher, services.embedder, default=default, margin=margin)


def version(services: Services, scope: Scope) -> str:
    return IndexDigest(services.index, lambda: services.ingestor.version)(scope)


def test_a_small_collections_threshold_is_lower_than_a_large_ones(extractive: Services) -> None:
    """Off-topic questions reach higher in 200 passages than in four documents: the larger collection's chance
    level, and so its threshold, is higher; each is the margin above its chance level (the default is no floor
    here), within the ceiling."""
    extractive.ingestor.ingest_documents(sample_documents(200), LARGE)
    calibrated = calibration(extractive)
    small = calibrated.for_scope(SMALL, version(extractive, SMALL))
    large = calibrated.for_scope(LARGE, version(extractive, LARGE))
    assert small.chance is not None and large.chance is not None
    assert small.chance < large.chance and small.threshold < large.threshold <= CEILING
    assert small.threshold == pytest.approx(small.chance + 0.06, abs=1e-3)
    floored = calibration(extractive, default=0.3).for_scope(SMALL, version(extractive, SMALL))
    assert floored.threshold == 0.3  # never below the global threshold


def test_a_new_ingest_is_measured_again_and_an_unchanged_collection_is_not(extractive: Services) -> None:
    calibrated = calibration(extractive)
    before = calibrated.for_scope(SMALL, version(extractive, SMALL))
    assert calibrated.for_scope(SMALL, version(extractive, SMALL)) is before  # kept for its version
    extractive.ingestor.ingest_documents(sample_documents(100), SMALL)
    after = calibrated.for_scope(SMALL, version(extractive, SMALL))
    assert after.version != before.version
    assert after.chance is not None and before.chance is not None and after.chance > before.chance


def test_another_tenants_collection_and_an_empty_one_get_their_own(extractive: Services) -> None:
    """The same collection name under another tenant is another collection: here an empty one, which has
    nothing to measure and gets the global threshold; the first tenant's figure is unchanged by it."""
    calibrated = calibration(extractive, default=0.3)
    mine = calibrated.for_scope(SMALL, version(extractive, SMALL))
    other = Scope(SMALL.collection, "tenant-b")
    theirs = calibrated.for_scope(other, version(extractive, other))
    assert (theirs.threshold, theirs.chance) == (0.3, None) and mine.chance is not None
    assert calibrated.for_scope(SMALL, version(extractive, SMALL)) is mine
    assert calibrated.for_scope(SMALL, None).chance is None  # no version known: the global threshold
    empty = extractive.pipeline.answer(AnswerRequest(question="Who founded it?", scope=other))
    assert empty.abstained and empty.relevance is None


def test_the_users_questions_on_their_five_documents(extractive: Services) -> None:
    """The issue's case: what the top passage says is answered; the calibrated threshold is the global one on a
    collection this small."""
    for question, answer in [("What is the main furnace nicknamed?", "Big Ada"),
                             ("Who founded Vantrel Glassworks, and when?", "Mirela Vantrel")]:  # fmt: skip
        got = extractive.pipeline.answer(AnswerRequest(question=question, scope=SMALL))
        assert got.outcome == "answered" and answer in got.answer, got.answer


def test_hostile_questions_never_raise(extractive: Services) -> None:
    for question in ["", " ", "?" * 3, "glass " * 2000, "\x00\u202e<script>", "Big Ada " * 1250]:
        for scope in (SMALL, Scope("nothing-here", "tenant-a")):
            answer = extractive.pipeline.answer(AnswerRequest(question=question, scope=scope))
            assert answer.outcome in ("answered", "abstained", "refused", "cached"), (question[:20], answer.outcome)
            assert answer.outcome != "abstained" or answer.answer == NOT_IN_DOCUMENTS


def test_the_small_corpora_are_as_the_script_builds_them() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.build_small_corpora", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    files = built()
    pdfs = [path for path in files if path.suffix == ".pdf"]
    assert len(pdfs) >= 2 and all(files[path].startswith("%PDF-1.4") for path in pdfs)
    documents, errors = load_paths([path.parent for path in pdfs])
    assert not errors and any("Tomas Reinholt" in document.text for document in documents)


def test_each_small_corpus_is_its_own_collection() -> None:
    from evals.suite import load_dataset, load_suite

    suite = load_suite(ROOT / "evals" / "suites" / "small_corpora_heldout.yaml")
    assert suite.collection_per_corpus and [path.name for path in suite.corpus] == ["handbook", "museum", "garden"]
    samples = load_dataset(suite.dataset)
    asked = {suite.scope_collection(sample.id) for sample in samples}
    assert asked == {f"{suite.collection}-{name}" for name in ("handbook", "museum", "garden")}
    assert {s.expected for s in samples} == {"answer", "abstain"}


def test_the_threshold_is_measured_at_ingest_and_once_for_concurrent_questions(
    make_services: Callable[..., Services],
) -> None:
    """The composition root measures a collection's threshold right after an ingest through this process (in the
    background), so the first question finds it; questions arriving together on a version not measured yet share
    one measure."""
    services = make_services(generator="extractive")
    pipeline = services.pipeline  # wires the measurement after each ingest
    services.ingestor.ingest_documents(sample_documents(40), LARGE)
    assert pipeline.stages.abstain.settle(60)
    searches = 0
    search = services.searcher.search

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal searches
        searches += 1
        return search(*args, **kwargs)

    services.searcher.search = counted  # type: ignore[method-assign]
    answer = pipeline.answer(AnswerRequest(question="How long should tea steep?", scope=LARGE))
    assert answer.outcome in ("answered", "abstained") and searches == 1  # the question's own search only

    calibrated = calibration(services)
    current = version(services, LARGE)
    searches = 0
    with ThreadPoolExecutor(4) as pool:
        measured = list(pool.map(lambda _: calibrated.for_scope(LARGE, current), range(4)))
    assert len({id(m) for m in measured}) == 1 and searches == len(OFF_TOPIC_PROBES)


def test_changes_made_while_a_measurement_runs_are_measured_once_after_it() -> None:
    """An API ingest is many requests: the scope changed four times while its last version was being measured is
    measured once more, at its version then, and the requests never wait for a measurement."""
    measuring, release = threading.Event(), threading.Event()
    measured: list[tuple[Scope, str | None]] = []
    versions = iter(f"v{n}" for n in range(1, 10))

    class SlowCalibration:
        def for_scope(self, scope: Scope, version: str | None) -> None:
            measured.append((scope, version))
            measuring.set()
            release.wait(10)

    refresh = CalibrationRefresh(SlowCalibration(), lambda scope: next(versions))  # type: ignore[arg-type]
    try:
        refresh.changed(SMALL)
        assert measuring.wait(10)
        started = time.perf_counter()
        for _ in range(4):
            refresh.changed(SMALL)
        refresh.changed(LARGE)
        assert time.perf_counter() - started < 0.5  # nobody waited for the measurement running
        release.set()
        assert refresh.flush(10)
        assert measured == [(SMALL, "v1"), (SMALL, "v2"), (LARGE, "v3")]
    finally:
        release.set()
        refresh.close()
