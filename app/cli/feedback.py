"""``ragops feedback export`` (rated answers as an eval suite: a user's complaint becomes a regression case) and
``ragops feedback prune`` (answers and their feedback past ``feedback_retention_days``; the server also prunes
at start and daily). Both use the state store alone, so they work beside a running server."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILURE, EXIT_OK, GENERATORS, CliError, moment_arg, open_state, settings_from
from retrieval.index import SCOPE_NAME_RULE, is_scope_name

if TYPE_CHECKING:
    from app.cli.common import Commands
    from evals.feedback_suite import ExportedSuite


def add_parser(commands: Commands) -> None:
    feedback = commands.add_parser("feedback", help="export rated answers as an eval suite; prune old answers")
    actions = feedback.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="rated answers -> evals/datasets, evals/corpora, evals/suites")
    export.add_argument("--suite", required=True, metavar="NAME", help="the suite's name (and its files')")
    # serving.loop.feedback.Rating's values, written out: importing it would slow every command's start.
    export.add_argument("--rating", choices=("up", "down"), help="only this rating (default: both)")
    export.add_argument("--since", help="rated since: 2026-11-01, an ISO time, or 7d ago (default: all kept)")
    export.add_argument(
        "--tenant", help="whose answers (default: default_tenant); one tenant a suite, as document ids are per tenant"
    )
    export.add_argument("--out", type=Path, default=Path(), help="root the evals/ files go under (default: .)")
    export.add_argument("--generator", choices=GENERATORS, default="llamacpp", help="the suite's generator")
    export.add_argument("--force", action="store_true", help="replace the suite's files when they exist")
    export.add_argument("--json", action="store_true", help="print what was written as JSON")
    export.set_defaults(handler=run_export)
    prune = actions.add_parser("prune", help="delete answers and their feedback past feedback_retention_days")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(handler=run_prune)


def run_export(args: argparse.Namespace) -> int:
    from evals.feedback_suite import ExportError, NothingToExportError, export_suite
    from serving.loop.feedback import FeedbackStore

    settings = settings_from(args)
    tenant = settings.defaults.tenant if args.tenant is None else args.tenant
    if not is_scope_name(tenant):
        raise CliError(f"--tenant must be {SCOPE_NAME_RULE}: {tenant!r}")
    since = moment_arg(args.since, "--since") if args.since is not None else None
    with open_state(settings) as store:
        cases = FeedbackStore(store).cases(since, args.rating, tenant)
    try:
        exported = export_suite(cases, args.suite, args.out, args.generator, args.force)
    except NothingToExportError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    except ExportError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # --out is a file, read-only, or gone
        raise CliError(f"cannot write the suite under {args.out}: {exc.strerror or exc}") from exc
    print(_export_json(exported) if args.json else _export_summary(exported))
    return EXIT_OK


def run_prune(args: argparse.Namespace) -> int:
    from serving.infra.clock import parse_stamp, stamp, utc_now
    from serving.loop.answer_log import prune_answers

    settings = settings_from(args)
    days = settings.retention.feedback_retention_days
    cutoff = parse_stamp(utc_now()) - timedelta(days=days)
    with open_state(settings) as store:
        pruned = prune_answers(store, cutoff)
    before = stamp(cutoff)
    if args.json:
        print(json.dumps({"answers": pruned, "before": before, "retention_days": days}))
    else:
        print(f"pruned {pruned} answers (and their feedback) kept before {before}")
    return EXIT_OK


def _export_summary(exported: ExportedSuite) -> str:
    suite = exported.suite
    return (
        f"wrote suite {suite.name}: {exported.samples} samples, {exported.documents} documents\n"
        f"  {suite.path}\n  {suite.dataset}\n  {suite.corpus[0]}\n"
        f"run it: ragops eval run {suite.path} --out DIR (then gate prompts against DIR/results.json)"
    )


def _export_json(exported: ExportedSuite) -> str:
    suite = exported.suite
    return json.dumps(
        {"suite": str(suite.path), "dataset": str(suite.dataset), "corpus": str(suite.corpus[0]),
         "samples": exported.samples, "documents": exported.documents},
    )  # fmt: skip
