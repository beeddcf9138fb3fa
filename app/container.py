"""The composition root: the one place that builds the parts from settings and wires them together."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING

from app.conversation_parts import build_conversations, build_rewriter
from app.governance_parts import build_admission, build_audit
from app.parts import (
    UnavailableGenerator,
    build_answer_cache,
    build_cached_embedder,
    build_eraser,
    build_generator,
    build_guards,
    build_index,
    build_searcher,
    build_tracers,
    canary_policy,
    check_storage,
    faithfulness_judgement,
    instruction_flagger,
    journal_path,
    judge_config,
    model_hashes,
    sentence_screen,
    start_retention,
)
from app.settings import Settings
from evals.runner import EvalParts
from prompts.registry import PromptRef, PromptRegistry, PromptSelector
from retrieval.chunking import Chunker
from retrieval.embedding import Embedder
from retrieval.embedding_cache import CachedEmbedder, EmbeddingStore
from retrieval.index import VectorIndex
from retrieval.ingest import Ingestor
from retrieval.journal import IntentJournal
from retrieval.search import Searcher
from retrieval.sparse import Bm25Encoder
from retrieval.validation import DocumentLimits
from safety.pii import RedactionMemo
from serving.answering.abstention import Abstain, AbstentionCalibration, CalibrationRefresh
from serving.answering.answer_cache import AnswerCache, IndexDigest
from serving.answering.conversations import ConversationStore
from serving.answering.extractive import ExtractiveGenerator
from serving.answering.fallback import FallbackChain
from serving.answering.llamacpp.supervisor import LlamaCppGenerator
from serving.answering.output_stage import OutputGuard
from serving.answering.pipeline import RagPipeline, Stages
from serving.answering.stages import (
    CachedAnswers,
    Cite,
    ComposePrompt,
    Generate,
    InputGuard,
    Retrieve,
    RewriteQuery,
    ScreenPassages,
)
from serving.contracts.answer import Answer, AnswerRequest
from serving.contracts.generation import Generator
from serving.governance.admission import Admission
from serving.governance.usage import AnswerPricing
from serving.infra.state_store import StateStore
from serving.loop.judge_sampler import SampledJudge
from serving.observe.metrics import AlertThresholds, ServiceMetrics, TenantLabels
from serving.observe.tracing import FanOutTracer, NoTracer, Tracer

if TYPE_CHECKING:
    from serving.governance.audit import AuditLog
    from serving.loop.answer_log import AnswerLog
    from serving.loop.canary_control import CanaryBook, CanaryMonitor
    from serving.loop.drift import DriftMonitor
    from serving.loop.feedback import FeedbackStore
    from serving.loop.lineage import Lineage, ModelHashes
    from serving.loop.live_prompts import LivePrompts
    from serving.rights.erasure import Eraser
    from serving.rights.retention import RetentionTask

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
        return DocumentLimits.from_settings(self.settings.limits)

    @cached_property
    def pipeline(self) -> RagPipeline:
        return build_pipeline(self)

    @cached_property
    def answer_cache(self) -> AnswerCache:
        """Answers the pipeline repeats (erasure evicts from it too)."""
        return build_answer_cache(self.settings, self.metrics)

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
        tracers = build_tracers(self.settings) if self.settings.traces.tracing else []
        if not tracers:
            return NoTracer()
        return tracers[0] if len(tracers) == 1 else FanOutTracer(tracers)

    @cached_property
    def judge(self) -> SampledJudge | None:
        config = judge_config(self.settings)
        if config is None or self.settings.judge.share <= 0:
            return None
        return SampledJudge(
            lambda: faithfulness_judgement(config, self.embedder), self.settings.judge.share, self.metrics
        )

    def observe(self, request: AnswerRequest, answer: Answer) -> None:
        """Every final answer: logged, metered, traced when tracing is on, judged when sampled."""
        answer_log.info(
            "answer",
            extra={"outcome": answer.outcome, "generator": answer.generator, "prompt": answer.prompt.version,
                   "fallback": answer.fallback.reason if answer.fallback else None,
                   "retrieval_query": answer.rewrite.query if answer.rewrite and answer.rewrite.rewritten else None,
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

        return CanaryBook(self.state, self.settings.canary.share)

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
        if not s.drift.every or self.answer_log is None:
            return None
        from serving.loop.drift import DriftMonitor, DriftProfiles

        return DriftMonitor(every=s.drift.every, window=s.drift.window, alpha=s.drift.alpha, answers=self.answer_log,
                            profiles=DriftProfiles(self.state), embed=self.embedder.embed_questions,
                            embedder_id=self.embedder.model_id, on_report=self.metrics.observe_drift,
                            lineage=self.lineage)  # fmt: skip

    @cached_property
    def state(self) -> StateStore:
        """Keys, audit trail, usage and budgets: SQLite under the data dir, or Postgres (``database_url``)."""
        return StateStore.open(self.settings.database_url, self.settings.state_path)

    @cached_property
    def admission(self) -> Admission:
        """Authentication, roles, rate limits, quotas and budgets, in front of every route that is not public."""
        return build_admission(self.settings, self.state, self.metrics)

    @cached_property
    def audit(self) -> AuditLog | None:
        """The audit trail's writer (and the usage ledger's); None with ``audit`` off."""
        return build_audit(self.settings, self.state, self.metrics) if self.settings.audit else None

    @cached_property
    def answer_log(self) -> AnswerLog | None:
        """Answers kept (redacted) for feedback, drift and canary analysis; None with a retention of 0 days."""
        if not self.settings.retention.feedback_retention_days:
            return None
        from serving.loop.answer_log import AnswerLog

        return AnswerLog(
            self.state, self.settings.retention.feedback_retention_days, redact_passage=self.passage_redaction
        )

    @cached_property
    def passage_redaction(self) -> RedactionMemo:
        """Retrieved passages as search hits and the answer log show them: redacted, each once."""
        return RedactionMemo()

    @cached_property
    def conversations(self) -> ConversationStore | None:
        """Server-side conversations: Redis with ``redis_url``, else the state store; None when none are kept."""
        return build_conversations(self.settings, self.state)

    @cached_property
    def feedback(self) -> FeedbackStore | None:
        """Users' ratings of kept answers; None when answers are not kept (nothing to rate)."""
        if self.answer_log is None:
            return None
        from serving.loop.feedback import FeedbackStore

        return FeedbackStore(self.state, self.settings.alerts.window)

    @cached_property
    def retention(self) -> RetentionTask:
        """Every store's retention (``serving.rights.retention``), at start and daily (the server starts it)."""
        return start_retention(self.settings, self.state, self.embedder, self.conversations)

    @cached_property
    def eraser(self) -> Eraser:
        """Erases a document or a user from every store here (``serving.rights.erasure``)."""
        return build_eraser(self.settings, self.state, self.audit, self.ingestor, self.embedder, self.answer_cache,
                            self.conversations)  # fmt: skip

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
            s.alerts.hallucination_rate, s.alerts.fallback_rate, s.alerts.window, s.alerts.min_answers,
            s.alerts.thumbs_down_rate, s.alerts.min_raters,
        )  # fmt: skip
        tenants = TenantLabels(hashed=s.access.metrics_tenant_labels == "hash", key=s.access.metrics_tenant_key)
        return ServiceMetrics(s.safety.groundedness_threshold, thresholds, tenants)

    def close(self) -> None:
        # Their last records are written before the store closes (the drift check reads the answer log first).
        for writer in ("canary_monitor", "drift_monitor", "retention", "audit", "answer_log", "prompts"):
            if self.__dict__.get(writer) is not None:
                self.__dict__[writer].close()
        if "state" in self.__dict__:
            self.state.close()
        if "tracer" in self.__dict__:
            self.tracer.close()
        if "pipeline" in self.__dict__:
            self.pipeline.stages.rewrite.rewriter.close()  # before the model it may be asking
            self.pipeline.stages.abstain.close()  # before the index it searches
        generator = self.__dict__.get("generator")
        if isinstance(generator, LlamaCppGenerator):
            generator.supervisor.close()  # the worker process with it: none outlives the API
        judge = self.__dict__.get("judge")
        if judge is not None:
            judge.close()
        self.index.close()
        self.ingestor.close()
        self._store.close()


def build_pipeline(services: Services) -> RagPipeline:
    settings = services.settings
    primary = services.generator
    fallback = ExtractiveGenerator(services.embedder, screen=sentence_screen(settings))
    generators = [primary] if primary.name == "extractive" else [primary, fallback]
    chain = FallbackChain(generators, settings.breaker.failures, settings.breaker.cooldown_s)
    if isinstance(primary, LlamaCppGenerator):  # a restarted worker is tried at once, not after the cool-down
        primary.supervisor.when_ready(chain.breakers[primary.name].reset)
    prompts = services.prompts
    guards = build_guards(settings, services.embedder)
    embedder = services.embedder
    index_digest = IndexDigest(services.index, lambda: services.ingestor.version)
    calibration = build_abstention_calibration(services)
    refresh = CalibrationRefresh(calibration, index_digest) if calibration is not None else None
    if refresh is not None:  # measured as documents change, not on the first question after
        services.ingestor.after_change(refresh.changed)
    stages = Stages(
        input_guard=InputGuard(guards.input if guards else None),
        rewrite=RewriteQuery(build_rewriter(settings, primary), guards.input if guards else None),
        cache=CachedAnswers(services.answer_cache, embedder, index_digest, primary.name),
        retrieve=Retrieve(services.searcher),
        screen=ScreenPassages(guards),
        abstain=Abstain(embedder, settings.answering.abstain_below, calibration, refresh),
        # The extractive generator ranks sentences itself: compressing its context first would do it twice.
        compose=ComposePrompt(embedder, 0 if primary.name == "extractive" else settings.answering.context_sentences),
        generate=Generate(chain),
        output_guard=OutputGuard(
            guards.output if guards else None, generators[-1], enforce=settings.safety.output_guard == "enforce"
        ),
        cite=Cite(services.passage_redaction if settings.safety.redact_retrieved else None),
    )
    pricing = AnswerPricing(settings.costs.prices, services.metrics)
    return RagPipeline(stages, prompts, observer=services.observe, pricing=pricing)


def build_abstention_calibration(services: Services) -> AbstentionCalibration | None:
    """Each collection's abstention threshold, measured once per version of its documents (None: the global one)."""
    answering = services.settings.answering
    if answering.abstain_margin is None:
        return None
    return AbstentionCalibration(
        services.searcher, services.embedder, default=answering.abstain_below, margin=answering.abstain_margin
    )


def build_prompts(services: Services) -> PromptSelector | LivePrompts:
    s = services.settings
    registry = PromptRegistry(s.prompts_dir)
    if not s.live_labels:
        canary = registry.resolve(s.canary.prompt) if s.canary.prompt else None
        return PromptSelector(registry.resolve(s.prompt), canary, s.canary.share)
    from serving.loop.labels import StoreLabels
    from serving.loop.live_prompts import LivePrompts

    labels = StoreLabels(services.state)
    labels.adopt_declared(registry)  # what git declares and the store has not taken yet
    return LivePrompts(registry=registry.with_labels(labels), stable=s.prompt, canary=s.canary.prompt,
                       book=services.canaries, refresh_s=s.label_refresh_s, metrics=services.metrics)  # fmt: skip


def build_canary_monitor(services: Services) -> CanaryMonitor | None:
    s = services.settings
    if not (s.live_labels and s.canary.prompt) or services.answer_log is None:
        return None
    from functools import partial

    from serving.loop.canary_control import CanaryLabels, CanaryMonitor, ratings_by_answer

    stable, canary = PromptRef.parse(s.prompt), PromptRef.parse(s.canary.prompt)
    labels = CanaryLabels(*(None if ref.is_version else ref.selector for ref in (stable, canary)))
    ratings = partial(ratings_by_answer, services.state)
    policy = canary_policy(s)
    return CanaryMonitor(book=services.canaries, answers=services.answer_log, ratings=ratings, policy=policy,
                         prompt=stable.name, labels=labels, metrics=services.metrics)  # fmt: skip


def eval_answer_settings(settings: Settings, models: ModelHashes) -> str:
    """What the eval answer store keys a sample's answer by, besides the sample: the settings that change answers,
    and the llama.cpp build and GGUF, which decode differently (the default GGUF's path is no setting: the model
    changed under an unchanged fingerprint when it became Q8_0)."""
    return settings.answer_fingerprint() + (models.generator_build or "") + (models.generator_sha256 or "")


def eval_parts(services: Services) -> EvalParts:
    """What the eval runner needs of the wired services."""
    settings = services.settings
    pipeline = services.pipeline  # first: the models' lineage names the llama.cpp build its worker loaded
    models = services.model_hashes
    answer_settings = eval_answer_settings(settings, models)
    return EvalParts(
        pipeline=pipeline,
        ingestor=services.ingestor,
        index=services.index,
        embedder=services.embedder,
        tenant=settings.defaults.tenant,
        generator=settings.generator,
        rewriter=pipeline.stages.rewrite.rewriter.name,
        answers_path=settings.cache_dir / "eval-answers.sqlite",
        answer_settings=answer_settings,
        judge=judge_config(settings),
        models=models,
    )


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Wire every part from settings; a given ``embedder`` is shared instead of loading the model again.
    Updates a crash interrupted are settled (``Ingestor.recover``) before the services are returned."""
    disk = check_storage(settings)
    cached = build_cached_embedder(settings, embedder)
    embedder = cached.inner
    index = build_index(settings, embedder.model_id, embedder.dimension, disk)
    sparse = Bm25Encoder()
    chunker = Chunker(embedder.count_tokens, settings.chunking.tokens, settings.chunking.overlap)
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
            flag_instructions=instruction_flagger(settings),
            limits=DocumentLimits.from_settings(settings.limits),
            journal=IntentJournal(journal_path(settings, embedder.model_id)),
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
