"""The eval runner: a suite's samples through the real answering pipeline, scored, with a results file.

Answers are cached per (sample, prompt hash, generator, embedding model, corpus content): re-running an
unchanged suite only re-scores. Runs are reproducible: temperature and seed come from the prompt version.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.container import Services
from evals.metrics import METRICS, Sample
from evals.suite import Suite, SuiteError, dataset_hash, load_dataset
from retrieval.index import Scope
from serving.pipeline import AnswerRequest

ProgressFactory = Callable[[int], Any]


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


def _score(metric: str, sample: Sample, body: dict[str, Any]) -> float | None:
    """None: not applicable, or a failed judgement (NaN or an error): excluded from means, counted apart."""
    try:
        value = METRICS[metric](sample, body)
    except Exception:  # a metric that breaks on one sample must not break the run
        return None
    return None if value is None or math.isnan(value) else float(value)


def aggregate(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, Any]]:
    summary = {}
    for metric in metrics:
        values = [row["metrics"][metric] for row in rows if row["metrics"].get(metric) is not None]
        summary[metric] = {
            "mean": round(sum(values) / len(values), 4) if values else None,
            "n": len(values),
            "excluded": len(rows) - len(values),
        }
    return summary


def run_suite(
    suite: Suite,
    services: Services,
    progress: ProgressFactory | None = None,
) -> tuple[dict[str, Any], RunStats]:
    started = time.perf_counter()
    samples = load_dataset(suite.dataset, suite.samples)
    scope = Scope(suite.collection, services.settings.default_tenant)
    report = services.ingestor.ingest_paths(list(suite.corpus), scope)
    if report.errors:
        raise SuiteError(f"corpus failed to ingest: {report.errors[0]['source']}: {report.errors[0]['error']}")
    corpus_hash = hashlib.sha256(
        json.dumps(sorted((d, sorted(h)) for d, h in services.index.document_hashes(scope).items())).encode()
    ).hexdigest()[:16]
    pipeline = services.pipeline
    prompt = pipeline.prompt_for(None)
    generator = services.settings.generator
    store = AnswerStore(services.settings.cache_dir / "eval-answers.sqlite")
    rows: list[dict[str, Any]] = []
    cached = 0
    bar = progress(len(samples)) if progress else None
    try:
        for sample in samples:
            key = hashlib.sha256(
                json.dumps(
                    [
                        sample.question,
                        prompt.content_hash,
                        generator,
                        services.embedder.model_id,
                        corpus_hash,
                        suite.top_k,
                        scope.collection,
                    ]
                ).encode()
            ).hexdigest()
            body = store.get(key)
            if body is None:
                body = pipeline.answer(AnswerRequest(sample.question, scope, suite.top_k)).to_dict()
                if body.get("fallback") is None:  # a fallback answer says nothing about the prompt: retry next run
                    store.put(key, body)
            else:
                cached += 1
            rows.append(
                {
                    "id": sample.id,
                    "question": sample.question,
                    "expected": sample.expected,
                    "answers": list(sample.answers),
                    "answer": body["answer"],
                    "generator": body["generator"],
                    "fallback": body["fallback"],
                    "abstained": body["abstained"],
                    "citations": [
                        {"index": c["index"], "doc_id": c["doc_id"], "cited": c["cited"]} for c in body["citations"]
                    ],
                    "latency_ms": body["timings_ms"].get("total"),
                    "tokens": body["usage"]["completion_tokens"],
                    "metrics": {metric: _score(metric, sample, body) for metric in suite.metrics},
                }
            )
            if bar is not None:
                bar.update(1)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    results = {
        "suite": suite.name,
        "prompt": {"ref": prompt.ref, "name": prompt.name, "version": prompt.version, "hash": prompt.content_hash},
        "generator": generator,
        "model": services.embedder.model_id,
        "dataset": {"path": str(suite.dataset), "hash": dataset_hash(samples), "samples": len(samples)},
        "corpus_hash": corpus_hash,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "aggregate": aggregate(rows, list(suite.metrics)),
        "samples": rows,
    }
    return results, RunStats(len(samples), cached, time.perf_counter() - started)
