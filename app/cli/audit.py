"""``ragops audit verify|export|prune``: the audit trail, read from the state store alone (no index, no model),
so it works while a server runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, moment_arg, open_state, settings_from
from retrieval.index import SCOPE_NAME_RULE, is_scope_name

if TYPE_CHECKING:
    from app.cli.common import Commands
    from serving.governance.audit_chain import VerifyResult


def add_parser(commands: Commands) -> None:
    audit = commands.add_parser("audit", help="verify, export or prune the audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = actions.add_parser("verify", help="re-hash the chain: exit 0 intact, 1 with the first bad record")
    check.add_argument("--json", action="store_true", help="the result as one JSON object")
    check.add_argument(
        "--anchor", metavar="SEQ:HASH", help="a head printed by an earlier verify, kept elsewhere: must still hold"
    )
    check.set_defaults(handler=run_verify)
    out = actions.add_parser("export", help="records as JSON lines, oldest first")
    out.add_argument("--since", required=True, help="2026-11-27, an ISO time, or ago: 24h, 30d")
    out.add_argument("--tenant", help="only this tenant's records")
    out.add_argument("--out", type=Path, help="file to write (default: stdout)")
    out.set_defaults(handler=run_export)
    prune = actions.add_parser("prune", help="delete records before a date, keeping a checkpoint to verify from")
    prune.add_argument("--before", required=True, help="2026-11-27, an ISO time, or ago: 90d")
    prune.set_defaults(handler=run_prune)


def run_verify(args: argparse.Namespace) -> int:
    from serving.governance.audit_chain import check_anchor, verify

    anchor = _anchor(args.anchor) if args.anchor else None
    with open_state(settings_from(args)) as store:
        result = verify(store)
        if result.ok and anchor is not None:
            try:
                rewritten = check_anchor(store, *anchor)
            except ValueError as exc:
                raise CliError(str(exc)) from exc
            if rewritten is not None:
                result = result.model_copy(update={"ok": False, "first_bad": rewritten})
    print(result.model_dump_json() if args.json else describe(result))
    return EXIT_OK if result.ok else EXIT_FAILURE


def _anchor(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise CliError(f"--anchor must be SEQ:HASH (a seq and 64 hex digits), as verify prints: {text!r}")
    return int(seq), digest.lower()


def describe(result: VerifyResult) -> str:
    head = f"head: {result.head_seq}:{result.head_hash} (keep it elsewhere; --anchor checks it later)"
    start = f" after checkpoint {result.checkpoint_seq}" if result.checkpoint_seq else ""
    if result.first_bad is None:
        return f"audit chain intact: {result.records} records{start}\n{head}"
    bad = result.first_bad
    return f"audit chain BROKEN at record {bad.seq}: {bad.kind}: {bad.reason}\n{head}"


def run_export(args: argparse.Namespace) -> int:
    from serving.governance.audit_export import export

    since = moment_arg(args.since, "--since")
    if args.tenant is not None and not is_scope_name(args.tenant):
        raise CliError(f"--tenant must be {SCOPE_NAME_RULE}: {args.tenant!r}")
    with open_state(settings_from(args)) as store, _output(args.out) as sink:
        count = 0
        for record in export(store, since, args.tenant):
            sink.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
            count += 1
    print(f"exported {count} records", file=sys.stderr)
    return EXIT_OK


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        with path.open("w", encoding="utf-8") as sink:
            yield sink
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}", EXIT_FAILURE) from exc


def run_prune(args: argparse.Namespace) -> int:
    from serving.governance.audit import AuditUnavailableError
    from serving.governance.audit_export import prune

    before = moment_arg(args.before, "--before")
    with open_state(settings_from(args)) as store:
        try:
            checkpoint = prune(store, before)
        except AuditUnavailableError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from exc
    if checkpoint is None:
        print("nothing to prune")
    else:
        print(f"pruned {checkpoint.records} records; the chain now verifies from checkpoint seq {checkpoint.seq} "
              f"hash {checkpoint.hash}")  # fmt: skip
    return EXIT_OK
