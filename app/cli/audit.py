"""``ragops audit verify|anchor|export|prune``: the audit trail, read from the state store alone (no index, no model),
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
    from serving.governance.audit_chain import Anchor, VerifyResult


def add_parser(commands: Commands) -> None:
    audit = commands.add_parser("audit", help="verify, export or prune the audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = actions.add_parser("verify", help="re-hash the chain: exit 0 intact, 1 with the first bad record")
    check.add_argument("--json", action="store_true", help="the result as one JSON object")
    check.add_argument(
        "--anchor",
        metavar="SEQ:HASH|FILE",
        help="a head kept outside the database (printed by `audit anchor` or verify, or the last line of an anchor "
        "file the server or `audit anchor --out` writes): the chain must still hold it",
    )
    check.set_defaults(handler=run_verify)
    anchor = actions.add_parser("anchor", help="print the chain's head (SEQ:HASH) to keep outside the database")
    anchor.add_argument("--out", type=Path, help="also append it as a JSON line to this file (kept elsewhere)")
    anchor.set_defaults(handler=run_anchor)
    out = actions.add_parser("export", help="records as JSON lines, oldest first")
    out.add_argument("--since", required=True, help="2026-11-27, an ISO time, or ago: 24h, 30d")
    out.add_argument("--tenant", help="only this tenant's records")
    out.add_argument("--out", type=Path, help="file to write (default: stdout)")
    out.set_defaults(handler=run_export)
    prune = actions.add_parser("prune", help="delete records before a date, keeping a checkpoint to verify from")
    prune.add_argument("--before", required=True, help="2026-11-27, an ISO time, or ago: 90d (not in the future)")
    prune.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    prune.set_defaults(handler=run_prune)


def run_verify(args: argparse.Namespace) -> int:
    from serving.governance.audit_chain import check_anchor, verify

    anchor = _anchor(args.anchor) if args.anchor else None
    with open_state(settings_from(args)) as store:
        result = verify(store)
        if result.ok and anchor is not None:
            try:
                rewritten = check_anchor(store, anchor.seq, anchor.hash)
            except ValueError as exc:
                raise CliError(str(exc)) from exc
            if rewritten is not None:
                result = result.model_copy(update={"ok": False, "first_bad": rewritten})
    print(result.model_dump_json() if args.json else describe(result))
    return EXIT_OK if result.ok else EXIT_FAILURE


def _anchor(text: str) -> Anchor:
    """``--anchor``: SEQ:HASH, or a file whose last line is one (an anchor file's JSON line, or SEQ:HASH)."""
    from serving.governance.audit_chain import Anchor

    path = Path(text)
    if ":" not in text or path.is_file():
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise CliError(f"--anchor: cannot read {text}: {exc.strerror}") from exc
        if not lines:
            raise CliError(f"--anchor: {text} holds no anchor")
        text = lines[-1]
    try:
        return Anchor.parse(text)
    except ValueError as exc:
        raise CliError(f"--anchor must be SEQ:HASH (a seq and 64 hex digits), as verify prints: {text!r}") from exc


def run_anchor(args: argparse.Namespace) -> int:
    from serving.governance.audit_chain import Anchor, append_anchor, head
    from serving.infra.clock import utc_now

    with open_state(settings_from(args)) as store:
        seq, digest = head(store)
    anchor = Anchor(seq=seq, hash=digest, ts=utc_now())
    if args.out is not None:
        try:
            append_anchor(args.out, anchor)
        except OSError as exc:
            raise CliError(f"cannot write {args.out}: {exc.strerror}", EXIT_FAILURE) from exc
    print(f"{seq}:{digest}")
    return EXIT_OK


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
    from serving.governance.audit_export import plan_prune, prune

    before = moment_arg(args.before, "--before")
    with open_state(settings_from(args)) as store:
        try:
            plan = plan_prune(store, before)
            if plan is None:
                print("nothing to prune")
                return EXIT_OK
            print(f"{'would prune' if args.dry_run else 'pruning'} {plan.describe()}")
            checkpoint = None if args.dry_run else prune(store, before)
        except ValueError as exc:
            raise CliError(f"--before: {exc}") from exc
        except AuditUnavailableError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from exc
    if checkpoint is not None:
        print(f"pruned {checkpoint.records} records; the chain now verifies from checkpoint seq {checkpoint.seq} "
              f"hash {checkpoint.hash}, attested by record {checkpoint.attested_by}")  # fmt: skip
    return EXIT_OK
