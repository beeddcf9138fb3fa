"""``ragops lineage PROMPT[@VERSION|@LABEL] [--json]``: what touched a prompt version, in order (eval runs, gates,
releases, label moves, rollbacks, canary decisions, drift baselines), from the state store; and
``record_event``, how the eval and prompt commands add to it."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from app.cli.common import EXIT_OK, CliError, open_state, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from prompts.registry import PromptRegistry
    from serving.infra.state_store import StateStore
    from serving.loop.lineage import LineageEvent, LineageKind, RunLineage


def add_parser(commands: Commands) -> None:
    lineage = commands.add_parser("lineage", help="eval runs, gates, releases and rollbacks of a prompt version")
    lineage.add_argument("ref", metavar="PROMPT[@VERSION|@LABEL]", help="without a version: every version's events")
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(handler=run_lineage)


_VERSION_SHAPE = re.compile(r"^v[0-9][A-Za-z0-9._-]{0,63}$")


def record_event(settings: Settings, kind: LineageKind, prompt: str, version: str, body: dict[str, Any]) -> None:
    """Add one event; a store that cannot be written is said on stderr and does not fail the command (its
    exit code means what the command did: a gate's 1 is a regression, never a lineage failure)."""
    from serving.infra.state_store import StateStoreError
    from serving.loop.lineage import Lineage

    try:
        with open_state(settings) as state:
            event = Lineage(state).record(kind, prompt, version, body)
    except (CliError, StateStoreError) as exc:
        print(f"ragops: warning: lineage not recorded: {exc}", file=sys.stderr)
        return
    print(f"lineage: {kind} #{event.seq} for {prompt}@{version}", file=sys.stderr)


def _version_of(settings: Settings, state: StateStore, name: str, wanted: str | None) -> str | None:
    """A label resolves to the version it names now (the live label in the state store, else registry.yaml's);
    anything else is taken as a version, so the lineage of a version whose file is gone can still be read."""
    from prompts.loader import PromptError
    from serving.loop.labels import StoreLabels

    if wanted is None:
        return None
    live = StoreLabels(state).labels(name)
    if wanted in live:
        return live[wanted]
    try:
        declared = _registry(settings).labels(name)
    except PromptError:
        declared = {}
    if wanted in declared:
        return declared[wanted]
    if not _VERSION_SHAPE.match(wanted):
        raise CliError(f"prompt {name!r} has no label {wanted!r} (and {wanted!r} is not a version)")
    return wanted


def _registry(settings: Settings) -> PromptRegistry:
    from prompts.registry import PromptRegistry

    return PromptRegistry(settings.prompts_dir)


def run_lineage(args: argparse.Namespace) -> int:
    from serving.loop.lineage import Lineage

    name, _, wanted = args.ref.partition("@")
    if not name or (args.ref.endswith("@") and not wanted):
        raise CliError(f"expected PROMPT[@VERSION|@LABEL], got {args.ref!r}")
    settings = settings_from(args)
    with open_state(settings) as state:
        version = _version_of(settings, state, name, wanted or None)
        events = Lineage(state).history(name, version)
        if not events and not Lineage(state).history(name) and name not in _registry(settings).names():
            raise CliError(f"no prompt {name!r} (none in the registry, and no lineage names it)")
    if args.json:
        print(json.dumps({"prompt": name, "version": version, "events": [_as_json(e) for e in events]}))
        return EXIT_OK
    print(f"{f'{name}@{version}' if version else name}: {len(events)} event(s)")
    for event in events:
        print(f"#{event.seq} {event.ts.isoformat(timespec='seconds')} {event.kind} {event.version}: {summary(event)}")
    return EXIT_OK


def _as_json(event: LineageEvent) -> dict[str, Any]:
    return {"seq": event.seq, "ts": event.ts.isoformat(), "kind": event.kind, "prompt": event.prompt,
            "version": event.version, "body": event.body}  # fmt: skip


def summary(event: LineageEvent) -> str:
    """One line: what the event says, with the hashes it used shortened (``--json`` has them whole); kinds
    recorded by other parts (canary decisions, drift baselines) as their bodies."""
    from serving.loop.lineage import EvalRunRecord, GateRecord, LabelMoveRecord, ReleaseRecord

    body = event.body
    if event.kind == "eval_run":
        run = EvalRunRecord.model_validate(body)
        means = ", ".join(f"{metric} {mean:.3f}" for metric, mean in run.means.items() if mean is not None)
        return f"suite {run.suite}: {means}; {_hashes(run.lineage)}"
    if event.kind == "gate":
        gate = GateRecord.model_validate(body)
        verdict = "pass" if gate.passed else f"regression in {', '.join(gate.regressions)}"
        return f"suite {gate.suite} against {gate.baseline}: {verdict}; {_hashes(gate.lineage)}"
    if event.kind == "release":
        release = ReleaseRecord.model_validate(body)
        evidence = " ".join(f"#{seq}" for seq in release.evidence) or "none recorded"
        was = release.previous or "unset"
        return f"label {release.label} (was {was}), hash {release.prompt_hash[:12]}; evals: {evidence}"
    if event.kind in ("label_move", "rollback"):
        move = LabelMoveRecord.model_validate(body)
        moved = f"{move.from_version or 'unset'} -> {move.to_version}"
        return f"label {move.label}: {moved} ({move.reason}, by {move.actor})"
    return json.dumps(body, sort_keys=True)[:300]


def _hashes(lineage: RunLineage) -> str:
    models = lineage.models
    generator = models.generator_model or models.generator
    weights = f" {models.generator_sha256[:12]}" if models.generator_sha256 else ""
    return (
        f"dataset {lineage.dataset[:12]}, corpus {lineage.corpus[:12]}, prompt {lineage.prompt_hash[:12]}, "
        f"embedder {models.embedder}, generator {generator}{weights}"
    )
