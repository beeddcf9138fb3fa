"""Admission: the first stage of every request that is not public. ``identify``: the client address's
failed-authentication limit, then the key; ``authorize``: the route's role, the key's rate limit and token
quota, the tenant's budget (not on admin routes, which cost nothing and are where a budget is raised). Each
refusal is a typed ``AccessDeniedError``; what passes is the ``Principal`` the request acts as.

A server without keys (none in the settings, none ever made in the state store) lets every caller in as the
anonymous admin of the tenant the request names, as ragops did before keys had roles: ``serve`` refuses such a
server on a non-loopback address unless ``allow_open`` says it is meant. Per-key limits need a key, so none
apply there; budgets do."""

from __future__ import annotations

from collections.abc import Callable
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

    def add_tokens(self, principal: Principal, tokens: int) -> None:
        """Count an answer's tokens against the key's daily quota."""
        ...


class BudgetCheck(Protocol):
    def check(self, tenant: str) -> None:
        """Raise ``LimitExceededError('budget')`` when the tenant's hard budget for the period is used up."""
        ...


class Admission:
    def __init__(self, keys: KeyLookup, limiter: Limiter, budgets: BudgetCheck) -> None:
        self.keys = keys
        self.limiter = limiter
        self.budgets = budgets

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

    def settle(self, principal: Principal, tokens: int) -> None:
        """After an answer: its tokens count against the key's quota (a cache hit has none)."""
        if tokens and principal.key_id != ANONYMOUS_KEY_ID:
            self.limiter.add_tokens(principal, tokens)
