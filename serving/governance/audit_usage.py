"""The usage ledger as a function of the audit trail: which records count, and their totals per UTC day, tenant and
key. The audit writer adds a batch's totals to ``usage_daily`` (what budgets and usage reports read) in the
transaction that appends the batch; ``verify`` recomputes the same totals from the chained records (plus what the
last prune carried forward) and reports a ledger row that differs: an edit of ``usage_daily`` shows like an edit of
a record."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from serving.infra.clock import day_of, parse_stamp
from serving.infra.state_store import Cursor, Row

# Costs are summed in another order by the writer (per batch) than by verify (per record): floats may differ in
# their last bits, never by a cent's millionth.
COST_TOLERANCE_USD = 1e-6


class UsageLine(BaseModel):
    """One ledger row: the totals of one UTC day, tenant and key."""

    day: str
    tenant: str
    key_id: str
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.day, self.tenant, self.key_id

    def add(self, other: UsageLine) -> None:
        self.requests += other.requests
        self.cached += other.cached
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd

    def differs(self, other: UsageLine) -> bool:
        counts = ("requests", "cached", "prompt_tokens", "completion_tokens")
        return any(getattr(self, name) != getattr(other, name) for name in counts) or not math.isclose(
            self.cost_usd, other.cost_usd, abs_tol=COST_TOLERANCE_USD
        )

    def totals(self) -> str:
        return (f"{self.requests} requests ({self.cached} cached), {self.prompt_tokens}+{self.completion_tokens} "
                f"tokens, ${self.cost_usd:.6f}")  # fmt: skip

    @classmethod
    def of_row(cls, row: Row) -> UsageLine:
        # Postgres hands sums of BIGINT as NUMERIC: ints and floats again here.
        return cls(day=row["day"], tenant=row["tenant"], key_id=row["key_id"], requests=int(row["requests"]),
                   cached=int(row["cached"]), prompt_tokens=int(row["prompt_tokens"]),
                   completion_tokens=int(row["completion_tokens"]), cost_usd=float(row["cost_usd"]))  # fmt: skip


def usage_of(record: Mapping[str, Any]) -> UsageLine | None:
    """What a record (its fields, as hashed) adds to the ledger: a request served to a key; None for one refused
    or rejected, or made by no key."""
    key_id, tenant, status = record.get("key_id"), record.get("tenant"), record.get("status")
    if not isinstance(key_id, str) or not isinstance(tenant, str) or not isinstance(status, int) or status >= 400:
        return None
    return UsageLine(
        day=day_of(parse_stamp(str(record["ts"]))), tenant=tenant, key_id=key_id, requests=1,
        cached=int(bool(record.get("cached"))), prompt_tokens=int(record.get("prompt_tokens") or 0),
        completion_tokens=int(record.get("completion_tokens") or 0), cost_usd=float(record.get("cost_usd") or 0.0),
    )  # fmt: skip


@dataclass
class UsageTally:
    """Ledger lines summed per (day, tenant, key)."""

    lines: dict[tuple[str, str, str], UsageLine] = field(default_factory=dict)

    def add(self, line: UsageLine | None) -> None:
        if line is not None:
            self.lines.setdefault(line.key, UsageLine(day=line.day, tenant=line.tenant, key_id=line.key_id)).add(line)

    def add_all(self, lines: Iterable[UsageLine]) -> None:
        for line in lines:
            self.add(line)

    def sorted(self) -> list[UsageLine]:
        return [self.lines[key] for key in sorted(self.lines)]


_UPSERT = (
    "INSERT INTO usage_daily (day, tenant, key_id, requests, cached, prompt_tokens, completion_tokens, cost_usd) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, tenant, key_id) DO UPDATE SET "
    "requests = usage_daily.requests + excluded.requests, cached = usage_daily.cached + excluded.cached, "
    "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, "
    "cost_usd = usage_daily.cost_usd + excluded.cost_usd"
)


def add_to_ledger(cur: Cursor, tally: UsageTally) -> None:
    """Add ``tally`` to ``usage_daily`` inside the caller's transaction."""
    rows = [(*line.key, line.requests, line.cached, line.prompt_tokens, line.completion_tokens, line.cost_usd)
            for line in tally.sorted()]  # fmt: skip
    if rows:
        cur.executemany(_UPSERT, rows)


def ledger_differences(ledger: Iterable[UsageLine], chained: UsageTally) -> list[str]:
    """Where ``usage_daily`` is not what the chained records add up to: one line per row that differs, is
    missing, or has no records behind it."""
    found = {line.key: line for line in ledger}
    problems = []
    for key in sorted(found.keys() | chained.lines.keys()):
        stored, expected = found.get(key), chained.lines.get(key)
        where = "usage_daily row (day {}, tenant {!r}, key {!r})".format(*key)
        if stored is None:
            problems.append(f"{where} is missing")
        elif expected is None:
            if stored.requests or stored.cost_usd or stored.prompt_tokens or stored.completion_tokens:
                problems.append(f"{where} has no records behind it")
        elif stored.differs(expected):
            problems.append(f"{where} holds {stored.totals()}; the chain says {expected.totals()}")
    return problems
