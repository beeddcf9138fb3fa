"""BM25 sparse vectors, computed in process by Qdrant's own BM25 model (qdrant-edge).

Documents get term-frequency weights with BM25's length normalisation; queries get weight 1 a term. The index
applies IDF (the sparse vector is configured with the IDF modifier), so statistics follow the live corpus.
The same encoder feeds both index backends, so their sparse scores agree.
"""

from __future__ import annotations

from typing import Protocol

from retrieval.index import SparseVector


class SparseEncoder(Protocol):
    def encode_document(self, text: str) -> SparseVector: ...

    def encode_query(self, text: str) -> SparseVector: ...


class Bm25Encoder:
    def __init__(self, language: str = "english", avg_len: float = 150.0) -> None:
        import qdrant_edge

        self._model = qdrant_edge.Bm25(qdrant_edge.Bm25Config(language=language, avg_len=avg_len))

    def encode_document(self, text: str) -> SparseVector:
        vector = self._model.embed_document(text)
        return SparseVector(list(vector.indices), list(vector.values))

    def encode_query(self, text: str) -> SparseVector:
        vector = self._model.embed_query(text)
        return SparseVector(list(vector.indices), list(vector.values))
