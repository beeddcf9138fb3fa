"""bench/peer_poc.py, the LangChain POC the benchmarks compare ragops with, served from its own venv (``make peer``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"

DOCUMENTS = [
    {
        "id": "volcano",
        "title": "Volcanoes",
        "text": "A volcano is a rupture in the crust of a planet. Magma rises through the vent and erupts as lava. "
        "Mount Etna in Sicily is one of the most active volcanoes in Europe.",
    },
    {
        "id": "bread",
        "text": "Bread is made from flour, water and yeast. The dough is kneaded, left to rise and then baked. "
        "Sourdough uses a starter of wild yeast instead of baker's yeast.",
    },
    {
        "id": "chess",
        "text": "Chess is a board game for two players. Each player starts with sixteen pieces. "
        "The game is won by checkmating the opponent's king.",
    },
]


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not PEER_PYTHON.is_file():
        pytest.skip(f"{PEER_PYTHON.relative_to(ROOT)} missing: `make peer` builds the POC's venv")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(PEER_PYTHON), str(ROOT / "bench" / "peer_poc.py"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("peer") / "peer.log"
    server = ServerProcess(argv, env, log, f"{url}/healthz", timeout=90)
    try:
        yield url
    finally:
        server.stop()


def test_peer_poc_ingests_searches_and_answers(peer: str) -> None:
    with httpx.Client(base_url=peer, timeout=60) as http:
        ingested = http.post("/ingest", json={"documents": DOCUMENTS})
        assert ingested.status_code == 200, ingested.text
        assert ingested.json()["chunks"] == 3  # each document is shorter than one 1000-character chunk
        assert ingested.json()["seconds"] > 0

        results = http.post("/search", json={"query": "Which volcano in Sicily is active?"}).json()["results"]
        assert [r["id"] for r in results][:1] == ["volcano"]
        assert len(results) == 3 and all(isinstance(r["score"], float) for r in results)
        assert len(http.post("/search", json={"query": "yeast", "top_k": 1}).json()["results"]) == 1

        chat = http.post("/chat", json={"question": "What is sourdough made with?"}).json()
        assert chat["answer"] == "Sourdough uses a starter of wild yeast instead of baker's yeast."
        assert chat["sources"][0] == "bread" and set(chat["sources"]) == {"volcano", "bread", "chess"}

        assert http.post("/chat", json={}).status_code == 422
        assert http.post("/ingest", json={"documents": [{"id": "x"}]}).status_code == 422
        assert http.post("/search", json={"top_k": 2}).status_code == 422
