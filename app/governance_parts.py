"""The governance parts the composition root builds from settings: who may call (keys, rate limits, budgets: the
``Admission`` in front of every route) and the audit trail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.settings import Settings
from serving.governance.admission import Admission
from serving.infra.state_store import StateStore
from serving.observe.metrics import ServiceMetrics

if TYPE_CHECKING:
    from serving.governance.audit import AuditLog


def build_admission(settings: Settings, state: StateStore, metrics: ServiceMetrics) -> Admission:
    """Authentication, roles, rate limits, quotas and budgets."""
    from serving.governance.keys import Authenticator, KeyStore
    from serving.governance.rate_limits import RateLimits
    from serving.governance.usage import Budgets

    s = settings
    keys = Authenticator(KeyStore(state), s.access.api_keys, s.access.key_cache_s)
    limiter = RateLimits(
        s.redis_url, s.access.rate_limit_fail, s.access.role_limits, s.access.auth_failures_per_minute, metrics
    )
    # Reservations are released by the audit writer, which also keeps the ledger budgets read: without it, none.
    reservation_usd = s.costs.reservation_usd(s.answering.generation_timeout_s) if s.audit else 0.0
    budgets = Budgets(state, s.costs.budget_soft_ratio, metrics, reservation_usd=reservation_usd)
    return Admission(keys, limiter, budgets, s.costs.reservation_tokens)


def build_audit(settings: Settings, state: StateStore, metrics: ServiceMetrics) -> AuditLog:
    """The audit trail's writer (and the usage ledger's)."""
    from serving.governance.audit import AnchorSettings, AuditLog

    anchor = AnchorSettings(file=settings.audit_anchor_file, every_s=settings.audit_anchor_every_s)
    return AuditLog(state, settings.audit_content, metrics, anchor)
