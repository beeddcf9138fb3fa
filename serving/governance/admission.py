"""Admission: the first stage of every request that is not public. ``identify``: the client address's
failed-authentication limit, then the key; ``authorize``: the route's role, the key's rate limit and token
quota, the tenant's budget (not on admin routes, which cost nothing and are where a budget is raised). Each
refusal is a typed ``AccessDeniedError``; what passes is the ``Principal`` the request acts as.

A server without keys (none in the settings, none ever made in the state store) lets every caller in as the
anonymous admin of the tenant the request names, as ragops did before keys had roles: ``serve`` refuses such a
server on a non-loopback address unless ``allow_open`` says it is meant. Per-key limits need a key, so none
apply there; budgets do."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from serving.governance.access import ANONYMOUS_KEY_ID, ForbiddenError, Principal, Role, UnauthenticatedError


class KeyLookup(Protocol):
    """Keys from both sources (settings and state store)."""

    def has_keys(self) -> bool:
        """Whether any key exists: without one, the server is open."""
        ...

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unexpired, unrevoked key; None otherwise (in constant time per key)."""
        ...


class Limiter(Protocol):
    """Rate limits and quotas (in process, or shared through Redis)."""

    def check_address(self, address: str) -> None:
        """Raise ``LimitExceededError('auth_failures_per_minute')`` when ``address`` has used up its failures."""
        ...

    def failed_authentication(self, address: str) -> None:
        """Count one failed authentication from ``address``."""
        ...

    def admit(self, principal: Principal) -> None:
        """Count one request against the key's per-minute limit and check its daily token quota: raise
        ``LimitExceededError('requests_per_minute' | 'tokens_per_day')``, or ``AdmissionUnavailableError`` when the
        shared store is down and the settings say to refuse."""
        ...

    def reserve_tokens(self, principal: Principal, tokens: int) -> None:
        """Count ``tokens`` against the key's daily quota before an answer, or raise
        ``LimitExceededError('tokens_per_day')`` when used and reserved tokens already reached it."""
        ...

    def adjust_tokens(self, principal: Principal, tokens: int) -> None:
        """Add ``tokens`` (negative: give back) to the key's daily count."""
        ...


class BudgetCheck(Protocol):
    def check(self, tenant: str) -> None:
        """Raise ``LimitExceededError('budget')`` when the tenant's hard budget for the period is used up."""
        ...

    def reserve(self, tenant: str, reservation_id: str) -> None:
        """Reserve what one answer can cost at most against the tenant's budget, or raise
        ``LimitExceededError('budget')`` when spent and reserved already reached it. Released by the audit writer
        when it records the request (``reservation_id`` on its record)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Reservation:
    """What admission set aside for one answer before it is generated."""

    id: str  # the budget reservation's, on the request's audit record: its commit releases it
    tokens: int  # counted against the key's daily quota until the answer's own tokens replace them


class Admission:
    def __init__(self, keys: KeyLookup, limiter: Limiter, budgets: BudgetCheck, reservation_tokens: int) -> None:
        self.keys = keys
        self.limiter = limiter
        self.budgets = budgets
        self.reservation_tokens = reservation_tokens

    def identify(self, token: str | None, address: str, open_tenant: Callable[[], str]) -> Principal:
        """Who the caller is, or ``UnauthenticatedError`` (a 429 once its address used up its failures). On a
        server without keys, the anonymous admin of ``open_tenant()`` (the request's ``X-Tenant``, or the
        default)."""
        self.limiter.check_address(address)
        if not self.keys.has_keys():
            return Principal(ANONYMOUS_KEY_ID, open_tenant(), Role.admin)
        principal = self.keys.authenticate(token) if token else None
        if principal is not None:
            return principal
        self.limiter.failed_authentication(address)
        if token:
            raise UnauthenticatedError("invalid API key")
        raise UnauthenticatedError("missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")

    def authorize(self, principal: Principal, needed: Role) -> None:
        """The route's role, then the key's rate limit and token quota, then the tenant's budget (not on admin
        routes: they cost nothing, and one of them is where a budget is raised)."""
        if not principal.role.allows(needed):
            raise ForbiddenError(needed, principal.role)
        if principal.key_id != ANONYMOUS_KEY_ID:
            self.limiter.admit(principal)
        if needed is not Role.admin:
            self.budgets.check(principal.tenant)

    def reserve(self, principal: Principal) -> Reservation:
        """Before an answer is generated: ``reservation_tokens`` against the key's quota, the most one answer can
        cost against the tenant's budget; refused (429) when either is used up by what was spent and reserved."""
        keyed = principal.key_id != ANONYMOUS_KEY_ID
        reservation = Reservation(id=uuid.uuid4().hex, tokens=self.reservation_tokens if keyed else 0)
        if reservation.tokens:
            self.limiter.reserve_tokens(principal, reservation.tokens)
        try:
            self.budgets.reserve(principal.tenant, reservation.id)
        except Exception:
            self.limiter.adjust_tokens(principal, -reservation.tokens)
            raise
        return reservation

    def settle(self, principal: Principal, reservation: Reservation, tokens: int) -> None:
        """After an answer (or a cut stream): its tokens replace the reservation in the key's count (a cache hit
        has none). The budget's reservation goes with the request's audit record."""
        if principal.key_id != ANONYMOUS_KEY_ID:
            self.limiter.adjust_tokens(principal, tokens - reservation.tokens)
