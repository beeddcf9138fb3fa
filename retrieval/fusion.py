"""Hybrid search's fusion: a convex combination of the two retrievers' min-max-normalised scores, with the dense
weight chosen per query from how confident each retriever is about that query.

Pure functions over the two candidate lists the index returns (``CandidateLists``). Each list's scores are
scaled to [0, 1] over that list (its best candidate 1, its last 0), so cosine similarities and BM25 scores
become comparable; a candidate one retriever did not return gets 0 from it (it scored at most that list's
last). Measured against the previous weighted RRF on the same candidates (bench/retrieval.py): RRF throws the
score gaps away, and a clear BM25 winner then loses to a passage both retrievers ranked middling.

The dense weight is chosen per query (``query_dense_weight``): a fixed weight lets BM25 bury dense's answer on
the queries where BM25 cannot tell its candidates apart (its head's scores close together: the query's words are
spread over many passages), and dense bury BM25's where the roles swap. Each list's confidence is the spread of
its top ``FusionParams.confidence_depth`` raw scores over its top score (the normalised query commitment of
query-performance prediction); the weight moves from ``dense_weight`` by ``confidence_gain`` times dense's
spread minus BM25's, clipped to [0, 1]. It stands in, from the scores alone, for Dynamic Alpha Tuning's (Hsu and
Tzeng, 2025) LLM-judged top-1s. On the tuning range it gains little (+0.0014 nDCG@10 over the best fixed
weight, +0.002 over the previous 0.3; docs/benchmarks.md has the figures): how spread each list's top scores
are says only a little about which retriever found the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.index import CandidateLists, FusionParams, ScoredPayload


@dataclass(frozen=True)
class FusedCandidate:
    """One chunk after fusion: its point, each retriever's normalised score (0: not returned), the fused score
    and the query's dense weight that combined them (BM25's is one minus it)."""

    point: ScoredPayload
    dense: float
    sparse: float
    score: float
    dense_weight: float


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores scaled to [0, 1]; equal scores (or a single one) all become 1: nothing tells them apart."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high <= low:
        return [1.0] * len(scores)
    return [(score - low) / (high - low) for score in scores]


def normalised_scores(points: Sequence[ScoredPayload]) -> dict[str, float]:
    """Point id -> its min-max-normalised score within this ranking."""
    return dict(zip((point.id for point in points), min_max([point.score for point in points]), strict=True))


def head_spread(points: Sequence[ScoredPayload], depth: int) -> float:
    """How much the list's top ``depth`` scores differ, relative to its best: their standard deviation over the
    top score (normalised query commitment's measure). Near 0 when the head's scores are all alike (the retriever
    cannot tell its candidates apart), and for a list of one candidate, or with no positive top score."""
    head = [point.score for point in points[:depth]]
    if not head or head[0] <= 0:
        return 0.0
    mean = sum(head) / len(head)
    return math.sqrt(sum((score - mean) ** 2 for score in head) / len(head)) / head[0]


def query_dense_weight(lists: CandidateLists, params: FusionParams) -> float:
    """The dense weight for this query: ``dense_weight`` moved by ``confidence_gain`` times dense's head spread
    minus BM25's, in [0, 1]; 1 when BM25 matched nothing, 0 when dense returned nothing."""
    if not lists.sparse:
        return 1.0
    if not lists.dense:
        return 0.0
    depth = params.confidence_depth
    difference = head_spread(lists.dense, depth) - head_spread(lists.sparse, depth)
    return min(1.0, max(0.0, params.dense_weight + params.confidence_gain * difference))


def fuse(lists: CandidateLists, params: FusionParams) -> list[FusedCandidate]:
    """Every candidate of either list, best fused score first (ties: dense's order, then BM25's)."""
    weight = query_dense_weight(lists, params)
    dense = normalised_scores(lists.dense)
    sparse = normalised_scores(lists.sparse)
    points = {point.id: point for point in (*lists.dense, *lists.sparse)}
    fused = [
        FusedCandidate(
            point=point,
            dense=dense.get(point_id, 0.0),
            sparse=sparse.get(point_id, 0.0),
            score=weight * dense.get(point_id, 0.0) + (1 - weight) * sparse.get(point_id, 0.0),
            dense_weight=weight,
        )
        for point_id, point in points.items()
    ]
    return sorted(fused, key=lambda candidate: candidate.score, reverse=True)  # stable: keeps the ties' order
