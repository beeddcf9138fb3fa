"""The eval runner: a suite's samples through the real answering pipeline, scored, with a results file.

Answers are cached per (sample, prompt hash, generator, embedding model, corpus content, the settings answers
depend on), and a judge's successful judgements with them: re-running an unchanged suite only re-scores. Runs are
reproducible: temperature and seed come from the prompt version, and the judge runs at temperature 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.metrics import METRICS, Metric, Sample
from evals.ragas_metrics import JUDGE_METRICS, RAGAS_METRICS, JudgeConfig, judge_metrics
from evals.results import (
    CitationRow,
    DatasetInfo,
    EvalResults,
    Limits,
    MetricSummary,
    Percentiles,
    Performance,
    PromptRef,
    SampleResult,
    TokenTotals,
)
from evals.suite import Suite, SuiteError, dataset_hash, load_dataset
from retrieval.embedding import Embedder
from retrieval.index import Scope, VectorIndex
from retrieval.ingest import Ingestor
from retrieval.loaders import load_paths
from serving.answering.pipeline import RagPipeline
from serving.contracts.answer import Answer, AnswerRequest
from serving.loop.lineage import ModelHashes, RunLineage

ProgressFactory = Callable[[int], Any]
# Bumped when answers gain fields metrics read, or the code behind them changes what they hold (2: guards and
# groundedness; 3: outcome; 4: fused and reranked retrieval, the question-reading groundedness scorer, the model's
# abstention as an outcome).
ANSWER_FORMAT = 4


class AnswerStore:
    """Answers by cache key, in SQLite under the data dir."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row  # rows read by column name
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        return str(row["body"]) if row else None

    def put(self, key: str, body: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, body) VALUES (?, ?)", (key, body))

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True, kw_only=True)
class EvalParts:
    """What a suite run needs, wired by the composition root: the real pipeline and ingestor, the index (for the
    corpus hash), the embedder (for judge metrics), and where answers are cached."""

    pipeline: RagPipeline
    ingestor: Ingestor
    index: VectorIndex
    embedder: Embedder
    tenant: str
    generator: str
    answers_path: Path
    rewriter: str = "rules"
    answer_settings: str = ""  # the settings answers depend on, serialised: part of the answer cache key
    judge: JudgeConfig | None = None
    models: ModelHashes | None = None  # the models by content, for the run's lineage (None: not recorded)


@dataclass(frozen=True)
class RunStats:
    samples: int
    cached: int
    seconds: float


@dataclass(frozen=True)
class Score:
    """A metric's value for one sample; ``value`` None with no ``failure``: not applicable."""

    value: float | None
    failure: str | None = None


def score(metric: Metric, sample: Sample, answer: Answer) -> Score:
    """A failed judgement (an exception, a NaN) is reported as such, never as 0 or 1."""
    try:
        value = metric(sample, answer)
    except Exception as exc:  # a metric that breaks on one sample must not break the run
        return Score(None, f"{type(exc).__name__}: {exc}"[:300])
    if value is not None and math.isnan(value):
        return Score(None, "NaN")
    return Score(None if value is None else float(value))


def aggregate(rows: list[SampleResult], metrics: list[str]) -> dict[str, MetricSummary]:
    """Means over the scored samples; not-applicable and failed ones are counted apart, not averaged in."""
    summary = {}
    for metric in metrics:
        values = [v for row in rows if (v := row.metrics.get(metric)) is not None]
        failed = sum(metric in row.failures for row in rows)
        summary[metric] = MetricSummary(
            mean=round(sum(values) / len(values), 4) if values else None,
            n=len(values),
            failed=failed,
            not_applicable=len(rows) - len(values) - failed,
        )
    return summary


def by_turn(rows: list[SampleResult], metrics: list[str]) -> dict[int, dict[str, MetricSummary]] | None:
    """A multi-turn suite's metrics per turn of its conversations (None for a single-turn suite)."""
    turns = sorted({row.turn for row in rows})
    if turns == [1]:
        return None
    return {turn: aggregate([row for row in rows if row.turn == turn], metrics) for turn in turns}


def _percentile(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1) if ordered else None


def performance(rows: list[SampleResult]) -> Performance:
    """Latency and tokens of the answers (cached answers report the latency of the run that made them)."""
    latencies = [row.latency_ms for row in rows if row.latency_ms is not None]
    tokens = [row.tokens for row in rows]
    return Performance(
        latency_ms=Percentiles(p50=_percentile(latencies, 0.5), p95=_percentile(latencies, 0.95)),
        completion_tokens=TokenTotals(mean=round(sum(tokens) / len(tokens), 1) if tokens else None, total=sum(tokens)),
        fallbacks=sum(row.fallback is not None for row in rows),
    )


def _shown(path: Path) -> str:
    """Relative to the working directory when under it: results files compare across machines."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _ingest_corpus(suite: Suite, parts: EvalParts, scope: Scope) -> tuple[list[Sample], str]:
    """The suite's corpus in its collection (or each corpus path in its own); the samples with their reference
    passages; the corpus hash."""
    parts_by_collection = (
        {suite.scope_collection(f"{path.name}/"): [path] for path in suite.corpus}
        if suite.collection_per_corpus
        else {scope.collection: list(suite.corpus)}
    )
    texts: dict[tuple[str, str], str] = {}
    for collection, paths in parts_by_collection.items():
        documents, errors = load_paths(paths)
        report = parts.ingestor.ingest_documents(documents, replace(scope, collection=collection), load_errors=errors)
        if report.errors:
            raise SuiteError(f"corpus failed to ingest: {report.errors[0]['source']}: {report.errors[0]['error']}")
        texts.update({(collection, document.id): document.text for document in documents})
    samples = [
        replace(s, reference_contexts=tuple(
            texts[key] for d in s.reference_doc_ids if (key := (suite.scope_collection(s.id), d)) in texts
        ))
        for s in load_dataset(suite.dataset, suite.samples)
    ]  # fmt: skip
    hashes = [(c, parts.index.document_hashes(replace(scope, collection=c))) for c in parts_by_collection]
    if not suite.collection_per_corpus:  # a single collection's hash as it always was: baselines compare it
        return samples, _key(sorted((d, sorted(h)) for d, h in hashes[0][1].items()))[:16]
    return samples, _key([[c, sorted((d, sorted(h)) for d, h in found.items())] for c, found in hashes])[:16]


class _SampleScorer:
    """Answers one sample (from the answer store when the same answer was made before) and scores it."""

    def __init__(self, suite: Suite, parts: EvalParts, scope: Scope, corpus_hash: str, store: AnswerStore) -> None:
        self._suite, self._parts, self._scope, self._store = suite, parts, scope, store
        self._prompt_hash = parts.pipeline.prompt_for(None).content_hash
        self._context = (
            parts.generator, parts.embedder.model_id, corpus_hash, suite.top_k, scope.collection, parts.answer_settings
        )  # fmt: skip
        judged = parts.judge if set(suite.metrics) & set(JUDGE_METRICS) else None
        self._metrics = {**METRICS, **RAGAS_METRICS, **judge_metrics(judged, parts.embedder)}
        self.cached = 0

    def answer(self, sample: Sample) -> tuple[str, Answer]:
        history = [turn.as_dict() for turn in sample.history]
        scope = replace(self._scope, collection=self._suite.scope_collection(sample.id))
        own_collection = [scope.collection] if scope != self._scope else []  # a suite with a collection per corpus
        key = _key(ANSWER_FORMAT, sample.question, self._prompt_hash, *self._context, *([history] if history else []),
                   *own_collection)  # fmt: skip
        stored = self._store.get(key)
        if stored is not None:
            self.cached += 1
            return key, Answer.model_validate_json(stored)
        request = AnswerRequest(question=sample.question, scope=scope, top_k=self._suite.top_k,
                                history=list(sample.history))  # fmt: skip
        answer = self._parts.pipeline.answer(request)
        if answer.fallback is None:  # a fallback answer says nothing about the prompt: retry next run
            self._store.put(key, answer.model_dump_json())
        return key, answer

    def scores(self, key: str, sample: Sample, answer: Answer) -> dict[str, Score]:
        """Judgements are slow: a successful one is kept with the answer it judged."""
        judge, scores = self._parts.judge, {}
        for name in self._suite.metrics:
            judged_key = _key(key, name, judge.model) if judge and name in JUDGE_METRICS else None
            kept = self._store.get(judged_key) if judged_key else None
            scores[name] = Score(json.loads(kept)["value"]) if kept else score(self._metrics[name], sample, answer)
            if judged_key and not kept and scores[name].failure is None and answer.fallback is None:
                self._store.put(judged_key, json.dumps({"value": scores[name].value}))
        return scores


def sample_result(sample: Sample, answer: Answer, scores: dict[str, Score]) -> SampleResult:
    return SampleResult(
        id=sample.id,
        question=sample.question,
        expected=sample.expected,
        answers=list(sample.answers),
        reference_doc_ids=list(sample.reference_doc_ids),
        answer=answer.answer,
        outcome=answer.outcome,
        generator=answer.generator,
        model=answer.model,
        fallback=answer.fallback,
        abstained=answer.abstained,
        citations=[CitationRow.model_validate(c.model_dump()) for c in answer.citations],
        latency_ms=answer.timings_ms.get("total"),
        tokens=answer.usage.completion_tokens,
        metrics={name: s.value for name, s in scores.items()},
        failures={name: s.failure for name, s in scores.items() if s.failure},
        turn=sample.turn,
        retrieval_query=answer.rewrite.query if answer.rewrite is not None else None,
    )


def run_suite(suite: Suite, parts: EvalParts, progress: ProgressFactory | None = None) -> tuple[EvalResults, RunStats]:
    started = time.perf_counter()
    scope = Scope(suite.collection, parts.tenant)
    samples, corpus_hash = _ingest_corpus(suite, parts, scope)
    store = AnswerStore(parts.answers_path)
    scorer = _SampleScorer(suite, parts, scope, corpus_hash, store)
    rows: list[SampleResult] = []
    bar = progress(len(samples)) if progress else None
    try:
        for sample in samples:
            key, answer = scorer.answer(sample)
            rows.append(sample_result(sample, answer, scorer.scores(key, sample, answer)))
            if bar is not None:
                bar.update(1)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    results = _results(suite, parts, samples, corpus_hash, rows)
    return results, RunStats(len(samples), scorer.cached, time.perf_counter() - started)


def _results(
    suite: Suite, parts: EvalParts, samples: list[Sample], corpus_hash: str, rows: list[SampleResult]
) -> EvalResults:
    prompt = parts.pipeline.prompt_for(None)
    models = sorted({row.model for row in rows if row.model})
    dataset = DatasetInfo(path=_shown(suite.dataset), hash=dataset_hash(samples), samples=len(samples))
    lineage = None
    if parts.models is not None:
        lineage = RunLineage(dataset=dataset.hash, corpus=corpus_hash, prompt=f"{prompt.name}@{prompt.version}",
                             prompt_hash=prompt.content_hash, models=parts.models)  # fmt: skip
    return EvalResults(
        suite=suite.name,
        prompt=PromptRef(ref=prompt.ref, name=prompt.name, version=prompt.version, hash=prompt.content_hash),
        generator=parts.generator,
        rewriter=parts.rewriter,
        model=models[0] if len(models) == 1 else models,
        embedder=parts.embedder.model_id,
        judge=parts.judge.model if parts.judge else None,
        dataset=dataset,
        corpus_hash=corpus_hash,
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        thresholds={name: Limits(threshold=m.threshold, tolerance=m.tolerance) for name, m in suite.metrics.items()},
        aggregate=aggregate(rows, list(suite.metrics)),
        by_turn=by_turn(rows, list(suite.metrics)),
        performance=performance(rows),
        samples=rows,
        lineage=lineage,
    )
