"""The ``ragops`` command line. Errors are one line on stderr with an exit code:
0 ok, 1 runtime failure (``eval gate``: a regression), 2 bad usage or input (``eval gate``: a broken run),
3 partial (some inputs failed, the rest were processed).

Each command group is a module that adds its subparser(s), each with the handler that runs it
(``set_defaults(handler=...)``); shared helpers are in ``app.cli.common``. Modules import what is heavy
inside their handlers, so building the parser (``ragops --help``) stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app.cli import (
    ask,
    audit,
    backup,
    canary,
    compliance,
    doctor,
    drift,
    erase,
    evals,
    feedback,
    guards,
    ingest,
    keys,
    lineage,
    prompts,
    retention,
    search,
    serve,
    snapshot,
    usage,
)
from app.cli.common import CliError, Handler
from app.version import installed_version

__all__ = ["main"]

# In the order of ``ragops --help``.
_COMMAND_MODULES = (
    ingest,
    search,
    ask,
    prompts,
    evals,
    lineage,
    feedback,
    drift,
    canary,
    serve,
    doctor,
    guards,
    snapshot,
    backup,
    keys,
    usage,
    audit,
    erase,
    retention,
    compliance,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragops", description="Retrieval-augmented chat service and LLMOps harness.")
    parser.add_argument("--data-dir", type=Path, help="index, caches and logs (default: $RAGOPS_DATA_DIR or ./.ragops)")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $RAGOPS_CONFIG)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ragops`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    from app.logs import configure_cli_progress  # after parsing: `ragops --help` imports nothing more

    configure_cli_progress()  # `serve` replaces it with its JSON log
    try:
        return handler(args)
    except CliError as exc:
        print(f"ragops: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("ragops: interrupted", file=sys.stderr)
        return 130
