"""Admin routes for cost: usage reports over the ``usage_daily`` ledger and tenants' monthly budgets
(``GET /v1/admin/usage``, ``GET /v1/admin/budgets``, ``PUT`` / ``DELETE /v1/admin/budgets/{tenant}``). Each notes
what it did for the audit trail; every tenant's figures are an admin's to see."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from app.api.deps import Admin, ServicesDep, moment_param
from app.api.errors import ApiError, error_responses
from app.api.middleware import note_admin_action
from app.container import Services
from retrieval.index import SCOPE_NAME_PATTERN, SCOPE_NAME_RULE, is_scope_name
from serving.governance.usage import Budgets, BudgetStanding, BudgetUpdate, UsagePeriod, UsageReport, usage_report

router = APIRouter(tags=["admin"], responses=error_responses(400, 401, 403, 429))

_MOMENT = "A date (2026-11-27), an ISO time, or a duration ago (24h, 30d)."
_TENANT = Path(description=f"The tenant ({SCOPE_NAME_RULE}).", json_schema_extra={"pattern": SCOPE_NAME_PATTERN})


class BudgetList(BaseModel):
    budgets: list[BudgetStanding]


class BudgetCleared(BaseModel):
    tenant: str
    deleted: Literal[True] = True


@router.get("/v1/admin/usage", response_model=UsageReport)
def usage(
    services: ServicesDep,
    caller: Admin,
    tenant: Annotated[str | None, Query(description="One tenant; unset: every tenant.")] = None,
    since: Annotated[str | None, Query(description=f"First day. {_MOMENT} Default: this month's first.")] = None,
    until: Annotated[str | None, Query(description=f"Last day, inclusive. {_MOMENT} Default: today.")] = None,
    by: Annotated[UsagePeriod, Query(description="Totals per day or per month (UTC).")] = "month",
) -> UsageReport:
    """Requests, cache hits, tokens and cost per period, tenant and key."""
    if tenant is not None:
        _check_tenant(tenant, "tenant")
    first, last = moment_param(since, "since"), moment_param(until, "until")
    note_admin_action("usage.read", tenant or "*", {"since": since, "until": until, "by": by})
    try:
        return usage_report(services.state, first, last, tenant, by)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="since") from exc


@router.get("/v1/admin/budgets", response_model=BudgetList)
def list_budgets(services: ServicesDep, caller: Admin) -> BudgetList:
    """Every tenant's monthly budget and what it has spent of it this month."""
    note_admin_action("budgets.list", "*")
    return BudgetList(budgets=_budgets(services).standings())


@router.put("/v1/admin/budgets/{tenant}", response_model=BudgetStanding)
def set_budget(
    tenant: Annotated[str, _TENANT], body: BudgetUpdate, services: ServicesDep, caller: Admin
) -> BudgetStanding:
    """Set, raise or lower a tenant's monthly budget: a tenant refused for its budget is let in again at once on
    this replica (within a second on the others) when the new budget is above its spend."""
    _check_tenant(tenant, "tenant")
    note_admin_action("budgets.set", tenant, body.model_dump())
    return _budgets(services).set(tenant, body, caller.key_id)


@router.delete("/v1/admin/budgets/{tenant}", response_model=BudgetCleared, responses=error_responses(404))
def clear_budget(tenant: Annotated[str, _TENANT], services: ServicesDep, caller: Admin) -> BudgetCleared:
    """Remove a tenant's budget: it is unlimited from then on."""
    _check_tenant(tenant, "tenant")
    note_admin_action("budgets.clear", tenant)
    if not _budgets(services).clear(tenant):
        raise ApiError(404, f"tenant {tenant!r} has no budget", param="tenant")
    return BudgetCleared(tenant=tenant)


def _budgets(services: Services) -> Budgets:
    budgets = services.admission.budgets
    if not isinstance(budgets, Budgets):  # the composition root wires Budgets; anything else is a wiring bug
        raise TypeError(f"admission's budget check is {type(budgets).__name__}, not Budgets")
    return budgets


def _check_tenant(tenant: str, param: str) -> None:
    if not is_scope_name(tenant):
        raise ApiError(400, f"{param} must be {SCOPE_NAME_RULE}", param=param)
