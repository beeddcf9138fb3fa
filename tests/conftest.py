"""Shared fixtures. Everything is real: the bundled model, Qdrant's engine, HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.container import Services, build_services
from app.settings import Settings, load_settings
from retrieval.documents import Document, Section
from retrieval.embedding import Embedder, OnnxEmbedder
from retrieval.offline import apply_offline_environment
from serving.answering.llamacpp.model_file import default_model_path
from serving.contracts.answer import Answer, PromptInfo
from serving.infra.state_store import StateStore
from tests.backing_services import PostgresServer, RedisServer, postgres_bin_dir, redis_binary
from tests.live_server import LiveServers
from tests.stub_openai import Mode, StubOpenAI

ROOT = Path(__file__).resolve().parents[1]
# The Disfl-QA passages as the source tokenised them ("Earth ' s"): what the tests' thresholds and the benchmarks
# were measured on. data/sample ships them detokenised and titled (bench/build_sample.py).
SAMPLE_CORPUS = ROOT / "evals" / "corpora" / "disfl_qa_passages.jsonl"
SAMPLE_QUESTIONS = ROOT / "evals" / "datasets" / "disfl_qa_questions.jsonl"
SUBSET_SIZE = 60


@pytest.fixture(scope="session", autouse=True)
def _offline() -> None:
    apply_offline_environment()
    for key in [k for k in os.environ if k.startswith("RAGOPS_") and not k.startswith("RAGOPS_TEST_")]:
        del os.environ[key]  # tests set what they need explicitly (RAGOPS_TEST_* configure the test run itself)


@pytest.fixture(scope="session", autouse=True)
def _guardrails_imported_first() -> None:
    """CPython 3.11.7 can leave its AST recursion counter wrong after a failure in another thread (gh-106905,
    fixed in 3.11.8); importing guardrails late in a long session then fails in lark, compiling the grammar of
    jsonschema's URI format check. Servers import it first thing at startup; the test session does too."""
    from safety.guards import disable_guardrails_metrics

    disable_guardrails_metrics()
    import safety.validators  # noqa: F401


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export for the whole run (ragops keeps it under RAGOPS_MODELS_DIR)."""
    shared = os.environ.get("RAGOPS_TEST_MODELS_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def gguf(models_dir: Path) -> Path:
    """The GGUF the llamacpp generator loads by default (the bundled model's Q8_0, made once in the models dir)."""
    return default_model_path(models_dir)


@pytest.fixture(scope="session")
def embedder(models_dir: Path) -> Embedder:
    return OnnxEmbedder("all-MiniLM-L6-v2", models_dir)


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        return load_settings(models_dir=models_dir, **overrides)

    return make


@pytest.fixture(params=["edge", "qdrant-local"])
def index_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_services(
    make_settings: Callable[..., Settings], embedder: Embedder, tmp_path: Path
) -> Iterator[Callable[..., Services]]:
    opened: list[Services] = []

    def make(backend: str = "edge", **overrides: Any) -> Services:
        if backend == "qdrant-local":
            overrides.setdefault("qdrant_url", str(tmp_path / "qdrant-local"))
        services = build_services(make_settings(**overrides), embedder=embedder)
        opened.append(services)
        return services

    yield make
    for services in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            services.close()


@pytest.fixture
def services(make_services: Callable[..., Services], index_backend: str) -> Services:
    return make_services(index_backend)


def make_answer(text: str = "a", **fields: Any) -> Answer:
    """An answer as the pipeline would return it, for tests of what reads answers (metrics, tracing, evals)."""
    fields.setdefault("outcome", "answered")
    fields.setdefault("prompt", PromptInfo(name="rag_answer", version="v1", hash="0" * 64))
    return Answer(answer=text, **fields)


def load_sample_records(limit: int = SUBSET_SIZE) -> list[dict[str, Any]]:
    with SAMPLE_CORPUS.open() as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle, strict=False)]


def sample_documents(limit: int = SUBSET_SIZE) -> list[Document]:
    return [Document(r["id"], (Section(r["text"]),), source="sample") for r in load_sample_records(limit)]


def sample_questions(passage_ids: set[str], limit: int = 20) -> list[dict[str, Any]]:
    found = []
    with SAMPLE_QUESTIONS.open() as handle:
        for line in handle:
            record = json.loads(line)
            if record["passage_id"] in passage_ids:
                found.append(record)
                if len(found) == limit:
                    break
    return found


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the session; tests that share it flush it first (``redis_url``)."""
    if redis_binary() is None:
        pytest.skip("redis-server not installed (make test installs it as root)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real Postgres cluster for the session; each test gets a fresh database (``postgres_url``)."""
    if postgres_bin_dir() is None:
        pytest.skip("postgresql not installed (make test installs it as root)")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Run a test on both state stores: None is the embedded SQLite under the data dir."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(database_url: str | None, tmp_path: Path) -> Iterator[StateStore]:
    """A state store on SQLite (in the test's tmp dir) and on Postgres, one test each."""
    opened = StateStore.open(database_url, tmp_path / "state.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def live_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServers]:
    """Starts ``ragops serve`` processes for one test: ``live_server(settings, env, ...)`` (see ``LiveServers``);
    they stop when the test ends."""
    servers = LiveServers(tmp_path_factory.mktemp, models_dir)
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def module_live_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServers]:
    """``live_server`` for servers that a module's tests share; they stop after its last test."""
    servers = LiveServers(tmp_path_factory.mktemp, models_dir)
    yield servers
    servers.stop_all()


@pytest.fixture
def stub_openai() -> Iterator[Callable[..., StubOpenAI]]:
    """Starts OpenAI-compatible backends for one test: ``stub_openai(mode, ...)`` (see ``StubOpenAI``)."""
    started: list[StubOpenAI] = []

    def start(mode: Mode, **options: Any) -> StubOpenAI:
        started.append(StubOpenAI(mode, **options))
        return started[-1]

    yield start
    for backend in started:
        backend.close()
