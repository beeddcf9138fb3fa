"""The parts the composition root (``app.container``) wires that need only the settings: the index, the
embedder, the searcher, the generators, the guards and groundedness, tracers, the judge, the models' hashes.
The CLI and the eval runner build some of them alone (an ingest needs no generator)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import Settings, flat_settings
from app.startup import start_step
from evals.ragas_metrics import JudgeConfig
from retrieval.embedding import Embedder, build_embedder, model_fingerprint, onnx_export_path, resolve_model_dir
from retrieval.embedding_cache import (
    CachedEmbedder,
    EmbeddingStore,
    MemoryFront,
    SeededEmbeddingStore,
    SqliteEmbeddingStore,
)
from retrieval.index import FusionParams, VectorIndex
from retrieval.offline import apply_offline_environment
from retrieval.rerank import RerankWeights, SentenceReranker
from retrieval.search import Searcher
from retrieval.sparse import SparseEncoder
from retrieval.storage import DiskGuard, ensure_writable
from safety.groundedness import GroundednessBackend
from safety.guards import Guards
from serving.answering.extractive import ExtractiveGenerator
from serving.answering.llamacpp.supervisor import LlamaCppGenerator, WorkerConfig, WorkerSupervisor
from serving.answering.openai_compat import OpenAICompatibleGenerator
from serving.contracts.generation import Generation, GenerationRequest, Generator, GeneratorError, StreamDelta
from serving.loop.judge_sampler import Judgement
from serving.observe.metrics import ServiceMetrics
from serving.observe.tracing import LangSmithTracer, Tracer

if TYPE_CHECKING:
    from retrieval.ingest import Ingestor
    from serving.answering.answer_cache import AnswerCache
    from serving.answering.conversations import ConversationStore
    from serving.governance.audit import AuditLog
    from serving.infra.file_hashes import FileHashes
    from serving.infra.state_store import StateStore
    from serving.loop.canary_control import CanaryPolicy
    from serving.loop.lineage import ModelHashes
    from serving.rights.erasure import Eraser
    from serving.rights.retention import Actor, Retention, RetentionTask

logger = logging.getLogger("ragops")
answer_log = logging.getLogger("ragops.answers")


class UnavailableGenerator:
    """Stands in for a backend that could not be built, so answers fall back and say why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def generate(self, request: GenerationRequest) -> Generation:
        raise GeneratorError("error", self.reason)

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        raise GeneratorError("error", self.reason)


def build_tracers(settings: Settings) -> list[Tracer]:
    """The configured trace exporters: LangSmith with a key or an endpoint, OpenTelemetry with an OTLP endpoint."""
    tracers: list[Tracer] = []
    if settings.traces.langsmith_api_key or settings.traces.langsmith_endpoint:
        endpoint = settings.traces.langsmith_endpoint or "https://api.smith.langchain.com"
        tracers.append(
            LangSmithTracer(
                endpoint,
                settings.traces.langsmith_api_key,
                settings.traces.langsmith_project,
                settings.traces.trace_redact,
            )
        )
    if settings.traces.otlp_endpoint:
        from app.version import installed_version
        from serving.observe.otel import OtelTracer  # the OpenTelemetry SDK loads only when it is used

        tracers.append(
            OtelTracer(
                settings.traces.otlp_endpoint,
                settings.traces.otel_service_name,
                installed_version(),
                settings.traces.trace_redact,
            )
        )
    return tracers


def model_hashes(settings: Settings, embedder: Embedder) -> ModelHashes:
    """What the settings' models are, by content: the embedder's id (its weights' fingerprint) and ONNX export,
    the GGUF's sha256 for llama.cpp, the served model's name for vLLM (its weights are the server's)."""
    from retrieval.embedding import OnnxEmbedder
    from serving.infra.file_hashes import FileHashes
    from serving.loop.lineage import ModelHashes

    hashes = FileHashes(settings.cache_dir / "file-hashes.sqlite")
    try:
        files = [embedder.onnx_path] if isinstance(embedder, OnnxEmbedder) else []
        models = ModelHashes(
            embedder=embedder.model_id, embedder_files={p.name: hashes.sha256(p) for p in files},
            generator=settings.generator,
        )  # fmt: skip
        if settings.generator == "vllm":
            return models.model_copy(update={"generator_model": settings.vllm.model})
        if settings.generator == "llamacpp":
            return models.model_copy(update=_gguf_lineage(settings, hashes))
        return models
    finally:
        hashes.close()


def _gguf_lineage(settings: Settings, hashes: FileHashes) -> dict[str, str | None]:
    """The GGUF's name and sha256; a model file that is missing is recorded as such (its answers fall back and
    say why), never a failed run."""
    try:
        gguf = llamacpp_model_path(settings)
        return {"generator_model": gguf.name, "generator_sha256": hashes.sha256(gguf)}
    except OSError as exc:
        return {"generator_model": f"unavailable: {exc}"[:200], "generator_sha256": None}


def build_generator(settings: Settings, embedder: CachedEmbedder, metrics: ServiceMetrics) -> Generator:
    if settings.generator == "extractive":
        return ExtractiveGenerator(embedder, screen=sentence_screen(settings))
    if settings.generator == "vllm":
        if not settings.vllm.base_url:
            return UnavailableGenerator("vllm", "RAGOPS_VLLM_BASE_URL is not set")
        return OpenAICompatibleGenerator(
            settings.vllm.base_url,
            settings.vllm.model,
            settings.vllm.api_key,
            timeout_s=settings.answering.generation_timeout_s,
            max_retries=settings.vllm.max_retries,
        )
    return build_llamacpp(settings, metrics)


def llamacpp_model_path(settings: Settings) -> Path:
    """The GGUF the llamacpp generator loads: the setting's, or the bundled model's Q8_0 (made on first use)."""
    from serving.answering.llamacpp.model_file import default_model_path

    return settings.llamacpp.model_path or default_model_path(settings.model_cache_dir)


def llamacpp_worker_config(settings: Settings) -> WorkerConfig:
    """The llama.cpp worker's command line, from the settings (the server's generator and ``ragops doctor``)."""
    llamacpp = settings.llamacpp
    return WorkerConfig(
        llamacpp_model_path(settings), llamacpp.threads, llamacpp.context,
        settings.answering.generation_timeout_s, prefix_cache=llamacpp.prefix_cache, flash_attn=llamacpp.flash_attn,
    )  # fmt: skip


def build_llamacpp(settings: Settings, metrics: ServiceMetrics) -> Generator:
    """llama.cpp in a supervised worker process (a native crash ends the worker, not the API), its first start
    waited for; a worker that cannot start leaves answers to the fallback, which says why."""
    try:
        config = llamacpp_worker_config(settings)
    except OSError as exc:
        logger.warning("llama.cpp generator unavailable, answers will fall back: %s", exc)
        return UnavailableGenerator("llamacpp", f"llama.cpp unavailable: {exc}")
    supervisor = WorkerSupervisor(config, on_exit=lambda cause: metrics.generator_restarts.labels(cause).inc())
    status = supervisor.start()
    if not status.up:
        logger.warning("llama.cpp worker %s: answers fall back until it is up", status.last_exit)
    return LlamaCppGenerator(supervisor)


def canary_policy(settings: Settings) -> CanaryPolicy:
    """How the canary analysis decides, from the settings (the server's monitor and ``ragops canary status``)."""
    from serving.loop.canary import Quorum, Tolerance
    from serving.loop.canary_control import CanaryPolicy

    s = settings
    tolerance = Tolerance(s.canary.tolerance, s.canary.latency_tolerance)
    return CanaryPolicy(
        tolerance=tolerance, alpha=s.canary.alpha, min_answers=s.canary.min_answers, autopromote=s.canary.autopromote,
        quorum=Quorum(min_users=s.canary.min_users, min_tenants=s.canary.min_tenants),
        groundedness_threshold=s.safety.groundedness_threshold, check_every=s.canary.check_every,
    )  # fmt: skip


def judge_config(settings: Settings) -> JudgeConfig | None:
    """The judge LLM the settings name, if any."""
    if not settings.judge.base_url:
        return None
    return JudgeConfig(
        settings.judge.base_url,
        settings.judge.model,
        settings.judge.api_key or "not-needed",
        settings.judge.timeout_s,
        settings.judge.max_tokens,
    )


def faithfulness_judgement(config: JudgeConfig, embedder: Embedder) -> Judgement:
    """ragas faithfulness through the judge, as the sampled judge calls it: (question, answer) -> score."""
    from evals.metrics import Sample
    from evals.ragas_metrics import judge_metrics

    faithfulness = judge_metrics(config, embedder)["faithfulness"]
    return lambda question, answer: faithfulness(Sample(id="live", question=question), answer)


# Settings that change an answer besides the prompt, the generator and the corpus: part of the eval cache key, so
# a run with other retrieval, context, abstention or guard settings never reads another's answers.


def instruction_flagger(settings: Settings) -> Callable[[str], str | None] | None:
    if not settings.safety.guards:
        return None
    from safety.guards import POLICIES_DIR, load_injection_settings
    from safety.injection import PatternDetector

    # The same patterns (and normalisation) as the query-time screen: a chunk flagged here is dropped there.
    policies = settings.safety.policies_dir or POLICIES_DIR
    return PatternDetector(load_injection_settings(policies).passage_patterns).first_match


def sentence_screen(settings: Settings) -> Callable[[str], set[int]] | None:
    """The places of a passage's flagged sentences, which the extractive generator never quotes (the same
    patterns as the passage screen; None with guards off)."""
    if not settings.safety.guards:
        return None
    from safety.guards import POLICIES_DIR, load_injection_settings
    from safety.injection import PatternDetector

    patterns = load_injection_settings(settings.safety.policies_dir or POLICIES_DIR).passage_patterns
    return PatternDetector(patterns).flagged_indices


def build_groundedness(settings: Settings, embedder: CachedEmbedder) -> GroundednessBackend:
    """The trained detector in ``groundedness_model`` when set (a ``GroundednessModelError`` when it cannot
    load), else the offline scorer."""
    if settings.safety.groundedness_model is not None:
        from safety.groundedness_model import ModelGroundedness

        return ModelGroundedness(settings.safety.groundedness_model, settings.safety.groundedness_threshold)
    from safety.groundedness import GroundednessScorer

    # Stored as question vectors: the answer's sentences are personal data (pruned after query_vector_retention_days
    # like the questions); a passage sentence the reranker did not store first is recomputed after that.
    return GroundednessScorer(embedder.embed_questions, settings.safety.groundedness_threshold)


INPUT_VERDICTS_KEPT = 4096  # the input guard's verdicts on recent questions: a repeated one is not checked again


def build_guards(settings: Settings, embedder: CachedEmbedder) -> Guards | None:
    if not settings.safety.guards:
        return None
    from safety.guards import POLICIES_DIR, GuardContext, build_guard, load_context_action, load_injection_settings
    from safety.injection import InjectionDetector, PatternDetector, load_attacks

    policies = settings.safety.policies_dir or POLICIES_DIR
    injection = load_injection_settings(policies)
    attacks = injection.applicable(load_attacks(policies / "attacks.jsonl"))
    detector = InjectionDetector(
        patterns=injection.patterns, attacks=attacks, embed=embedder.embed, embed_query=embedder.embed_query,
        threshold=injection.similarity_threshold, max_length_ratio=injection.max_length_ratio,
        cache_dir=settings.model_cache_dir, similarity_cues=injection.similarity_cues,
    )  # fmt: skip
    detector.warm()  # not on the first question
    context = GuardContext(detector, build_groundedness(settings, embedder))
    return Guards(
        input=build_guard("input", policies / "input.yaml", context, remember=INPUT_VERDICTS_KEPT),
        output=build_guard("output", policies / "output.yaml", context),
        context=PatternDetector(injection.passage_patterns),
        context_action=load_context_action(policies),
    )


def _index_dir(settings: Settings, model_id: str) -> Path:
    # One index per embedding model: vectors of another model are never searched with this one's queries.
    return settings.index_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


def _server_collection(settings: Settings, model_id: str) -> str:
    return f"{settings.qdrant.collection}-{re.sub(r'[^A-Za-z0-9]+', '-', model_id)}"[:255]


def journal_path(settings: Settings, model_id: str) -> Path:
    # Beside the index, not inside it: a snapshot holds the index alone, and a restore replaces its directory.
    embedded = settings.qdrant.url is None
    name = _index_dir(settings, model_id).name if embedded else _server_collection(settings, model_id)
    return settings.index_dir / f"{name}.journal.sqlite"


def check_storage(settings: Settings) -> DiskGuard:
    """The data dir can be written and has its free-space margin, or one line says why not (before anything
    opens: the embedded index dies of SIGBUS on a full disk, and a read-only one fails deep inside SQLite)."""
    for directory in (settings.data_dir, settings.index_dir, settings.cache_dir):
        ensure_writable(directory)
    disk = DiskGuard(settings.data_dir, settings.min_free_disk_mb)
    disk.check(action="start")
    return disk


def build_index(settings: Settings, model_id: str, dimension: int, disk: DiskGuard | None = None) -> VectorIndex:
    with start_step(f"opening the index ({settings.qdrant.url or 'embedded Qdrant'})"):
        return _open_index(settings, model_id, dimension, disk)


def _open_index(settings: Settings, model_id: str, dimension: int, disk: DiskGuard | None) -> VectorIndex:
    if settings.qdrant.url is None:
        from retrieval.qdrant_edge_index import QdrantEdgeIndex

        return QdrantEdgeIndex(_index_dir(settings, model_id), dimension, disk)
    from qdrant_client import QdrantClient

    from retrieval.qdrant_server_index import QdrantServerIndex

    url = settings.qdrant.url
    if url.startswith(("http://", "https://")):
        client = QdrantClient(url=url, api_key=settings.qdrant.api_key)
    else:  # ':memory:' or a directory: qdrant-client's local mode
        client = QdrantClient(location=url) if url == ":memory:" else QdrantClient(path=url)
    return QdrantServerIndex(client, _server_collection(settings, model_id), dimension)


def build_searcher(settings: Settings, index: VectorIndex, embedder: CachedEmbedder, sparse: SparseEncoder) -> Searcher:
    """Hybrid's fusion and, when switched on, its sentence rerank, as the settings say."""
    fusion = FusionParams(settings.retrieval.hybrid_dense_weight, settings.retrieval.prefetch_limit)
    reranker = (
        SentenceReranker(
            embedder, sparse, RerankWeights(*settings.retrieval.rerank_weights), settings.retrieval.rerank_depth
        )
        if settings.retrieval.rerank
        else None
    )
    return Searcher(index, embedder, sparse, fusion, reranker)


def build_cached_embedder(settings: Settings, embedder: Embedder | None = None) -> CachedEmbedder:
    apply_offline_environment()
    if embedder is None:
        name = settings.embedding.embedding_model
        with start_step(embedder_load_step(settings)):
            embedder = build_embedder(
                settings.embedding.embedder, name, settings.model_cache_dir, settings.embedding.embedding_batch_size
            )
    store: EmbeddingStore = SqliteEmbeddingStore(embedding_cache_path(settings))
    if settings.embedding.embedding_seed is not None:
        store = SeededEmbeddingStore(store, SqliteEmbeddingStore(settings.embedding.embedding_seed))
    return CachedEmbedder(embedder, MemoryFront(store), lru_size=settings.embedding.query_cache_size)


def embedder_load_step(settings: Settings) -> str:
    """What loading the embedder will do: on a first start, the int8 ONNX export (``OnnxEmbedder``)."""
    name = settings.embedding.embedding_model
    if settings.embedding.embedder == "onnx":
        fingerprint = model_fingerprint(resolve_model_dir(name))  # hashes the weights: well under a second
        if not onnx_export_path(name, fingerprint, settings.model_cache_dir).is_file():
            return f"exporting the embedding model {name} to int8 ONNX (first start only, about 15 s)"
    return f"loading the embedding model {name}"


def embedding_cache_path(settings: Settings) -> Path:
    return settings.cache_dir / "embeddings.sqlite"


def build_retention(
    settings: Settings,
    state: StateStore,
    query_vectors: EmbeddingStore | None,
    actor: Actor,
    forget_queries: Callable[[], None] | None = None,
    conversations: ConversationStore | None = None,
) -> Retention:
    """Every store's retention (``serving.rights.retention``) with the periods these settings set: the server's daily
    run (``forget_queries``: its embedder's, emptying the in-memory question vectors) and ``ragops retention
    apply``. Each run is recorded in the audit trail unless the ``audit`` setting is off."""
    from serving.rights.retention import Retention, periods_from

    periods = periods_from({name: value for name, _, value in flat_settings(settings)})
    return Retention(state, query_vectors, periods, actor, forget_queries, record=settings.audit,
                     conversations=conversations)  # fmt: skip


def start_retention(
    settings: Settings, state: StateStore, embedder: CachedEmbedder, conversations: ConversationStore | None
) -> RetentionTask:
    """The server's retention: applied now, then daily, on a thread of its own (each replica runs it)."""
    from serving.rights.retention import SERVER, RetentionTask

    retention = build_retention(settings, state, embedder.store, SERVER, embedder.forget_queries, conversations)
    return RetentionTask(retention.apply)


def finish_erasures(eraser: Eraser) -> None:
    """Finish the erasures a crash interrupted, before the server answers (a failure is logged: the next start,
    or the same request again, finishes them)."""
    from serving.rights.erasure import ErasureIncompleteError

    try:
        for report in eraser.resume_unfinished():
            logger.info("interrupted erasure finished", extra={"erasure_id": report.id, "kind": report.kind})
    except ErasureIncompleteError as exc:
        logger.error("an interrupted erasure is still unfinished: %s", exc)


def build_eraser(
    settings: Settings,
    state: StateStore,
    audit: AuditLog | None,
    ingestor: Ingestor,
    embedder: CachedEmbedder,
    cache: AnswerCache,
    conversations: ConversationStore | None,
) -> Eraser:
    """Erasure over every store these parts keep; with the audit trail off, no tombstone (nothing to erase there)."""
    from serving.governance.subjects import SubjectKeys
    from serving.rights.erasure import Eraser, ErasureStores

    stores = ErasureStores(
        state=state, subjects=audit.subjects if audit is not None else SubjectKeys(state), ingestor=ingestor,
        embeddings=embedder.store, forget_queries=embedder.forget_queries, answer_cache=cache,
        suites_dir=settings.evals_dir, audit=audit is not None, conversations=conversations,
    )  # fmt: skip
    return Eraser(stores)


def build_answer_cache(settings: Settings, metrics: ServiceMetrics) -> AnswerCache:
    """In process, or in Redis shared by replicas (exact matches; the semantic layer stays in process)."""
    from serving.answering.answer_cache import InMemoryAnswerCache, RedisAnswerCache

    local = InMemoryAnswerCache(settings.answer_cache.size, settings.answering.semantic_cache_threshold)
    if settings.answer_cache.backend == "memory" or settings.redis_url is None:
        return local
    semantic = local if settings.answering.semantic_cache_threshold is not None else None
    return RedisAnswerCache(settings.redis_url, settings.answer_cache.ttl_s, metrics, semantic)
