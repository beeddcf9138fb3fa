"""Ingestion: documents in, chunks with dense and BM25 vectors out, versioned by content hash.

- An unchanged document (same id, same content hash as indexed) costs nothing beyond loading it.
- A changed document's new chunks are written before its old ones are deleted; if writing fails, the new
  chunks are removed again, so the index holds either the old version or the new one.
- ``prune`` removes the scope's documents that this run did not see; it is skipped when any file failed to
  load, since that file's documents would otherwise vanish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrieval.chunking import Chunker
from retrieval.documents import Chunk, Document
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import IndexPoint, Scope, VectorIndex, chunk_point_id
from retrieval.loaders import load_paths
from retrieval.sparse import SparseEncoder

ProgressFactory = Callable[[int], Any]  # total -> object with update(n) and close()


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    chunks: int = 0
    embeddings_computed: int = 0
    embeddings_cached: int = 0
    prune_skipped: str | None = None
    seconds: float = 0.0
    flagged: list[str] = field(default_factory=list)  # documents with chunks that carry instructions

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
            "failed": len(self.errors),
            "chunks": self.chunks,
            "embeddings_computed": self.embeddings_computed,
            "embeddings_cached": self.embeddings_cached,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
            "prune_skipped": self.prune_skipped,
            "flagged_instructions": self.flagged,
            "documents": {
                "added": self.added,
                "updated": self.updated,
                "removed": self.removed,
            },
        }

    def summary(self) -> str:
        line = (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
            f"{len(self.removed)} removed, {len(self.errors)} failed; {self.chunks} chunks written; "
            f"embeddings: {self.embeddings_computed} computed, {self.embeddings_cached} from cache; "
            f"{self.seconds:.2f}s"
        )
        if self.prune_skipped:
            line += f"\nprune skipped: {self.prune_skipped}"
        if self.flagged:
            line += f"\ncarry instructions (kept out of prompts): {', '.join(self.flagged)}"
        return line


@dataclass
class _PendingDocument:
    document: Document
    chunks: list[Chunk]
    previous_hashes: set[str]


class Ingestor:
    def __init__(
        self,
        index: VectorIndex,
        embedder: CachedEmbedder,
        sparse: SparseEncoder,
        chunker: Chunker,
        batch_chunks: int = 512,
        flag_instructions: Callable[[str], str | None] | None = None,
    ) -> None:
        self._index = index
        # Chunks that carry instructions ("ignore previous instructions ...") are marked in their payload and
        # reported; the pipeline screens retrieved passages again before they reach a prompt.
        self._flag_instructions = flag_instructions
        self._embedder = embedder
        self._sparse = sparse
        self._chunker = chunker
        self._batch_chunks = batch_chunks
        self.version = 0  # bumped on every change to the index; answer caches key on it

    def ingest_paths(
        self,
        paths: Sequence[Path],
        scope: Scope,
        prune: bool = False,
        progress: ProgressFactory | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        documents, errors = load_paths(list(paths))
        report = self.ingest_documents(documents, scope, prune=prune, progress=progress, load_errors=errors)
        report.seconds = time.perf_counter() - started
        return report

    def ingest_documents(
        self,
        documents: Iterable[Document],
        scope: Scope,
        prune: bool = False,
        progress: ProgressFactory | None = None,
        load_errors: Sequence[dict[str, str]] = (),
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport(errors=list(load_errors))
        indexed = self._index.document_hashes(scope)
        seen: dict[str, str | None] = {}
        pending: list[_PendingDocument] = []
        for document in documents:
            if document.id in seen:
                report.errors.append(
                    {
                        "source": document.source or document.id,
                        "error": f"duplicate document id {document.id!r}",
                    }
                )
                continue
            seen[document.id] = document.source
            previous = indexed.get(document.id, set())
            if previous == {document.content_hash}:
                report.unchanged.append(document.id)
                continue
            chunks = self._chunker.chunk(document)
            if not chunks:
                report.errors.append({"source": document.source or document.id, "error": "no text to index"})
                continue
            pending.append(_PendingDocument(document, chunks, previous))

        bar = progress(sum(len(p.chunks) for p in pending)) if progress and pending else None
        try:
            for batch in self._batches(pending):
                self._write_batch(batch, scope, report)
                if bar is not None:
                    bar.update(sum(len(p.chunks) for p in batch))
        finally:
            if bar is not None:
                bar.close()

        if prune:
            if report.errors:
                report.prune_skipped = f"{len(report.errors)} input(s) failed; fix them and run again"
            else:
                for doc_id in sorted(set(indexed) - set(seen)):
                    self._index.delete_document(scope, doc_id)
                    report.removed.append(doc_id)
        if report.added or report.updated or report.removed or report.errors:
            self.version += 1
        report.seconds = time.perf_counter() - started
        return report

    def delete(self, scope: Scope, doc_id: str) -> bool:
        """Remove a document; False when the scope has no such document."""
        if doc_id not in self._index.document_hashes(scope):
            return False
        self._index.delete_document(scope, doc_id)
        self.version += 1
        return True

    def _batches(self, pending: list[_PendingDocument]) -> Iterable[list[_PendingDocument]]:
        """Whole documents per batch, about ``batch_chunks`` chunks each: big embedding calls, bounded memory."""
        batch: list[_PendingDocument] = []
        size = 0
        for item in pending:
            batch.append(item)
            size += len(item.chunks)
            if size >= self._batch_chunks:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def _write_batch(self, batch: list[_PendingDocument], scope: Scope, report: IngestReport) -> None:
        chunks = [(item, chunk) for item in batch for chunk in item.chunks]
        computed_before = self._embedder.stats.computed
        try:
            dense = self._embedder.embed([chunk.embedding_text for _, chunk in chunks])
            now = datetime.now(UTC).isoformat(timespec="seconds")
            points = []
            for (item, chunk), vector in zip(chunks, dense, strict=True):
                payload = _payload(scope, item.document, chunk, now)
                if self._flag_instructions is not None and self._flag_instructions(chunk.text):
                    payload["flags"] = ["instructions"]
                    if item.document.id not in report.flagged:
                        report.flagged.append(item.document.id)
                points.append(
                    IndexPoint(
                        id=chunk_point_id(scope, item.document.id, item.document.content_hash, chunk.index),
                        dense=vector,
                        sparse=self._sparse.encode_document(chunk.embedding_text),
                        payload=payload,
                    )
                )
            self._index.upsert(points)
        except Exception as exc:
            self._roll_back(batch, scope)
            for item in batch:
                report.errors.append(
                    {"source": item.document.source or item.document.id, "error": f"indexing failed: {exc}"}
                )
            return
        computed = self._embedder.stats.computed - computed_before
        report.embeddings_computed += computed
        report.embeddings_cached += len(chunks) - computed
        report.chunks += len(chunks)
        for item in batch:
            # New version is in: drop every other version (including leftovers of an interrupted run).
            self._index.delete_document(scope, item.document.id, keep_hash=item.document.content_hash)
            (report.updated if item.previous_hashes else report.added).append(item.document.id)

    def _roll_back(self, batch: list[_PendingDocument], scope: Scope) -> None:
        for item in batch:
            if not item.previous_hashes:
                self._index.delete_document(scope, item.document.id)
            elif len(item.previous_hashes) == 1:
                self._index.delete_document(scope, item.document.id, keep_hash=next(iter(item.previous_hashes)))


def _payload(scope: Scope, document: Document, chunk: Chunk, ingested_at: str) -> dict[str, Any]:
    return {
        "collection": scope.collection,
        "tenant": scope.tenant,
        "doc_id": document.id,
        "content_hash": document.content_hash,
        "chunk_index": chunk.index,
        "text": chunk.text,
        "headings": list(chunk.headings),
        "start_char": chunk.start_char,
        "end_char": chunk.end_char,
        "title": document.title,
        "source": document.source,
        "metadata": document.metadata,
        "ingested_at": ingested_at,
    }
