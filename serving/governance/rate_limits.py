"""Rate limits and quotas (admission's ``Limiter``), counted by the ``limits`` library: in process, or in
Redis so that every replica counts against the same limits.

- Per key: requests per minute (a moving window: at most N in any 60 s) and tokens per day (a fixed window that
  starts with the key's first counted answer). A chat request reserves ``quota_reservation_tokens`` before it is
  answered and is refused when what was used and reserved already reached the quota; its answer's tokens replace
  the reservation afterwards. So a key ends a day over its quota by at most one reservation, however many requests
  run in parallel. A key's own limits win over its role's.
- Per client address: failed authentications per minute (a moving window); once used up, every request from the
  address is refused until the window has room, even with a good key, so guessing keys costs a minute per
  ``auth_failures_per_minute`` guesses.

Redis unreachable: with ``rate_limit_fail=open`` (default) the limits are counted in process until Redis answers
again (each replica then allows up to the full limit on its own), with ``ragops_rate_limiter_degraded`` at 1 and
one log line each way; with ``closed``, the checks before a request refuse it with 503 meanwhile. Counting after
the fact (failed authentications, tokens) never refuses: it falls back to process memory in both modes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from redis import RedisError

from serving.governance.access import AdmissionUnavailableError, LimitExceededError, Principal, Role, RoleLimits
from serving.infra.redis_link import RedisOutage, redis_client
from serving.observe.metrics import ServiceMetrics

T = TypeVar("T")
KEY_PREFIX = "ragops-limits"  # every rate-limit key in Redis starts with it


@dataclass(frozen=True)
class _Counters:
    """The two strategies over one storage: moving windows count requests, a fixed window counts tokens (it can
    add an answer's tokens in one step, and keeps them even past the limit)."""

    requests: MovingWindowRateLimiter
    tokens: FixedWindowRateLimiter

    @classmethod
    def over(cls, storage: Storage) -> _Counters:
        return cls(MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage))

    def add(self, item: RateLimitItem, namespace: str, key: str, amount: int) -> int:
        """Add ``amount`` (may be negative) to a fixed window's count, as ``FixedWindowRateLimiter.hit`` does;
        the count after it."""
        return self.tokens.storage.incr(item.key_for(namespace, key), item.get_expiry(), amount=amount)


class RateLimits:
    def __init__(
        self,
        redis_url: str | None,
        fail_mode: Literal["open", "closed"],
        role_limits: dict[Role, RoleLimits],
        auth_failures_per_minute: int,
        metrics: ServiceMetrics,
    ) -> None:
        self._role_limits = role_limits
        self._auth_failures = RateLimitItemPerMinute(auth_failures_per_minute)
        self._metrics = metrics
        self._local = _Counters.over(MemoryStorage())
        self._shared: _Counters | None = None
        if redis_url is not None:
            pool = redis_client(redis_url).connection_pool  # its timeouts and retry rule, not redis-py's defaults
            self._shared = _Counters.over(RedisStorage(redis_url, connection_pool=pool, key_prefix=KEY_PREFIX))
        self._refuse_when_down = fail_mode == "closed"
        fallback = "refusing requests with 503" if self._refuse_when_down else "counting limits in process"
        self._outage = RedisOutage("rate limits", fallback, metrics.rate_limiter_degraded.set)

    def check_address(self, address: str) -> None:
        item = self._auth_failures
        if not self._counted(lambda c: c.requests.test(item, "auth", address), before_request=True):
            message = f"too many failed authentications from this address ({item.amount} a minute)"
            self._refuse(
                "auth_failures_per_minute", message, lambda c: c.requests.get_window_stats(item, "auth", address)
            )

    def failed_authentication(self, address: str) -> None:
        self._counted(lambda c: c.requests.hit(self._auth_failures, "auth", address), before_request=False)

    def admit(self, principal: Principal) -> None:
        key = principal.key_id
        rpm = self._requests_per_minute(principal)
        if not self._counted(lambda c: c.requests.hit(rpm, "requests", key), before_request=True):
            message = f"the key's limit of {rpm.amount} requests a minute is used up"
            self._refuse("requests_per_minute", message, lambda c: c.requests.get_window_stats(rpm, "requests", key))
        quota = self._tokens_per_day(principal)
        if not self._counted(lambda c: c.tokens.test(quota, "tokens", key), before_request=True):
            message = f"the key's quota of {quota.amount} tokens a day is used up"
            self._refuse("tokens_per_day", message, lambda c: c.tokens.get_window_stats(quota, "tokens", key))

    def reserve_tokens(self, principal: Principal, tokens: int) -> None:
        """Count ``tokens`` against the key's daily quota before an answer is generated, atomically with the check:
        refused (``tokens_per_day``) when what was used and reserved before already reached the quota. So parallel
        requests overshoot the quota by at most one reservation (when no answer takes more than it reserved)."""
        quota, key = self._tokens_per_day(principal), principal.key_id
        counted = self._counted(lambda c: c.add(quota, "tokens", key, tokens), before_request=True)
        if counted - tokens >= quota.amount:
            self.adjust_tokens(principal, -tokens)
            message = f"the key's quota of {quota.amount} tokens a day is used up (or reserved by requests in flight)"
            self._refuse("tokens_per_day", message, lambda c: c.tokens.get_window_stats(quota, "tokens", key))

    def adjust_tokens(self, principal: Principal, tokens: int) -> None:
        """Add ``tokens`` (negative: give back) to the key's count: an answer's tokens less what it reserved."""
        if tokens:
            quota = self._tokens_per_day(principal)
            self._counted(lambda c: c.add(quota, "tokens", principal.key_id, tokens), before_request=False)

    def _requests_per_minute(self, principal: Principal) -> RateLimitItem:
        own = principal.limits.requests_per_minute
        return RateLimitItemPerMinute(own or self._role_limits[principal.role].requests_per_minute)

    def _tokens_per_day(self, principal: Principal) -> RateLimitItem:
        own = principal.limits.tokens_per_day
        return RateLimitItemPerDay(own or self._role_limits[principal.role].tokens_per_day)

    def _refuse(self, limit: str, message: str, window: Callable[[_Counters], tuple[float, int]]) -> None:
        reset_at, _ = self._counted(window, before_request=True)
        retry_after_s = math.ceil(reset_at - time.time())
        self._metrics.rate_limit_refusals.labels(limit).inc()
        raise LimitExceededError(limit, f"{limit}: {message}; retry in {max(1, retry_after_s)} s", retry_after_s)

    def _counted(self, operation: Callable[[_Counters], T], before_request: bool) -> T:
        """``operation`` on the shared counters while Redis answers, else on the process's own; a check before a
        request is refused with 503 instead when the settings say so."""
        if self._shared is not None and self._outage.usable():
            try:
                result = operation(self._shared)
            except (RedisError, OSError) as error:
                self._metrics.redis_errors.labels("rate_limits").inc()
                self._outage.failed(error)
            else:
                self._outage.succeeded()
                return result
        if self._shared is not None and before_request and self._refuse_when_down:
            raise AdmissionUnavailableError(
                "rate limits cannot be checked: Redis is unreachable (rate_limit_fail=closed)"
            )
        return operation(self._local)
