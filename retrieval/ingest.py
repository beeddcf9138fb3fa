"""Ingestion: documents in, chunks with dense and BM25 vectors out, versioned by content hash.

- An unchanged document (same id, same content hash as indexed) costs nothing beyond loading it.
- A changed document's new chunks are written before its old ones are deleted; if writing fails, the new
  chunks are removed again, so the index holds either the old version or the new one. A write-ahead intent
  journal (``retrieval.journal``) keeps that true when the process dies mid-update: ``recover`` finishes or
  undoes each interrupted document at start.
- Below the data dir's free-space margin (``retrieval.storage``) nothing is written: ``StorageFullError``.
- ``prune`` removes the scope's documents that this run did not see; it is skipped when any file failed to
  load, since that file's documents would otherwise vanish.
- ``erase_document`` removes a document so that none of its text is left in the bytes of the index's files or of
  the embedding cache (see its docstring), journaled so that ``recover`` finishes one a crash interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrieval.chunking import Chunker
from retrieval.documents import Chunk, Document, embedding_text
from retrieval.embedding_cache import CachedEmbedder, text_key
from retrieval.index import IndexPoint, Scope, StorageFullError, VectorIndex, chunk_point_id
from retrieval.journal import Intent, Journal, NoJournal
from retrieval.loaders import load_paths
from retrieval.rerank import sentences_of
from retrieval.sparse import SparseEncoder
from retrieval.storage import DiskGuard, estimated_chunk_bytes
from retrieval.validation import DEFAULT_LIMITS, DocumentLimits

ProgressFactory = Callable[[int], Any]  # total -> object with update(n) and close()
KILL_AT_STEP_ENV = "RAGOPS_TEST_KILL_AT_STEP"  # a test hook only, see CrashHook


@dataclass(kw_only=True)
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


@dataclass(frozen=True)
class DocumentErasure:
    """What ``Ingestor.erase_document`` removed. Embedding rows are counted over every model the cache holds;
    ``embedding_rows_kept`` are the current model's rows left for another live document (any collection or
    tenant) with the same content hash."""

    chunks_removed: int
    embedding_rows_removed: int
    embedding_rows_kept: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunks_removed": self.chunks_removed,
            "embedding_rows_removed": self.embedding_rows_removed,
            "embedding_rows_kept": self.embedding_rows_kept,
            "seconds": round(self.seconds, 3),
        }


def chunk_embedding_keys(payload: dict[str, Any]) -> set[bytes]:
    """The embedding cache keys a chunk's text reaches: its embedding text (ingest, the abstain check) and its
    sentences (the reranker, the context compressor and the groundedness check split them the same way)."""
    text = str(payload.get("text") or "")
    keys = {text_key(embedding_text(tuple(payload.get("headings") or ()), text))}
    keys.update(text_key(sentence) for sentence in sentences_of(text))
    return keys


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
        limits: DocumentLimits = DEFAULT_LIMITS,
        journal: Journal | None = None,
        disk: DiskGuard | None = None,
    ) -> None:
        self._index = index
        self._journal = journal or NoJournal()
        self._disk = disk
        self._crash = CrashHook.from_environment()
        self._limits = limits  # what .jsonl records are held to, as the API's documents are
        # Chunks that carry instructions ("ignore previous instructions ...") are marked in their payload and
        # reported; the pipeline screens retrieved passages again before they reach a prompt.
        self._flag_instructions = flag_instructions
        self._embedder = embedder
        self._sparse = sparse
        self._chunker = chunker
        self._batch_chunks = batch_chunks
        self.version = 0  # bumped on every change to the index; answer caches key on it
        # One writer at a time: a batch's journaled switch deletes every version of its documents but its own, so
        # two concurrent updates of one document must not interleave (each would delete the other's).
        self._writer = threading.Lock()
        self._after_change: list[Callable[[Scope], object]] = []

    def after_change(self, callback: Callable[[Scope], object]) -> None:
        """``callback(scope)`` after each ingest that changed the scope's documents: the request path's
        once-per-version work (the abstention threshold's measurement) is done there, not by a user's question."""
        self._after_change.append(callback)

    def ingest_paths(
        self,
        paths: Sequence[Path],
        scope: Scope,
        prune: bool = False,
        progress: ProgressFactory | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        documents, errors = load_paths(list(paths), self._limits)
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

        if pending:
            self._check_space(pending)
        bar = progress(sum(len(p.chunks) for p in pending)) if progress and pending else None
        try:
            for batch in self._batches(pending):
                with self._writer:
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
                    with self._writer:
                        self._index.delete_document(scope, doc_id)
                    report.removed.append(doc_id)
        if report.removed or report.errors:
            self.version += 1  # written batches bumped it as they went
        if report.added or report.updated or report.removed:
            for callback in self._after_change:
                callback(scope)
        report.seconds = time.perf_counter() - started
        return report

    def _check_space(self, pending: list[_PendingDocument]) -> None:
        """The whole run's estimate up front: before any embedding work, and before any batch is written."""
        if self._disk is None:
            return
        dimension = self._embedder.dimension
        needed = sum(estimated_chunk_bytes(c.embedding_text, dimension) for p in pending for c in p.chunks)
        self._disk.check(needed, "index documents")

    def recover(self) -> int:
        """Finish the updates a crash interrupted: a written new version wins, an unwritten one is undone (see
        ``retrieval.journal``). Run at start, before anything is served; returns the documents it settled."""
        intents = self._journal.pending()
        present: dict[Scope, dict[str, set[str]]] = {}
        for intent in intents:
            if intent.scope not in present:
                present[intent.scope] = self._index.document_hashes(intent.scope)
            self._settle(intent, present[intent.scope].get(intent.doc_id, set()))
        self._journal.clear(intents)
        erasures = self._journal.pending_erasures()
        for scope, doc_id in erasures:  # after the updates: an erasure always wins over a document's update
            self.erase_document(scope, doc_id)
        return len(intents) + len(erasures)

    def close(self) -> None:
        self._journal.close()

    def delete(self, scope: Scope, doc_id: str) -> bool:
        """Remove a document; False when the scope has no such document."""
        with self._writer:
            if doc_id not in self._index.document_hashes(scope):
                return False
            self._index.delete_document(scope, doc_id)
            self.version += 1
            return True

    def erase_document(self, scope: Scope, doc_id: str) -> DocumentErasure:
        """Remove a document (every version) so that none of its text is left on disk: its points, the embedding
        cache's rows of its chunks' embedding texts and sentences (of every model; kept where another live
        document in any scope has the same content hash), and the bytes the index keeps of deleted points
        (``VectorIndex.purge_deleted``). Idempotent: a document that is not there gives zero counts; the index's
        bytes are purged all the same, which finishes an erasure a crash interrupted.

        Order, for a rerun to finish what ``kill -9`` interrupted: journal row; embedding rows (the points still
        say which); points; index bytes; the embedding rows again (a search that read the points before they went
        may have embedded their sentences since); journal row cleared. The cache rows of a document that was
        deleted without erasure cannot be found any more (its texts are gone): erase instead of deleting."""
        started = time.perf_counter()
        store = self._embedder.store
        with self._writer:
            self._journal.begin_erasure(scope, doc_id)
            chunks = self._index.document_chunks(scope, doc_id)
            own: dict[str, int] = {}
            for chunk in chunks:
                own[chunk["content_hash"]] = own.get(chunk["content_hash"], 0) + 1
            shared = {h for h, n in own.items() if self._index.count_content(h) > n}
            kept_keys: set[bytes] = set()
            erased_keys: set[bytes] = set()
            for chunk in chunks:
                (kept_keys if chunk["content_hash"] in shared else erased_keys).update(chunk_embedding_keys(chunk))
            erased = sorted(erased_keys - kept_keys)
            removed = store.delete_many(None, erased)
            self._crash.step()
            if chunks:
                self._index.delete_document(scope, doc_id)
                self.version += 1  # answer caches key on it
            self._crash.step()
            self._index.purge_deleted()
            self._crash.step()
            removed += store.delete_many(None, erased)
            kept = len(store.get_many(self._embedder.model_id, sorted(kept_keys))) if kept_keys else 0
            self._journal.end_erasure(scope, doc_id)
        return DocumentErasure(len(chunks), removed, kept, time.perf_counter() - started)

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
        """One batch, journaled: intents, points, mark written, old versions out, intents cleared."""
        intents = [Intent(scope, item.document.id, item.document.content_hash) for item in batch]
        self._journal.begin(intents)
        self._crash.step()
        try:
            points, computed = self._points(batch, scope, report)
            self._index.upsert(points)
        except StorageFullError:
            self._journal.clear(intents)  # refused before the engine wrote anything
            raise
        except Exception as exc:
            present = self._index.document_hashes(scope)
            for intent in intents:
                self._settle(intent, present.get(intent.doc_id, set()))
            self._journal.clear(intents)
            for item in batch:
                report.errors.append(
                    {"source": item.document.source or item.document.id, "error": f"indexing failed: {exc}"}
                )
            return
        self._crash.step()
        self._switch(intents)
        chunks = sum(len(item.chunks) for item in batch)
        report.embeddings_computed += computed
        report.embeddings_cached += chunks - computed
        report.chunks += chunks
        for item in batch:
            (report.updated if item.previous_hashes else report.added).append(item.document.id)

    def _switch(self, intents: list[Intent]) -> None:
        """The batch's new versions are all written: say so, then drop every other version of its documents
        (including leftovers of an interrupted run), then forget the batch."""
        self._journal.mark_written(intents)
        self._crash.step()
        for intent in intents:
            self._index.delete_document(intent.scope, intent.doc_id, keep_hash=intent.new_hash)
            self._crash.step()
        self._journal.clear(intents)
        self.version += 1  # answer caches key on it
        self._crash.step()

    def _points(
        self, batch: list[_PendingDocument], scope: Scope, report: IngestReport
    ) -> tuple[list[IndexPoint], int]:
        """The batch's chunks embedded (dense and BM25) with their payloads, and how many chunk vectors the model
        computed (the rest came from the cache); flagged documents noted."""
        chunks = [(item, chunk) for item in batch for chunk in item.chunks]
        computed_before = self._embedder.stats.computed
        dense = self._embedder.embed([chunk.embedding_text for _, chunk in chunks])
        computed = self._embedder.stats.computed - computed_before
        # The sentences' vectors too, into the embedding cache with the passages': the reranker, the context
        # compressor and the groundedness check read them there, so the first question after an ingest pays for
        # none of them. Not counted in the report's embeddings (those are the chunks').
        self._embedder.embed(list(dict.fromkeys(s for _, chunk in chunks for s in sentences_of(chunk.text))))
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
        return points, computed

    def _settle(self, intent: Intent, present: set[str]) -> None:
        """Leave one version of an interrupted update, given the hashes the index holds of its document: the new
        version when it was written in full; else the one indexed before (the lowest hash, which is the one
        ``GET /v1/documents`` shows, where an older release left two); else none (a new document)."""
        if intent.written and intent.new_hash in present:
            keep: str | None = intent.new_hash
        else:
            keep = min(present - {intent.new_hash}, default=None)
        self._index.delete_document(intent.scope, intent.doc_id, keep_hash=keep)


class CrashHook:
    """A test hook, off unless a test sets ``RAGOPS_TEST_KILL_AT_STEP=N``: the process then SIGKILLs itself right
    after the Nth durable step of its updates (journal begin, points written, marked written, one document's
    other versions deleted, journal cleared) and erasures (embedding rows deleted, points deleted, index bytes
    purged), so tests/test_durability.py and tests/test_erase_document.py can stop a process at an exact
    moment."""

    def __init__(self, kill_at: int) -> None:
        self._kill_at = kill_at
        self._steps = 0

    @classmethod
    def from_environment(cls) -> CrashHook:
        value = os.environ.get(KILL_AT_STEP_ENV, "")
        return cls(int(value) if value.isdigit() else 0)

    def step(self) -> None:
        if not self._kill_at:
            return
        self._steps += 1
        if self._steps == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


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
