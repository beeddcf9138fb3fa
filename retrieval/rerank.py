"""The rerank stage: hybrid's best candidates re-scored by their best sentence.

SQuAD-style questions are usually answered by one sentence, and a passage's other sentences dilute both its
embedding and its BM25 score. For each of the fused top ``depth`` candidates, two sentence-level signals join
the fusion's two normalised scores in one convex combination (``RerankWeights``):

- sentence similarity: the highest cosine between the query and one of the candidate's sentences (the packaged
  MiniLM; sentence vectors are computed at ingest, beside the chunk's, into the persistent embedding cache,
  where this stage, the answer pipeline's context compression and the groundedness check, which split
  sentences the same way, find them);
- sentence terms: the share of the query's BM25 terms (stemmed, stop words dropped) that the candidate's best
  sentence holds, each term weighted by its IDF among the candidates being reranked (a term every candidate
  holds tells none of them apart).

Each signal is min-max normalised over the reranked candidates; candidates below ``depth`` keep their order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from retrieval.chunking import split_sentences
from retrieval.embedding_cache import CachedEmbedder, text_key
from retrieval.fusion import FusedCandidate, min_max
from retrieval.index import SparseVector
from retrieval.lru import Lru
from retrieval.sparse import SparseEncoder

Terms = frozenset[int]


SPLITS_KEPT = 8192  # passages whose sentences and terms are kept (a few MB)
RERANK_DEPTH = 20  # fused candidates re-scored: depths 30 and 50 gained at most 0.002 nDCG@10, for more latency


@dataclass(frozen=True)
class RerankWeights:
    """Weights of the convex combination (they sum to 1); tuned on Disfl-QA questions 4000-4999 only."""

    dense: float = 0.25
    sparse: float = 0.3
    sentence_similarity: float = 0.2
    sentence_terms: float = 0.25


@dataclass(frozen=True)
class SplitPassage:
    """A passage's sentences as the rerank reads them: each sentence's BM25 terms, and their union (whether the
    passage holds a term, for the IDF among candidates)."""

    sentences: list[str]
    terms: list[Terms]
    held: Terms

    @classmethod
    def read(cls, text: str, sparse: SparseEncoder) -> SplitPassage:
        """``text`` split into the sentences that get embedded, each read for its BM25 terms by ``sparse``."""
        sentences = sentences_of(text)
        terms = [frozenset(sparse.encode_document(sentence).indices) for sentence in sentences]
        return cls(sentences, terms, frozenset().union(*terms))


@dataclass(frozen=True)
class CandidateSentences:
    """One candidate's sentences: the best cosine to the query, and its sentences' BM25 terms."""

    best_similarity: float
    split: SplitPassage


def best_similarity(query_vector: npt.NDArray[np.float32], sentence_vectors: npt.NDArray[np.float32]) -> float:
    """Highest cosine between the query and one sentence (vectors are unit length)."""
    return float(np.max(sentence_vectors @ query_vector))


def pool_idf(query_terms: Terms, holders: Sequence[Terms]) -> dict[int, float]:
    """BM25's IDF of each query term, counted over the candidates, each given by the terms it holds."""
    total = len(holders)
    idf = {}
    for term in query_terms:
        frequency = sum(term in held for held in holders)
        idf[term] = math.log((total - frequency + 0.5) / (frequency + 0.5) + 1)
    return idf


def best_sentence_terms(query_terms: Terms, sentences: Sequence[Terms], idf: dict[int, float]) -> float:
    """The IDF-weighted share of the query's terms held by the candidate's best sentence."""
    total = sum(idf.values())
    if total <= 0:
        return 0.0
    return max((sum(idf[term] for term in query_terms & sentence) for sentence in sentences), default=0.0) / total


def combine(
    candidates: Sequence[FusedCandidate], similarity: Sequence[float], terms: Sequence[float], weights: RerankWeights
) -> list[FusedCandidate]:
    """Candidates re-scored by the weighted sum of their four normalised signals, best first."""
    rescored = [
        replace(
            candidate,
            score=weights.dense * candidate.dense
            + weights.sparse * candidate.sparse
            + weights.sentence_similarity * sentence_similarity
            + weights.sentence_terms * sentence_terms,
        )
        for candidate, sentence_similarity, sentence_terms in zip(
            candidates, min_max(similarity), min_max(terms), strict=True
        )
    ]
    return sorted(rescored, key=lambda candidate: candidate.score, reverse=True)


class SentenceReranker:
    """Re-scores the fused top ``depth`` by their best sentence; the rest keep the fusion's order below them."""

    def __init__(
        self,
        embedder: CachedEmbedder,
        sparse: SparseEncoder,
        weights: RerankWeights = RerankWeights(),
        depth: int = RERANK_DEPTH,
    ) -> None:
        self._embedder = embedder
        self._sparse = sparse
        self._weights = weights
        self.depth = depth
        # Each recent passage's sentences and their BM25 terms: the same passages come back question after
        # question, and splitting and encoding them again was a quarter of a search's CPU.
        self._split: Lru[bytes, SplitPassage] = Lru(SPLITS_KEPT)

    def rerank(
        self, query_vector: npt.NDArray[np.float32], query_terms: SparseVector, candidates: Sequence[FusedCandidate]
    ) -> list[FusedCandidate]:
        """``query_terms``: the query's BM25 vector, as hybrid search already encoded it."""
        head, tail = list(candidates[: self.depth]), list(candidates[self.depth :])
        if len(head) < 2:
            return head + tail
        sentences = self._sentences(query_vector, head)
        term_ids = frozenset(query_terms.indices)
        idf = pool_idf(term_ids, [candidate.split.held for candidate in sentences])
        terms = [best_sentence_terms(term_ids, candidate.split.terms, idf) for candidate in sentences]
        similarity = [candidate.best_similarity for candidate in sentences]
        reranked = combine(head, similarity, terms, self._weights)
        # The tail stays below the reranked head: scores there are on the fusion's scale, not comparable.
        floor = min(candidate.score for candidate in reranked)
        return reranked + [replace(candidate, score=min(candidate.score, floor)) for candidate in tail]

    def _sentences(
        self, query_vector: npt.NDArray[np.float32], candidates: Sequence[FusedCandidate]
    ) -> list[CandidateSentences]:
        """Every candidate's sentences, embedded in one cached call."""
        splits = [self._split_of(candidate.point.payload.get("text", "")) for candidate in candidates]
        vectors = self._embedder.embed([sentence for split in splits for sentence in split.sentences])
        found, start = [], 0
        for split in splits:
            similarity = best_similarity(query_vector, vectors[start : start + len(split.sentences)])
            found.append(CandidateSentences(best_similarity=similarity, split=split))
            start += len(split.sentences)
        return found

    def _split_of(self, text: str) -> SplitPassage:
        return self._split.get_or_make(text_key(text), lambda: SplitPassage.read(text, self._sparse))


def sentences_of(text: str) -> list[str]:
    """The sentences of a chunk's text that get embedded (through the cache): erasure removes their vectors."""
    # A chunk with no sentence boundary (or no text) is one sentence: every candidate gets a score.
    return [sentence for sentence in split_sentences(text) if sentence] or [text or " "]
