"""``ragops snapshot create|restore``: a .tar.gz of the embedded index."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, open_services, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands


def add_parser(commands: Commands) -> None:
    snapshot = commands.add_parser("snapshot", help="write or restore a snapshot of the embedded index")
    actions = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="write the index to FILE (.tar.gz)")
    create.add_argument("file", type=Path)
    create.set_defaults(handler=run_snapshot)
    restore = actions.add_parser("restore", help="replace the index with FILE's")
    restore.add_argument("file", type=Path)
    restore.set_defaults(handler=run_snapshot)


def run_snapshot(args: argparse.Namespace) -> int:
    from retrieval.index import IndexUnavailableError, SnapshotIndex

    services = open_services(settings_from(args))
    try:
        index = services.index
        if not isinstance(index, SnapshotIndex):
            raise CliError("snapshots cover the embedded index; use Qdrant's own snapshots for a server")
        if args.snapshot_command == "create":
            print(index.snapshot(args.file))
        else:
            index.restore(args.file)
            print(f"restored {args.file}: {index.count()} points")
    except IndexUnavailableError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    finally:
        services.close()
    return EXIT_OK
