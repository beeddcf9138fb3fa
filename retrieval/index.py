"""The vector-index protocol and the value types that cross it.

One physical index holds every collection and tenant; each point carries ``collection`` and ``tenant`` in its
payload (keyword indexes, tenant-optimised), and every read and write is scoped to one (collection, tenant)
pair, so one tenant's documents never show up in another's results or statistics.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

SearchMode = Literal["hybrid", "dense", "sparse"]
SEARCH_MODES: tuple[SearchMode, ...] = ("hybrid", "dense", "sparse")
Retriever = Literal["dense", "sparse"]  # what the index ranks by itself; hybrid fuses both client-side
MetadataValue = str | int | bool
DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
_CHUNK_NAMESPACE = uuid.UUID("6c3b9f7e-1f0c-4a57-9d8a-2f4d0b6e5a11")


# One rule for collection and tenant names, wherever they come in (HTTP body, header, CLI flag, setting).
SCOPE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SCOPE_NAME_RULE = "1-64 letters, digits, '.', '_' or '-'"


def is_scope_name(name: str) -> bool:
    return re.fullmatch(SCOPE_NAME_PATTERN, name) is not None


class IndexUnavailableError(Exception):
    """The index cannot do what was asked (locked by another process, incompatible, corrupt)."""


class IndexBusyError(IndexUnavailableError):
    """Another process (a running ``ragops serve``) holds the index's lock."""


class StorageFullError(IndexUnavailableError):
    """A write was refused: it would leave the data dir's filesystem with less free space than the margin."""


class StorageReadOnlyError(IndexUnavailableError):
    """The data dir cannot be written (a read-only mount, or no permission)."""


@dataclass(frozen=True)
class Scope:
    collection: str
    tenant: str


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class IndexPoint:
    id: str
    dense: npt.NDArray[np.float32]
    sparse: SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchFilter:
    """Narrows a search inside its scope: document ids, and metadata fields (value or any of a list)."""

    doc_ids: tuple[str, ...] = ()
    metadata: dict[str, MetadataValue | list[MetadataValue]] = field(default_factory=dict)


@dataclass(frozen=True)
class FusionParams:
    """How hybrid search fuses its two rankings: each retriever's top ``prefetch_limit`` scores are min-max
    normalised and combined as ``w * dense + (1 - w) * BM25``, the dense weight ``w`` chosen per query:
    ``dense_weight`` plus ``confidence_gain`` times the difference of the two lists' head spreads (the standard
    deviation of the top ``confidence_depth`` raw scores over the top one; dense's minus BM25's), clipped to
    [0, 1] (see ``retrieval.fusion``). ``confidence_gain`` 0 is a fixed weight."""

    # Tuned with bench/retrieval.py on Disfl-QA questions 4000-4999 only, by a grid over dense_weight 0.3-0.5,
    # confidence_gain 0-4 and confidence_depth 8-15 (100 candidates a retriever). nDCG@10 there: 0.9333, against
    # 0.9319 for the best fixed weight (0.35) and 0.9312 for the previous fixed 0.3; nothing tuned per corpus.
    dense_weight: float = 0.4
    prefetch_limit: int = 100
    confidence_gain: float = 1.5
    confidence_depth: int = 10


@dataclass(frozen=True)
class ScoredPayload:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CandidateLists:
    """Both retrievers' rankings of one query, best first, with their raw scores (cosine; BM25)."""

    dense: list[ScoredPayload]
    sparse: list[ScoredPayload]


def chunk_point_id(scope: Scope, doc_id: str, content_hash: str, chunk_index: int) -> str:
    """Deterministic: the same chunk of the same document version always lands on the same point."""
    name = "\x1f".join((scope.collection, scope.tenant, doc_id, content_hash, str(chunk_index)))
    return str(uuid.uuid5(_CHUNK_NAMESPACE, name))


def add_document_hashes(hashes: dict[str, set[str]], payloads: Iterable[dict[str, Any] | None]) -> None:
    """Fold scrolled payloads (doc_id, content_hash) into doc_id -> hashes."""
    for payload in payloads:
        if payload:
            hashes.setdefault(payload["doc_id"], set()).add(payload["content_hash"])


class VectorIndex(Protocol):
    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def delete_document(self, scope: Scope, doc_id: str, keep_hash: str | None = None) -> None:
        """Delete a document's points; with ``keep_hash``, only those of other versions."""
        ...

    def document_hashes(self, scope: Scope) -> dict[str, set[str]]:
        """doc_id -> the content hashes present (more than one only after an interrupted replace)."""
        ...

    def document_chunks(self, scope: Scope, doc_id: str) -> list[dict[str, Any]]:
        """Every version's chunks of one document: payloads with content_hash, text and headings."""
        ...

    def count_content(self, content_hash: str) -> int:
        """The points of documents with this content hash, in every collection and tenant."""
        ...

    def purge_deleted(self) -> None:
        """Make the bytes of deleted points go from every file the index keeps (segments, write-ahead log), as
        far as the backend allows; erasure calls it after deleting."""
        ...

    def search(
        self,
        scope: Scope,
        retriever: Retriever,
        dense: npt.NDArray[np.float32] | None,
        sparse: SparseVector | None,
        limit: int,
        search_filter: SearchFilter,
    ) -> list[ScoredPayload]:
        """One retriever's top ``limit`` (the vector it ranks by must be given)."""
        ...

    def search_both(
        self,
        scope: Scope,
        dense: npt.NDArray[np.float32],
        sparse: SparseVector,
        limit: int,
        search_filter: SearchFilter,
    ) -> CandidateLists:
        """Both retrievers' top ``limit`` with raw scores, in one round trip where the engine allows: ids and
        scores only, every payload empty (``payloads`` fetches those of the candidates kept)."""
        ...

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Point id -> payload, for those of ``ids`` that still exist (an ingest may have replaced a document
        since its points were ranked)."""
        ...

    def count(self, scope: Scope | None = None) -> int: ...

    def has_points(self, scope: Scope) -> bool:
        """Whether the scope holds any point: one point read, where ``count`` walks them all (every chat asks)."""
        ...

    def collections(self, tenant: str) -> list[str]:
        """The names of the tenant's collections that hold documents, sorted."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SnapshotIndex(VectorIndex, Protocol):
    """An index that can write its whole state to one file and come back from it."""

    def snapshot(self, target: Path) -> Path: ...

    def restore(self, source: Path) -> None: ...
