"""Retrieval benchmark: quality on four corpora, ingest throughput, search and rerank latency.

What it measures, and how:
1. Quality, per corpus: Disfl-QA (the bundled sample: questions 0-1999, and 4000-4999, the range the fusion and
   rerank weights were tuned on, shown apart) and SQuADShifts new_wiki, nyt and amazon (``data/squad_shifts``:
   each whole corpus ingested, its first ``--squad-questions`` questions). Each question has one relevant
   document, its passage; the top 20 chunks are mapped to documents (first occurrence wins) and scored with
   recall@1/5/10, MRR@10 and nDCG@10 for dense, sparse (BM25), hybrid (the fusion alone: rerank off) and
   hybrid+rerank (the default). "ratio" is nDCG@10 over the better of dense and sparse on that corpus.
   Tuning, once, on Disfl-QA questions 4000-4999 only (100 candidates a retriever): first the fusion's fixed
   dense weight over 0.25-0.40 and the four rerank weights over a 0.05 grid of the simplex; then the per-query
   dense weight (``retrieval.fusion``: base weight 0.3-0.5, gain 0-4 on the difference of the two lists' head
   spreads, head depth 8-15), a grid scored on both retrievers' top 100 of each question saved once, the rerank
   weights kept; nothing per corpus.
2. Throughput: the bare embedder (no cache, no index) over the chunk texts of the sample corpus, the better of
   two runs after a warm-up; ``ragops ingest`` of that corpus into a fresh data dir (empty embedding cache);
   then a re-ingest of the unchanged corpus.
3. Search latency: ``POST /v1/search`` against a real ``ragops serve`` on 127.0.0.1, the sample collection grown
   to ``--latency-chunks`` chunks (the passages plus their sentences as extra documents), rerank off (the goal's
   figure; Disfl-QA questions 0..N-1) and on (questions N..2N-1); unique queries (each embedded: a cache miss;
   with the rerank, candidates' sentences embedded on first sight), then the same queries again (LRU hits,
   sentences cached); client-side wall time, sequential, keep-alive, and the server's own ``timings_ms.search``
   (index, fusion and rerank, without the query embedding).
4. Rerank latency, in process (questions 2N..3N-1): the rerank stage alone on the fused top 20 candidates of
   each query, first with the sentences not yet embedded (cold, an empty embedding store: what a passage's first
   rerank costs), then again (warm: sentence vectors from the persistent cache, the steady state).

Embeddings of the quality corpora are kept in ``--work-dir`` (default ``.ragops/bench-retrieval``), so a re-run
only searches. Latency figures depend on what else runs on the machine: re-measure them with
``--only latency``. ``--quick`` scores 300 questions a corpus with 100 latency queries.

Run: ``.venv/bin/python bench/retrieval.py --out bench/results/retrieval.json`` (about 15 minutes on 2 cores
from empty caches, 5 once the work dir holds the embeddings).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.container import Services, build_services  # noqa: E402
from app.settings import Settings, load_settings  # noqa: E402
from bench.corpora import DISFL_QA, SQUAD_SHIFTS, percentile  # noqa: E402
from retrieval.chunking import Chunker  # noqa: E402
from retrieval.documents import Document, Section  # noqa: E402
from retrieval.embedding import Embedder, build_embedder  # noqa: E402
from retrieval.embedding_cache import CachedEmbedder, SqliteEmbeddingStore  # noqa: E402
from retrieval.fusion import fuse  # noqa: E402
from retrieval.index import FusionParams, Scope, SearchFilter, SearchMode  # noqa: E402
from retrieval.loaders import load_file  # noqa: E402
from retrieval.rerank import RerankWeights, SentenceReranker  # noqa: E402
from retrieval.search import with_payloads  # noqa: E402
from retrieval.sparse import Bm25Encoder  # noqa: E402

SAMPLE = DISFL_QA.passages
SCOPE = Scope("bench", "default")
TUNING_RANGE = (4000, 5000)  # Disfl-QA questions the weights were tuned on: reported on their own
MODES: tuple[tuple[str, SearchMode, bool], ...] = (  # label, search mode, rerank on
    ("dense", "dense", False),
    ("sparse", "sparse", False),
    ("hybrid", "hybrid", False),
    ("hybrid+rerank", "hybrid", True),
)


@dataclass(frozen=True)
class Corpus:
    label: str
    passages: Path
    questions: Path
    first: int
    end: int


@dataclass(frozen=True)
class Quality:
    recall_1: float
    recall_5: float
    recall_10: float
    mrr_10: float
    ndcg_10: float


def corpora(disfl_questions: int, squad_questions: int) -> list[Corpus]:
    disfl = DISFL_QA.questions
    return [
        Corpus(f"Disfl-QA 0-{disfl_questions - 1}", SAMPLE, disfl, 0, disfl_questions),
        Corpus("Disfl-QA 4000-4999 (tuning range)", SAMPLE, disfl, *TUNING_RANGE),
        *(
            Corpus(f"SQuADShifts {c.name} 0-{squad_questions - 1}", c.passages, c.questions, 0, squad_questions)
            for c in SQUAD_SHIFTS
        ),
    ]


def load_questions(corpus: Corpus) -> list[dict[str, Any]]:
    with corpus.questions.open() as handle:
        lines = [line for number, line in enumerate(handle) if corpus.first <= number < corpus.end]
    return [json.loads(line) for line in lines]


def score_ranks(ranks: list[int | None]) -> Quality:
    """One relevant document a question: the ideal DCG is 1."""
    n = len(ranks)
    found = [rank for rank in ranks if rank is not None]
    return Quality(
        recall_1=sum(rank <= 1 for rank in found) / n,
        recall_5=sum(rank <= 5 for rank in found) / n,
        recall_10=len(found) / n,
        mrr_10=sum(1 / rank for rank in found) / n,
        ndcg_10=sum(1 / math.log2(rank + 1) for rank in found) / n,
    )


def ranked_documents(services: Services, mode: SearchMode) -> Callable[[str], list[str]]:
    """A query's top 20 chunks as their document ids, best first."""
    return lambda query: [hit.doc_id for hit in services.searcher.search(query, SCOPE, top_k=20, mode=mode).hits]


def quality(search: Callable[[str], list[str]], questions: list[dict[str, Any]]) -> Quality:
    ranks: list[int | None] = []
    for question in questions:
        ranked = list(dict.fromkeys(search(question["question"])))[:10]
        ranks.append(ranked.index(question["passage_id"]) + 1 if question["passage_id"] in ranked else None)
    return score_ranks(ranks)


def corpus_services(work: Path, corpus: Corpus, embedder: Embedder, rerank: bool) -> Services:
    # One data dir a corpus file: its index and embedding cache survive between runs.
    settings = load_settings(
        data_dir=work / corpus.passages.stem, models_dir=ROOT / ".ragops" / "models", rerank=rerank
    )
    return build_services(settings, embedder=embedder)


def corpus_quality(work: Path, corpus: Corpus, embedder: Embedder) -> dict[str, Any]:
    questions = load_questions(corpus)
    scores: dict[str, Quality] = {}
    for rerank in (False, True):
        services = corpus_services(work, corpus, embedder, rerank)
        try:
            services.ingestor.ingest_paths([corpus.passages], SCOPE)
            for label, mode, with_rerank in MODES:
                if with_rerank == rerank:
                    scores[label] = quality(ranked_documents(services, mode), questions)
        finally:
            services.close()
    best = max(scores["dense"].ndcg_10, scores["sparse"].ndcg_10)
    return {
        "corpus": corpus.label,
        "questions": len(questions),
        "modes": {label: asdict(score) for label, score in scores.items()},
        "ratio_ndcg_10": {label: round(scores[label].ndcg_10 / best, 4) for label in ("hybrid", "hybrid+rerank")},
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


def throughput(settings: Settings, raw_embedder: Embedder) -> dict[str, float]:
    services = build_services(settings, embedder=raw_embedder)
    try:
        chunker = Chunker(services.embedder.count_tokens, settings.chunking.tokens, settings.chunking.overlap)
        documents = load_file(SAMPLE, SAMPLE.name)
        texts = [chunk.embedding_text for document in documents for chunk in chunker.chunk(document)]
        raw_embedder.embed(texts[:64])
        raw_seconds = []
        for _ in range(2):  # the better of two runs: the pipeline is compared with the model at its fastest
            started = time.perf_counter()
            raw_embedder.embed(texts)
            raw_seconds.append(time.perf_counter() - started)
        raw_rate = len(texts) / min(raw_seconds)
        first = services.ingestor.ingest_paths([SAMPLE], SCOPE)
        second = services.ingestor.ingest_paths([SAMPLE], SCOPE)
    finally:
        services.close()
    ingest_rate = first.chunks / first.seconds
    return {
        "documents": len(documents),
        "chunks": first.chunks,
        "raw_embedding_chunks_per_s": round(raw_rate, 1),
        "ingest_chunks_per_s": round(ingest_rate, 1),
        "ingest_vs_raw": round(ingest_rate / raw_rate, 3),
        "first_ingest_s": round(first.seconds, 2),
        "reingest_unchanged_s": round(second.seconds, 3),
        "reingest_speedup": round(first.seconds / second.seconds, 1),
    }


def grow_collection(settings: Settings, raw_embedder: Embedder, chunks: int) -> int:
    services = build_services(settings, embedder=raw_embedder)
    try:
        documents = load_file(SAMPLE, SAMPLE.name)
        services.ingestor.ingest_paths([SAMPLE], SCOPE)
        missing = chunks - services.index.count(SCOPE)
        if missing > 0:
            services.ingestor.ingest_documents(documents + sentence_documents(documents, missing), SCOPE)
        return services.index.count(SCOPE)
    finally:
        services.close()


def http_latency(data_dir: Path, queries: list[str], rerank: bool) -> dict[str, float]:
    import httpx

    from tests.live_server import LiveServer

    env = {
        "RAGOPS_DATA_DIR": str(data_dir),
        "RAGOPS_MODELS_DIR": str(ROOT / ".ragops" / "models"),
        "RAGOPS_RERANK": str(rerank).lower(),
    }
    server = LiveServer(env, data_dir / "server.log")
    # Client wall time, and the server's own "search" timing (index, fusion, rerank: no query embedding).
    timings: dict[str, list[float]] = {"unique": [], "repeated": [], "server_search": []}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for query in queries[:20]:  # warm-up: connection, code paths (not counted)
                client.post("/v1/search", json={"query": query + " warmup", "collection": SCOPE.collection})
            for label in ("unique", "repeated"):
                for query in queries:
                    started = time.perf_counter()
                    response = client.post("/v1/search", json={"query": query, "collection": SCOPE.collection})
                    timings[label].append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    timings["server_search"].append(response.json()["timings_ms"]["search"])
    finally:
        server.stop()
    return {
        f"{label}_{name}": round(percentile(values, q), 2)
        for label, values in timings.items()
        for name, q in (("p50_ms", 50), ("p95_ms", 95))
    }


def rerank_latency(settings: Settings, raw_embedder: Embedder, queries: list[str]) -> dict[str, float]:
    """The rerank stage alone on each query's fused top 20, cold (sentences not yet embedded), then warm."""
    services = build_services(settings, embedder=raw_embedder)
    sparse = Bm25Encoder()
    # Its own empty store: "cold" really embeds every candidate's sentences (the data dir's may hold them).
    store = SqliteEmbeddingStore(Path(tempfile.mkdtemp(prefix="ragops-rerank-")) / "embeddings.sqlite")
    cold_embedder = CachedEmbedder(raw_embedder, store)
    weights = RerankWeights(*settings.retrieval.rerank_weights)
    reranker = SentenceReranker(cold_embedder, sparse, weights, depth=settings.retrieval.rerank_depth)
    fusion = FusionParams(settings.retrieval.hybrid_dense_weight, settings.retrieval.prefetch_limit)
    try:
        inputs = []
        for query in queries:
            vector, terms = services.embedder.embed_query(query), sparse.encode_query(query)
            lists = services.index.search_both(SCOPE, vector, terms, settings.retrieval.prefetch_limit, SearchFilter())
            head = with_payloads(services.index, fuse(lists, fusion), settings.retrieval.rerank_depth)
            inputs.append((vector, terms, head))
        timings: dict[str, list[float]] = {"cold": [], "warm": []}
        for label in ("cold", "warm"):
            for vector, terms, candidates in inputs:
                started = time.perf_counter()
                reranker.rerank(vector, terms, candidates)
                timings[label].append((time.perf_counter() - started) * 1000)
    finally:
        services.close()
        store.close()
    return {
        f"{label}_{name}": round(percentile(values, q), 2)
        for label, values in timings.items()
        for name, q in (("p50_ms", 50), ("p95_ms", 95))
    }


def print_quality(result: dict[str, Any]) -> None:
    print(f"\n{result['corpus']} ({result['questions']} questions)\n")
    print("| mode | recall@1 | recall@5 | recall@10 | MRR@10 | nDCG@10 | nDCG@10 / best single |")
    print("|---|---|---|---|---|---|---|")
    best = max(result["modes"]["dense"]["ndcg_10"], result["modes"]["sparse"]["ndcg_10"])
    for label, s in result["modes"].items():
        print(
            f"| {label} | {s['recall_1']:.3f} | {s['recall_5']:.3f} | {s['recall_10']:.3f} | {s['mrr_10']:.3f} "
            f"| {s['ndcg_10']:.3f} | {s['ndcg_10'] / best:.3f} |"
        )


def print_latency(results: dict[str, Any]) -> None:
    latency = results["latency"]
    print(f"\nsearch over HTTP, {latency['chunks']} chunks, {latency['queries']} queries (ms):")
    for label in ("rerank_off", "rerank_on"):
        print(f"  {label}: {latency[label]}")
    print(f"rerank stage alone, 20 candidates (ms): {results['rerank_latency']}")


def measure_quality(args: argparse.Namespace, raw_embedder: Embedder) -> list[dict[str, Any]]:
    results = []
    for corpus in corpora(args.disfl_questions, args.squad_questions):
        result = corpus_quality(args.work_dir, corpus, raw_embedder)
        print_quality(result)
        results.append(result)
    return results


def measure_speed(args: argparse.Namespace, raw_embedder: Embedder, results: dict[str, Any]) -> None:
    settings = load_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="ragops-bench-")) / "data", models_dir=ROOT / ".ragops" / "models"
    )
    results["throughput"] = throughput(settings, raw_embedder)
    chunks = grow_collection(settings, raw_embedder, args.latency_chunks)
    # Three disjoint question sets: each run's "unique" queries are embedded for the first time, and its
    # candidates' sentences are as cold as real traffic's would be.
    count = args.latency_queries
    questions = [q["question"] for q in load_questions(Corpus("latency", SAMPLE, DISFL_QA.questions, 0, 3 * count))]
    rerank_off, rerank_on, rerank_alone = (questions[i * count : (i + 1) * count] for i in range(3))
    results["latency"] = {
        "chunks": chunks,
        "queries": count,
        "rerank_off": http_latency(settings.data_dir, rerank_off, rerank=False),
        "rerank_on": http_latency(settings.data_dir, rerank_on, rerank=True),
    }
    results["rerank_latency"] = rerank_latency(settings, raw_embedder, rerank_alone)
    print_latency(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disfl-questions", type=int, default=2000, help="Disfl-QA questions 0..N-1 scored")
    parser.add_argument("--squad-questions", type=int, default=1500, help="first N questions of each SQuADShifts")
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--latency-chunks", type=int, default=10_000)
    parser.add_argument(
        "--only", choices=("quality", "latency"), help="one part only (latency: with throughput), merged into --out"
    )
    parser.add_argument("--quick", action="store_true", help="300 questions a corpus, 100 latency queries")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".ragops" / "bench-retrieval")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.disfl_questions, args.squad_questions, args.latency_queries = 300, 300, 100

    settings = load_settings(models_dir=ROOT / ".ragops" / "models")
    raw_embedder = build_embedder(
        settings.embedding.embedder,
        settings.embedding.embedding_model,
        settings.model_cache_dir,
        settings.embedding.embedding_batch_size,
    )
    results: dict[str, Any] = {"machine": "2 cores, no GPU", "embedder": raw_embedder.model_id}
    if args.only and args.out and args.out.is_file():  # one part re-measured: keep the other's figures
        results = {**json.loads(args.out.read_text()), **results}
    if args.only != "latency":
        results["quality"] = measure_quality(args, raw_embedder)
    if args.only != "quality":
        measure_speed(args, raw_embedder, results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
