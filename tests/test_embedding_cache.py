from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.embedding import Embedder, TorchEmbedder
from retrieval.embedding_cache import CachedEmbedder, SeededEmbeddingStore, SqliteEmbeddingStore, text_key


def test_vectors_are_normalised_and_deterministic(embedder: Embedder) -> None:
    vectors = embedder.embed(
        ["The Normans lived in Normandy.", "A cat sat on a mat.", "The Normans lived in Normandy."]
    )
    assert vectors.shape == (3, embedder.dimension) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert float(vectors[0] @ embedder.embed(["Normandy was home to the Normans."])[0]) > float(vectors[0] @ vectors[1])


def test_store_hits_after_restart_and_lru_for_queries(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "cache.sqlite"
    first = CachedEmbedder(embedder, SqliteEmbeddingStore(path))
    original = first.embed(["alpha", "beta", "alpha"])
    assert (first.stats.computed, first.stats.store_hits) == (2, 1)  # duplicates are embedded once

    second = CachedEmbedder(embedder, SqliteEmbeddingStore(path))  # a new process, same file
    again = second.embed(["beta", "alpha", "gamma"])
    assert (second.stats.computed, second.stats.store_hits) == (1, 2)
    assert np.array_equal(again[0], original[1]) and np.array_equal(again[1], original[0])

    second.embed_query("hot query")
    second.embed_query("hot query")
    assert second.stats.memory_hits == 1


def test_lru_is_bounded(tmp_path: Path, embedder: Embedder) -> None:
    cached = CachedEmbedder(embedder, SqliteEmbeddingStore(tmp_path / "c.sqlite"), lru_size=2)
    for text in ["a", "b", "c", "a"]:
        cached.embed_query(text)
    assert cached.stats.memory_hits == 0  # "a" was evicted by "c"


def test_changing_the_model_never_serves_stale_vectors(tmp_path: Path, embedder: Embedder) -> None:
    store = SqliteEmbeddingStore(tmp_path / "cache.sqlite")
    onnx = CachedEmbedder(embedder, store)
    onnx.embed(["shared text"])
    torch_model = TorchEmbedder("all-MiniLM-L6-v2")
    assert torch_model.model_id != embedder.model_id
    torch_cached = CachedEmbedder(torch_model, store)
    vector = torch_cached.embed(["shared text"])[0]
    assert torch_cached.stats.computed == 1 and torch_cached.stats.store_hits == 0
    assert np.array_equal(vector, torch_model.embed(["shared text"])[0])
    # The int8 export stays close to the reference model it was made from.
    assert float(vector @ onnx.embed(["shared text"])[0]) > 0.98


def test_a_seed_serves_a_new_data_dir_which_keeps_its_own_copy(tmp_path: Path, embedder: Embedder) -> None:
    seed_path = tmp_path / "seed.sqlite"
    first_dir = CachedEmbedder(
        embedder, SeededEmbeddingStore(SqliteEmbeddingStore(tmp_path / "a.sqlite"), SqliteEmbeddingStore(seed_path))
    )
    passages = first_dir.embed(["public passage one", "public passage two"])
    first_dir.embed_query("a user's private question")
    assert first_dir.stats.computed == 3

    own = SqliteEmbeddingStore(tmp_path / "b.sqlite")
    second_dir = CachedEmbedder(embedder, SeededEmbeddingStore(own, SqliteEmbeddingStore(seed_path)))
    assert np.array_equal(second_dir.embed(["public passage one", "public passage two"]), passages)
    assert second_dir.stats.computed == 0  # the seed had them
    assert len(own.get_many(embedder.model_id, [text_key("public passage one")])) == 1  # copied into the data dir
    second_dir.embed_query("a user's private question")
    assert second_dir.stats.computed == 1  # questions never go to the seed

    # Erasing in the data dir removes its copy and leaves the shared seed alone.
    second_dir.store.delete_many(None, [text_key("public passage one")])
    assert not own.get_many(embedder.model_id, [text_key("public passage one")])
    assert SqliteEmbeddingStore(seed_path).get_many(embedder.model_id, [text_key("public passage one")])
    # A seed made by another model (another fingerprint) is never read back.
    assert not SqliteEmbeddingStore(seed_path).get_many("other-model:onnx-int8:0", [text_key("public passage one")])


def test_the_memory_front_serves_reads_and_forgets_what_is_erased(tmp_path: Path) -> None:
    """Rows read or written once are served from memory after; a deletion or a prune through it leaves memory
    too, so an erased vector is never served again; the oldest rows go past its capacity."""
    from datetime import UTC, datetime, timedelta

    from retrieval.embedding_cache import MemoryFront

    sqlite = SqliteEmbeddingStore(tmp_path / "cache.sqlite")
    front = MemoryFront(sqlite, capacity=2)
    a, b, c = (text_key(t) for t in "abc")
    front.put_many("m", [(a, b"1"), (b, b"2")])
    sqlite.close()  # every read below that reaches SQLite would fail
    assert front.get_many("m", [a, b]) == {a: b"1", b: b"2"}
    reopened = SqliteEmbeddingStore(tmp_path / "cache.sqlite")
    front = MemoryFront(reopened, capacity=2)
    assert front.get_many("m", [a]) == {a: b"1"}  # read once: remembered
    assert front.delete_many(None, [a]) == 1
    assert front.get_many("m", [a]) == {}
    front.put_many("m", [(b, b"2"), (c, b"3")], kind="query")
    assert front.prune_queries(datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert front.get_many("m", [b, c]) == {}
    reopened.close()
