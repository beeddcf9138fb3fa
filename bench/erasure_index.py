"""How long erasing one document takes in a 100k-chunk index (issue 23: at most 5 s).

    python -m bench.erasure_index [--chunks 100000] [--erase 5] [--legacy]

Builds an embedded (qdrant-edge) index of synthetic chunks written as ingestion writes them (batches of 512,
payloads as ``retrieval.ingest`` makes them, ten chunks a document) with random unit vectors in place of the
model's (embedding 100k chunks on two cores takes far too long), and an embedding cache holding the rows of every
document that will be erased (embedding texts and sentences) plus 20,000 unrelated rows. Then it times
``Ingestor.erase_document`` (wall clock, ``time.perf_counter`` around the call) on documents written first, in
the middle, and last (that one still in the appendable segment and the write-ahead log), and on a document that
is not there; and checks that a marker from each erased document is in no file under the index directory or the
cache afterwards.

``--legacy`` writes the index with the segment layout of releases before issue 23 (one appendable segment that
is never optimized) and then opens it with today's: what the first erasures on an upgraded data dir cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from retrieval.chunking import Chunker
from retrieval.embedding import Vectors
from retrieval.embedding_cache import CachedEmbedder, SqliteEmbeddingStore, text_key
from retrieval.index import DENSE_VECTOR, SPARSE_VECTOR, IndexPoint, Scope, chunk_point_id
from retrieval.ingest import Ingestor, chunk_embedding_keys
from retrieval.journal import IntentJournal
from retrieval.qdrant_edge_index import QdrantEdgeIndex
from retrieval.sparse import Bm25Encoder

DIMENSION = 384
CHUNKS_PER_DOCUMENT = 10
BATCH = 512
SCOPE = Scope("bench", "default")
WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud field".split()


class RandomEmbedder:
    """Unit vectors from a text's hash: the bench never embeds, erasure only needs a model id."""

    model_id = "bench-random"
    dimension = DIMENSION

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for i, text in enumerate(texts):
            rng = np.random.default_rng(int.from_bytes(text_key(text)[:8], "little"))
            vector = rng.standard_normal(DIMENSION).astype(np.float32)
            out[i] = vector / np.linalg.norm(vector)
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class LegacyLayoutIndex(QdrantEdgeIndex):
    """The index as releases before issue 23 configured it: default HNSW and optimizers, never optimized."""

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=self._dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )

    def _write_points(self, points: list[Any]) -> None:
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(points))


def doc_id(number: int) -> str:
    return f"doc-{number:06d}"


def marker(number: int) -> str:
    return f"Marker{hashlib.sha256(str(number).encode()).hexdigest()[:16]}"


def chunk_text(rng: np.random.Generator, number: int, index: int) -> str:
    sentences = [" ".join(rng.choice(WORDS, size=12)).capitalize() + "." for _ in range(5)]
    sentences[index % 5] = f"The record of {marker(number)} says chunk {index}."
    return " ".join(sentences)


def payload(number: int, index: int, text: str, content_hash: str) -> dict[str, Any]:
    return {
        "collection": SCOPE.collection,
        "tenant": SCOPE.tenant,
        "doc_id": doc_id(number),
        "content_hash": content_hash,
        "chunk_index": index,
        "text": text,
        "headings": [],
        "start_char": 0,
        "end_char": len(text),
        "title": None,
        "source": "bench",
        "metadata": {},
        "ingested_at": "2025-01-01T00:00:00+00:00",
    }


def build(target: QdrantEdgeIndex, chunks: int, sparse: Bm25Encoder, seed: int = 0) -> dict[int, list[dict[str, Any]]]:
    """Writes ``chunks`` chunks; returns every document's payloads (the bench keeps them to fill the cache)."""
    rng = np.random.default_rng(seed)
    documents: dict[int, list[dict[str, Any]]] = {}
    batch: list[IndexPoint] = []
    for number in range(chunks // CHUNKS_PER_DOCUMENT):
        content_hash = hashlib.sha256(f"content {number}".encode()).hexdigest()[:32]
        vectors = rng.standard_normal((CHUNKS_PER_DOCUMENT, DIMENSION)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for position in range(CHUNKS_PER_DOCUMENT):
            text = chunk_text(rng, number, position)
            body = payload(number, position, text, content_hash)
            documents.setdefault(number, []).append(body)
            point_id = chunk_point_id(SCOPE, doc_id(number), content_hash, position)
            batch.append(IndexPoint(point_id, vectors[position], sparse.encode_document(text), body))
        if len(batch) >= BATCH:
            target.upsert(batch)
            batch = []
    target.upsert(batch)
    return documents


def files_holding(roots: Sequence[Path], needle: bytes) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path))
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--erase", type=int, default=5, help="documents to erase, spread over the index")
    parser.add_argument("--legacy", action="store_true", help="write the index with the pre-issue-23 layout")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)

    work = args.dir or Path(tempfile.mkdtemp(prefix="erasure-bench-"))
    index_dir, cache_path = work / "index", work / "cache" / "embeddings.sqlite"
    sparse = Bm25Encoder()
    started = time.perf_counter()
    writer: QdrantEdgeIndex = (LegacyLayoutIndex if args.legacy else QdrantEdgeIndex)(index_dir, DIMENSION)
    documents = build(writer, args.chunks, sparse)
    writer.close()
    built = time.perf_counter() - started

    index = QdrantEdgeIndex(index_dir, DIMENSION)
    store = SqliteEmbeddingStore(cache_path)
    embedder = CachedEmbedder(RandomEmbedder(), store)
    count = len(documents)
    victims = sorted({0, 1, count // 3, count // 2, 2 * count // 3, count - 1})[: max(args.erase, 1)]
    if count - 1 not in victims:
        victims[-1] = count - 1  # the last one written: in the appendable segment and in the log
    filler = [(text_key(f"unrelated {i}"), np.zeros(DIMENSION, np.float32).tobytes()) for i in range(20_000)]
    store.put_many(embedder.model_id, filler)
    for number in victims:
        keys = sorted(set().union(*(chunk_embedding_keys(body) for body in documents[number])))
        store.put_many(embedder.model_id, [(key, np.ones(DIMENSION, np.float32).tobytes()) for key in keys])
    ingestor = Ingestor(
        index, embedder, sparse, Chunker(embedder.count_tokens), journal=IntentJournal(work / "journal.sqlite")
    )
    segments = index._shard.info().segments_count  # the bench reads the engine's own figure
    print(f"index: {args.chunks} chunks in {count} documents, {segments} segments, written in {built:.1f} s"
          f"{' (pre-issue-23 layout)' if args.legacy else ''}")  # fmt: skip

    timings, left_anywhere = [], []
    for number in victims:
        result = ingestor.erase_document(SCOPE, doc_id(number))
        timings.append(result.seconds)
        left = files_holding([index_dir, cache_path.parent], marker(number).encode())
        left_anywhere += left
        print(f"erase {doc_id(number)}: {result.seconds:.2f} s, {result.chunks_removed} chunks, "
              f"{result.embedding_rows_removed} cache rows removed; marker left in {left or 'no file'}")  # fmt: skip
    absent = ingestor.erase_document(SCOPE, "no-such-document")
    print(f"erase of a document that is not there: {absent.seconds:.2f} s")
    print(
        f"erase_document, {len(timings)} documents of a {args.chunks}-chunk index: median "
        f"{statistics.median(timings):.2f} s, max {max(timings):.2f} s (goal: 5 s); wall clock around the call, "
        f"{os.cpu_count()} CPUs"
    )
    if args.out is not None:
        figures = {
            "method": "Ingestor.erase_document on a synthetic qdrant-edge index (random unit vectors, payloads as "
            "ingest writes them), wall clock around the call; marker searched in every file afterwards",
            "chunks": args.chunks, "documents": count, "segments": segments, "written_s": round(built, 1),
            "erase_s": [round(t, 3) for t in timings], "median_s": round(statistics.median(timings), 3),
            "max_s": round(max(timings), 3), "absent_document_s": round(absent.seconds, 3), "goal_s": 5.0,
            "markers_left_in": [str(path) for path in left_anywhere], "legacy_layout": args.legacy,
            "cpus": os.cpu_count(),
        }  # fmt: skip
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    ingestor.close()
    index.close()
    store.close()


if __name__ == "__main__":
    main()
