"""``ragops erase --document ID | --user USER --tenant T``: erase a document or a user from every store
(``serving.rights.erasure``): the index and embedding cache, cached answers, kept answers and their feedback,
question vectors, the audit trail's personal fields (a tombstone records the erasure), and the eval-suite files
that hold it (listed; rewritten with ``--suites``). Idempotent: a re-run finishes an erasure a crash interrupted.

It opens the index, as every command that reaches the stores: while a server holds the data dir, use
``DELETE /v1/admin/subjects/...`` instead (the server also drops its own in-process cached answers, which this
command cannot reach). A store that fails on the way is exit 1; running the command again finishes the erasure."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, open_services, scope_from, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from serving.governance.subjects import SubjectKind
    from serving.rights.erasure import ErasureReport


def add_parser(commands: Commands) -> None:
    erase = commands.add_parser("erase", help="erase a document or a user from every store (GDPR art. 17)")
    subject = erase.add_mutually_exclusive_group(required=True)
    subject.add_argument("--document", metavar="ID", help="the document's id")
    subject.add_argument("--user", metavar="USER", help="the `user` chat requests named")
    erase.add_argument("--tenant", help="the subject's tenant (default: the default_tenant setting)")
    erase.add_argument("--collection", help="a document's collection (default: the default_collection setting)")
    erase.add_argument("--suites", action="store_true", help="rewrite the eval-suite files that hold it")
    erase.add_argument("--json", action="store_true", help="print the report as JSON")
    erase.set_defaults(handler=run_erase)


def run_erase(args: argparse.Namespace) -> int:
    from serving.rights.erasure import ErasureIncompleteError, ErasureSubject, identifier_problem

    settings = settings_from(args)
    scope = scope_from(args, settings)
    kind: SubjectKind = "document" if args.document is not None else "user"
    identifier = args.document if kind == "document" else args.user
    problem = identifier_problem(kind, identifier)
    if problem is not None:
        raise CliError(f"--{kind}: {problem}")
    collection = scope.collection if kind == "document" else None
    subject = ErasureSubject(kind=kind, tenant=scope.tenant, identifier=identifier, collection=collection)
    services = open_services(settings)
    try:
        report = services.eraser.erase(subject, rewrite_suites=args.suites)
    except ErasureIncompleteError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    finally:
        services.close()
    print(report.model_dump_json() if args.json else _summary(report, subject.describe()))
    return EXIT_OK


def _summary(report: ErasureReport, subject: str) -> str:
    removed = ", ".join(f"{store} {count}" for store, count in sorted(report.removed.items()))
    lines = [f"erased {subject}{' (finished an interrupted erasure)' if report.resumed else ''}: {removed}"]
    if report.tombstone_seq is not None:
        lines.append(f"tombstone: audit record {report.tombstone_seq} (subject {report.subject_ref})")
    if report.audit_legacy_kept:
        lines.append(f"kept: {report.audit_legacy_kept} audit record(s) written before personal fields were kept "
                     "apart (their chain would break)")  # fmt: skip
    for path in report.suites:
        lines.append(f"{'rewrote' if report.suites_rewritten else 'holds it (rerun with --suites to rewrite)'}: {path}")
    if not report.reclaimed:
        lines.append("note: the state store's log was busy; run `ragops erase` again when idle to reclaim its bytes")
    return "\n".join(lines)
