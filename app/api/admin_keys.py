"""Admin routes for API keys and prompt labels: ``GET``/``POST /v1/admin/keys``, ``DELETE /v1/admin/keys/{id}``
(revoke), ``POST /v1/admin/keys/{id}/rotate``; ``GET /v1/admin/prompts``, ``POST
/v1/admin/prompts/{name}/labels/{label}`` (promote) and ``.../rollback``. Each notes what it did for the audit
trail; a key's secret is in one response only, the one that made it.

Labels are live state (``serving.loop.labels``): a label moved here is moved in the state store, and every replica
answering with it serves the new version within ``label_refresh_s``; the release (the version's hash) and the
label are also written to this replica's registry.yaml, as ``ragops prompts promote`` does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import Admin, ServicesDep
from app.api.errors import ApiError, ErrorResponse, error_responses
from app.api.middleware import note_admin_action
from app.container import Services
from prompts.loader import PromptError
from prompts.registry import PromptRegistry
from retrieval.index import SCOPE_NAME_PATTERN
from serving.contracts.answer import PromptInfo
from serving.governance.access import ANONYMOUS_KEY_ID, KeyLimits, Role
from serving.governance.keys import (
    LIMIT_MAX,
    NAME_MAX_CHARS,
    NAME_PATTERN,
    ApiKeyRecord,
    EnvKeyError,
    EnvKeys,
    KeyNotFoundError,
    KeyStateError,
    KeyStore,
    expiry_from,
    grace_from,
)
from serving.infra.clock import parse_duration, parse_stamp, utc_now
from serving.loop.labels import StoreLabels

router = APIRouter(tags=["admin"], responses=error_responses(400, 401, 403, 429))

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The key or label cannot change so: the message says why."}
}
_KEY_ID = Path(description="The key's id (`rgk_<id>_...`, or `env-...` for a key from RAGOPS_API_KEYS).")
LABELS_APPLY = (
    "labels are live: every server answering with this label serves the new version within label_refresh_s "
    "(servers with live_labels off: from their next restart)"
)


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=SCOPE_NAME_PATTERN, description="The tenant whose documents the key reads/writes.")
    role: Role
    name: str = Field("", max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)
    expires_in: str | None = Field(None, max_length=32, description="A duration from now: 90s, 15m, 24h, 30d.")
    expires_at: str | None = Field(None, max_length=64, description="A date (2027-01-01) or an ISO time.")
    requests_per_minute: int | None = Field(None, ge=1, le=LIMIT_MAX, description="Unset: the role's.")
    tokens_per_day: int | None = Field(None, ge=1, le=LIMIT_MAX, description="Unset: the role's.")


class KeyRotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: str = Field("24h", max_length=32, description="How long the old key keeps working: 0, 15m, 24h (<= 30d).")


class KeyIssued(ApiKeyRecord):
    key: str = Field(description="The key: shown in this response only (the server keeps its hash).")


class KeyRotated(KeyIssued):
    previous: ApiKeyRecord = Field(description="The old key, with the time it stops working as expires_at.")


class KeyList(BaseModel):
    keys: list[ApiKeyRecord]


class LabelPromotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=64, description="The version the label is to name (released by this).")


class LabelChange(BaseModel):
    name: str
    label: str
    version: str
    previous: str | None = Field(description="The version the label named before.")
    hash: str
    applies: str = Field(LABELS_APPLY, description="When servers answer with the change.")


class PromptEntry(BaseModel):
    name: str
    versions: list[str]
    labels: dict[str, str]
    released: list[str]


class PromptListing(BaseModel):
    prompts: list[PromptEntry]
    served: PromptInfo = Field(description="The prompt this server answers with now (its stable one).")
    labels_apply: str = LABELS_APPLY


@router.get("/v1/admin/keys", response_model=KeyList)
def list_keys(services: ServicesDep, caller: Admin) -> KeyList:
    """Every key, from the state store and RAGOPS_API_KEYS: ids, tenants, roles, times; never a secret."""
    note_admin_action("keys.list", "*")
    return KeyList(keys=KeyStore(services.state).list() + EnvKeys(services.settings.api_keys).records())


@router.post("/v1/admin/keys", status_code=201, response_model=KeyIssued)
def create_key(body: KeyCreateRequest, services: ServicesDep, caller: Admin) -> KeyIssued:
    """Make a key. The response holds it, this once: the server stores only a hash. A server without keys makes
    its first one with `ragops keys create` or RAGOPS_API_KEYS: over HTTP, any caller of an open server could
    mint the one admin key and lock out everyone else."""
    note_admin_action("keys.create", body.tenant, body.model_dump(mode="json"))
    if caller.key_id == ANONYMOUS_KEY_ID:
        raise ApiError(
            403, "this server has no keys yet, so every caller is its admin: make the first key with `ragops keys "
            "create` or RAGOPS_API_KEYS", code="open_server",
        )  # fmt: skip
    expires_at = _expiry(body)
    limits = KeyLimits(body.requests_per_minute, body.tokens_per_day)
    with _key_errors():
        issued = KeyStore(services.state).create(body.tenant, body.role, body.name, expires_at, limits)
    note_admin_action("keys.create", issued.record.id, body.model_dump(mode="json"))
    return KeyIssued.model_validate(issued.body())


@router.delete("/v1/admin/keys/{key_id}", response_model=ApiKeyRecord, responses={**error_responses(404), **_CONFLICT})
def revoke_key(key_id: Annotated[str, _KEY_ID], services: ServicesDep, caller: Admin) -> ApiKeyRecord:
    """Revoke a key now; replicas stop accepting it within key_cache_s."""
    note_admin_action("keys.revoke", key_id)
    with _key_errors():
        EnvKeys(services.settings.api_keys).refuse_change(key_id)
        return KeyStore(services.state).revoke(key_id)


@router.post(
    "/v1/admin/keys/{key_id}/rotate", response_model=KeyRotated, responses={**error_responses(404), **_CONFLICT}
)
def rotate_key(
    key_id: Annotated[str, _KEY_ID], services: ServicesDep, caller: Admin, body: KeyRotateRequest | None = None
) -> KeyRotated:
    """A new key for the same tenant, role, name and limits; the old one keeps working for the grace period."""
    grace = body.grace if body is not None else KeyRotateRequest().grace
    note_admin_action("keys.rotate", key_id, {"grace": grace})
    keys = KeyStore(services.state)
    with _key_errors():
        EnvKeys(services.settings.api_keys).refuse_change(key_id)
        issued = keys.rotate(key_id, _grace(grace))
    previous = keys.get(key_id)
    assert previous is not None  # rotate found it; keys are never deleted
    note_admin_action("keys.rotate", key_id, {"grace": grace, "new_key": issued.record.id})
    return KeyRotated.model_validate({**issued.body(), "previous": previous})


def _expiry(body: KeyCreateRequest) -> datetime | None:
    if body.expires_in is not None and body.expires_at is not None:
        raise ApiError(400, "give expires_in or expires_at, not both", param="expires_in")
    param, text = ("expires_in", body.expires_in) if body.expires_in is not None else ("expires_at", body.expires_at)
    if text is None:
        return None
    try:
        if param == "expires_in":
            parse_duration(text.strip())  # a duration, not a date
        return expiry_from(text, parse_stamp(utc_now()))
    except ValueError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from exc


def _grace(text: str) -> timedelta:
    try:
        return grace_from(text)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="grace") from exc


@contextmanager
def _key_errors() -> Iterator[None]:
    try:
        yield
    except KeyNotFoundError as exc:
        raise ApiError(404, str(exc), param="key_id") from exc
    except EnvKeyError as exc:
        raise ApiError(409, str(exc), param="key_id", code="env_key") from exc
    except KeyStateError as exc:
        raise ApiError(409, str(exc), param="key_id", code="key_not_active") from exc
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc


@router.get("/v1/admin/prompts", response_model=PromptListing)
def list_prompts(services: ServicesDep, caller: Admin) -> PromptListing:
    """Prompts, their versions, labels and released versions, and the one this server answers with."""
    note_admin_action("prompts.list", "*")
    registry = _registry(services).with_labels(StoreLabels(services.state))
    with _prompt_errors():
        entries = [
            PromptEntry(
                name=name,
                versions=registry.versions(name),
                labels=registry.labels(name),
                released=sorted(registry.released(name)),
            )
            for name in registry.names()
        ]
    served = services.pipeline.prompt_for(None)
    return PromptListing(
        prompts=entries, served=PromptInfo(name=served.name, version=served.version, hash=served.content_hash)
    )


@router.post("/v1/admin/prompts/{name}/labels/{label}", response_model=LabelChange, responses=error_responses(404, 503))
def promote_label(name: str, label: str, body: LabelPromotion, services: ServicesDep, caller: Admin) -> LabelChange:
    """Point ``label`` at a version, releasing it (its file is frozen from then on)."""
    note_admin_action("prompts.promote", f"{name}@{label}", {"version": body.version})
    registry = _known_prompt(services, name)
    labels = StoreLabels(services.state)
    with _prompt_errors():
        prompt = registry.promote(name, body.version, label)
    previous = labels.release(prompt, label, caller.key_id)
    return LabelChange(name=name, label=label, version=prompt.version, previous=previous, hash=prompt.content_hash)


@router.post(
    "/v1/admin/prompts/{name}/labels/{label}/rollback",
    response_model=LabelChange,
    responses={**error_responses(404, 503), **_CONFLICT},
)
def rollback_label(name: str, label: str, services: ServicesDep, caller: Admin) -> LabelChange:
    """Return ``label`` to the version it named before."""
    note_admin_action("prompts.rollback", f"{name}@{label}")
    registry, labels = _known_prompt(services, name), StoreLabels(services.state)
    with _prompt_errors():
        labels.adopt_declared(registry)
        version = labels.rollback_target(name, label)  # the live history, canary decisions included
        if version is None:
            raise ApiError(409, f"label {label!r} of {name!r} has no earlier version to roll back to", param="label")
        previous = labels.labels(name).get(label)
        prompt = registry.promote(name, version, label)  # registry.yaml follows (bookkeeping)
    labels.move(name, label, version, caller.key_id, "rollback")
    note_admin_action("prompts.rollback", f"{name}@{label}", {"version": version, "previous": previous})
    return LabelChange(name=name, label=label, version=version, previous=previous, hash=prompt.content_hash)


def _registry(services: Services) -> PromptRegistry:
    prompts_dir = services.settings.prompts_dir
    return PromptRegistry(prompts_dir) if prompts_dir else PromptRegistry()


def _known_prompt(services: Services, name: str) -> PromptRegistry:
    """The registry, once ``name`` is a prompt it holds (checked before any path is built from the name)."""
    registry = _registry(services)
    with _prompt_errors():
        names = registry.names()
    if name not in names:
        raise ApiError(404, f"no prompt {name!r}", param="name")
    return registry


@contextmanager
def _prompt_errors() -> Iterator[None]:
    """An unknown version, a bad label, an edited release: 400; a registry that cannot be written: 503."""
    try:
        yield
    except PromptError as exc:
        raise ApiError(400, str(exc)) from exc
    except OSError as exc:
        raise ApiError(503, f"the prompt registry cannot be written: {exc.strerror or exc}") from exc
