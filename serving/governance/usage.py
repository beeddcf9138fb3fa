"""What answers cost and who spent it: the price table (settings ``prices``), the pricing step every final answer
goes through, tenants' monthly budgets (``Budgets``, admission's budget check) and usage reports over the
``usage_daily`` ledger (written by the audit writer, in the same transaction as the audit records).

Cost follows what was generated: tokens at the model's token prices plus generation time at its hourly price.
An answer no generator wrote (a refusal, an abstention by the similarity rule, an outage) and a cache hit
(usage already zeroed) cost nothing; so does a model without a price (the extractive generator unless priced).

Budgets are checked against the month's spend as the ledger holds it plus what requests in flight reserved: each
chat request of a tenant with a budget reserves the most one answer can cost (``budget_reservations``) in one
transaction with the check, and the audit writer releases it in the transaction that adds the answer's real cost
to the ledger. Parallel requests, on any number of replicas, overshoot a budget by at most one reservation."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.governance.access import LimitExceededError
from serving.infra.clock import day_of, month_start, next_month_start, stamp, utc_now

if TYPE_CHECKING:
    from serving.contracts.answer import Answer
    from serving.infra.state_store import Cursor, Row, StateStore
    from serving.observe.metrics import ServiceMetrics

budget_log = logging.getLogger("ragops.budgets")

UsagePeriod = Literal["day", "month"]
BudgetState = Literal["within", "soft_limit", "exhausted"]
BUDGET_CACHE_S = 1.0  # how stale a replica's view of a tenant's spend may be (for the refusal of an exhausted one)
RESERVATION_TTL = timedelta(minutes=15)  # a reservation whose request's record never came (its replica died) lapses


class ModelPrice(BaseModel):
    """A model's price: per 1k prompt and completion tokens (hosted APIs), or per hour of generation time
    (self-hosted: a GPU-hour price turned into cost by how long the answer took to generate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_per_1k: float = Field(0.0, ge=0)
    completion_per_1k: float = Field(0.0, ge=0)
    per_hour: float = Field(0.0, ge=0, description="Price of an hour of generation (e.g. a GPU-hour).")

    def cost(self, prompt_tokens: int, completion_tokens: int, generation_ms: float) -> float:
        tokens = (prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k) / 1000
        return tokens + generation_ms / 3_600_000 * self.per_hour


class AnswerPricing:
    """The pricing step: sets a final answer's ``cost_usd`` from the price table (keyed by the answer's model,
    else its generator's name) and counts it in ``ragops_cost_usd_total`` for the request's tenant."""

    def __init__(self, prices: Mapping[str, ModelPrice], metrics: ServiceMetrics | None = None) -> None:
        self._prices = dict(prices)
        self._metrics = metrics

    def price(self, answer: Answer, tenant: str) -> Answer:
        cost = self.cost(answer)
        if cost > 0 and self._metrics is not None:
            self._metrics.cost.labels(tenant).inc(cost)
        return answer.model_copy(update={"cost_usd": cost})

    def cost(self, answer: Answer) -> float:
        if answer.cached or answer.generator is None:  # nothing was generated for it
            return 0.0
        price = self._prices.get(answer.model or "")
        if price is None:
            price = self._prices.get(answer.generator)
        if price is None:
            return 0.0
        usage = answer.usage
        return price.cost(usage.prompt_tokens, usage.completion_tokens, answer.timings_ms.get("generate", 0.0))


class BudgetUpdate(BaseModel):
    """A tenant's budget as an admin sets it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    monthly_usd: float = Field(gt=0, le=1e12, allow_inf_nan=False, description="Spend allowed per UTC month.")
    soft_ratio: float | None = Field(
        None, gt=0, le=1, description="Share of the budget at which to warn; unset: the tenant's, else the setting."
    )


class BudgetStanding(BaseModel):
    """A tenant's monthly budget and what it has spent of it this month (UTC)."""

    tenant: str
    monthly_usd: float
    soft_ratio: float
    spent_usd: float
    reserved_usd: float = Field(0.0, description="Set aside by requests in flight (the most each can cost).")
    used_ratio: float
    state: BudgetState
    period_start: str
    period_end: str = Field(description="When the month ends and spending starts from 0 again.")
    updated_at: str
    updated_by: str | None

    @classmethod
    def of(cls, row: Row, now: datetime) -> BudgetStanding:
        """From a row of ``_STANDINGS``."""
        monthly, soft = row["monthly_usd"], row["soft_ratio"]
        spent, used = float(row["spent_usd"]), float(row["spent_usd"]) / float(monthly)
        state: BudgetState = "exhausted" if spent >= monthly else "soft_limit" if used >= soft else "within"
        return cls(
            tenant=row["tenant"], monthly_usd=monthly, soft_ratio=soft, spent_usd=spent, used_ratio=used,
            reserved_usd=float(row["reserved_usd"]),
            state=state, period_start=stamp(month_start(now)), period_end=stamp(next_month_start(now)),
            updated_at=row["updated_at"], updated_by=row["updated_by"],
        )  # fmt: skip

    def refusal(self, now: datetime) -> LimitExceededError:
        """The 429 a request of this tenant gets once the budget is used up (spent, or reserved by requests in
        flight)."""
        ends = next_month_start(now)
        in_flight = f" and reserved ${self.reserved_usd:.4f} for requests in flight" if self.reserved_usd else ""
        return LimitExceededError(
            "budget",
            f"tenant {self.tenant!r} has spent ${self.spent_usd:.4f}{in_flight} of its ${self.monthly_usd:.4f} "
            f"monthly budget; requests are refused until the period ends at {stamp(ends)} or an admin raises it",
            math.ceil((ends - now).total_seconds()),
        )


# Budgets with this month's spend (the ledger's cost since the month's first day) and what requests in flight
# reserved: one statement, so one snapshot on Postgres too (the audit writer moves a request's cost from reserved
# to spent in one transaction; two statements could see it in neither).
_STANDINGS = """SELECT b.tenant, b.monthly_usd, b.soft_ratio, b.updated_at, b.updated_by,
    COALESCE((SELECT SUM(u.cost_usd) FROM usage_daily u WHERE u.tenant = b.tenant AND u.day >= ?), 0) AS spent_usd,
    COALESCE((SELECT SUM(r.usd) FROM budget_reservations r WHERE r.tenant = b.tenant AND r.expires_at >= ?), 0)
        AS reserved_usd
    FROM budgets b"""


_SET_BUDGET = """INSERT INTO budgets (tenant, monthly_usd, soft_ratio, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (tenant) DO UPDATE SET monthly_usd = excluded.monthly_usd, soft_ratio = excluded.soft_ratio,
    updated_at = excluded.updated_at, updated_by = excluded.updated_by"""

# The warnings a standing has reached (each logged once per tenant and month).
_REACHED: dict[BudgetState, tuple[BudgetState, ...]] = {
    "within": (),
    "soft_limit": ("soft_limit",),
    "exhausted": ("soft_limit", "exhausted"),
}


def _standings(cursor: Cursor, now: datetime, tenant: str | None = None) -> list[BudgetStanding]:
    where, params = (" WHERE b.tenant = ?", [tenant]) if tenant is not None else ("", [])
    rows = cursor.execute(_STANDINGS + where + " ORDER BY b.tenant", [day_of(month_start(now)), stamp(now), *params])
    return [BudgetStanding.of(row, now) for row in rows]


class Budgets:
    """Tenants' monthly budgets (table ``budgets``, set by admins), checked at admission: a tenant whose
    month spend reached its budget is refused (429 ``budget``) until the month ends or an admin raises it.
    Tenants without a budget are unlimited. Each replica reads a tenant's standing at most every ``cache_s``
    seconds, so a request costs no query most of the time; each read sets ``ragops_budget_used_ratio`` and logs
    one warning per tenant and month when the soft threshold (and again when the budget) is reached."""

    def __init__(
        self,
        store: StateStore,
        soft_ratio: float,
        metrics: ServiceMetrics | None,
        cache_s: float = BUDGET_CACHE_S,
        reservation_usd: float = 0.0,
    ) -> None:
        self._store = store
        self.default_soft_ratio = soft_ratio
        self._metrics = metrics
        self._cache_s = cache_s
        self._reservation_usd = reservation_usd
        self._cache: dict[str, tuple[float, BudgetStanding | None]] = {}
        self._warned: set[tuple[str, str, BudgetState]] = set()
        self._lock = threading.Lock()

    def check(self, tenant: str) -> None:
        standing = self._cached(tenant)
        if standing is not None and standing.state == "exhausted":
            raise standing.refusal(_now())

    def reserve(self, tenant: str, reservation_id: str) -> None:
        """Set aside ``reservation_usd`` (the most one answer can cost) for a request of a tenant with a budget, in
        one transaction with the check that spent plus reserved is still under the budget: parallel requests, on
        every replica, overshoot it by at most one reservation. Nothing to do without a budget or prices."""
        standing = self._cached(tenant)
        if standing is None or self._reservation_usd <= 0:
            return
        now = _now()
        with self._store.transaction(write=True) as cursor:
            cursor.lock(f"budget:{tenant}")
            cursor.execute("DELETE FROM budget_reservations WHERE expires_at < ?", [stamp(now)])  # lapsed
            found = _standings(cursor, now, tenant)
            if not found:
                return  # cleared meanwhile
            fresh = found[0]
            refused = fresh.spent_usd + fresh.reserved_usd >= fresh.monthly_usd
            if not refused:
                cursor.execute(
                    "INSERT INTO budget_reservations (request_id, tenant, usd, expires_at) VALUES (?, ?, ?, ?)",
                    [reservation_id, tenant, self._reservation_usd, stamp(now + RESERVATION_TTL)],
                )
        self._remember(tenant, fresh, time.monotonic())  # a fresh read: the gauges and warnings follow it
        if refused:
            raise fresh.refusal(now)

    def standings(self, tenant: str | None = None) -> list[BudgetStanding]:
        """Every budget (or ``tenant``'s) with this month's spend, read now."""
        with self._store.transaction() as cursor:
            return _standings(cursor, _now(), tenant)

    def set(self, tenant: str, update: BudgetUpdate, updated_by: str | None) -> BudgetStanding:
        """Set, raise or lower ``tenant``'s budget; without a soft ratio, the tenant keeps its own (a new budget
        gets the ``budget_soft_ratio`` setting)."""
        with self._store.transaction(write=True) as cursor:
            old = cursor.execute("SELECT soft_ratio FROM budgets WHERE tenant = ?", [tenant])
            soft = update.soft_ratio or (float(old[0]["soft_ratio"]) if old else self.default_soft_ratio)
            cursor.execute(_SET_BUDGET, [tenant, update.monthly_usd, soft, utc_now(), updated_by])
            (standing,) = _standings(cursor, _now(), tenant)
        self._forget(tenant)
        return standing

    def clear(self, tenant: str) -> bool:
        """Remove ``tenant``'s budget (it becomes unlimited); False when it had none."""
        with self._store.transaction(write=True) as cursor:
            existed = bool(cursor.execute("SELECT 1 FROM budgets WHERE tenant = ?", [tenant]))
            cursor.execute("DELETE FROM budgets WHERE tenant = ?", [tenant])
        self._forget(tenant)
        return existed

    def _cached(self, tenant: str) -> BudgetStanding | None:
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(tenant)
        if entry is not None and entry[0] > now:
            return entry[1]
        found = self.standings(tenant)
        standing = found[0] if found else None
        self._remember(tenant, standing, now)
        return standing

    def _remember(self, tenant: str, standing: BudgetStanding | None, read_at: float) -> None:
        with self._lock:
            self._cache[tenant] = (read_at + self._cache_s, standing)
        self._watch(tenant, standing)

    def _forget(self, tenant: str) -> None:
        """This replica sees an admin's change at once (the others within ``cache_s``)."""
        with self._lock:
            self._cache.pop(tenant, None)

    def _watch(self, tenant: str, standing: BudgetStanding | None) -> None:
        """The gauges and the once-a-month warnings, from a fresh read."""
        if self._metrics is not None:
            if standing is None:
                _remove_label(self._metrics.budget_used, tenant)
                _remove_label(self._metrics.budget_soft_ratio, tenant)
            else:
                self._metrics.budget_used.labels(tenant).set(standing.used_ratio)
                self._metrics.budget_soft_ratio.labels(tenant).set(standing.soft_ratio)
        if standing is not None:
            for level in _REACHED[standing.state]:
                self._warn_once(standing, level)

    def _warn_once(self, standing: BudgetStanding, level: BudgetState) -> None:
        key = (standing.tenant, standing.period_start, level)
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        budget_log.warning(
            "budget soft threshold reached" if level == "soft_limit" else "budget used up: requests refused",
            extra={"tenant": standing.tenant, "spent_usd": round(standing.spent_usd, 6),
                   "budget_usd": standing.monthly_usd, "used_ratio": round(standing.used_ratio, 4),
                   "soft_ratio": standing.soft_ratio, "period_end": standing.period_end},
        )  # fmt: skip


def _remove_label(gauge: Any, tenant: str) -> None:
    with contextlib.suppress(KeyError):  # never set on this replica
        gauge.remove(tenant)


def _now() -> datetime:
    return datetime.now(UTC)


class UsageTotals(BaseModel):
    requests: int = 0
    cached: int = Field(0, description="Requests answered from the answer cache (no tokens, no cost).")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class UsageRow(UsageTotals):
    period: str = Field(description="The UTC day (2026-11-27) or month (2026-11).")
    tenant: str
    key_id: str


class UsageReport(BaseModel):
    """Usage per period, tenant and key over whole UTC days, ``since`` to ``until`` inclusive."""

    by: UsagePeriod
    since: str
    until: str
    tenant: str | None
    rows: list[UsageRow]
    total: UsageTotals


_PERIOD = {"day": "day", "month": "substr(day, 1, 7)"}  # days are 2026-11-27: their first 7 characters, the month


def usage_report(
    store: StateStore, since: datetime | None, until: datetime | None, tenant: str | None, by: UsagePeriod
) -> UsageReport:
    """Totals per ``by`` period, tenant and key from ``since``'s day (default: this month's first) through
    ``until``'s (default: today), of ``tenant`` or every tenant. ``ValueError`` when ``since`` is after ``until``."""
    now = _now()
    first, last = day_of(since or month_start(now)), day_of(until or now)
    if first > last:
        raise ValueError(f"since ({first}) is after until ({last})")
    where, params = ("day >= ? AND day <= ?", [first, last])
    if tenant is not None:
        where, params = where + " AND tenant = ?", [*params, tenant]
    sql = (
        f"SELECT {_PERIOD[by]} AS period, tenant, key_id, SUM(requests) AS requests, SUM(cached) AS cached, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, SUM(cost_usd) AS cost_usd "
        f"FROM usage_daily WHERE {where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    with store.transaction() as cursor:
        rows = [_usage_row(row) for row in cursor.execute(sql, params)]
    return UsageReport(by=by, since=first, until=last, tenant=tenant, rows=rows, total=_total(rows))


def _usage_row(row: Row) -> UsageRow:
    # Postgres sums BIGINT as NUMERIC: ints again here.
    return UsageRow(
        period=row["period"], tenant=row["tenant"], key_id=row["key_id"], requests=int(row["requests"]),
        cached=int(row["cached"]), prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]), cost_usd=float(row["cost_usd"]),
    )  # fmt: skip


def _total(rows: list[UsageRow]) -> UsageTotals:
    fields = UsageTotals.model_fields
    return UsageTotals(**{name: sum(getattr(row, name) for row in rows) for name in fields})
