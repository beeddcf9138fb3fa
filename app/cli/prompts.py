"""``ragops prompts list|show|diff|promote|rollback``: prompt versions and labels.

Labels are live state: ``list``, ``show``, ``promote`` and ``rollback`` read and move them in the state store
(``serving.loop.labels``), so running servers answer with a moved label within ``label_refresh_s``; ``promote`` and
``rollback`` also record the release (and the label, git's declaration) in registry.yaml as before."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, settings_from
from prompts.loader import PromptError

if TYPE_CHECKING:
    from app.cli.common import Commands
    from prompts.registry import PromptRegistry
    from serving.loop.labels import StoreLabels


def add_parser(commands: Commands) -> None:
    prompts = commands.add_parser("prompts", help="prompt versions and labels")
    actions = prompts.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="prompts, versions and labels")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", help="print a prompt version")
    show.add_argument("ref", metavar="NAME[@VERSION|@LABEL]")
    show.set_defaults(handler=run_show)
    diff = actions.add_parser("diff", help="unified diff of two versions or labels")
    diff.add_argument("name")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.set_defaults(handler=run_diff)
    promote = actions.add_parser("promote", help="point a label at a version (releases the version)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--label", required=True)
    promote.add_argument("--allow-policy-change", metavar="REASON", help="release a version whose text weakens the "
                         "answering policy; the reason is recorded in the audit trail")  # fmt: skip
    promote.set_defaults(handler=run_promote)
    rollback = actions.add_parser("rollback", help="return a label to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("--label", required=True)
    rollback.set_defaults(handler=run_rollback)


def _registry(args: argparse.Namespace) -> PromptRegistry:
    from prompts.registry import PromptRegistry

    settings = settings_from(args)
    return PromptRegistry(settings.prompts_dir)


@contextmanager
def _live(args: argparse.Namespace) -> Iterator[tuple[PromptRegistry, StoreLabels]]:
    """The registry with its labels read from the state store (which first takes what registry.yaml declares
    anew), and the store's labels to move."""
    from app.cli.common import open_state
    from serving.loop.labels import StoreLabels

    settings = settings_from(args)
    with open_state(settings) as state:
        labels = StoreLabels(state)
        registry = _registry(args)
        labels.adopt_declared(registry)
        yield registry.with_labels(labels), labels


@contextmanager
def _prompt_errors() -> Iterator[None]:
    """A missing or invalid prompt, version or label: one line, exit 2."""
    try:
        yield
    except PromptError as exc:
        raise CliError(str(exc)) from exc


def run_list(args: argparse.Namespace) -> int:
    with _prompt_errors(), _live(args) as (registry, _):
        listing: list[dict[str, Any]] = [
            {
                "name": name,
                "versions": registry.versions(name),
                "labels": registry.labels(name),
                "released": sorted(registry.released(name)),
            }
            for name in registry.names()
        ]
    if args.json:
        print(json.dumps(listing))
    else:
        for item in listing:
            labels = ", ".join(f"{label}={version}" for label, version in sorted(item["labels"].items()))
            print(f"{item['name']}: versions {' '.join(item['versions'])}; labels {labels or '(none)'}")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    with _prompt_errors(), _live(args) as (registry, _):
        prompt = registry.resolve(args.ref)
    assert prompt.path is not None
    print(f"# {prompt.ref} (hash {prompt.content_hash})")
    print(prompt.path.read_text(), end="")
    return EXIT_OK


def run_diff(args: argparse.Namespace) -> int:
    registry = _registry(args)
    with _prompt_errors():
        print(registry.diff(args.name, args.a, args.b), end="")
    return EXIT_OK


def run_promote(args: argparse.Namespace) -> int:
    """Released as ``ragops eval gate`` passes a prompt: a version whose text weakens the answering policy against
    the label's current version (or production's, for a new label) is refused, exit 1, unless
    ``--allow-policy-change`` gives the reason the audit trail records."""
    from app.cli.evals import policy_gate

    with _prompt_errors(), _live(args) as (registry, labels):
        live = registry.labels(args.name)
        current = live.get(args.label) or live.get("production")
        if current is not None and current != args.version:
            command = f"ragops prompts promote --label {args.label}"
            candidate = f"{args.name}@{args.version}"
            if not policy_gate(args, f"{args.name}@{current}", candidate, command, pass_on_stdout=False):
                return EXIT_FAILURE
        prompt = registry.promote(args.name, args.version, args.label)  # the release's hash, in git's file
        labels.release(prompt, args.label, "cli")  # the live label and its lineage, together
    print(f"{args.name}@{args.label} -> {prompt.version} (hash {prompt.content_hash})")
    return EXIT_OK


def run_rollback(args: argparse.Namespace) -> int:
    with _prompt_errors(), _live(args) as (registry, labels):
        version = labels.rollback_target(args.name, args.label)  # the live history, canary decisions included
        if version is None:
            raise CliError(f"label {args.label!r} of {args.name!r} has no earlier version to roll back to")
        registry.promote(args.name, version, args.label)  # registry.yaml follows (bookkeeping for git)
        labels.move(args.name, args.label, version, "cli", "rollback")
    print(f"{args.name}@{args.label} -> {version}")
    return EXIT_OK
