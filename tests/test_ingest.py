from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from app.container import Services
from retrieval.chunking import Chunker
from retrieval.documents import Document, Section
from retrieval.index import IndexPoint, Scope, VectorIndex
from retrieval.ingest import Ingestor
from retrieval.sparse import Bm25Encoder
from tests.conftest import sample_documents

SCOPE = Scope("docs", "default")


def doc(doc_id: str, text: str) -> Document:
    return Document(doc_id, (Section(text),))


def test_reingest_is_idempotent_and_costs_no_embeddings(services: Services) -> None:
    documents = sample_documents(20)
    first = services.ingestor.ingest_documents(documents, SCOPE)
    assert (len(first.added), first.errors) == (20, [])
    assert first.embeddings_computed == first.chunks == services.index.count(SCOPE)
    second = services.ingestor.ingest_documents(documents, SCOPE)
    assert (len(second.unchanged), second.added, second.updated, second.chunks) == (20, [], [], 0)
    assert services.index.count(SCOPE) == first.chunks


def test_changed_document_replaces_its_chunks(services: Services) -> None:
    services.ingestor.ingest_documents([doc("a", "Apples are red fruit."), doc("b", "Bananas are yellow.")], SCOPE)
    report = services.ingestor.ingest_documents(
        [doc("a", "Apricots are orange fruit."), doc("b", "Bananas are yellow.")], SCOPE
    )
    assert (report.updated, report.unchanged) == (["a"], ["b"])
    texts = {hit.text for hit in services.searcher.search("fruit", SCOPE, top_k=10).hits}
    assert texts == {"Apricots are orange fruit.", "Bananas are yellow."}
    assert services.index.count(SCOPE) == 2


def test_prune_removes_documents_no_longer_present(services: Services) -> None:
    services.ingestor.ingest_documents([doc("a", "Alpha."), doc("b", "Beta.")], SCOPE)
    without_prune = services.ingestor.ingest_documents([doc("a", "Alpha.")], SCOPE)
    assert without_prune.removed == [] and services.index.count(SCOPE) == 2
    pruned = services.ingestor.ingest_documents([doc("a", "Alpha.")], SCOPE, prune=True)
    assert pruned.removed == ["b"] and set(services.index.document_hashes(SCOPE)) == {"a"}


def test_delete_document(services: Services) -> None:
    services.ingestor.ingest_documents([doc("a", "Alpha."), doc("b", "Beta.")], SCOPE)
    assert services.ingestor.delete(SCOPE, "a") is True
    assert services.ingestor.delete(SCOPE, "a") is False
    assert set(services.index.document_hashes(SCOPE)) == {"b"}


def test_bad_files_are_reported_and_skipped(services: Services, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.md").write_text("# Good\nA good document about gardening.")
    (corpus / "bad.jsonl").write_text('{"id": "x", "text": "fine"}\nnot json\n')
    (corpus / "binary.txt").write_bytes(b"\x00\xff\x00")
    report = services.ingestor.ingest_paths([corpus, tmp_path / "missing.md"], SCOPE)
    assert report.added == ["good.md"]
    assert sorted(Path(e["source"]).name for e in report.errors) == ["bad.jsonl", "binary.txt", "missing.md"]
    assert set(services.index.document_hashes(SCOPE)) == {"good.md"}  # nothing of bad.jsonl, not even line 1


def test_prune_is_skipped_when_an_input_failed(services: Services, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\nAlpha.")
    (tmp_path / "b.md").write_text("# B\nBeta.")
    services.ingestor.ingest_paths([tmp_path], SCOPE)
    (tmp_path / "b.md").write_bytes(b"\x00broken")  # b.md is now unreadable: its indexed version must survive
    report = services.ingestor.ingest_paths([tmp_path], SCOPE, prune=True)
    assert report.removed == [] and report.prune_skipped
    assert set(services.index.document_hashes(SCOPE)) == {"a.md", "b.md"}


def test_duplicate_ids_in_one_run_are_errors(services: Services) -> None:
    report = services.ingestor.ingest_documents([doc("a", "First."), doc("a", "Second.")], SCOPE)
    assert report.added == ["a"] and "duplicate document id" in report.errors[0]["error"]


class FailingIndex:
    """Injects a fault: the engine fails after writing part of a batch."""

    def __init__(self, inner: VectorIndex) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        self.inner.upsert(points[:1])
        raise RuntimeError("disk full")


def test_failed_write_leaves_the_old_version(make_services: Callable[..., Services]) -> None:
    services = make_services()
    services.ingestor.ingest_documents([doc("a", "Original text about owls.")], SCOPE)
    before = services.index.document_hashes(SCOPE)
    chunker = Chunker(services.embedder.count_tokens)
    failing = Ingestor(FailingIndex(services.index), services.embedder, Bm25Encoder(), chunker)  # type: ignore[arg-type]
    report = failing.ingest_documents([doc("a", "New text about eagles."), doc("n", "A brand new document.")], SCOPE)
    assert report.added == report.updated == [] and len(report.errors) == 2
    assert "disk full" in report.errors[0]["error"]
    assert services.index.document_hashes(SCOPE) == before  # old "a" intact, no trace of "n"
    assert [h.text for h in services.searcher.search("owls", SCOPE).hits] == ["Original text about owls."]


def test_collections_and_tenants_are_separate(services: Services) -> None:
    services.ingestor.ingest_documents([doc("a", "Shared id, tenant one.")], Scope("docs", "t1"))
    services.ingestor.ingest_documents([doc("a", "Shared id, tenant two.")], Scope("docs", "t2"))
    services.ingestor.ingest_documents([doc("a", "Shared id, other collection.")], Scope("other", "t1"))
    assert services.index.count(Scope("docs", "t1")) == 1
    assert services.index.has_points(Scope("docs", "t1")) and not services.index.has_points(Scope("docs", "t3"))
    services.ingestor.ingest_documents([], Scope("docs", "t1"), prune=True)  # prune one scope only
    assert services.index.count(Scope("docs", "t1")) == 0 and not services.index.has_points(Scope("docs", "t1"))
    assert services.index.count(Scope("docs", "t2")) == services.index.count(Scope("other", "t1")) == 1
    assert services.index.has_points(Scope("docs", "t2")) and services.index.has_points(Scope("other", "t1"))


@pytest.mark.parametrize("fmt", ["jsonl"])
def test_ingest_paths_with_jsonl_ids(services: Services, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"docs.{fmt}"
    path.write_text("\n".join(json.dumps({"id": f"id-{i}", "text": f"Document number {i}."}) for i in range(3)))
    report = services.ingestor.ingest_paths([path], SCOPE)
    assert sorted(report.added) == ["id-0", "id-1", "id-2"]


def test_the_first_search_after_an_ingest_embeds_nothing_but_the_query(
    make_services: Callable[..., Services],
) -> None:
    """Sentence vectors are computed at ingest, beside the chunks': the reranker, the context compressor and the
    groundedness check find them, so the first question after an ingest pays for none of them."""
    services = make_services(rerank=True)
    report = services.ingestor.ingest_documents(sample_documents(30), SCOPE)
    assert report.embeddings_computed == report.chunks  # the report counts chunk vectors, as before
    before = services.embedder.stats.computed
    hits = services.searcher.search("How long should tea steep?", SCOPE, top_k=5).hits
    assert hits and services.embedder.stats.computed - before <= 1  # the question's own vector
