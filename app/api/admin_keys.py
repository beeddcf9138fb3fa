"""Admin routes for API keys: ``GET``/``POST /v1/admin/keys``, ``DELETE /v1/admin/keys/{id}`` (revoke),
``POST /v1/admin/keys/{id}/rotate``. Each notes what it did for the audit trail; a key's secret is in one response
only, the one that made it. The prompt label routes are ``app.api.admin_prompts``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.deps import Admin, ServicesDep
from app.api.errors import ApiError, ErrorResponse, error_responses
from app.api.middleware import note_admin_action
from retrieval.index import SCOPE_NAME_PATTERN
from serving.governance.access import ANONYMOUS_KEY_ID, KeyLimits, Role
from serving.governance.keys import (
    LIMIT_MAX,
    NAME_MAX_CHARS,
    ApiKeyRecord,
    EnvKeyError,
    EnvKeys,
    KeyNotFoundError,
    KeyStateError,
    KeyStore,
    check_key_name,
    expiry_from,
    grace_from,
)
from serving.infra.clock import parse_duration, parse_stamp, utc_now

router = APIRouter(tags=["admin"], responses=error_responses(400, 401, 403, 429))

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The key or label cannot change so: the message says why."}
}
_KEY_ID = Path(description="The key's id (`rgk_<id>_...`, or `env-...` for a key from RAGOPS_API_KEYS).")


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=SCOPE_NAME_PATTERN, description="The tenant whose documents the key reads/writes.")
    role: Role
    name: Annotated[str, AfterValidator(check_key_name)] = Field(
        "", max_length=NAME_MAX_CHARS, description="Printable characters only: no control or format characters."
    )
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


@router.get("/v1/admin/keys", response_model=KeyList)
def list_keys(services: ServicesDep, caller: Admin) -> KeyList:
    """Every key, from the state store and RAGOPS_API_KEYS: ids, tenants, roles, times; never a secret."""
    note_admin_action("keys.list", "*")
    return KeyList(keys=KeyStore(services.state).list() + EnvKeys(services.settings.access.api_keys).records())


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
        EnvKeys(services.settings.access.api_keys).refuse_change(key_id)
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
        EnvKeys(services.settings.access.api_keys).refuse_change(key_id)
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
