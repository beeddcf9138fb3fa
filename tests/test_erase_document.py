"""Erasure (issue 23): a document erased is gone from the bytes on disk too, the index's and the embedding cache's.

Real parts throughout: the bundled model, qdrant-edge under a temporary data dir. A marker word in each erased
document must be in no file under the index dir; the embedding cache holds hashes, not text, so there the test
looks for the raw keys (sha256) of the document's embedding texts and sentences, in the database and its -wal.
The crash test kills a separate process (``RAGOPS_TEST_KILL_AT_STEP``, ``retrieval.ingest.CrashHook``) at each of
an erasure's durable steps; the restart on the same data dir finishes it (``Ingestor.recover``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.container import Services
from retrieval.documents import Document, Section
from retrieval.embedding import Embedder
from retrieval.embedding_cache import CachedEmbedder, SqliteEmbeddingStore, text_key
from retrieval.index import Scope
from retrieval.ingest import KILL_AT_STEP_ENV, chunk_embedding_keys
from retrieval.journal import IntentJournal

SCOPE = Scope("docs", "t1")
OTHER_TENANT = Scope("docs", "t2")
MARKER = "Quillonbrae"
SECRET_TEXT = (
    f"{MARKER} Farrowdale was admitted on the third of May. The ward noted that {MARKER} had a fever. "
    f"Her neighbour drove {MARKER} home after a week."
)
OTHER_TEXT = "Bananas are yellow and grow in bunches. Apples are red or green."


def doc(doc_id: str, text: str) -> Document:
    return Document(doc_id, (Section(text),))


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def cache_bytes(services: Services) -> bytes:
    """The embedding cache's files (database, -wal, -shm) as one byte string."""
    return b"".join(p.read_bytes() for p in sorted(services.settings.cache_dir.rglob("*")) if p.is_file())


def document_keys(services: Services, scope: Scope, doc_id: str) -> set[bytes]:
    return set().union(*(chunk_embedding_keys(chunk) for chunk in services.index.document_chunks(scope, doc_id)))


def warm_sentences(services: Services, scope: Scope, query: str) -> None:
    """A reranked search: the sentences of the candidates get embedded through the cache, as in service."""
    assert services.settings.retrieval.rerank
    services.searcher.search(query, scope, top_k=5)


def hits(services: Services, scope: Scope, query: str) -> list[str]:
    return [hit.doc_id for hit in services.searcher.search(query, scope, top_k=10).hits]


def test_erased_document_leaves_no_bytes(make_services: Callable[..., Services]) -> None:
    services = make_services()
    services.ingestor.ingest_documents([doc("secret", SECRET_TEXT), doc("other", OTHER_TEXT)], SCOPE)
    services.ingestor.ingest_documents([doc("secret", OTHER_TEXT + " A different text.")], OTHER_TENANT)
    warm_sentences(services, SCOPE, f"When was {MARKER} admitted?")
    keys = document_keys(services, SCOPE, "secret")
    stored = services.embedder.store.get_many(services.embedder.model_id, sorted(keys))
    assert len(stored) == len(keys) >= 4  # the chunk's embedding text and its three sentences
    index_dir = services.settings.index_dir
    assert files_holding(index_dir, MARKER.encode())  # the check can see it before

    erasure = services.ingestor.erase_document(SCOPE, "secret")

    assert (erasure.chunks_removed, erasure.embedding_rows_removed, erasure.embedding_rows_kept) == (1, len(keys), 0)
    assert 0 < erasure.seconds < 30
    assert files_holding(index_dir, MARKER.encode()) == []
    raw = cache_bytes(services)
    assert not [key for key in keys if key in raw]
    assert not [vector for vector in stored.values() if vector in raw]
    assert "secret" not in hits(services, SCOPE, f"When was {MARKER} admitted?")
    assert hits(services, SCOPE, "Which fruit is yellow?")[0] == "other"
    assert set(services.index.document_hashes(OTHER_TENANT)) == {"secret"}  # the other tenant's is untouched
    assert hits(services, OTHER_TENANT, "Which fruit is yellow?") == ["secret"]

    again = services.ingestor.erase_document(SCOPE, "secret")
    assert (again.chunks_removed, again.embedding_rows_removed, again.embedding_rows_kept) == (0, 0, 0)
    never = services.ingestor.erase_document(SCOPE, "never-there")
    assert (never.chunks_removed, never.embedding_rows_removed) == (0, 0)


def test_rows_shared_by_another_live_document_are_kept(make_services: Callable[..., Services]) -> None:
    """The same content under another tenant (same doc id) and in another collection (another id): the vectors
    they share stay until the last of them is erased."""
    services = make_services()
    for scope, doc_id in ((SCOPE, "secret"), (OTHER_TENANT, "secret"), (Scope("archive", "t1"), "copy")):
        services.ingestor.ingest_documents([doc(doc_id, SECRET_TEXT), doc("other", OTHER_TEXT)], scope)
    warm_sentences(services, SCOPE, f"When was {MARKER} admitted?")
    keys = document_keys(services, SCOPE, "secret")

    first = services.ingestor.erase_document(SCOPE, "secret")
    assert (first.chunks_removed, first.embedding_rows_removed, first.embedding_rows_kept) == (1, 0, len(keys))
    assert len(services.embedder.store.get_many(services.embedder.model_id, sorted(keys))) == len(keys)
    assert "secret" not in services.index.document_hashes(SCOPE)
    assert hits(services, OTHER_TENANT, f"When was {MARKER} admitted?")[0] == "secret"

    services.ingestor.erase_document(OTHER_TENANT, "secret")
    last = services.ingestor.erase_document(Scope("archive", "t1"), "copy")
    assert (last.chunks_removed, last.embedding_rows_removed, last.embedding_rows_kept) == (1, len(keys), 0)
    assert files_holding(services.settings.index_dir, MARKER.encode()) == []
    assert not [key for key in keys if key in cache_bytes(services)]


def test_qdrant_client_local_mode_keeps_no_bytes(make_services: Callable[..., Services], tmp_path: Path) -> None:
    """The qdrant-client adapter, on its local mode (a SQLite file of points): best effort, and enough there."""
    services = make_services("qdrant-local")
    services.ingestor.ingest_documents([doc("secret", SECRET_TEXT), doc("other", OTHER_TEXT)], SCOPE)
    storage = tmp_path / "qdrant-local"
    assert files_holding(storage, MARKER.encode())
    erasure = services.ingestor.erase_document(SCOPE, "secret")
    assert erasure.chunks_removed == 1
    assert files_holding(storage, MARKER.encode()) == []
    assert hits(services, SCOPE, "Which fruit is yellow?") == ["other"]


def test_every_version_of_an_updated_document_goes(make_services: Callable[..., Services]) -> None:
    """An update leaves the old version's bytes in its segment and the log: erasure takes them too."""
    services = make_services()
    services.ingestor.ingest_documents([doc("secret", SECRET_TEXT)], SCOPE)
    services.ingestor.ingest_documents([doc("secret", "Nothing to see here any more. It was all rewritten.")], SCOPE)
    assert files_holding(services.settings.index_dir, MARKER.encode())
    services.ingestor.erase_document(SCOPE, "secret")
    assert files_holding(services.settings.index_dir, MARKER.encode()) == []
    assert files_holding(services.settings.index_dir, b"all rewritten") == []


class _CrashAt:
    """In-process stand-in for the kill: raises at the erasure's Nth durable step."""

    def __init__(self, step: int) -> None:
        self._step, self._steps = step, 0

    def step(self) -> None:
        self._steps += 1
        if self._steps == self._step:
            raise RuntimeError(f"crash at step {self._step}")


@pytest.mark.parametrize("step", [1, 2, 3])
def test_an_interrupted_erasure_is_finished_by_a_rerun(make_services: Callable[..., Services], step: int) -> None:
    services = make_services()
    services.ingestor.ingest_documents([doc("secret", SECRET_TEXT), doc("other", OTHER_TEXT)], SCOPE)
    warm_sentences(services, SCOPE, f"When was {MARKER} admitted?")
    keys = document_keys(services, SCOPE, "secret")
    services.ingestor._crash = _CrashAt(step)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="crash at step"):
        services.ingestor.erase_document(SCOPE, "secret")
    services.ingestor._crash = _CrashAt(0)  # type: ignore[assignment]

    rerun = services.ingestor.erase_document(SCOPE, "secret")
    assert rerun.chunks_removed == (1 if step == 1 else 0)  # step 1: rows gone, points still there
    assert files_holding(services.settings.index_dir, MARKER.encode()) == []
    assert not [key for key in keys if key in cache_bytes(services)]
    assert hits(services, SCOPE, "Which fruit is yellow?") == ["other"]


_ERASE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from app.container import build_services
    from app.settings import load_settings
    from retrieval.index import Scope
    services = build_services(load_settings(models_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2])))
    services.ingestor.erase_document(Scope("docs", "t1"), "secret")
    print("finished without being killed")
    """
)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_kill_during_erasure_then_restart_finishes_it(make_services: Callable[..., Services], step: int) -> None:
    """kill -9 after rows deleted (1), points deleted (2), index bytes purged (3): the restart's recovery finishes
    the erasure from the journal, and erasing again is a no-op."""
    services = make_services()
    services.ingestor.ingest_documents([doc("secret", SECRET_TEXT), doc("other", OTHER_TEXT)], SCOPE)
    warm_sentences(services, SCOPE, f"When was {MARKER} admitted?")
    keys = document_keys(services, SCOPE, "secret")
    settings = services.settings
    services.close()  # lets go of the index's lock

    env = {**os.environ, KILL_AT_STEP_ENV: str(step), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run(
        [sys.executable, "-c", _ERASE_SCRIPT, str(settings.model_cache_dir), str(settings.data_dir)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stdout + killed.stderr
    journal = IntentJournal(next(settings.index_dir.glob("*.journal.sqlite")))
    assert journal.pending_erasures() == [(SCOPE, "secret")]
    journal.close()

    restarted = make_services()  # build_services runs Ingestor.recover
    assert files_holding(settings.index_dir, MARKER.encode()) == []
    assert not [key for key in keys if key in cache_bytes(restarted)]
    assert restarted.index.document_hashes(SCOPE).keys() == {"other"}
    rerun = restarted.ingestor.erase_document(SCOPE, "secret")
    assert (rerun.chunks_removed, rerun.embedding_rows_removed) == (0, 0)


def test_cache_upgrade_marks_rows_and_prunes_question_vectors(tmp_path: Path, embedder: Embedder) -> None:
    """A format-1 cache file gains kind and written_at when opened; question vectors (``embed_query``) are pruned
    by age, passages stay; rows of unknown kind (from before the upgrade) go once the cut-off passes the upgrade."""
    path = tmp_path / "cache" / "embeddings.sqlite"
    path.parent.mkdir()
    legacy = sqlite3.connect(path)
    legacy.execute(
        "CREATE TABLE embeddings (model_id TEXT NOT NULL, text_hash BLOB NOT NULL, vector BLOB NOT NULL,"
        " PRIMARY KEY (model_id, text_hash)) WITHOUT ROWID"
    )
    legacy.execute("INSERT INTO embeddings VALUES (?, ?, ?)", (embedder.model_id, text_key("old"), b"\x00" * 1536))
    legacy.commit()
    legacy.close()

    store = SqliteEmbeddingStore(path)
    cached = CachedEmbedder(embedder, store)
    cached.embed(["A passage sentence."])
    question = "Where does Quillonbrae live?"
    cached.embed_query(question)
    assert cached.embed(["old"]).shape == (1, embedder.dimension)  # served from the legacy row, not recomputed
    assert cached.stats.computed == 2

    assert store.prune_queries(datetime.now(UTC) - timedelta(days=1)) == 0
    assert store.prune_queries(datetime.now(UTC) + timedelta(seconds=2)) == 2  # the question, the legacy row
    remaining = store.get_many(embedder.model_id, [text_key("A passage sentence."), text_key(question)])
    assert list(remaining) == [text_key("A passage sentence.")]
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert text_key(question) not in raw and text_key("old") not in raw
    assert store.prune_queries(datetime.now(UTC) + timedelta(seconds=2)) == 0
    store.close()
    reopened = sqlite3.connect(path)
    assert reopened.execute("PRAGMA user_version").fetchone() == (2,)
    reopened.close()
