"""The composition root: the one place that builds the parts from settings and wires them together."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import Settings
from evals.ragas_metrics import JudgeConfig
from evals.runner import EvalParts
from prompts.registry import PromptRef, PromptRegistry, PromptSelector
from retrieval.chunking import Chunker
from retrieval.embedding import Embedder, build_embedder
from retrieval.embedding_cache import CachedEmbedder, EmbeddingStore, SqliteEmbeddingStore
from retrieval.index import FusionParams, VectorIndex
from retrieval.ingest import Ingestor
from retrieval.journal import IntentJournal
from retrieval.offline import apply_offline_environment
from retrieval.rerank import RerankWeights, SentenceReranker
from retrieval.search import Searcher
from retrieval.sparse import Bm25Encoder, SparseEncoder
from retrieval.storage import DiskGuard, ensure_writable
from retrieval.validation import DocumentLimits
from safety.groundedness import GroundednessBackend
from safety.guards import Guards
from serving.answering.answer_cache import AnswerCache, InMemoryAnswerCache, RedisAnswerCache
from serving.answering.extractive import ExtractiveGenerator
from serving.answering.fallback import FallbackChain
from serving.answering.index_digest import IndexDigest
from serving.answering.llamacpp.supervisor import LlamaCppGenerator, WorkerConfig, WorkerSupervisor
from serving.answering.openai_compat import OpenAICompatibleGenerator
from serving.answering.pipeline import RagPipeline
from serving.answering.stages import (
    Abstain,
    CachedAnswers,
    Cite,
    ComposePrompt,
    Generate,
    InputGuard,
    OutputGuard,
    Retrieve,
    ScreenPassages,
    Stages,
)
from serving.contracts.answer import Answer, AnswerRequest
from serving.contracts.generation import Generation, GenerationRequest, Generator, GeneratorError, StreamDelta
from serving.governance.admission import Admission, BudgetCheck, KeyLookup, Limiter
from serving.governance.usage import AnswerPricing
from serving.infra.state_store import StateStore
from serving.loop.judge_sampler import Judgement, SampledJudge
from serving.observe.metrics import AlertThresholds, ServiceMetrics
from serving.observe.tracing import FanOutTracer, LangSmithTracer, NoTracer, Tracer

if TYPE_CHECKING:
    from serving.governance.audit import AuditLog
    from serving.infra.file_hashes import FileHashes
    from serving.loop.answer_log import AnswerLog
    from serving.loop.canary_control import CanaryBook, CanaryMonitor, CanaryPolicy
    from serving.loop.drift import DriftMonitor
    from serving.loop.feedback import FeedbackStore, RetentionPruner
    from serving.loop.lineage import Lineage, ModelHashes
    from serving.loop.live_prompts import LivePrompts

logger = logging.getLogger("ragops")
answer_log = logging.getLogger("ragops.answers")


class Services:
    """The wired parts. The answering pipeline (and its model) is built on first use: ingest and search
    commands never load a generator."""

    def __init__(
        self,
        settings: Settings,
        embedder: CachedEmbedder,
        index: VectorIndex,
        ingestor: Ingestor,
        searcher: Searcher,
        store: EmbeddingStore,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.index = index
        self.ingestor = ingestor
        self.searcher = searcher
        self._store = store

    @cached_property
    def limits(self) -> DocumentLimits:
        """What documents and filters are held to, from the settings: one object for every route and ingest."""
        return DocumentLimits.from_settings(self.settings)

    @cached_property
    def pipeline(self) -> RagPipeline:
        return build_pipeline(self)

    @cached_property
    def generator(self) -> Generator:
        """The first generator of the chain (built with the pipeline; llama.cpp's worker process starts here)."""
        return build_generator(self.settings, self.embedder, self.metrics)

    def generator_down(self) -> str | None:
        """Why the first generator cannot answer now (answers come from the fallback), or None: it can, or it is
        not built yet."""
        generator = self.__dict__.get("generator")
        if isinstance(generator, UnavailableGenerator):
            return generator.reason
        if isinstance(generator, LlamaCppGenerator):
            status = generator.supervisor.status()
            return None if status.up else f"llama.cpp worker is restarting: it {status.last_exit or 'is starting'}"
        return None

    @cached_property
    def tracer(self) -> Tracer:
        """LangSmith, OpenTelemetry (OTLP/HTTP), both side by side, or nothing, as the settings say."""
        tracers = build_tracers(self.settings) if self.settings.tracing else []
        if not tracers:
            return NoTracer()
        return tracers[0] if len(tracers) == 1 else FanOutTracer(tracers)

    @cached_property
    def judge(self) -> SampledJudge | None:
        config = judge_config(self.settings)
        if config is None or self.settings.judge_share <= 0:
            return None
        return SampledJudge(
            lambda: faithfulness_judgement(config, self.embedder), self.settings.judge_share, self.metrics
        )

    def observe(self, request: AnswerRequest, answer: Answer) -> None:
        """Every final answer: logged, metered, traced when tracing is on, judged when sampled."""
        answer_log.info(
            "answer",
            extra={"outcome": answer.outcome, "generator": answer.generator, "prompt": answer.prompt.version,
                   "fallback": answer.fallback.reason if answer.fallback else None,
                   "ms": answer.timings_ms.get("total")},
        )  # fmt: skip
        self.metrics.observe(answer)
        if self.answer_log is not None:
            self.answer_log.record(request, answer)
        self.tracer.record(request, answer)
        if self.judge is not None:
            self.judge.record(request, answer)
        if self.drift_monitor is not None:
            self.drift_monitor.observe(answer)
        if self.canary_monitor is not None:
            self.canary_monitor.observe(answer)

    @cached_property
    def prompts(self) -> PromptSelector | LivePrompts:
        """Which prompt answers a user: the live labels and canary share of the state store (a change reaches
        every replica within ``label_refresh_s``), or with ``live_labels`` off registry.yaml's as at start."""
        return build_prompts(self)

    @cached_property
    def canaries(self) -> CanaryBook:
        """The live canary of each prompt (share, status, decision): what the selector serves, the monitor decides."""
        from serving.loop.canary_control import CanaryBook

        return CanaryBook(self.state, self.settings.canary_share)

    @cached_property
    def canary_monitor(self) -> CanaryMonitor | None:
        """The canary analysis every ``canary_check_every`` answers (in the background); None without a canary
        prompt, live labels or kept answers."""
        return build_canary_monitor(self)

    @cached_property
    def drift_monitor(self) -> DriftMonitor | None:
        """The periodic drift check (every ``drift_every`` answers, in the background); None when off or when no
        answers are kept."""
        s = self.settings
        if not s.drift_every or self.answer_log is None:
            return None
        from serving.loop.drift import DriftMonitor, DriftProfiles

        return DriftMonitor(s.drift_every, s.drift_window, s.drift_alpha, self.answer_log, DriftProfiles(self.state),
                            self.embedder.embed, self.embedder.model_id, self.metrics.observe_drift,
                            self.lineage)  # fmt: skip

    @cached_property
    def state(self) -> StateStore:
        """Keys, audit trail, usage and budgets: SQLite under the data dir, or Postgres (``database_url``)."""
        return StateStore.open(self.settings.database_url, self.settings.state_path)

    @cached_property
    def admission(self) -> Admission:
        """Authentication, roles, rate limits, quotas and budgets, in front of every route that is not public."""
        return Admission(build_keys(self), build_limiter(self), build_budgets(self))

    @cached_property
    def audit(self) -> AuditLog | None:
        """The audit trail's writer (and the usage ledger's); None with ``audit`` off."""
        return build_audit(self) if self.settings.audit else None

    @cached_property
    def answer_log(self) -> AnswerLog | None:
        """Answers kept (redacted) for feedback, drift and canary analysis; None with a retention of 0 days."""
        if not self.settings.feedback_retention_days:
            return None
        from serving.loop.answer_log import AnswerLog

        return AnswerLog(self.state, self.settings.feedback_retention_days)

    @cached_property
    def feedback(self) -> FeedbackStore | None:
        """Users' ratings of kept answers; None when answers are not kept (nothing to rate)."""
        if self.answer_log is None:
            return None
        from serving.loop.feedback import FeedbackStore

        return FeedbackStore(self.state, self.settings.alert_window)

    @cached_property
    def retention(self) -> RetentionPruner | None:
        """Prunes kept answers and their feedback past retention, at start and daily (started by the server)."""
        if self.answer_log is None:
            return None
        from serving.loop.feedback import RetentionPruner

        return RetentionPruner(self.answer_log.prune)

    @cached_property
    def lineage(self) -> Lineage:
        """What touched each prompt version: eval runs, gates, releases, label moves, canary decisions, drift."""
        from serving.loop.lineage import Lineage

        return Lineage(self.state)

    @cached_property
    def model_hashes(self) -> ModelHashes:
        """The embedder and generator these settings run, by content (file hashes cached under the cache dir), and
        the llama.cpp build when its worker runs (an eval run starts it first)."""
        models = model_hashes(self.settings, self.embedder.inner)
        generator = self.__dict__.get("generator")  # not started for this: only a running worker knows its build
        if isinstance(generator, LlamaCppGenerator) and (ready := generator.supervisor.status().ready) is not None:
            return models.model_copy(update={"generator_build": ready.build.label})
        return models

    @cached_property
    def metrics(self) -> ServiceMetrics:
        s = self.settings
        thresholds = AlertThresholds(
            s.alert_hallucination_rate, s.alert_fallback_rate, s.alert_window, s.alert_min_answers,
            s.alert_thumbs_down_rate,
        )  # fmt: skip
        return ServiceMetrics(s.groundedness_threshold, thresholds)

    def close(self) -> None:
        # Their last records are written before the store closes (the drift check reads the answer log first).
        for writer in ("canary_monitor", "drift_monitor", "retention", "audit", "answer_log", "prompts"):
            if self.__dict__.get(writer) is not None:
                self.__dict__[writer].close()
        if "state" in self.__dict__:
            self.state.close()
        if "tracer" in self.__dict__:
            self.tracer.close()
        generator = self.__dict__.get("generator")
        if isinstance(generator, LlamaCppGenerator):
            generator.supervisor.close()  # the worker process with it: none outlives the API
        judge = self.__dict__.get("judge")
        if judge is not None:
            judge.close()
        self.index.close()
        self.ingestor.close()
        self._store.close()


class UnavailableGenerator:
    """Stands in for a backend that could not be built, so answers fall back and say why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def generate(self, request: GenerationRequest) -> Generation:
        raise GeneratorError("error", self.reason)

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        raise GeneratorError("error", self.reason)


def build_keys(services: Services) -> KeyLookup:
    from serving.governance.keys import Authenticator, KeyStore

    settings = services.settings
    return Authenticator(KeyStore(services.state), settings.api_keys, settings.key_cache_s)


def build_tracers(settings: Settings) -> list[Tracer]:
    """The configured trace exporters: LangSmith with a key or an endpoint, OpenTelemetry with an OTLP endpoint."""
    tracers: list[Tracer] = []
    if settings.langsmith_api_key or settings.langsmith_endpoint:
        endpoint = settings.langsmith_endpoint or "https://api.smith.langchain.com"
        tracers.append(
            LangSmithTracer(endpoint, settings.langsmith_api_key, settings.langsmith_project, settings.trace_redact)
        )
    if settings.otlp_endpoint:
        from app.version import installed_version
        from serving.observe.otel import OtelTracer  # the OpenTelemetry SDK loads only when it is used

        tracers.append(
            OtelTracer(settings.otlp_endpoint, settings.otel_service_name, installed_version(), settings.trace_redact)
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
            return models.model_copy(update={"generator_model": settings.vllm_model})
        if settings.generator == "llamacpp":
            return models.model_copy(update=_gguf_lineage(settings, hashes))
        return models
    finally:
        hashes.close()


def _gguf_lineage(settings: Settings, hashes: FileHashes) -> dict[str, str | None]:
    """The GGUF's name and sha256; a model file that is missing is recorded as such (its answers fall back and
    say why), never a failed run."""
    from serving.answering.llamacpp.engine import bundled_model_path

    try:
        gguf = settings.llamacpp_model_path or bundled_model_path()
        return {"generator_model": gguf.name, "generator_sha256": hashes.sha256(gguf)}
    except OSError as exc:
        return {"generator_model": f"unavailable: {exc}"[:200], "generator_sha256": None}


def build_limiter(services: Services) -> Limiter:
    from serving.governance.rate_limits import RateLimits

    s = services.settings
    return RateLimits(s.redis_url, s.rate_limit_fail, s.role_limits, s.auth_failures_per_minute, services.metrics)


def build_answer_cache(services: Services) -> AnswerCache:
    """In process, or in Redis shared by replicas (exact matches; the semantic layer stays in process)."""
    s = services.settings
    local = InMemoryAnswerCache(s.answer_cache_size, s.semantic_cache_threshold)
    if s.answer_cache_backend == "memory" or s.redis_url is None:
        return local
    semantic = local if s.semantic_cache_threshold is not None else None
    return RedisAnswerCache(s.redis_url, s.answer_cache_ttl_s, services.metrics, semantic)


def build_budgets(services: Services) -> BudgetCheck:
    from serving.governance.usage import Budgets

    return Budgets(services.state, services.settings.budget_soft_ratio, services.metrics)


def build_audit(services: Services) -> AuditLog:
    from serving.governance.audit import AuditLog

    return AuditLog(services.state, services.settings.audit_content, services.metrics)


def build_generator(settings: Settings, embedder: CachedEmbedder, metrics: ServiceMetrics) -> Generator:
    if settings.generator == "extractive":
        return ExtractiveGenerator(embedder)
    if settings.generator == "vllm":
        if not settings.vllm_base_url:
            return UnavailableGenerator("vllm", "RAGOPS_VLLM_BASE_URL is not set")
        return OpenAICompatibleGenerator(
            settings.vllm_base_url,
            settings.vllm_model,
            settings.vllm_api_key,
            timeout_s=settings.generation_timeout_s,
            max_retries=settings.vllm_max_retries,
        )
    return build_llamacpp(settings, metrics)


def llamacpp_worker_config(settings: Settings) -> WorkerConfig:
    """The llama.cpp worker's command line, from the settings (the server's generator and ``ragops doctor``)."""
    from serving.answering.llamacpp.engine import bundled_model_path

    return WorkerConfig(
        settings.llamacpp_model_path or bundled_model_path(), settings.llamacpp_threads, settings.llamacpp_context,
        settings.generation_timeout_s,
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


def build_pipeline(services: Services) -> RagPipeline:
    settings = services.settings
    primary = services.generator
    generators = [primary] if primary.name == "extractive" else [primary, ExtractiveGenerator(services.embedder)]
    chain = FallbackChain(generators, settings.breaker_failures, settings.breaker_cooldown_s)
    if isinstance(primary, LlamaCppGenerator):  # a restarted worker is tried at once, not after the cool-down
        primary.supervisor.when_ready(chain.breakers[primary.name].reset)
    prompts = services.prompts
    guards = build_guards(settings, services.embedder)
    embedder = services.embedder
    stages = Stages(
        input_guard=InputGuard(guards.input if guards else None),
        cache=CachedAnswers(
            build_answer_cache(services),
            embedder,
            IndexDigest(services.index, lambda: services.ingestor.version),
            primary.name,
        ),
        retrieve=Retrieve(services.searcher),
        screen=ScreenPassages(guards),
        abstain=Abstain(embedder, settings.abstain_below),
        # The extractive generator ranks sentences itself: compressing its context first would do it twice.
        compose=ComposePrompt(embedder, 0 if primary.name == "extractive" else settings.context_sentences),
        generate=Generate(chain),
        output_guard=OutputGuard(
            guards.output if guards else None, generators[-1], enforce=settings.output_guard == "enforce"
        ),
        cite=Cite(redact_retrieved=settings.redact_retrieved),
    )
    pricing = AnswerPricing(settings.prices, services.metrics)
    return RagPipeline(stages, prompts, observer=services.observe, pricing=pricing)


def build_prompts(services: Services) -> PromptSelector | LivePrompts:
    s = services.settings
    registry = PromptRegistry(s.prompts_dir) if s.prompts_dir else PromptRegistry()
    if not s.live_labels:
        canary = registry.resolve(s.canary_prompt) if s.canary_prompt else None
        return PromptSelector(registry.resolve(s.prompt), canary, s.canary_share)
    from serving.loop.labels import StoreLabels
    from serving.loop.live_prompts import LivePrompts

    labels = StoreLabels(services.state)
    labels.adopt_declared(registry)  # what git declares and the store has not taken yet
    return LivePrompts(registry.with_labels(labels), s.prompt, s.canary_prompt, services.canaries, s.label_refresh_s,
                       services.metrics)  # fmt: skip


def build_canary_monitor(services: Services) -> CanaryMonitor | None:
    s = services.settings
    if not (s.live_labels and s.canary_prompt) or services.answer_log is None:
        return None
    from functools import partial

    from serving.loop.canary_control import CanaryLabels, CanaryMonitor, ratings_by_answer

    stable, canary = PromptRef.parse(s.prompt), PromptRef.parse(s.canary_prompt)
    labels = CanaryLabels(*(None if ref.is_version else ref.selector for ref in (stable, canary)))
    ratings = partial(ratings_by_answer, services.state)
    policy = canary_policy(s)
    return CanaryMonitor(services.canaries, services.answer_log, ratings, policy, stable.name, labels, services.metrics)


def canary_policy(settings: Settings) -> CanaryPolicy:
    """How the canary analysis decides, from the settings (the server's monitor and ``ragops canary status``)."""
    from serving.loop.canary import Tolerance
    from serving.loop.canary_control import CanaryPolicy

    s = settings
    tolerance = Tolerance(s.canary_tolerance, s.canary_latency_tolerance)
    return CanaryPolicy(tolerance, s.canary_alpha, s.canary_min_answers, s.canary_autopromote,
                        s.groundedness_threshold, s.canary_check_every)  # fmt: skip


def judge_config(settings: Settings) -> JudgeConfig | None:
    """The judge LLM the settings name, if any."""
    if not settings.judge_base_url:
        return None
    return JudgeConfig(
        settings.judge_base_url,
        settings.judge_model,
        settings.judge_api_key or "not-needed",
        settings.judge_timeout_s,
        settings.judge_max_tokens,
    )


def faithfulness_judgement(config: JudgeConfig, embedder: Embedder) -> Judgement:
    """ragas faithfulness through the judge, as the sampled judge calls it: (question, answer) -> score."""
    from evals.metrics import Sample
    from evals.ragas_metrics import judge_metrics

    faithfulness = judge_metrics(config, embedder)["faithfulness"]
    return lambda question, answer: faithfulness(Sample("live", question), answer)


# Settings that change an answer besides the prompt, the generator and the corpus: part of the eval cache key, so
# a run with other retrieval, context, abstention or guard settings never reads another's answers.
ANSWER_SETTINGS = (
    "embedding_model", "chunk_tokens", "chunk_overlap", "hybrid_dense_weight", "prefetch_limit", "rerank",
    "rerank_depth", "rerank_weights", "chat_top_k", "context_sentences", "abstain_below", "llamacpp_model_path",
    "llamacpp_context", "vllm_model", "guards", "policies_dir", "output_guard", "groundedness_threshold",
    "groundedness_model", "redact_retrieved",
)  # fmt: skip


def eval_parts(services: Services) -> EvalParts:
    """What the eval runner needs of the wired services."""
    settings = services.settings
    pipeline = services.pipeline  # first: the models' lineage names the llama.cpp build its worker loaded
    models = services.model_hashes
    # Another llama.cpp build decodes differently: its answers are never read back as this one's.
    answer_settings = settings.model_dump_json(include=set(ANSWER_SETTINGS)) + (models.generator_build or "")
    return EvalParts(
        pipeline=pipeline,
        ingestor=services.ingestor,
        index=services.index,
        embedder=services.embedder,
        tenant=settings.default_tenant,
        generator=settings.generator,
        answers_path=settings.cache_dir / "eval-answers.sqlite",
        answer_settings=answer_settings,
        judge=judge_config(settings),
        models=models,
    )


def _instruction_flagger(settings: Settings) -> Callable[[str], str | None] | None:
    if not settings.guards:
        return None
    from safety.guards import POLICIES_DIR, load_injection_settings
    from safety.injection import PatternDetector

    # The same detector (and normalisation) as the query-time screen: a chunk flagged here is dropped there.
    return PatternDetector(load_injection_settings(settings.policies_dir or POLICIES_DIR).patterns).first_match


def build_groundedness(settings: Settings, embedder: CachedEmbedder) -> GroundednessBackend:
    """The trained detector in ``groundedness_model`` when set (a ``GroundednessModelError`` when it cannot
    load), else the offline scorer."""
    if settings.groundedness_model is not None:
        from safety.groundedness_model import ModelGroundedness

        return ModelGroundedness(settings.groundedness_model, settings.groundedness_threshold)
    from safety.groundedness import GroundednessScorer

    return GroundednessScorer(embedder.embed, settings.groundedness_threshold)


def build_guards(settings: Settings, embedder: CachedEmbedder) -> Guards | None:
    if not settings.guards:
        return None
    from safety.guards import POLICIES_DIR, GuardContext, build_guard, load_context_action, load_injection_settings
    from safety.injection import InjectionDetector, load_attacks

    policies = settings.policies_dir or POLICIES_DIR
    injection = load_injection_settings(policies)
    attacks = injection.applicable(load_attacks(policies / "attacks.jsonl"))
    detector = InjectionDetector(
        injection.patterns, attacks, embedder.embed, injection.similarity_threshold, embedder.embed_query,
        settings.model_cache_dir, injection.max_length_ratio,
    )  # fmt: skip
    detector.warm()  # not on the first question
    context = GuardContext(detector, build_groundedness(settings, embedder))
    return Guards(
        input=build_guard("input", policies / "input.yaml", context),
        output=build_guard("output", policies / "output.yaml", context),
        context=detector.patterns,
        context_action=load_context_action(policies),
    )


def _index_dir(settings: Settings, model_id: str) -> Path:
    # One index per embedding model: vectors of another model are never searched with this one's queries.
    return settings.index_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


def _server_collection(settings: Settings, model_id: str) -> str:
    return f"{settings.qdrant_collection}-{re.sub(r'[^A-Za-z0-9]+', '-', model_id)}"[:255]


def _journal_path(settings: Settings, model_id: str) -> Path:
    # Beside the index, not inside it: a snapshot holds the index alone, and a restore replaces its directory.
    embedded = settings.qdrant_url is None
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
    if settings.qdrant_url is None:
        from retrieval.qdrant_edge_index import QdrantEdgeIndex

        return QdrantEdgeIndex(_index_dir(settings, model_id), dimension, disk)
    from qdrant_client import QdrantClient

    from retrieval.qdrant_server_index import QdrantServerIndex

    url = settings.qdrant_url
    if url.startswith(("http://", "https://")):
        client = QdrantClient(url=url, api_key=settings.qdrant_api_key)
    else:  # ':memory:' or a directory: qdrant-client's local mode
        client = QdrantClient(location=url) if url == ":memory:" else QdrantClient(path=url)
    return QdrantServerIndex(client, _server_collection(settings, model_id), dimension)


def build_searcher(settings: Settings, index: VectorIndex, embedder: CachedEmbedder, sparse: SparseEncoder) -> Searcher:
    """Hybrid's fusion and, when switched on, its sentence rerank, as the settings say."""
    fusion = FusionParams(settings.hybrid_dense_weight, settings.prefetch_limit)
    reranker = (
        SentenceReranker(embedder, sparse, RerankWeights(*settings.rerank_weights), settings.rerank_depth)
        if settings.rerank
        else None
    )
    return Searcher(index, embedder, sparse, fusion, reranker)


def build_cached_embedder(settings: Settings, embedder: Embedder | None = None) -> CachedEmbedder:
    apply_offline_environment()
    if embedder is None:
        embedder = build_embedder(
            settings.embedder, settings.embedding_model, settings.model_cache_dir, settings.embedding_batch_size
        )
    store = SqliteEmbeddingStore(settings.cache_dir / "embeddings.sqlite")
    return CachedEmbedder(embedder, store, lru_size=settings.query_cache_size)


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Wire every part from settings; a given ``embedder`` is shared instead of loading the model again.
    Updates a crash interrupted are settled (``Ingestor.recover``) before the services are returned."""
    disk = check_storage(settings)
    cached = build_cached_embedder(settings, embedder)
    embedder = cached.inner
    index = build_index(settings, embedder.model_id, embedder.dimension, disk)
    sparse = Bm25Encoder()
    chunker = Chunker(embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap)
    services = Services(
        settings=settings,
        embedder=cached,
        index=index,
        ingestor=Ingestor(
            index,
            cached,
            sparse,
            chunker,
            batch_chunks=settings.ingest_batch_chunks,
            flag_instructions=_instruction_flagger(settings),
            limits=DocumentLimits.from_settings(settings),
            journal=IntentJournal(_journal_path(settings, embedder.model_id)),
            disk=disk,
        ),
        searcher=build_searcher(settings, index, cached, sparse),
        store=cached.store,
    )
    try:
        settled = services.ingestor.recover()
    except BaseException:
        services.close()  # the index's lock with it: the caller may try again
        raise
    if settled:
        logger.warning("settled %d document update(s) interrupted by a crash: each kept one version", settled)
    return services
