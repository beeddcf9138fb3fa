"""``ragops ingest``: index files and directories into a collection."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from app.cli.common import EXIT_OK, EXIT_PARTIAL, open_services, scope_from, settings_from

if TYPE_CHECKING:
    from tqdm import tqdm

    from app.cli.common import Commands


def add_parser(commands: Commands) -> None:
    ingest = commands.add_parser("ingest", help="index files: .md .txt .rst .html .pdf .jsonl, or directories")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ingest.add_argument("--collection", help="collection name (default: the default_collection setting)")
    ingest.add_argument("--tenant", help="tenant (default: the default_tenant setting)")
    ingest.add_argument("--prune", action="store_true", help="remove documents of the collection not seen now")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    settings = settings_from(args)
    scope = scope_from(args, settings)
    services = open_services(settings)
    try:

        def progress(total: int) -> tqdm[NoReturn]:
            return tqdm(total=total, unit="chunk", desc="indexing", disable=True if args.json else None)

        report = services.ingestor.ingest_paths(args.paths, scope, prune=args.prune, progress=progress)
    finally:
        services.close()
    if args.json:
        print(json.dumps({"collection": scope.collection, "tenant": scope.tenant, **report.to_dict()}))
    else:
        for error in report.errors:
            print(f"skipped {error['source']}: {error['error']}", file=sys.stderr)
        print(report.summary())
    return EXIT_PARTIAL if report.errors else EXIT_OK
