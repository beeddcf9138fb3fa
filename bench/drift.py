"""Drift detection (serving/loop/drift.py) on SQuADShifts: detection power against window size, false alarms over
same-stream splits, what the periodic check costs a request, and the check's own time.

Report range: questions 3000 on of each domain (the method was tried out on questions 0-2999 only). The
Wikipedia (new_wiki) stream is a seeded shuffle: its file is ordered by article, users' questions are not.

- ``power``: reference 500 Wikipedia questions, windows of 20-200 questions from Amazon reviews and from New
  York Times articles (the question embeddings are the only signal questions alone have); share of ``--runs``
  random draws in which the check (alpha 0.01, the drift_alpha default) says drift, and the mean ROC AUC.
- ``answers_to_detection``: the server's way: 200 Wikipedia questions, then 200 shifted ones, a check every 10
  answers over the latest 200: how many shifted questions the first alarm took (median, max over runs), and
  alarms raised before the shift.
- ``false_alarms``: the same reference against windows from the rest of the same stream, per domain and window
  size: share of draws that say drift (the goal: <= 5% at 200).
- ``request_path``: ``DriftMonitor.observe`` per answer, the only part on the request path (p50 / p99 over
  100,000 calls; a call that starts a check only enqueues it); and answers through the extractive pipeline
  in process, with the monitor off and on (drift_every 20, drift_window 200: a check every 20 answers runs in a
  background thread meanwhile), interleaved: the p50 / p95 difference is what the checks cost requests,
  CPU contention on this machine included.
- ``check_ms``: one check of a 200-answer window against a 500-question profile, the window's questions
  embedded fresh and from the embedding cache.

Run: ``RAGOPS_MODELS_DIR=.ragops/models .venv/bin/python bench/drift.py [--runs 50] [--answers 300] [--out
bench/results/drift.json]``. Latency figures depend on what else runs on the machine: re-run on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit, percentile  # noqa: E402
from retrieval.embedding import Embedder, build_embedder  # noqa: E402
from serving.loop.drift_stats import AnswerSignals, DriftSample, compare  # noqa: E402
from tests.test_drift import shift_questions, shuffled_wiki, table_embed  # noqa: E402

ALPHA = 0.01
REFERENCE = 500
WINDOWS = (20, 50, 100, 200)  # below 20 questions (MIN_SAMPLES) a signal is not tested
EVERY = 10  # answers between checks in the stream simulation

Embed = Callable[[Sequence[str]], NDArray[np.float32]]


def sample(questions: Sequence[str], embed: Embed) -> DriftSample:
    return DriftSample.of([AnswerSignals(question=q) for q in questions], embed)


def detection_rate(reference: list[str], stream: list[str], window: int, runs: int, embed: Embed, seed: int) -> Any:
    """Share of ``runs`` draws (a reference of REFERENCE and a window from ``stream``) the check calls drift."""
    rng = np.random.default_rng(seed)
    drifted, aucs = 0, []
    for _ in range(runs):
        ref = [reference[i] for i in rng.choice(len(reference), REFERENCE, replace=False)]
        cur = [stream[i] for i in rng.choice(len(stream), window, replace=False)]
        results = compare(sample(ref, embed), sample(cur, embed), ALPHA, seed=int(rng.integers(1 << 31)))
        drifted += any(r.drifted for r in results)
        aucs.append(results[0].statistic or 0.5)
    return {"rate": round(drifted / runs, 3), "mean_auc": round(float(np.mean(aucs)), 3)}


def answers_to_detection(reference: list[str], before: list[str], after: list[str], runs: int, embed: Embed) -> Any:
    """A stream of 200 reference-like questions, then shifted ones; a check every EVERY answers over the latest
    200. Per run: shifted questions seen at the first alarm (None: none within 200), and alarms before the shift."""
    rng = np.random.default_rng(1)
    firsts: list[int | None] = []
    early = 0
    for _ in range(runs):
        ref = sample([reference[i] for i in rng.choice(len(reference), REFERENCE, replace=False)], embed)
        stream = [before[i] for i in rng.choice(len(before), 200, replace=False)]
        stream += [after[i] for i in rng.choice(len(after), 200, replace=False)]
        first = None
        for seen in range(EVERY, len(stream) + 1, EVERY):
            drifted = any(r.drifted for r in compare(ref, sample(stream[max(0, seen - 200) : seen], embed), ALPHA))
            if drifted and seen <= 200:
                early += 1
            if drifted and seen > 200:
                first = seen - 200
                break
        firsts.append(first)
    found = [f for f in firsts if f is not None]
    return {"detected_runs": len(found), "runs": runs, "median": float(np.median(found)) if found else None,
            "max": max(found) if found else None, "alarms_before_shift": early}  # fmt: skip


def same_stream_rate(stream: list[str], window: int, runs: int, embed: Embed, seed: int) -> float:
    """Share of ``runs`` random splits of one stream (reference | window, disjoint) the check calls drift."""
    rng = np.random.default_rng(seed)
    drifted = 0
    for _ in range(runs):
        order = rng.permutation(len(stream))
        ref = [stream[i] for i in order[:REFERENCE]]
        cur = [stream[i] for i in order[REFERENCE : REFERENCE + window]]
        drifted += any(r.drifted for r in compare(sample(ref, embed), sample(cur, embed), ALPHA))
    return round(drifted / runs, 3)


def observe_cost() -> dict[str, float]:
    """ns per ``DriftMonitor.observe``: counting, and every 20th call enqueueing a check (dropped here: the
    worker's queue holds one, as while a check runs)."""
    from serving.loop.drift import DriftMonitor

    class Idle:  # a check that never finishes starting: observe's enqueue is all that is timed
        def flush(self, wait_s: float = 0) -> bool:
            time.sleep(3600)
            return True

    def no_embedding(texts: Sequence[str]) -> NDArray[np.float32]:
        return np.zeros((0, 0), dtype=np.float32)

    monitor = DriftMonitor(
        every=20,
        window=200,
        alpha=ALPHA,
        answers=Idle(),  # type: ignore[arg-type]
        profiles=None,  # type: ignore[arg-type]
        embed=no_embedding,
        embedder_id="none",
        on_report=print,
    )
    timings = []
    for _ in range(100_000):
        started = time.perf_counter_ns()
        monitor.observe(None)  # type: ignore[arg-type]
        timings.append(time.perf_counter_ns() - started)
    ns = [float(t) for t in timings]
    return {"p50_ns": percentile(ns, 50), "p99_ns": percentile(ns, 99), "max_ns": max(ns)}


def paired_answers(embedder: Embedder, answers: int) -> dict[str, Any]:
    """Extractive answers in process, monitor off vs on, in alternating blocks of 25 (a check runs in a thread:
    interleaving single answers would let an "on" answer's check slow the "off" answer after it, hiding its cost;
    each "on" block waits for its last check before the next block starts); p50/p95 ms of each, the difference."""
    from app.container import build_services
    from app.settings import load_settings
    from retrieval.index import Scope
    from serving.contracts.answer import AnswerRequest
    from serving.loop.drift import DriftProfiles, ProfileLineage
    from tests.conftest import sample_documents, sample_questions

    scope = Scope("sample", "default")
    documents = sample_documents(200)
    questions = [q["question"] for q in sample_questions({d.id for d in documents}, limit=answers)]
    timings: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        services = {
            name: build_services(load_settings(data_dir=Path(tmp) / name, generator="extractive", drift_every=every,
                                               drift_window=200, models_dir=_models_dir()), embedder=embedder)
            for name, every in (("off", 0), ("on", 20))
        }  # fmt: skip
        for s in services.values():
            s.ingestor.ingest_documents(documents, scope)
        lineage = ProfileLineage(source="suite", embedder=embedder.model_id)
        DriftProfiles(services["on"].state).save("default", sample(shuffled_wiki(REFERENCE), embedder.embed), lineage)
        monitor = services["on"].drift_monitor
        assert monitor is not None
        for block in range(0, len(questions), 25):
            for name in ("off", "on") if block // 25 % 2 else ("on", "off"):
                for question in questions[block : block + 25]:
                    started = time.perf_counter()
                    services[name].pipeline.answer(AnswerRequest(question=question, scope=scope))
                    timings[name].append((time.perf_counter() - started) * 1000)
                monitor.flush(60)
        monitor.flush(60)
        exposition = services["on"].metrics.exposition().decode()
        count = next(float(line.split()[-1]) for line in exposition.splitlines()
                     if line.startswith("ragops_drift_check_seconds_count"))  # fmt: skip
        for s in services.values():
            s.close()
    figures: dict[str, Any] = {
        name: {"p50_ms": round(percentile(t, 50), 2), "p95_ms": round(percentile(t, 95), 2)}
        for name, t in timings.items()
    }
    figures["checks_run"] = int(count)
    figures["p50_added_ms"] = round(figures["on"]["p50_ms"] - figures["off"]["p50_ms"], 2)
    figures["p95_added_ms"] = round(figures["on"]["p95_ms"] - figures["off"]["p95_ms"], 2)
    return figures


def check_time(embedder: Embedder) -> dict[str, float]:
    """One 200-answer check against a 500-question profile: fresh embeddings, then the same from a table."""
    reference = sample(shuffled_wiki(REFERENCE, seed=5), embedder.embed)
    window = shift_questions("nyt", 4000, 200)
    started = time.perf_counter()
    compare(reference, sample(window, embedder.embed), ALPHA)
    fresh = (time.perf_counter() - started) * 1000
    embed = table_embed(embedder, window)
    started = time.perf_counter()
    compare(reference, sample(window, embed), ALPHA)
    cached = (time.perf_counter() - started) * 1000
    return {"embedding_fresh_ms": round(fresh, 1), "embeddings_cached_ms": round(cached, 1)}


def _models_dir() -> Path:
    return Path(os.environ.get("RAGOPS_MODELS_DIR", ROOT / ".ragops" / "models"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="random draws per cell")
    parser.add_argument("--answers", type=int, default=300, help="answers per configuration (request path)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    embedder = build_embedder("onnx", "all-MiniLM-L6-v2", _models_dir(), 64)
    streams = {"new_wiki": shuffled_wiki(4000), "amazon": shift_questions("amazon", 3000, 4000),
               "nyt": shift_questions("nyt", 3000, 4000)}  # fmt: skip
    embed = table_embed(embedder, [q for stream in streams.values() for q in stream])
    wiki = streams["new_wiki"]
    power = {
        shift: {w: detection_rate(wiki[:2000], streams[shift], w, args.runs, embed, seed=w) for w in WINDOWS}
        for shift in ("amazon", "nyt")
    }
    detection = {
        shift: answers_to_detection(wiki[:2000], wiki[2000:], streams[shift], args.runs, embed)
        for shift in ("amazon", "nyt")
    }
    false_alarms = {
        domain: {w: same_stream_rate(stream, w, args.runs, embed, seed=w) for w in WINDOWS}
        for domain, stream in streams.items()
    }
    figures = {
        "reference_questions": REFERENCE, "alpha": ALPHA, "runs_per_cell": args.runs,
        "power_from_new_wiki": power,
        "answers_to_detection": detection, "false_alarm_rate_same_stream": false_alarms,
        "check_ms": check_time(embedder), "request_path": {"observe": observe_cost(),
                                                          **paired_answers(embedder, args.answers)},
    }  # fmt: skip
    emit(figures, args.out)


if __name__ == "__main__":
    main()
