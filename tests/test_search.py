from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.container import Services
from retrieval.documents import Document, Section
from retrieval.fusion import FusedCandidate, fuse, head_spread, min_max, query_dense_weight
from retrieval.index import (
    CandidateLists,
    FusionParams,
    IndexUnavailableError,
    Scope,
    ScoredPayload,
    SearchFilter,
    SnapshotIndex,
    VectorIndex,
)
from retrieval.rerank import RerankWeights, SentenceReranker
from retrieval.search import Searcher, with_payloads
from retrieval.sparse import Bm25Encoder
from tests.conftest import sample_documents, sample_questions

SCOPE = Scope("sample", "default")


@pytest.fixture
def indexed(services: Services) -> Services:
    services.ingestor.ingest_documents(sample_documents(), SCOPE)
    return services


@pytest.mark.parametrize("mode", ["hybrid", "dense", "sparse"])
def test_each_mode_finds_the_answering_passage(indexed: Services, mode: str) -> None:
    questions = sample_questions({d.id for d in sample_documents()}, limit=20)
    found = 0
    for question in questions:
        hits = indexed.searcher.search(question["question"], SCOPE, top_k=5, mode=mode).hits  # type: ignore[arg-type]
        assert len(hits) == 5
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        found += question["passage_id"] in {h.doc_id for h in hits}
    assert found >= 14, f"{mode}: {found}/20 questions found their passage in the top 5"


def test_hit_shape(indexed: Services) -> None:
    result = indexed.searcher.search("Normans in Normandy", SCOPE, top_k=3)
    hit = result.hits[0]
    assert hit.doc_id.startswith("p") and hit.text and hit.source == "sample" and hit.chunk_id
    assert set(hit.to_dict()) >= {"doc_id", "chunk_id", "score", "text", "title", "source", "metadata"}
    assert set(result.timings_ms) == {"embed", "search"}


def test_filters_by_document_and_metadata(services: Services) -> None:
    services.ingestor.ingest_documents(
        [
            Document("en", (Section("The river flows to the sea."),), metadata={"lang": "en", "year": 2020}),
            Document("fr", (Section("La rivière coule vers la mer. river"),), metadata={"lang": "fr", "year": 2021}),
            Document("de", (Section("Der Fluss fließt ins Meer. river"),), metadata={"lang": "de", "year": 2021}),
        ],
        SCOPE,
    )
    search = services.searcher.search

    def ids(search_filter: SearchFilter) -> set[str]:
        return {h.doc_id for h in search("river", SCOPE, top_k=10, search_filter=search_filter).hits}

    assert ids(SearchFilter()) == {"en", "fr", "de"}
    assert ids(SearchFilter(doc_ids=("fr",))) == {"fr"}
    assert ids(SearchFilter(metadata={"lang": "en"})) == {"en"}
    assert ids(SearchFilter(metadata={"lang": ["fr", "de"]})) == {"fr", "de"}
    assert ids(SearchFilter(metadata={"year": 2021, "lang": "de"})) == {"de"}
    assert ids(SearchFilter(metadata={"lang": "es"})) == set()


@pytest.mark.parametrize("mode", ["hybrid", "dense", "sparse"])
def test_tenants_never_see_each_other(services: Services, mode: str) -> None:
    services.ingestor.ingest_documents(
        [Document("secret", (Section("Tenant one payroll figures."),))], Scope("c", "one")
    )
    services.ingestor.ingest_documents(
        [Document("public", (Section("Tenant two cafeteria menu."),))], Scope("c", "two")
    )
    hits = services.searcher.search("payroll figures", Scope("c", "two"), top_k=10, mode=mode).hits  # type: ignore[arg-type]
    assert {h.doc_id for h in hits} <= {"public"}
    assert services.searcher.search("payroll", Scope("other", "one"), mode=mode).hits == []  # type: ignore[arg-type]


def test_index_persists_across_restart(make_services: Callable[..., Services], index_backend: str) -> None:
    first = make_services(index_backend)
    first.ingestor.ingest_documents(sample_documents(10), SCOPE)
    before = [h.chunk_id for h in first.searcher.search("Normans", SCOPE).hits]
    first.close()
    second = make_services(index_backend)
    assert [h.chunk_id for h in second.searcher.search("Normans", SCOPE).hits] == before
    assert len(second.ingestor.ingest_documents(sample_documents(10), SCOPE).unchanged) == 10


def test_snapshot_and_restore(make_services: Callable[..., Services], tmp_path: Path) -> None:
    services = make_services()
    index = services.index
    assert isinstance(index, SnapshotIndex)
    services.ingestor.ingest_documents([Document("keep", (Section("Snapshot me."),))], SCOPE)
    snapshot = index.snapshot(tmp_path / "snap.tar.gz")
    services.ingestor.ingest_documents([Document("later", (Section("Added after the snapshot."),))], SCOPE)
    assert services.index.count(SCOPE) == 2
    index.restore(snapshot)
    assert set(services.index.document_hashes(SCOPE)) == {"keep"}
    assert services.searcher.search("snapshot", SCOPE).hits[0].doc_id == "keep"
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(IndexUnavailableError, match="not a ragops snapshot"):
        index.restore(tmp_path / "junk.tar.gz")
    assert set(services.index.document_hashes(SCOPE)) == {"keep"}  # a bad snapshot changes nothing


def test_second_process_gets_a_clear_error(make_services: Callable[..., Services]) -> None:
    make_services()
    with pytest.raises(IndexUnavailableError, match="in use by another process"):
        make_services()


def test_bm25_idf_is_computed_per_tenant(services: Services) -> None:
    """Tenant two's documents all say "zebra"; tenant one's BM25 ranking and scores must not notice."""
    one, two = Scope("c", "one"), Scope("c", "two")
    filler = ["The quarterly report is due on Friday.", "Lunch is served at noon.", "The office opens at nine."]
    services.ingestor.ingest_documents(
        [
            Document("zebra", (Section("A zebra escaped from the zoo."),)),
            Document("ledger", (Section("The ledger was balanced twice."),)),
            *(Document(f"filler-{i}", (Section(text),)) for i, text in enumerate(filler)),
        ],
        one,
    )

    def ranked() -> list[tuple[str, float]]:
        hits = services.searcher.search("zebra ledger", one, top_k=10, mode="sparse").hits
        return [(h.doc_id, h.score) for h in hits]

    alone = ranked()
    assert {doc_id for doc_id, _ in alone} == {"zebra", "ledger"}
    services.ingestor.ingest_documents(
        [Document(f"herd-{i}", (Section(f"Zebra number {i} grazes on the plain."),)) for i in range(20)], two
    )
    # Collection-wide IDF would make "zebra" common and sink its document; per-tenant IDF changes nothing here.
    together = ranked()
    assert [doc_id for doc_id, _ in together] == [doc_id for doc_id, _ in alone]
    assert [score for _, score in together] == pytest.approx([score for _, score in alone], rel=1e-6)


def _points(*scored: tuple[str, float]) -> list[ScoredPayload]:
    return [ScoredPayload(point_id, score, {"doc_id": point_id}) for point_id, score in scored]


FIXED_WEIGHT = FusionParams(dense_weight=0.3, confidence_gain=0.0)  # the per-query weight switched off


def test_fusion_keeps_what_only_one_retriever_found_and_weighs_normalised_scores() -> None:
    lists = CandidateLists(
        dense=_points(("both", 0.9), ("dense-only", 0.8), ("dense-last", 0.5)),
        sparse=_points(("sparse-only", 12.0), ("both", 9.0), ("sparse-last", 3.0)),
    )
    fused = {candidate.point.id: candidate for candidate in fuse(lists, FIXED_WEIGHT)}
    assert set(fused) == {"both", "dense-only", "dense-last", "sparse-only", "sparse-last"}
    assert fused["dense-only"].sparse == 0.0 and fused["sparse-only"].dense == 0.0
    assert fused["both"].score == pytest.approx(0.3 * 1.0 + 0.7 * (9 - 3) / (12 - 3))
    assert fused["sparse-only"].score == pytest.approx(0.7)  # BM25's clear winner, found by BM25 alone
    assert {candidate.dense_weight for candidate in fused.values()} == {0.3}
    assert [c.point.id for c in fuse(lists, FIXED_WEIGHT)][:2] == ["both", "sparse-only"]
    dense_only = FusionParams(dense_weight=1.0, confidence_gain=0.0)
    assert [c.point.id for c in fuse(lists, dense_only)][:3] == ["both", "dense-only", "dense-last"]
    assert fuse(CandidateLists([], []), FusionParams()) == []
    assert min_max([2.0, 2.0]) == [1.0, 1.0] and min_max([]) == []


def test_a_flat_bm25_head_gives_the_query_more_dense_weight() -> None:
    spread_dense = _points(("a", 0.9), ("b", 0.5), ("c", 0.4))
    flat_bm25 = CandidateLists(spread_dense, _points(("b", 10.0), ("c", 9.9), ("a", 9.8)))
    spread_bm25 = CandidateLists(spread_dense, _points(("b", 10.0), ("c", 3.0), ("a", 2.0)))
    params = FusionParams()
    assert head_spread(flat_bm25.sparse, depth=10) < head_spread(spread_dense, depth=10) < 0.3
    assert head_spread(spread_dense, depth=1) == 0.0  # one score: no spread to read
    assert query_dense_weight(flat_bm25, params) > params.dense_weight > query_dense_weight(spread_bm25, params)
    assert fuse(flat_bm25, params)[0].point.id == "a"  # dense's clear winner, over BM25's near-tie
    assert fuse(spread_bm25, params)[0].point.id == "b"
    assert {c.dense_weight for c in fuse(flat_bm25, params)} == {query_dense_weight(flat_bm25, params)}


def test_the_query_weight_stays_in_the_unit_interval() -> None:
    lone = CandidateLists(_points(("a", 0.9), ("b", 0.1)), _points(("b", 5.0), ("a", 5.0), ("c", 5.0)))
    assert query_dense_weight(lone, FusionParams(confidence_gain=10.0)) == 1.0
    swapped = CandidateLists(lone.sparse, lone.dense)
    assert query_dense_weight(swapped, FusionParams(confidence_gain=10.0)) == 0.0
    assert query_dense_weight(CandidateLists(_points(("a", 0.9)), []), FusionParams()) == 1.0  # no BM25 match
    assert query_dense_weight(CandidateLists([], _points(("a", 3.0))), FusionParams()) == 0.0
    for gain in (0.0, 0.5, 3.0):
        assert 0.0 <= query_dense_weight(lone, FusionParams(confidence_gain=gain)) <= 1.0


def test_fusion_ties_keep_dense_order_then_bm25s() -> None:
    tied = CandidateLists(_points(("d1", 0.8), ("d2", 0.8)), _points(("s1", 4.0), ("s2", 4.0)))
    params = FusionParams(dense_weight=0.5, confidence_gain=0.0)
    assert [c.point.id for c in fuse(tied, params)] == ["d1", "d2", "s1", "s2"]
    assert [c.point.id for c in fuse(tied, params)] == [c.point.id for c in fuse(tied, params)]


def test_hybrid_returns_dense_hits_when_bm25_finds_nothing(services: Services) -> None:
    services.ingestor.ingest_documents(
        [
            Document("doctor", (Section("The physician examined the patient's heart."),)),
            Document("bread", (Section("Bake the loaf for forty minutes."),)),
        ],
        SCOPE,
    )
    query = "cardiologist checkup"  # no term in either document
    assert services.searcher.search(query, SCOPE, top_k=5, mode="sparse").hits == []
    hits = services.searcher.search(query, SCOPE, top_k=5, mode="hybrid").hits
    assert [h.doc_id for h in hits] == ["doctor", "bread"]


def _candidate(point_id: str, text: str, dense: float, sparse: float) -> FusedCandidate:
    point = ScoredPayload(point_id, 0.0, {"doc_id": point_id, "text": text})
    return FusedCandidate(point, dense, sparse, 0.3 * dense + 0.7 * sparse, dense_weight=0.3)


def test_rerank_orders_by_the_best_sentence(services: Services) -> None:
    reranker = SentenceReranker(services.embedder, Bm25Encoder(), RerankWeights(), depth=2)
    query = "Where was the treaty of Verdun signed?"
    diluted = _candidate("diluted", "Verdun is a city in France. Treaties were common then. It has a town hall.", 1, 1)
    answering = _candidate(
        "answering", "Grapes grow on the hills. The treaty of Verdun was signed in the abbey of Verdun.", 0.9, 0.9
    )
    below = _candidate("below", "The treaty of Verdun was signed in the abbey of Verdun.", 0.1, 0.1)
    query_vectors = services.embedder.embed_query(query), Bm25Encoder().encode_query(query)
    reranked = reranker.rerank(*query_vectors, [diluted, answering, below])
    assert [c.point.id for c in reranked] == ["answering", "diluted", "below"]  # only the top `depth` move
    assert reranked[0].score > reranked[1].score >= reranked[2].score


def test_rerank_is_a_setting(make_services: Callable[..., Services]) -> None:
    """Without the rerank, hybrid's hits are exactly the fusion of the index's two rankings."""
    services = make_services(rerank=False)
    services.ingestor.ingest_documents(sample_documents(30), SCOPE)
    query = "Who ruled the duchy of Normandy?"
    dense, sparse = services.embedder.embed_query(query), Bm25Encoder().encode_query(query)
    lists = services.index.search_both(SCOPE, dense, sparse, services.settings.retrieval.prefetch_limit, SearchFilter())
    params = FusionParams(services.settings.retrieval.hybrid_dense_weight, services.settings.retrieval.prefetch_limit)
    expected = fuse(lists, params)[:5]
    hits = services.searcher.search(query, SCOPE, top_k=5).hits
    assert [h.chunk_id for h in hits] == [c.point.id for c in expected]
    assert [h.score for h in hits] == pytest.approx([c.score for c in expected])


@pytest.mark.parametrize("backend", ["edge", "qdrant-local"])
def test_rankings_carry_no_payloads_and_the_head_gets_them(
    make_services: Callable[..., Services], backend: str
) -> None:
    """Hybrid ranks ids and scores only; the fused head's payloads come in one fetch, and a candidate whose document
    was replaced between the ranking and the fetch gives its place to the next, never returned without its text."""
    services = make_services(backend)
    documents = sample_documents(30)
    services.ingestor.ingest_documents(documents, SCOPE)
    query = "Who ruled the duchy of Normandy?"
    dense, sparse = services.embedder.embed_query(query), Bm25Encoder().encode_query(query)
    lists = services.index.search_both(SCOPE, dense, sparse, 20, SearchFilter())
    assert lists.dense and lists.sparse
    assert all(point.payload == {} for point in (*lists.dense, *lists.sparse))
    fused = fuse(lists, FusionParams())
    documents_of = {
        point_id: payload["doc_id"]
        for point_id, payload in services.index.payloads([c.point.id for c in fused]).items()
    }
    gone_doc = documents_of[fused[1].point.id]
    services.index.delete_document(SCOPE, gone_doc)
    kept = with_payloads(services.index, fused, 8)
    assert [c.point.id for c in kept] == [c.point.id for c in fused if documents_of[c.point.id] != gone_doc][:8]
    assert all(c.point.payload["doc_id"] != gone_doc and c.point.payload["text"] for c in kept)
    assert services.index.payloads([]) == {}
    services.close()


class ReplacedMeanwhile:
    """Injects a race: the first payload fetch finds the best candidate's document deleted since the ranking."""

    def __init__(self, inner: VectorIndex) -> None:
        self.inner = inner
        self.fetches = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.fetches += 1
        if self.fetches == 1:
            self.inner.delete_document(SCOPE, self.inner.payloads(ids[:1])[ids[0]]["doc_id"])
        return self.inner.payloads(ids)


def test_a_candidate_gone_before_its_payload_is_fetched_gives_its_place(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(rerank=False)
    services.ingestor.ingest_documents(sample_documents(30), SCOPE)
    query = "Who ruled the duchy of Normandy?"
    params = FusionParams(services.settings.retrieval.hybrid_dense_weight, services.settings.retrieval.prefetch_limit)
    dense, sparse = services.embedder.embed_query(query), Bm25Encoder().encode_query(query)
    fused = [c.point.id for c in fuse(services.index.search_both(SCOPE, dense, sparse, 100, SearchFilter()), params)]
    doc_of = {point_id: payload["doc_id"] for point_id, payload in services.index.payloads(fused).items()}
    racing = ReplacedMeanwhile(services.index)
    searcher = Searcher(racing, services.embedder, Bm25Encoder(), params)  # type: ignore[arg-type]
    hits = searcher.search(query, SCOPE, top_k=5).hits
    gone = doc_of[fused[0]]
    assert racing.fetches >= 2  # the next candidates fetched in the gone ones' place (the document may have more)
    assert [h.chunk_id for h in hits] == [i for i in fused if doc_of[i] != gone][:5]
    services.close()


def test_both_backends_agree_on_hybrid(make_services: Callable[..., Services]) -> None:
    documents = sample_documents(30)
    questions = sample_questions({d.id for d in documents}, limit=8)
    rankings = []
    for backend in ("edge", "qdrant-local"):
        services = make_services(backend)
        services.ingestor.ingest_documents(documents, SCOPE)
        rankings.append([[h.doc_id for h in services.searcher.search(q["question"], SCOPE).hits] for q in questions])
        services.close()
    assert rankings[0] == rankings[1]
