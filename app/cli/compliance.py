"""``ragops compliance report [--json] [--strict] [--html FILE] [--host HOST]``: each control with its evidence
and PASS, FAIL or NA (``app.compliance``; docs/guides/compliance.md).

Read-only: the state store (never created: a data dir without one is exit 2), the backup dir, the shipped probe
sets. The one deployment fact the data dir does not hold is the address the server binds: ``--host`` (default
``serve``'s, 127.0.0.1); give it the address ``ragops serve --host`` gets. Exit codes: 0 the report was made (with
``--strict``: and no control failed); 1 ``--strict`` and a control failed (stderr names them), or the store or
the HTML file failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, open_state, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.compliance.model import ComplianceReport

DEFAULT_HOST = "127.0.0.1"  # ragops serve's


def add_parser(commands: Commands) -> None:
    compliance = commands.add_parser("compliance", help="the compliance report: each control's evidence and status")
    actions = compliance.add_subparsers(dest="compliance_command", required=True, metavar="ACTION")
    report = actions.add_parser("report", help="run every control: PASS, FAIL or NA, with the evidence")
    report.add_argument("--json", action="store_true", help="the report as one JSON object")
    report.add_argument("--strict", action="store_true", help="exit 1 when any control fails (CI)")
    report.add_argument("--html", type=Path, metavar="FILE", help="also write the report as a self-contained page")
    report.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"the address the server binds (ragops serve --host; default {DEFAULT_HOST}): beyond loopback, keys "
        "are required",
    )
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from app.compliance.html import write_html
    from app.compliance.model import Deployment
    from app.compliance.runner import run_controls

    if not args.host.strip():
        raise CliError("--host must name an address, like 127.0.0.1 or 0.0.0.0")
    settings = settings_from(args)
    if settings.database_url is None and not settings.state_path.exists():
        raise CliError(f"no state store at {settings.state_path}: is {settings.data_dir} a deployment's data dir?")
    with open_state(settings) as state:
        deployment = Deployment(settings=settings, host=args.host.strip(), state=state, now=datetime.now(UTC))
        report = run_controls(deployment)
    print(report.model_dump_json(indent=1) if args.json else describe(report))
    if args.html is not None:
        try:
            write_html(args.html, report)
        except OSError as exc:
            raise CliError(f"cannot write {args.html}: {exc.strerror}", EXIT_FAILURE) from exc
        print(f"wrote {args.html}", file=sys.stderr)
    if args.strict and report.failed:
        raise CliError(f"compliance: {len(report.failed)} control(s) failed: {', '.join(report.failed)}", EXIT_FAILURE)
    return EXIT_OK


def describe(report: ComplianceReport) -> str:
    """One block per control: status, id and reason, then its evidence indented; a summary line last."""
    lines = [f"compliance report {report.generated_at} (ragops {report.ragops_version}, data dir {report.data_dir})"]
    for result in report.controls:
        lines.append(f"{result.status:<4}  {result.id}: {result.reason}")
        lines += [f"        {line}" for line in result.evidence]
    counts = report.counts()
    summary = f"{len(report.controls)} controls: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['NA']} NA"
    lines.append(summary + (f" (failed: {', '.join(report.failed)})" if report.failed else ""))
    return "\n".join(lines)
