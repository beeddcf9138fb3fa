"""Hybrid search's fusion: a convex combination of the two retrievers' min-max-normalised scores.

Pure functions over the two candidate lists the index returns (``CandidateLists``). Each list's scores are
scaled to [0, 1] over that list (its best candidate 1, its last 0), so cosine similarities and BM25 scores
become comparable; a candidate one retriever did not return gets 0 from it (it scored at most that list's
last). Measured against the previous weighted RRF on the same candidates (bench/retrieval.py): RRF throws the
score gaps away, and a clear BM25 winner then loses to a passage both retrievers ranked middling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.index import CandidateLists, ScoredPayload


@dataclass(frozen=True)
class FusedCandidate:
    """One chunk after fusion: its point, each retriever's normalised score (0: not returned) and the fused one."""

    point: ScoredPayload
    dense: float
    sparse: float
    score: float


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


def fuse(lists: CandidateLists, dense_weight: float) -> list[FusedCandidate]:
    """Every candidate of either list, best fused score first (ties: dense's order, then BM25's)."""
    dense = normalised_scores(lists.dense)
    sparse = normalised_scores(lists.sparse)
    points = {point.id: point for point in (*lists.dense, *lists.sparse)}
    fused = [
        FusedCandidate(
            point=point,
            dense=dense.get(point_id, 0.0),
            sparse=sparse.get(point_id, 0.0),
            score=dense_weight * dense.get(point_id, 0.0) + (1 - dense_weight) * sparse.get(point_id, 0.0),
        )
        for point_id, point in points.items()
    ]
    return sorted(fused, key=lambda candidate: candidate.score, reverse=True)  # stable: keeps the ties' order
