"""The operators' groups of ``Settings``: access, costs, request limits, shutdown, backups, alerts, drift,
retention, traces, the judge, the canary (the groups of the answering path are in ``app.settings_groups``, which
says how groups work)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, IPvAnyNetwork, field_validator

from app.settings_groups import SettingsGroup
from retrieval.validation import DocumentLimits
from serving.governance.access import Role, RoleLimits, default_role_limits, parse_tenant_role
from serving.governance.usage import ModelPrice


class CanarySettings(SettingsGroup):
    """A second prompt answering a share of users, and the sequential test that promotes or rolls it back."""

    prefix: ClassVar[str] = "canary_"
    prompt: str | None = Field(
        None, description="A second prompt (e.g. rag_answer@canary) answering canary_share of users."
    )
    share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of users (sticky by user id) on the canary when it starts; a rollback "
        "sets the live share (state store) to 0.",
    )
    autopromote: bool = Field(
        False, description="Promote a canary that is not worse after canary_min_answers answers per arm."
    )
    min_answers: int = Field(
        200, ge=10, description="Answers per arm (canary and stable) before a canary that is not worse is promoted."
    )
    min_users: int = Field(
        20,
        ge=10,
        description="Distinct users (the server's hash of key and request user) each arm needs before a signal's "
        "test counts: one user's answers are one user's evidence.",
    )
    min_tenants: int = Field(
        2,
        ge=1,
        description="Distinct tenants each arm needs before a signal's test counts; from 2 on, a rollback must also "
        "hold with any one tenant's answers left out. 1: one tenant may decide (a single-tenant server).",
    )
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="How much worse than stable a canary's rate may be (absolute, e.g. 0.05 = "
        "5 points more fallbacks) before the sequential test counts evidence against it.",
    )
    latency_tolerance: float = Field(
        0.2,
        ge=0,
        le=10,
        description="How much slower than stable a canary may be (relative, e.g. 0.2 = 20% slower) before the "
        "sequential test counts evidence against it.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="False-rollback rate the canary's sequential test allows, over all signals."
    )
    check_every: int = Field(
        10, ge=1, description="Run the canary analysis every N answers (in the background, off the request path)."
    )


class AccessSettings(SettingsGroup):
    """Keys, roles, rate limits and who may reach the server."""

    prefix: ClassVar[str] = ""
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key -> tenant, or tenant:role (JSON in RAGOPS_API_KEYS, e.g. a first tenant:admin key from a "
        "Kubernetes Secret); editor when no role is given (what such keys could do before roles). Keys made with "
        "`ragops keys create` live in the state store. No key from either source, ever: no auth, the X-Tenant "
        "header or default_tenant picks the tenant.",
    )
    allow_open: bool = Field(
        False, description="Let `serve` listen on a non-loopback address without API keys (anyone can read and write)."
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
        None,
        description="Bearer token /metrics requires (Authorization: Bearer <token>). Unset: /metrics is public while "
        "the server has no API keys, and refused (401) once it has some: set it for Prometheus to scrape.",
    )
    metrics_tenant_labels: Literal["name", "hash"] = Field(
        "name",
        description="How /metrics names a tenant in its tenant label: name, or hash (the first 12 hex digits of "
        "the name's SHA-256, or of its HMAC-SHA256 keyed by metrics_tenant_key when that is set: `printf %s acme "
        "| sha256sum | cut -c1-12`, or `| openssl dgst -sha256 -hmac KEY`), so that a scrape does not list "
        "tenants.",
    )
    metrics_tenant_key: str | None = Field(
        None,
        description="Key of the tenant label hash (metrics_tenant_labels=hash). Without one, whoever can guess "
        "a tenant's name can check it against a label.",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description='Host header names the server answers, any port (e.g. ["ragops.example.org", '
        '"ragops-api"]; ["*"]: any); others get 400 (a page that points its own name at the server, DNS '
        "rebinding, is refused). Unset: the loopback names (localhost, 127.0.0.1, ::1) when `serve` listens on "
        "a loopback address, any name otherwise.",
    )
    key_cache_s: float = Field(
        5.0, ge=0, description="Seconds a replica trusts a key it looked up; a revocation takes effect within this."
    )
    key_rotation_days: int = Field(
        90,
        ge=1,
        description="Rotation policy: the compliance report fails naming each active key older than this (rotate it "
        "with `ragops keys rotate ID`). Keys from RAGOPS_API_KEYS have no creation time: rotate them where set.",
    )

    @field_validator("api_keys")
    @classmethod
    def _env_key_roles(cls, keys: dict[str, str]) -> dict[str, str]:
        for tenant_role in keys.values():
            parse_tenant_role(tenant_role)
        return keys

    @field_validator("role_limits")
    @classmethod
    def _every_role_limited(cls, limits: dict[Role, RoleLimits]) -> dict[Role, RoleLimits]:
        """A role the setting leaves out keeps its default limits: every key's role must have some."""
        return {**default_role_limits(), **limits}


class CostSettings(SettingsGroup):
    """Prices of models and tenants' budgets."""

    prefix: ClassVar[str] = ""
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Price per model (the answer's model, else its generator's name): per 1k prompt and "
        "completion tokens, or per hour of generation for self-hosted models. Unpriced models cost 0.",
    )
    budget_soft_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of a tenant's budget at which the soft alert fires (metric, log line)."
    )
    reservation_tokens: int = Field(
        2048,
        ge=1,
        description="Tokens a chat request reserves against its key's daily quota before it is answered (its "
        "answer's own tokens replace them after); at these tokens, prompt and completion each, and "
        "generation_timeout_s of generation, the most it reserves against its tenant's budget. Parallel requests "
        "overshoot a quota or budget by at most one reservation, as long as no answer takes more than it.",
    )

    def reservation_usd(self, generation_timeout_s: float) -> float:
        """The most one answer can cost at the priced models: what a request reserves against a budget."""
        tokens, ms = self.reservation_tokens, generation_timeout_s * 1000
        return max((price.cost(tokens, tokens, ms) for price in self.prices.values()), default=0.0)


class RequestLimits(SettingsGroup):
    """Request limits, checked before anything is read into the index (400/413 with the field named)."""

    prefix: ClassVar[str] = ""
    max_query_chars: int = Field(
        2000, ge=1, description="Longest search query or chat question accepted (HTTP 400 beyond)."
    )
    max_documents_per_request: int = Field(1000, ge=1, description="Most documents one ingest request may carry.")
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
    conversation_max_turns: int = Field(
        25,
        ge=1,
        le=25,  # a request's own history holds at most 50 messages (25 turns): a kept one is held to the same
        description="Most turns a server-side conversation holds; the next one is refused (start a new one).",
    )
    conversation_max_chars: int = Field(
        50_000,
        ge=1,
        description="Most characters of questions and answers a server-side conversation holds; a turn past it is "
        "refused (start a new one).",
    )


class ShutdownSettings(SettingsGroup):
    """How the server stops."""

    prefix: ClassVar[str] = "shutdown_"
    drain_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, seconds `/readyz` answers 503 while new requests are still served, so a load "
        "balancer stops sending before the port closes (e.g. 5 behind Kubernetes).",
    )
    grace_s: int = Field(
        30,
        ge=1,
        description="On shutdown, seconds requests in flight and open streams get to finish before they are cut.",
    )


class BackupSettings(SettingsGroup):
    """Where backups are kept and how old the newest may be (what the compliance report checks)."""

    prefix: ClassVar[str] = "backup_"
    dir: Path | None = Field(
        None,
        description="Where `ragops backup create` archives (*.tar) are kept: the compliance report checks that the "
        "newest one there is recent and passes a dry-run restore. Unset: backups are not checked (the control "
        "says NA).",
    )
    max_age_days: float = Field(
        1.5,
        gt=0,
        description="Age of the newest backup past which the compliance report fails (daily backups, with half a "
        "day's slack).",
    )


class AlertSettings(SettingsGroup):
    """Alerts over a rolling window of answers, and on a prompt version's ratings."""

    prefix: ClassVar[str] = "alert_"
    hallucination_rate: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Alert when more of the window's judged answers than this score below groundedness_threshold.",
    )
    fallback_rate: float = Field(
        0.3, ge=0, le=1, description="Alert when more of the window's answers than this come from a fallback."
    )
    window: int = Field(100, ge=1, description="Answers in the rolling window.")
    min_answers: int = Field(20, ge=1, description="No alert before the window holds this many.")
    thumbs_down_rate: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Alert when more of a prompt version's recent rated answers than this are thumbs-down.",
    )
    min_raters: int = Field(
        5,
        ge=1,
        description="No thumbs-down alert before a prompt version's recent ratings come from this many raters "
        "(API keys; on a server without keys, the users the rated answers were given to).",
    )


class DriftSettings(SettingsGroup):
    """The periodic drift check against a reference profile."""

    prefix: ClassVar[str] = "drift_"
    every: int = Field(
        0,
        ge=0,
        description="Check for drift every N answers against the newest reference profile (in the background); 0: off.",
    )
    window: int = Field(200, ge=20, description="Recent answers a drift check compares with the reference.")
    alpha: float = Field(
        0.01, gt=0, lt=1, description="Significance of a drift check, over all signals (Holm-corrected)."
    )


class RetentionSettings(SettingsGroup):
    """How long each store keeps what it holds (`ragops retention show` lists every store, what it holds and who
    removes it; the server applies these periods at start and daily, `ragops retention apply` on demand)."""

    prefix: ClassVar[str] = ""
    feedback_retention_days: int = Field(
        30,
        ge=0,
        description="Days answers are kept (redacted) so feedback can refer to them; 0: not kept (no "
        "feedback, no canary analysis).",
    )
    conversation_retention_days: int = Field(
        7,
        ge=0,
        description="Days a server-side conversation (its redacted questions and guarded answers) is kept after its "
        "last turn; 0: conversations are not kept (requests carry their own history).",
    )
    query_vector_retention_days: int = Field(
        30,
        ge=0,
        description="Days the embedding cache keeps a question's embedding (keyed by its SHA-256); 0: each "
        "retention run removes them all.",
    )
    audit_retention_days: int = Field(
        365,
        ge=0,
        description="Days audit records are kept before retention prunes them (by sequence, behind a checkpoint the "
        "chain verifies from); the EU AI Act has high-risk systems keep logs at least six months. 0: kept forever.",
    )


class TraceSettings(SettingsGroup):
    """Traces to LangSmith (on when an API key or an endpoint is set) and OpenTelemetry; the vendors' own
    variable names work too."""

    prefix: ClassVar[str] = ""
    tracing: bool = Field(True, description="Trace requests when LangSmith is configured (eval runs turn it off).")
    trace_redact: bool = Field(True, description="Redact PII and secrets in traced inputs and outputs.")
    langsmith_api_key: str | None = Field(
        None,
        description="LangSmith API key; set, it turns tracing on.",
    )
    langsmith_endpoint: str | None = Field(
        None,
        description="LangSmith API URL (unset: https://api.smith.langchain.com); set, it turns tracing on.",
    )
    langsmith_project: str = Field(
        "ragops",
        description="LangSmith project the traces go to.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector base URL (OTLP over HTTP, spans go to /v1/traces); set, it turns "
        "OpenTelemetry tracing on beside LangSmith.",
    )
    otel_service_name: str = Field(
        "ragops",
        description="service.name of the exported spans.",
    )


class JudgeSettings(SettingsGroup):
    """The judge LLM: ragas faithfulness and answer relevancy in evals, and sampled faithfulness in serving."""

    prefix: ClassVar[str] = "judge_"
    base_url: str | None = Field(
        None, description="OpenAI-compatible judge LLM, e.g. a vLLM server's /v1 URL; unset: no LLM-judged metrics."
    )
    model: str = Field("smollm2", description="Model name the judge server serves.")
    api_key: str | None = Field(None, description="Bearer key of the judge server, if it wants one.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one judge call may take.")
    max_tokens: int = Field(
        512, ge=16, description="Completion tokens per judge call (ragas asks for JSON statements)."
    )
    share: float = Field(
        0.0, ge=0, le=1, description="Share of served answers the judge scores (ragas faithfulness) in the background."
    )
