"""``ragops retention show|apply``: how long each store keeps what it holds (``serving.rights.retention_rules``, the
one table the docs render too), and the run that removes what is past its period, as the server does daily. Reads
the state store and the embedding cache alone (no index, no model), so it works while a server runs."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from app.cli.common import EXIT_OK, EXIT_PARTIAL, open_state, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from serving.rights.retention import RetentionReport, StoreRun


def add_parser(commands: Commands) -> None:
    retention = commands.add_parser("retention", help="each store's retention period; remove what is past it")
    actions = retention.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", aliases=["list"], help="every store: what it holds, its period as configured, who removes it"
    )
    show.add_argument("--json", action="store_true", help="the table as one JSON object")
    show.set_defaults(handler=run_show)
    apply = actions.add_parser(
        "apply", help="remove what each store holds past its period (the server also does, at start and daily)"
    )
    apply.add_argument("--dry-run", action="store_true", help="count what is past its period; remove nothing")
    apply.add_argument("--json", action="store_true", help="the report as one JSON object")
    apply.set_defaults(handler=run_apply)


def run_show(args: argparse.Namespace) -> int:
    from serving.rights.retention import RETENTION_RULES, describe_period

    settings = settings_from(args)
    periods = _periods(settings)
    rows: list[dict[str, Any]] = [
        {"store": rule.store, "enforced": rule.enforced, "setting": rule.setting,
         "period": describe_period(periods[rule.store], rule), "default_days": rule.default_days,
         "holds": rule.holds, "legal_note": rule.legal_note}
        for rule in RETENTION_RULES
    ]  # fmt: skip
    if args.json:
        print(json.dumps({"stores": rows}))
        return EXIT_OK
    table = [("store", "period", "how", "setting")]
    table += [(r["store"], r["period"], r["enforced"], r["setting"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    print("what each store holds, and why its period: docs/guides/retention.md (or `ragops retention show --json`)")
    return EXIT_OK


def run_apply(args: argparse.Namespace) -> int:
    from app.conversation_parts import build_conversations
    from app.parts import build_retention, embedding_cache_path
    from retrieval.embedding_cache import SqliteEmbeddingStore
    from serving.rights.retention import CLI

    settings = settings_from(args)
    cache = embedding_cache_path(settings)
    # No cache file: no query vectors to remove (and none created just to look).
    vectors = SqliteEmbeddingStore(cache) if cache.is_file() else None
    try:
        with open_state(settings) as state:
            conversations = build_conversations(settings, state)
            report = build_retention(settings, state, vectors, CLI, conversations=conversations).apply(args.dry_run)
    finally:
        if vectors is not None:
            vectors.close()
    print(report.model_dump_json() if args.json else describe(report))
    return EXIT_OK if report.ok else EXIT_PARTIAL


def describe(report: RetentionReport) -> str:
    """A line per store that a run removes from or that expires by itself; then the audit record."""
    lines = [_line(run, report.dry_run) for run in report.stores if run.enforced in ("pruned", "expires")]
    if report.audit_seq is not None:
        lines.append(f"recorded as audit record {report.audit_seq}")
    if report.audit_error is not None:
        lines.append(f"NOT recorded in the audit trail: {report.audit_error}")
    if report.reclaimed is False:
        lines.append("the state store's log is not truncated yet (another connection held it): the next run does it")
    return "\n".join(lines)


def _line(run: StoreRun, dry_run: bool) -> str:
    head = run.store if run.period == "-" else f"{run.store}: {run.period}"
    if run.enforced == "expires":
        return f"{head}, expires by itself"
    if run.error is not None:
        return f"{head}: FAILED: {run.error}"
    if run.cut_off is None:
        return f"{head}: {run.note or 'nothing to do'}"
    counted = run.past_period if dry_run else run.removed
    what = ", ".join(f"{n} {table}" for table, n in counted.items()) if counted else None
    verb = "would remove" if dry_run else "removed"
    said = f"{verb} {what}" if what else (run.note or f"{verb} nothing")
    if what and run.note:
        said += f" ({run.note})"
    return f"{head}, stamped before {run.cut_off}: {said}"


def _periods(settings: Settings) -> dict[str, Any]:
    from app.settings import flat_settings
    from serving.rights.retention import periods_from

    return periods_from({name: value for name, _, value in flat_settings(settings)})
