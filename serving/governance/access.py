"""Who is calling and what they may do: roles, the principal a request acts as, and the typed refusals of the
admission (authentication, role, rate limits, quotas, budgets). The HTTP layer turns each refusal into its
status code; nothing here knows about HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from retrieval.index import is_scope_name

ANONYMOUS_KEY_ID = "anonymous"  # the principal of a server without keys (every caller, as before keys existed)


class Role(StrEnum):
    """Each role can do what the one before it can, and more."""

    reader = "reader"  # chat, search, models, feedback
    editor = "editor"  # + documents: ingest, delete
    admin = "admin"  # + keys, prompt labels, audit, usage, budgets (service-wide, every tenant)

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class RoleLimits(BaseModel):
    """The limits of a role's keys (settings ``role_limits``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int = Field(ge=1)
    tokens_per_day: int = Field(ge=1)


def default_role_limits() -> dict[Role, RoleLimits]:
    return {
        Role.reader: RoleLimits(requests_per_minute=60, tokens_per_day=200_000),
        Role.editor: RoleLimits(requests_per_minute=120, tokens_per_day=500_000),
        Role.admin: RoleLimits(requests_per_minute=600, tokens_per_day=2_000_000),
    }


ENV_KEY_DEFAULT_ROLE = Role.editor  # what every RAGOPS_API_KEYS key could do before roles: its tenant's documents


def parse_tenant_role(value: str) -> tuple[str, Role]:
    """A ``RAGOPS_API_KEYS`` value: ``TENANT`` (an editor, as such keys were before roles) or ``TENANT:ROLE``.
    ``ValueError`` says what is expected (never the key)."""
    tenant, sep, role = value.partition(":")
    if not is_scope_name(tenant) or (sep and role not in Role.__members__):
        raise ValueError(f"each value must be TENANT or TENANT:ROLE with ROLE one of {', '.join(Role)}")
    return tenant, Role(role) if sep else ENV_KEY_DEFAULT_ROLE


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits; ``None`` takes its role's from the settings."""

    requests_per_minute: int | None = None
    tokens_per_day: int | None = None


@dataclass(frozen=True)
class Principal:
    """The caller a request acts as: its key (by id, never the key itself), tenant and role."""

    key_id: str
    tenant: str
    role: Role
    limits: KeyLimits = KeyLimits()


class AccessDeniedError(Exception):
    """A request admission refuses; ``status`` is the HTTP status it maps to."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code


class UnauthenticatedError(AccessDeniedError):
    status = 401
    code = "invalid_api_key"


class ForbiddenError(AccessDeniedError):
    """The key is valid but its role is below the route's."""

    status = 403
    code = "insufficient_role"

    def __init__(self, needed: Role, held: Role) -> None:
        super().__init__(f"this route needs the {needed.value} role; the key has {held.value}")
        self.needed = needed


class LimitExceededError(AccessDeniedError):
    """A rate limit, quota or budget is used up: 429, with ``Retry-After`` and the limit's name."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, limit: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = max(1, retry_after_s)


class AdmissionUnavailableError(AccessDeniedError):
    """A part admission needs is down and the settings say to refuse rather than serve unchecked (503)."""

    status = 503
    code = "limiter_unavailable"
