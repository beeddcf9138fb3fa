"""Retrieval benchmark on the bundled Disfl-QA corpus.

What it measures, and how:
1. Raw embedding throughput: the bare embedder (no cache, no index) over the exact chunk texts ingestion embeds,
   after a warm-up batch.
2. Ingest throughput: ``ragops ingest`` of the sample corpus into a fresh data dir (empty embedding cache, so every
   chunk is embedded), in chunks/s; then a re-ingest of the unchanged corpus.
3. Quality: each question's relevant document is its passage; the top 20 chunks are mapped to documents (first
   occurrence wins) and scored with recall@1/5/10, MRR@10 and nDCG@10 for dense, sparse (BM25) and hybrid (RRF).
4. Latency: ``POST /v1/search`` against a real ``ragops serve`` on 127.0.0.1 with the collection filled to
   ``--latency-chunks`` chunks (the passages plus their sentences as extra documents); unique queries (every
   query embedded: an embedding-cache miss) and the same queries again (LRU hits); client-side wall time,
   sequential, keep-alive.

Run: ``.venv/bin/python bench/retrieval.py`` (about 5 minutes on 2 cores). ``--out FILE`` writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.container import build_services  # noqa: E402
from app.settings import load_settings  # noqa: E402
from retrieval.chunking import Chunker  # noqa: E402
from retrieval.documents import Document, Section  # noqa: E402
from retrieval.embedding import build_embedder  # noqa: E402
from retrieval.index import SEARCH_MODES, Scope  # noqa: E402
from retrieval.loaders import load_file  # noqa: E402

CORPUS = ROOT / "data" / "sample" / "disfl_qa_passages.jsonl"
QUESTIONS = ROOT / "evals" / "datasets" / "disfl_qa_questions.jsonl"
SCOPE = Scope("bench", "default")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def quality(services: Any, questions: list[dict[str, Any]], mode: str) -> dict[str, float]:
    recall = {1: 0, 5: 0, 10: 0}
    reciprocal, ndcg = 0.0, 0.0
    for question in questions:
        hits = services.searcher.search(question["question"], SCOPE, top_k=20, mode=mode).hits
        ranked = list(dict.fromkeys(hit.doc_id for hit in hits))[:10]
        rank = ranked.index(question["passage_id"]) + 1 if question["passage_id"] in ranked else None
        for k in recall:
            recall[k] += rank is not None and rank <= k
        if rank is not None:
            reciprocal += 1 / rank
            ndcg += 1 / math.log2(rank + 1)  # one relevant document: ideal DCG is 1
    n = len(questions)
    return {
        "recall@1": recall[1] / n,
        "recall@5": recall[5] / n,
        "recall@10": recall[10] / n,
        "mrr@10": reciprocal / n,
        "ndcg@10": ndcg / n,
    }


def sentence_documents(documents: list[Document], needed: int) -> list[Document]:
    """Extra real-text documents to grow the collection for the latency run: the passages' sentences, then
    pairs of consecutive sentences."""
    extra: list[Document] = []
    for window in (1, 2):
        for document in documents:
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", document.text) if len(s.split()) >= 5]
            for number in range(len(sentences) - window + 1):
                if len(extra) >= needed:
                    return extra
                text = " ".join(sentences[number : number + window])
                extra.append(Document(f"{document.id}-w{window}-{number}", (Section(text),)))
    return extra


def latency(data_dir: Path, models_dir: Path, queries: list[str]) -> dict[str, float]:
    import httpx

    from tests.live_server import LiveServer

    env = {"RAGOPS_DATA_DIR": str(data_dir), "RAGOPS_MODELS_DIR": str(models_dir)}
    server = LiveServer(env, data_dir / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for query in queries[:20]:  # warm-up: connection, code paths (not counted)
                client.post("/v1/search", json={"query": query + " warmup", "collection": SCOPE.collection})
            timings: dict[str, list[float]] = {"unique": [], "repeated": []}
            for label in ("unique", "repeated"):
                for query in queries:
                    started = time.perf_counter()
                    response = client.post("/v1/search", json={"query": query, "collection": SCOPE.collection})
                    timings[label].append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
    finally:
        server.stop()
    return {
        f"{label}_{name}": round(percentile(values, q), 2)
        for label, values in timings.items()
        for name, q in (("p50_ms", 50), ("p95_ms", 95))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=2000, help="questions 0..N-1 for the quality metrics")
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--latency-chunks", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ragops-bench-"))
    models_dir = ROOT / ".ragops" / "models"
    settings = load_settings(data_dir=work / "data", models_dir=models_dir)
    raw_embedder = build_embedder(
        settings.embedder, settings.embedding_model, settings.model_cache_dir, settings.embedding_batch_size
    )
    services = build_services(settings, embedder=raw_embedder)
    documents = load_file(CORPUS, CORPUS.name)

    # 1. Raw embedding throughput on the very texts ingestion embeds.
    chunker = Chunker(services.embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap)
    texts = [chunk.embedding_text for document in documents for chunk in chunker.chunk(document)]
    raw_embedder.embed(texts[:64])
    raw_seconds = []
    for _ in range(2):  # the better of two runs: the pipeline is compared with the model at its fastest
        started = time.perf_counter()
        raw_embedder.embed(texts)
        raw_seconds.append(time.perf_counter() - started)
    raw_rate = len(texts) / min(raw_seconds)

    # 2. Ingest from an empty cache, then again unchanged.
    first = services.ingestor.ingest_paths([CORPUS], SCOPE)
    second = services.ingestor.ingest_paths([CORPUS], SCOPE)
    ingest_rate = first.chunks / first.seconds

    # 3. Quality per mode.
    with QUESTIONS.open() as handle:
        questions = [json.loads(line) for _, line in zip(range(args.questions), handle, strict=False)]
    scores = {mode: quality(services, questions, mode) for mode in SEARCH_MODES}

    # 4. Latency at the requested collection size, through the real server.
    missing = args.latency_chunks - services.index.count(SCOPE)
    if missing > 0:
        services.ingestor.ingest_documents(documents + sentence_documents(documents, missing), SCOPE)
    chunks_for_latency = services.index.count(SCOPE)
    services.close()
    latency_queries = [q["question"] for q in questions[: args.latency_queries]]
    latencies = latency(settings.data_dir, models_dir, latency_queries)

    results: dict[str, Any] = {
        "machine": "2 cores, no GPU",
        "embedder": services.embedder.model_id,
        "corpus": {"documents": len(documents), "chunks": first.chunks},
        "throughput": {
            "raw_embedding_chunks_per_s": round(raw_rate, 1),
            "ingest_chunks_per_s": round(ingest_rate, 1),
            "ingest_vs_raw": round(ingest_rate / raw_rate, 3),
            "first_ingest_s": round(first.seconds, 2),
            "reingest_unchanged_s": round(second.seconds, 3),
            "reingest_speedup": round(first.seconds / second.seconds, 1),
        },
        "quality": {"questions": len(questions), **scores},
        "latency": {"chunks": chunks_for_latency, "queries": len(latency_queries), **latencies},
    }
    print(json.dumps(results, indent=2))
    print()
    print("| mode | recall@1 | recall@5 | recall@10 | MRR@10 | nDCG@10 |")
    print("|---|---|---|---|---|---|")
    for mode, s in scores.items():
        print(
            f"| {mode} | {s['recall@1']:.3f} | {s['recall@5']:.3f} | {s['recall@10']:.3f} "
            f"| {s['mrr@10']:.3f} | {s['ndcg@10']:.3f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
