"""Typed settings: environment variables with the ``RAGOPS_`` prefix, an optional TOML file, defaults.

Precedence (highest first): explicit keyword arguments, ``RAGOPS_*`` environment variables, the TOML file named
by ``--config`` on the CLI (or ``RAGOPS_CONFIG``), then the defaults. Settings come in groups by concern
(``settings.canary.share``; ``app.settings_groups``, ``app.settings_operations``), each still set by its flat
name (``RAGOPS_CANARY_SHARE``, ``canary_share = 0.1`` in the TOML file, ``load_settings(canary_share=0.1)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.settings_groups import (
    ENV_ALIASES,
    AnswerCacheSettings,
    AnswerSettings,
    BreakerSettings,
    ChunkingSettings,
    EmbeddingSettings,
    LlamaCppSettings,
    QdrantSettings,
    RetrievalSettings,
    SafetySettings,
    SearchDefaults,
    SettingsGroup,
    VllmSettings,
    changes_answers,
)
from app.settings_operations import (
    AccessSettings,
    AlertSettings,
    BackupSettings,
    CanarySettings,
    CostSettings,
    DriftSettings,
    JudgeSettings,
    RequestLimits,
    RetentionSettings,
    ShutdownSettings,
    TraceSettings,
)
from prompts.registry import PromptRef

GeneratorBackend = Literal["llamacpp", "vllm", "extractive"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGOPS_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path(".ragops"),
        description="The index, the embedding and eval caches, the ONNX export (unless models_dir) and eval "
        "results live here; two data dirs never interfere.",
    )
    # Answering
    generator: GeneratorBackend = Field(
        "llamacpp", description="First generator of the chain; the extractive generator always backs it up."
    )
    prompts_dir: Path | None = Field(None, description="Prompt files and registry (default: the bundled prompts/).")
    evals_dir: Path = Field(
        Path("evals"),
        description="Eval suites, datasets and corpora (exported feedback suites land here): erasure lists (or "
        "rewrites) the files that hold an erased document or user.",
    )
    prompt: str = Field(
        "rag_answer@production", description="The prompt the server answers with: NAME[@VERSION|@LABEL]."
    )
    label_refresh_s: float = Field(
        2.0, gt=0, le=60, description="Seconds a replica keeps the live prompt labels before reading them again."
    )
    live_labels: bool = Field(
        True,
        description="Resolve prompt labels and the canary share through the state store, live on every replica; "
        "off: registry.yaml's labels as they were at start (eval runs turn it off).",
    )
    # Governance: the state store, Redis, the audit trail
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
    audit: bool = Field(
        True,
        description="Write the audit trail and the usage ledger (budgets read it). Off for benchmarks only.",
    )
    audit_content: Literal["hash", "redacted"] = Field(
        "hash",
        description="What audit records keep of questions and answers: hash, their SHA-256; redacted, their text "
        "with PII and secrets redacted.",
    )
    audit_anchor_file: Path | None = Field(
        None,
        description="File the server appends the audit chain's head to (a JSON line, at most every "
        "audit_anchor_every_s while records are written): keep it, or ship it, away from the database; "
        "`ragops audit verify --anchor FILE` checks the chain still holds its last head. The head is logged "
        "(ragops.audit 'audit head') at the same pace either way.",
    )
    audit_anchor_every_s: float = Field(
        60.0, ge=1, description="How often, at most, the audit chain's head is logged and appended to the anchor file."
    )
    # Reliability
    min_free_disk_mb: int = Field(
        256, ge=0, description="Refuse writes (503) when the data dir's filesystem has less free space than this."
    )
    ingest_batch_chunks: int = Field(
        512, ge=1, description="Chunks embedded and written per ingest batch (whole documents; bounds memory)."
    )

    # The groups, in the order the settings reference shows them.
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    defaults: SearchDefaults = Field(default_factory=SearchDefaults)
    answering: AnswerSettings = Field(default_factory=AnswerSettings)
    llamacpp: LlamaCppSettings = Field(default_factory=LlamaCppSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    answer_cache: AnswerCacheSettings = Field(default_factory=AnswerCacheSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    traces: TraceSettings = Field(default_factory=TraceSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)

    @model_validator(mode="after")
    def _autopromote_moves_a_label(self) -> Settings:
        # Promotion moves the stable label to the canary's version: a stable prompt named by version has none.
        if self.canary.autopromote and PromptRef.parse(self.prompt).is_version:
            raise ValueError("canary_autopromote needs prompt to name a label (e.g. rag_answer@production)")
        return self

    @model_validator(mode="after")
    def _redis_cache_needs_redis(self) -> Settings:
        if self.answer_cache.backend == "redis" and self.redis_url is None:
            raise ValueError("answer_cache_backend=redis needs redis_url")
        return self

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
        return self.embedding.models_dir or self.data_dir / "models"

    def answer_fingerprint(self) -> str:
        """The settings that change answers (marked ``CHANGES_ANSWERS``), by flat name, as JSON."""
        values = {name: value for name, field, value in flat_settings(self) if changes_answers(field)}
        return json.dumps(values, sort_keys=True, default=str)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file reads settings_cls.model_config["toml_file"]; load_settings() sets it. Each source's flat
        # names go into their groups before the sources are merged, so a source wins over the ones after it
        # whichever form (flat or nested) each gives a setting in.
        sources = (init_settings, FlatEnvSource(settings_cls), TomlConfigSettingsSource(settings_cls))
        return tuple(GroupedSource(settings_cls, source) for source in sources)


def setting_groups(settings_cls: type[BaseSettings] = Settings) -> dict[str, type[SettingsGroup]]:
    """The groups of ``Settings``, by attribute name."""
    groups = {}
    for name, field in settings_cls.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, SettingsGroup):
            groups[name] = field.annotation
    return groups


def flat_fields(settings_cls: type[BaseSettings] = Settings) -> dict[str, FieldInfo]:
    """Every setting by its flat name (``canary_share``), top-level settings and group members alike."""
    groups = setting_groups(settings_cls)
    fields: dict[str, FieldInfo] = {}
    for name, field in settings_cls.model_fields.items():
        if name in groups:
            fields.update({flat: groups[name].model_fields[own] for flat, own in groups[name].flat_names().items()})
        else:
            fields[name] = field
    return fields


def flat_name(location: tuple[int | str, ...]) -> str:
    """The name an operator sets for a validation error's location: ``("defaults", "top_k")`` -> ``default_top_k``
    (what follows, inside a map or a list, joined by dots)."""
    groups = setting_groups()
    if len(location) >= 2 and location[0] in groups:
        group = groups[str(location[0])]
        return ".".join([group.prefix + str(location[1]), *map(str, location[2:])])
    return ".".join(map(str, location))


def flat_settings(settings: Settings) -> list[tuple[str, FieldInfo, Any]]:
    """(flat name, field, value) of every setting."""
    rows = []
    groups = setting_groups(type(settings))
    for name, field in type(settings).model_fields.items():
        if name in groups:
            group = getattr(settings, name)
            rows += [
                (flat, type(group).model_fields[own], getattr(group, own)) for flat, own in group.flat_names().items()
            ]
        else:
            rows.append((name, field, getattr(settings, name)))
    return rows


def nest_flat_names(data: dict[str, Any], groups: dict[str, type[SettingsGroup]]) -> dict[str, Any]:
    """``{"canary_share": 0.1}`` -> ``{"canary": {"share": 0.1}}``, merged into what ``data`` gives nested; within
    one source, a flat name wins over the same setting given nested."""
    nested = dict(data)
    for group_name, group in groups.items():
        found = {field: nested.pop(flat) for flat, field in group.flat_names().items() if flat in nested}
        if found:
            given = nested.get(group_name, {})
            given = given.model_dump() if isinstance(given, SettingsGroup) else dict(given)
            nested[group_name] = {**given, **found}
    return nested


class GroupedSource(PydanticBaseSettingsSource):
    """A settings source (keywords, environment, TOML file) with its flat names put in their groups."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return nest_flat_names(self._source(), setting_groups(self.settings_cls))


class FlatEnvSource(EnvSettingsSource):
    """``RAGOPS_<FLAT NAME>`` for every setting, grouped or not (JSON for lists and maps, as pydantic-settings reads
    them), and the vendors' own variables of ``ENV_ALIASES``."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        annotations = {name: field.annotation for name, field in flat_fields(settings_cls).items()}
        flat = type(
            "FlatSettings",
            (BaseSettings,),
            {
                "__annotations__": annotations,
                **{name: Field(None) for name in annotations},
                "model_config": SettingsConfigDict(env_prefix="RAGOPS_", extra="ignore"),
            },
        )
        super().__init__(flat)

    def __call__(self) -> dict[str, Any]:
        found = super().__call__()
        environment = {name.upper(): value for name, value in os.environ.items()}  # matched case-insensitively
        for flat, names in ENV_ALIASES.items():
            for name in names:
                if flat not in found and environment.get(name):
                    found[flat] = environment[name]
        return found


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
