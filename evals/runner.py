"""The eval runner: a suite's samples through the real answering pipeline, scored, with a results file.

Answers are cached per (sample, prompt hash, generator, embedding model, corpus content), and a judge's
successful judgements with them: re-running an unchanged suite only re-scores. Runs are reproducible:
temperature and seed come from the prompt version, and the judge runs at temperature 0.
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

from app.container import Services
from evals.metrics import METRICS, Metric, Sample
from evals.ragas_metrics import JUDGE_METRICS, RAGAS_METRICS, judge_config, judge_metrics
from evals.suite import Suite, SuiteError, dataset_hash, load_dataset
from retrieval.index import Scope
from retrieval.loaders import load_paths
from serving.pipeline import AnswerRequest

ProgressFactory = Callable[[int], Any]
ANSWER_FORMAT = 2  # bumped when answers gain fields metrics read (2: guards and groundedness)


class AnswerStore:
    """Answers by cache key, in SQLite under the data dir."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, body: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, body) VALUES (?, ?)", (key, json.dumps(body)))

    def close(self) -> None:
        self._db.close()


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


def score(metric: Metric, sample: Sample, body: dict[str, Any]) -> Score:
    """A failed judgement (an exception, a NaN) is reported as such, never as 0 or 1."""
    try:
        value = metric(sample, body)
    except Exception as exc:  # a metric that breaks on one sample must not break the run
        return Score(None, f"{type(exc).__name__}: {exc}"[:300])
    if value is not None and math.isnan(value):
        return Score(None, "NaN")
    return Score(None if value is None else float(value))


def aggregate(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, Any]]:
    """Means over the scored samples; not-applicable and failed ones are counted apart, not averaged in."""
    summary = {}
    for metric in metrics:
        values = [row["metrics"][metric] for row in rows if row["metrics"].get(metric) is not None]
        failed = sum(metric in row.get("failures", {}) for row in rows)
        summary[metric] = {
            "mean": round(sum(values) / len(values), 4) if values else None,
            "n": len(values),
            "failed": failed,
            "not_applicable": len(rows) - len(values) - failed,
        }
    return summary


def _percentile(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1) if ordered else None


def performance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency and tokens of the answers (cached answers report the latency of the run that made them)."""
    latencies = [row["latency_ms"] for row in rows if row.get("latency_ms") is not None]
    tokens = [row["tokens"] for row in rows]
    return {
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95)},
        "completion_tokens": {"mean": round(sum(tokens) / len(tokens), 1) if tokens else None, "total": sum(tokens)},
        "fallbacks": sum(row["fallback"] is not None for row in rows),
    }


def _shown(path: Path) -> str:
    """Relative to the working directory when under it: results files compare across machines."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def run_suite(
    suite: Suite,
    services: Services,
    progress: ProgressFactory | None = None,
) -> tuple[dict[str, Any], RunStats]:
    started = time.perf_counter()
    settings = services.settings
    scope = Scope(suite.collection, settings.default_tenant)
    documents, errors = load_paths(list(suite.corpus))
    report = services.ingestor.ingest_documents(documents, scope, load_errors=errors)
    if report.errors:
        raise SuiteError(f"corpus failed to ingest: {report.errors[0]['source']}: {report.errors[0]['error']}")
    texts = {document.id: document.text for document in documents}
    samples = [
        replace(s, reference_contexts=tuple(texts[d] for d in s.reference_doc_ids if d in texts))
        for s in load_dataset(suite.dataset, suite.samples)
    ]
    corpus_hash = _key(sorted((d, sorted(h)) for d, h in services.index.document_hashes(scope).items()))[:16]
    judge = judge_config(settings)
    judged = judge if set(suite.metrics) & set(JUDGE_METRICS) else None
    metrics = {**METRICS, **RAGAS_METRICS, **judge_metrics(judged, services.embedder)}
    pipeline = services.pipeline
    prompt = pipeline.prompt_for(None)
    store = AnswerStore(settings.cache_dir / "eval-answers.sqlite")
    rows: list[dict[str, Any]] = []
    cached = 0
    bar = progress(len(samples)) if progress else None
    try:
        for sample in samples:
            key = _key(
                ANSWER_FORMAT,
                sample.question,
                prompt.content_hash,
                settings.generator,
                services.embedder.model_id,
                corpus_hash,
                suite.top_k,
                scope.collection,
            )
            body = store.get(key)
            if body is None:
                body = pipeline.answer(AnswerRequest(sample.question, scope, suite.top_k)).to_dict()
                if body.get("fallback") is None:  # a fallback answer says nothing about the prompt: retry next run
                    store.put(key, body)
            else:
                cached += 1
            scores = {}
            for name in suite.metrics:
                # Judgements are slow: a successful one is kept with the answer it judged.
                judged_key = _key(key, name, judge.model) if judge and name in JUDGE_METRICS else None
                kept = store.get(judged_key) if judged_key else None
                scores[name] = Score(kept["value"]) if kept else score(metrics[name], sample, body)
                if judged_key and not kept and scores[name].failure is None and body.get("fallback") is None:
                    store.put(judged_key, {"value": scores[name].value})
            rows.append(
                {
                    "id": sample.id,
                    "question": sample.question,
                    "expected": sample.expected,
                    "answers": list(sample.answers),
                    "reference_doc_ids": list(sample.reference_doc_ids),
                    "answer": body["answer"],
                    "generator": body["generator"],
                    "model": body.get("model"),
                    "fallback": body["fallback"],
                    "abstained": body["abstained"],
                    "citations": [
                        {k: c[k] for k in ("index", "doc_id", "cited", "score", "text")} for c in body["citations"]
                    ],
                    "latency_ms": body["timings_ms"].get("total"),
                    "tokens": body["usage"]["completion_tokens"],
                    "metrics": {name: s.value for name, s in scores.items()},
                    "failures": {name: s.failure for name, s in scores.items() if s.failure},
                }
            )
            if bar is not None:
                bar.update(1)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    models = sorted({row["model"] for row in rows if row["model"]})
    results = {
        "suite": suite.name,
        "prompt": {"ref": prompt.ref, "name": prompt.name, "version": prompt.version, "hash": prompt.content_hash},
        "generator": settings.generator,
        "model": models[0] if len(models) == 1 else models,
        "embedder": services.embedder.model_id,
        "judge": judge.model if judge else None,
        "dataset": {"path": _shown(suite.dataset), "hash": dataset_hash(samples), "samples": len(samples)},
        "corpus_hash": corpus_hash,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "thresholds": {name: {"threshold": m.threshold, "tolerance": m.tolerance} for name, m in suite.metrics.items()},
        "aggregate": aggregate(rows, list(suite.metrics)),
        "performance": performance(rows),
        "samples": rows,
    }
    return results, RunStats(len(samples), cached, time.perf_counter() - started)
