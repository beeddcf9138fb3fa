"""An index that survives: ``kill -9`` mid-update, a full disk, a read-only data dir, a corrupt index.

The crash test kills a live ``ragops serve`` at exact moments of an update through the test-only hook
``RAGOPS_TEST_KILL_AT_STEP`` (``retrieval.ingest.CrashHook``: the server SIGKILLs itself after the Nth durable
step), and once at a moment found by polling the point count (SIGKILL to its process group). Each restart on the
same data dir must show every document in exactly one complete version, old or new. The disk tests mount a
small tmpfs (we are root in the test container); where mounting is refused they skip, and the margin is still
tested by a margin larger than any disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import main as cli_main
from app.container import Services, build_services
from app.settings import Settings
from retrieval.chunking import Chunker
from retrieval.documents import Document, Section
from retrieval.embedding import Embedder
from retrieval.index import IndexUnavailableError, Scope, StorageFullError
from retrieval.ingest import Ingestor
from retrieval.journal import IntentJournal
from retrieval.loaders import document_from_record
from retrieval.sparse import Bm25Encoder
from retrieval.storage import MB, DiskGuard
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers, free_port

BASE_DOCS = 16
CHUNK_TOKENS, CHUNK_OVERLAP, BATCH_CHUNKS = 64, 8, 12
# Kill after step N of an update, and whether its first documents then keep the new revision: 1 = intents
# journaled, nothing written; 2 = first batch's points written, not marked; 3 = marked, old versions still there;
# 4 = one document switched; 25 = a few batches in.
KILLS = ((1, False), (2, False), (3, True), (4, True), (25, True))


def revision(rev: int) -> list[dict[str, Any]]:
    """Every base document changed (its metadata names the revision), plus one new document per revision."""
    records = load_sample_records(BASE_DOCS + 12)
    docs = [{"id": r["id"], "text": r["text"], "metadata": {"rev": rev}} for r in records[:BASE_DOCS]]
    extra = records[BASE_DOCS + rev]
    return [*docs, {"id": f"new-{rev}", "text": extra["text"], "metadata": {"rev": rev}}]


def server_env(data: Path, models_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "RAGOPS_DATA_DIR": str(data),
        "RAGOPS_MODELS_DIR": str(models_dir),
        "RAGOPS_GENERATOR": "extractive",
        "RAGOPS_GUARDS": "false",
        "RAGOPS_CHUNK_TOKENS": str(CHUNK_TOKENS),
        "RAGOPS_CHUNK_OVERLAP": str(CHUNK_OVERLAP),
        "RAGOPS_INGEST_BATCH_CHUNKS": str(BATCH_CHUNKS),
        **extra,
    }


@pytest.fixture(scope="module")
def chunk_counts(embedder: Embedder) -> Callable[[dict[str, Any]], int]:
    """How many chunks a record has once ingested (the server's chunker, settings as in server_env)."""
    chunker = Chunker(embedder.count_tokens, CHUNK_TOKENS, CHUNK_OVERLAP)
    return lambda record: len(chunker.chunk(document_from_record(record)))


def versions(client: httpx.Client) -> dict[str, tuple[int, list[int]]]:
    """doc id -> (its one revision, the chunk indexes of it that search finds); fails on two revisions."""
    listed = client.get("/v1/documents").json()["documents"]
    found = {}
    for entry in listed:
        body = {"query": "revision", "mode": "dense", "top_k": 100, "filter": {"doc_ids": [entry["id"]]}}
        hits = client.post("/v1/search", json=body).json()["hits"]
        revs = {hit["metadata"]["rev"] for hit in hits}
        assert len(revs) == 1, f"{entry['id']} is searchable in revisions {sorted(revs)}"
        found[entry["id"]] = (revs.pop(), sorted(hit["chunk_index"] for hit in hits))
    return found


def assert_one_version_each(
    client: httpx.Client, counts: dict[str, int], before: dict[str, int], rev: int
) -> dict[str, int]:
    """Every document in exactly one complete version, the old one or revision ``rev``; the documents that took
    ``rev`` are a prefix of the update's order (batches are written in order); the point count adds up."""
    found = versions(client)
    for doc_id, (doc_rev, chunk_indexes) in found.items():
        assert doc_rev in {before.get(doc_id), rev}, (doc_id, doc_rev)
        assert chunk_indexes == list(range(counts[doc_id])), f"{doc_id} rev {doc_rev} is incomplete"
    assert set(before) <= set(found), "a document vanished"
    order = [record["id"] for record in revision(rev)]
    switched = [doc_id in found and found[doc_id][0] == rev for doc_id in order]
    assert switched == sorted(switched, reverse=True), f"not a prefix: {switched}"
    points = client.get("/readyz").json()["points"]
    assert points == sum(counts[doc_id] for doc_id in found)
    return {doc_id: doc_rev for doc_id, (doc_rev, _) in found.items()}


@contextlib.contextmanager
def serving(live_server: LiveServers, env: dict[str, str], name: str) -> Iterator[tuple[LiveServer, httpx.Client]]:
    """A server on ``env``'s data dir, stopped on the way out (a no-op once it was killed), or by the fixture."""
    live = live_server(env=env, name=name)
    yield live, live.client(timeout=60)
    live.stop()


def assert_killed_where_expected(state: dict[str, int], rev: int, first_batch_switched: bool | None) -> None:
    """The kill came where its step says: the first batch switched to ``rev`` or not, and never all of it."""
    if first_batch_switched is None:
        return
    switched = sum(doc_rev == rev for doc_rev in state.values())
    assert (switched > 0) == first_batch_switched and switched < len(revision(rev)), (rev, state)


def ingest_until_killed(live: LiveServer, client: httpx.Client, rev: int) -> None:
    with pytest.raises(httpx.TransportError):
        client.post("/v1/documents", json={"documents": revision(rev)})
    assert live.process.wait(timeout=30) == -signal.SIGKILL
    live.stop()


def kill_when_points_change(live: LiveServer, client: httpx.Client, rev: int) -> None:
    """SIGKILL to the server's process group as soon as the update has written its first batch."""
    baseline = client.get("/readyz").json()["points"]
    request = threading.Thread(target=lambda: _post_ignoring_death(live.url, revision(rev)))
    request.start()
    deadline = time.monotonic() + 30
    while client.get("/readyz").json()["points"] == baseline and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(live.process.pid, signal.SIGKILL)
    request.join()
    assert live.process.wait(timeout=30) == -signal.SIGKILL
    live.stop()


def _post_ignoring_death(url: str, documents: list[dict[str, Any]]) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server is killed mid-request, as intended
        httpx.post(f"{url}/v1/documents", json={"documents": documents}, timeout=60)


def test_kill_mid_update_leaves_one_version_of_each_document(
    tmp_path: Path, models_dir: Path, live_server: LiveServers, chunk_counts: Callable[[dict[str, Any]], int]
) -> None:
    data = tmp_path / "data"
    counts = {r["id"]: chunk_counts(r) for rev in range(1, len(KILLS) + 4) for r in revision(rev)}
    assert sum(counts[r["id"]] for r in revision(1)) > 3 * BATCH_CHUNKS  # several batches per update
    with serving(live_server, server_env(data, models_dir), "server-0") as (live, client):
        assert client.post("/v1/documents", json={"documents": revision(1)}).status_code == 200
        state = assert_one_version_each(client, counts, {}, 1)
        kill_when_points_change(live, client, 2)
    rev, expected = 2, None  # what the previous kill should have left; nothing known after the polled one
    for step, first_batch_switched in KILLS:
        env = server_env(data, models_dir, RAGOPS_TEST_KILL_AT_STEP=str(step))
        with serving(live_server, env, f"server-{step}") as (live, client):
            state = assert_one_version_each(client, counts, state, rev)  # after the previous kill
            assert_killed_where_expected(state, rev, expected)
            rev, expected = rev + 1, first_batch_switched
            ingest_until_killed(live, client, rev)
    with serving(live_server, server_env(data, models_dir), "server-last") as (live, client):
        state = assert_one_version_each(client, counts, state, rev)
        assert_killed_where_expected(state, rev, expected)
        assert client.post("/v1/documents", json={"documents": revision(rev + 1)}).status_code == 200
        final = assert_one_version_each(client, counts, state, rev + 1)
        assert {doc_rev for doc_id, doc_rev in final.items() if not doc_id.startswith("new-")} == {rev + 1}
    (journal_path,) = (data / "index").glob("*.journal.sqlite")
    journal = IntentJournal(journal_path)
    assert journal.pending() == []  # every update finished or settled
    journal.close()


# --- disk space and read-only data dirs -------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, or a skip where this process may not mount one."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill_to(directory: Path, free_mb: int) -> Path:
    """A filler file that leaves about ``free_mb`` MiB free on ``directory``'s filesystem."""
    filler = directory / "filler"
    free = DiskGuard(directory, 0).free_bytes() + (filler.stat().st_size if filler.exists() else 0)
    with filler.open("wb") as handle:
        handle.truncate(0)
        remaining = max(free - free_mb * MB, 0)
        while remaining > 0:
            remaining -= handle.write(b"\0" * min(remaining, MB))
    return filler


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port()), "--log-level", "warning"]
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    for text in expected:
        assert text in output, output


def test_nearly_full_disk_refuses_writes_with_503_and_keeps_serving(
    small_fs: Path, models_dir: Path, live_server: LiveServers
) -> None:
    data = small_fs / "data"
    env = server_env(data, models_dir, RAGOPS_MIN_FREE_DISK_MB="24")
    live = live_server(env=env)
    with live.client(timeout=60) as client:
        assert client.post("/v1/documents", json={"documents": revision(1)[:4]}).status_code == 200
        listed = client.get("/v1/documents").json()
        filler = fill_to(small_fs, 16)
        refused = client.post("/v1/documents", json={"documents": revision(2)[:4]})
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert "refusing to index documents" in message and "RAGOPS_MIN_FREE_DISK_MB=24" in message
        assert client.get("/v1/documents").json() == listed  # nothing changed
        search = client.post("/v1/search", json={"query": "oxygen"})
        assert search.status_code == 200 and search.json()["hits"]
        # A delete frees space and is never refused: refusing the delete half of an update would leave both
        # versions searchable.
        gone = listed["documents"][0]["id"]
        assert client.delete(f"/v1/documents/{gone}").status_code == 200
        listed = {**listed, "documents": [d for d in listed["documents"] if d["id"] != gone]}
        assert client.get("/v1/documents").json() == listed
        filler.unlink()  # space again: writes work without a restart
        assert client.post("/v1/documents", json={"documents": revision(2)[:4]}).status_code == 200
        fill_to(small_fs, 16)
    assert live.process.poll() is None  # it never died (SIGBUS would have killed it)
    live.stop()
    assert_one_line_refusal(run_serve(env), "refusing to start", "MB free", "RAGOPS_MIN_FREE_DISK_MB=24")


def test_read_only_data_dir_refuses_to_start_in_one_line(
    small_fs: Path, make_services: Callable[..., Services], models_dir: Path
) -> None:
    data = small_fs / "data"
    services = make_services(data_dir=data, min_free_disk_mb=0)
    services.ingestor.ingest_documents([Document("a", (Section("Owls hunt at night."),))], Scope("docs", "t"))
    services.close()
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {remount.stderr.decode().strip()}")
    assert_one_line_refusal(run_serve(server_env(data, models_dir)), "Read-only file system", str(data))


def test_margin_larger_than_the_disk_refuses_start_and_ingest(
    make_services: Callable[..., Services], make_settings: Callable[..., Settings], embedder: Embedder
) -> None:
    """Without a small filesystem: a margin larger than any disk."""
    huge = 10**9
    with pytest.raises(StorageFullError, match=r"refusing to start: .* MB free .*RAGOPS_MIN_FREE_DISK_MB=") as caught:
        build_services(make_settings(min_free_disk_mb=huge), embedder=embedder)
    assert "\n" not in str(caught.value)
    services = make_services()
    guarded = Ingestor(
        services.index,
        services.embedder,
        Bm25Encoder(),
        Chunker(services.embedder.count_tokens),
        disk=DiskGuard(services.settings.data_dir, huge),
    )
    with pytest.raises(StorageFullError, match="refusing to index documents"):
        guarded.ingest_documents([Document("a", (Section("Owls hunt at night."),))], Scope("docs", "t"))
    assert services.index.count() == 0 and services.embedder.stats.computed == 0  # refused before any work


def test_corrupt_index_is_one_line_and_the_advice_works(
    make_services: Callable[..., Services], models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    scope = Scope("docs", "default")
    services = make_services(data_dir=data)
    services.ingestor.ingest_documents([Document("a", (Section("Owls hunt at night."),))], scope)
    snapshot = services.index.snapshot(tmp_path / "good.tar.gz")  # type: ignore[attr-defined]
    index_dir = next(p for p in (data / "index").iterdir() if p.is_dir())
    services.close()
    (index_dir / "edge_config.json").write_text("{not json")
    with pytest.raises(IndexUnavailableError) as caught:
        make_services(data_dir=data)
    message = str(caught.value)
    assert str(index_dir) in message and "ragops snapshot restore FILE" in message and "\n" not in message
    env = server_env(data, models_dir)
    assert_one_line_refusal(run_serve(env), "cannot open the index", "ragops snapshot restore FILE")
    index_dir.rename(index_dir.with_name("corrupt-aside"))  # what the message says to do
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    assert cli_main(["--data-dir", str(data), "snapshot", "restore", str(snapshot)]) == 0
    restored = make_services(data_dir=data)
    assert restored.index.document_hashes(scope).keys() == {"a"}


def test_a_data_dir_of_the_previous_release_opens(make_services: Callable[..., Services], tmp_path: Path) -> None:
    """No journal file (written before there was one): nothing to replay; the file appears on first use."""
    data, scope = tmp_path / "data", Scope("docs", "default")
    services = make_services(data_dir=data)
    services.ingestor.ingest_documents([Document("a", (Section("Owls hunt at night."),))], scope)
    services.close()
    for journal in (data / "index").glob("*.journal.sqlite*"):
        journal.unlink()
    reopened = make_services(data_dir=data)
    assert reopened.index.document_hashes(scope).keys() == {"a"}
    assert reopened.ingestor.recover() == 0 and list((data / "index").glob("*.journal.sqlite"))
