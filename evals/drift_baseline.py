"""A drift reference from an eval suite: its dataset's questions, and, from its committed results
(``evals/baselines/SUITE.json``), how the service answered them. Here, not in ``serving``: suites are evals'.

The results hold what drift compares except the top retrieval score, which is recomputed as the serving path
computes ``relevance``: the best cosine between the question and a retrieved passage (the passages' texts are
in the results; a chunk's heading path, which its stored vector also saw, is not, so for corpora with headings
the score is close, not equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evals.metrics import Sample
from evals.results import EvalResults, ResultsError, SampleResult, read_results
from evals.suite import SuiteError, dataset_hash, load_dataset, load_suite
from serving.loop.drift import ProfileLineage
from serving.loop.drift_stats import AnswerSignals, Embed


@dataclass(frozen=True)
class SuiteReference:
    answers: list[AnswerSignals]
    lineage: ProfileLineage


def baseline_path(suite_path: Path, suite_name: str) -> Path:
    """Where a suite's committed results are: ``evals/baselines/NAME.json`` beside its ``evals/suites/``."""
    return suite_path.resolve().parents[1] / "baselines" / f"{suite_name}.json"


def suite_reference(suite_path: Path, embed: Embed, embedder_id: str, results_path: Path | None) -> SuiteReference:
    """The suite's questions with their answers' signals (questions alone when it has no results). A
    ``SuiteError`` when the suite or its results cannot be read, or the results are of another dataset."""
    suite = load_suite(suite_path)
    samples = load_dataset(suite.dataset, suite.samples)
    results_path = results_path or baseline_path(suite_path, suite.name)
    results = _matching_results(results_path, samples) if results_path.is_file() else None
    if results is None:
        answers = [AnswerSignals(question=s.question) for s in samples]
    else:
        answers = [_signals(r, top) for r, top in zip(results.samples, _top_scores(results, embed), strict=True)]
    lineage = ProfileLineage(
        source="suite", embedder=embedder_id, suite=suite.name, dataset=str(suite.dataset),
        dataset_hash=dataset_hash(samples), corpus_hash=results.corpus_hash if results else None,
        results=str(results_path) if results else None, results_timestamp=results.timestamp if results else None,
        prompt=results.prompt.name if results else suite.prompt.split("@")[0],
        version=results.prompt.version if results else None, prompt_hash=results.prompt.hash if results else None,
        questions=len(answers),
    )  # fmt: skip
    return SuiteReference(answers, lineage)


def _matching_results(path: Path, samples: list[Sample]) -> EvalResults:
    try:
        results = read_results(path)
    except ResultsError as exc:
        raise SuiteError(str(exc)) from exc
    if results.dataset.hash != dataset_hash(samples):
        raise SuiteError(f"{path} is a run of another version of the dataset (hash {results.dataset.hash}); re-run it")
    return results


def _signals(result: SampleResult, top_score: float | None) -> AnswerSignals:
    return AnswerSignals(
        question=result.question, outcome=result.outcome, top_score=top_score, fallback=result.fallback is not None,
        groundedness=result.metrics.get("groundedness"), answer=result.answer,
    )  # fmt: skip


def _top_scores(results: EvalResults, embed: Embed) -> list[float | None]:
    """Each sample's best cosine between its question and a passage it was shown (None: no passage); one
    ``embed`` call for every text, as batches are what the embedder is fast at."""
    texts = sorted({t for r in results.samples for t in (r.question, *(c.text for c in r.citations))})
    vectors = dict(zip(texts, embed(texts), strict=True))
    return [
        round(float(max(vectors[c.text] @ vectors[r.question] for c in r.citations)), 4) if r.citations else None
        for r in results.samples
    ]
