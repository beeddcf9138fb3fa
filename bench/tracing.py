"""What tracing costs a request, and what lineage costs an eval run.

1. ``record``: the request-path cost of handing one finished answer to each tracer (no tracer, LangSmith,
   OpenTelemetry, both side by side), p50/p99 over ``--answers`` calls, against a live local receiver and
   against a dead endpoint (accepts connections, never answers). The answer is a realistic one: 4 cited
   passages, both guards, usage, groundedness. Goal: <= 1 ms at p99 (off the path: only a queue put).
2. ``export``: answers/s the OpenTelemetry tracer builds, batches and exports to the live receiver (its
   background threads), measured until the receiver holds every span.
3. ``lineage``: hashing the bundled GGUF cold (first run) and warm (cached by path, size and mtime).

Run: ``.venv/bin/python bench/tracing.py [--answers 5000] [--out FILE]`` (under a minute). Figures move with the
machine's load (the first ones were taken on a 2-core machine shared with other work): re-run when comparing.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit, percentile  # noqa: E402
from retrieval.index import Scope  # noqa: E402
from safety.groundedness import Groundedness  # noqa: E402
from safety.guards import GuardVerdict  # noqa: E402
from serving.answering.llamacpp.model_file import default_model_path  # noqa: E402
from serving.contracts.answer import (  # noqa: E402
    Answer,
    AnswerRequest,
    Citation,
    GuardVerdicts,
    PromptInfo,
)
from serving.contracts.generation import Usage  # noqa: E402
from serving.infra.file_hashes import FileHashes  # noqa: E402
from serving.observe.otel import OtelTracer  # noqa: E402
from serving.observe.tracing import FanOutTracer, LangSmithTracer, NoTracer, Tracer  # noqa: E402
from tests.http_receiver import HttpReceiver  # noqa: E402


def sample_answer() -> tuple[AnswerRequest, Answer]:
    request = AnswerRequest(
        question="Who were the Normans, and where did they come from?", scope=Scope("sample", "acme")
    )
    text = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. "
    citations = [Citation(index=i, doc_id=f"d{i}", chunk_id=f"c{i}", title=None, source=None, text=text * 4,
                          score=0.8 - i / 10, cited=i == 1) for i in range(1, 5)]  # fmt: skip
    answer = Answer(
        answer=text + "[1]", outcome="answered", citations=citations, generator="llamacpp", model="smollm2",
        prompt=PromptInfo(name="rag_answer", version="v2", hash="0" * 64),
        usage=Usage(prompt_tokens=420, completion_tokens=40), groundedness=Groundedness(score=0.7),
        timings_ms={"embed": 5.0, "search": 9.0, "generate": 900.0, "output_guard": 8.0, "total": 930.0},
        guards=GuardVerdicts(input=GuardVerdict(action="pass", latency_ms=3.0),
                             output=GuardVerdict(action="pass", latency_ms=8.0)),
    )  # fmt: skip
    return request, answer


def record_cost(tracer: Tracer, answers: int) -> dict[str, float]:
    request, answer = sample_answer()
    timings = []
    for _ in range(answers):
        started = time.perf_counter()
        tracer.record(request, answer)
        timings.append((time.perf_counter() - started) * 1e6)
    return {"p50_us": round(percentile(timings, 50), 1), "p99_us": round(percentile(timings, 99), 1)}


def tracers(url: str) -> dict[str, Callable[[], Tracer]]:
    return {
        "none": NoTracer,
        "langsmith": lambda: LangSmithTracer(url, "key", "bench"),
        "otel": lambda: OtelTracer(url, "ragops-bench", "0"),
        "both": lambda: FanOutTracer([LangSmithTracer(url, "key", "bench"), OtelTracer(url, "ragops-bench", "0")]),
    }


def record_figures(answers: int) -> dict[str, Any]:
    receiver, blackhole = HttpReceiver(), socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    endpoints = {"live": receiver.url, "dead": f"http://127.0.0.1:{blackhole.getsockname()[1]}"}
    figures: dict[str, Any] = {}
    try:
        for where, url in endpoints.items():
            for name, make in tracers(url).items():
                tracer = make()
                figures[f"{name}_{where}"] = record_cost(tracer, answers)
                tracer.close()
    finally:
        receiver.close()
        blackhole.close()
    return figures


def export_rate(answers: int) -> dict[str, float]:
    receiver = HttpReceiver()
    tracer = OtelTracer(receiver.url, "ragops-bench", "0")
    request, answer = sample_answer()
    started = time.perf_counter()
    for _ in range(answers):
        tracer.record(request, answer)
    tracer.flush(120.0)
    seconds = time.perf_counter() - started
    tracer.close()
    receiver.close()
    return {"answers": answers, "seconds": round(seconds, 2), "answers_per_s": round(answers / seconds)}


def lineage_figures() -> dict[str, float]:
    gguf = default_model_path(ROOT / ".ragops" / "models")
    with tempfile.TemporaryDirectory() as tmp:
        hashes = FileHashes(Path(tmp) / "file-hashes.sqlite")
        started = time.perf_counter()
        hashes.sha256(gguf)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        hashes.sha256(gguf)
        warm = time.perf_counter() - started
        hashes.close()
    return {"gguf_mb": round(gguf.stat().st_size / 1e6, 1), "cold_ms": round(cold * 1e3, 1),
            "warm_ms": round(warm * 1e3, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--answers", type=int, default=5000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = {"record": record_figures(args.answers), "export": export_rate(min(args.answers, 2000)),
               "lineage": lineage_figures()}  # fmt: skip
    emit(figures, args.out)


if __name__ == "__main__":
    main()
