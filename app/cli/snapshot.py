"""``ragops snapshot create|restore``: a .tar.gz of the embedded index."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_OK, settings_from, with_snapshot_index

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
    from retrieval.index import SnapshotIndex

    def act(index: SnapshotIndex) -> str:
        if args.snapshot_command == "create":
            return str(index.snapshot(args.file))
        index.restore(args.file)
        return f"restored {args.file}: {index.count()} points"

    print(with_snapshot_index(settings_from(args), act))
    return EXIT_OK
