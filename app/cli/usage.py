"""``ragops usage`` (requests, tokens and cost per period, tenant and key) and ``ragops budgets set|list|clear``
(tenants' monthly budgets). Both read and write the state store alone, so they work while a server runs on the
same data dir (SQLite in WAL mode lets them in beside it) or against the Postgres the replicas share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, moment_arg, open_state, settings_from
from retrieval.index import SCOPE_NAME_RULE, is_scope_name

if TYPE_CHECKING:
    from app.cli.common import Commands
    from serving.governance.usage import BudgetStanding, BudgetUpdate, UsageReport

CLI_ADMIN = "cli"  # who set a budget from the command line (the budgets table's updated_by)


def add_parser(commands: Commands) -> None:
    usage = commands.add_parser("usage", help="requests, tokens and cost per period, tenant and key")
    usage.add_argument("--tenant", help="one tenant (default: every tenant)")
    usage.add_argument("--since", help="first day: 2026-11-01, an ISO time, or 30d ago (default: this month's first)")
    usage.add_argument("--until", help="last day, inclusive (default: today)")
    usage.add_argument("--by", choices=("day", "month"), default="month", help="totals per UTC day or month")
    usage.add_argument("--json", action="store_true", help="print the report as JSON")
    usage.set_defaults(handler=run_usage)

    budgets = commands.add_parser("budgets", help="set, list or clear tenants' monthly budgets")
    actions = budgets.add_subparsers(dest="budgets_command", required=True, metavar="ACTION")
    set_ = actions.add_parser("set", help="set or change a tenant's monthly budget (USD)")
    set_.add_argument("--tenant", required=True)
    set_.add_argument("--monthly", required=True, type=float, metavar="USD")
    set_.add_argument("--soft", type=float, metavar="RATIO", help="share at which to warn (default: kept, or 0.8)")
    listing = actions.add_parser("list", help="every budget with this month's spend")
    listing.add_argument("--json", action="store_true")
    clear = actions.add_parser("clear", help="remove a tenant's budget (unlimited from then on)")
    clear.add_argument("--tenant", required=True)
    for action in (set_, listing, clear):
        action.set_defaults(handler=run_budgets)


def run_usage(args: argparse.Namespace) -> int:
    from serving.governance.usage import usage_report

    tenant = _tenant(args.tenant) if args.tenant is not None else None
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    settings = settings_from(args)
    with open_state(settings) as store:
        try:
            report = usage_report(store, since, until, tenant, args.by)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    print(report.model_dump_json(indent=2) if args.json else "\n".join(_usage_table(report)))
    return EXIT_OK


def run_budgets(args: argparse.Namespace) -> int:
    from serving.governance.usage import Budgets

    settings = settings_from(args)
    tenant = _tenant(args.tenant) if args.budgets_command != "list" else ""
    with open_state(settings) as store:
        budgets = Budgets(store, settings.costs.budget_soft_ratio, None)
        if args.budgets_command == "list":
            standings = budgets.standings()
            print(_standings_json(standings) if args.json else "\n".join(_budget_table(standings)))
        elif args.budgets_command == "clear":
            if not budgets.clear(tenant):
                raise CliError(f"tenant {tenant!r} has no budget", EXIT_FAILURE)
            print(f"cleared the budget of {tenant}: unlimited")
        else:
            standing = budgets.set(tenant, _budget_update(args), CLI_ADMIN)
            print("\n".join(_budget_table([standing])))
    return EXIT_OK


def _budget_update(args: argparse.Namespace) -> BudgetUpdate:
    from serving.governance.usage import BudgetUpdate

    try:
        return BudgetUpdate(monthly_usd=args.monthly, soft_ratio=args.soft)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--monthly" if first["loc"][0] == "monthly_usd" else "--soft"
        raise CliError(f"{flag}: {first['msg']}") from exc


def _tenant(name: str) -> str:
    if not is_scope_name(name):
        raise CliError(f"--tenant must be {SCOPE_NAME_RULE}: {name!r}")
    return name


def _moment(text: str | None, flag: str) -> datetime | None:
    return None if text is None else moment_arg(text, flag)


def _usage_table(report: UsageReport) -> Iterator[str]:
    scope = report.tenant or "every tenant"
    yield f"usage of {scope}, {report.since} to {report.until}, per {report.by}"
    row = "{:<10} {:<20} {:<24} {:>9} {:>7} {:>12} {:>12} {:>12}"
    yield row.format("period", "tenant", "key", "requests", "cached", "prompt tok", "compl. tok", "cost USD")
    for r in report.rows:
        yield row.format(r.period, r.tenant, r.key_id, r.requests, r.cached, r.prompt_tokens, r.completion_tokens,
                         f"{r.cost_usd:.6f}")  # fmt: skip
    t = report.total
    yield row.format("total", "", "", t.requests, t.cached, t.prompt_tokens, t.completion_tokens, f"{t.cost_usd:.6f}")


def _budget_table(standings: list[BudgetStanding]) -> Iterator[str]:
    if not standings:
        yield "no budgets: every tenant is unlimited"
        return
    row = "{:<20} {:>12} {:>12} {:>7} {:>5}  {:<11} {}"
    yield row.format("tenant", "monthly USD", "spent USD", "used", "soft", "state", "period ends")
    for s in standings:
        yield row.format(s.tenant, f"{s.monthly_usd:.4f}", f"{s.spent_usd:.6f}", f"{s.used_ratio:.1%}",
                         f"{s.soft_ratio:.2f}", s.state, s.period_end)  # fmt: skip


def _standings_json(standings: list[BudgetStanding]) -> str:
    return json.dumps({"budgets": [s.model_dump() for s in standings]}, indent=2)
