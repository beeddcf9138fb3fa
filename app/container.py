"""The composition root: the one place that builds the parts from settings and wires them together."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from retrieval.chunking import Chunker
from retrieval.embedding import Embedder, build_embedder
from retrieval.embedding_cache import CachedEmbedder, SqliteEmbeddingStore
from retrieval.index import FusionParams, VectorIndex
from retrieval.ingest import Ingestor
from retrieval.search import Searcher
from retrieval.sparse import Bm25Encoder

# Nothing leaves the machine unless configured: no model-hub calls, no telemetry from the libraries we load.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_environment() -> None:
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


@dataclass
class Services:
    settings: Settings
    embedder: CachedEmbedder
    index: VectorIndex
    ingestor: Ingestor
    searcher: Searcher
    _store: SqliteEmbeddingStore

    def close(self) -> None:
        self.index.close()
        self._store.close()


def _index_dir(settings: Settings, model_id: str) -> Path:
    # One index per embedding model: vectors of another model are never searched with this one's queries.
    return settings.index_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


def build_index(settings: Settings, model_id: str, dimension: int) -> VectorIndex:
    fusion = FusionParams(settings.rrf_k, settings.rrf_weights, settings.prefetch_limit)
    if settings.qdrant_url is None:
        from retrieval.qdrant_edge_index import QdrantEdgeIndex

        return QdrantEdgeIndex(_index_dir(settings, model_id), dimension, fusion)
    from qdrant_client import QdrantClient

    from retrieval.qdrant_server_index import QdrantServerIndex

    url = settings.qdrant_url
    if url.startswith(("http://", "https://")):
        client = QdrantClient(url=url, api_key=settings.qdrant_api_key)
    else:  # ':memory:' or a directory: qdrant-client's local mode
        client = QdrantClient(location=url) if url == ":memory:" else QdrantClient(path=url)
    collection = f"{settings.qdrant_collection}-{re.sub(r'[^A-Za-z0-9]+', '-', model_id)}"[:255]
    return QdrantServerIndex(client, collection, dimension, fusion)


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Wire every part from settings; a given ``embedder`` is shared instead of loading the model again."""
    apply_offline_environment()
    if embedder is None:
        embedder = build_embedder(
            settings.embedder, settings.embedding_model, settings.model_cache_dir, settings.embedding_batch_size
        )
    store = SqliteEmbeddingStore(settings.cache_dir / "embeddings.sqlite")
    cached = CachedEmbedder(embedder, store, lru_size=settings.query_cache_size)
    index = build_index(settings, embedder.model_id, embedder.dimension)
    sparse = Bm25Encoder()
    chunker = Chunker(embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap)
    return Services(
        settings=settings,
        embedder=cached,
        index=index,
        ingestor=Ingestor(index, cached, sparse, chunker),
        searcher=Searcher(index, cached, sparse),
        _store=store,
    )
