"""``ragops guard check`` and ``ragops groundedness``: the guards and the groundedness scorer on JSON lines from
stdin."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, read_json_lines, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from retrieval.embedding_cache import CachedEmbedder
    from safety.groundedness import Groundedness
    from safety.guards import Guard


def add_parser(commands: Commands) -> None:
    guard = commands.add_parser("guard", help="run the guards on texts")
    actions = guard.add_subparsers(dest="guard_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help='stdin: one JSON line per text, {"text", "guard": "input"|"output", "contexts": [...], "question"}',
    )
    check.add_argument("--json", action="store_true", help="one JSON verdict per line")
    check.set_defaults(handler=run_guard_check)
    grounded = commands.add_parser(
        "groundedness", help='score answers; stdin: one JSON line each, {"question", "answer", "contexts": [...]}'
    )
    grounded.add_argument("--json", action="store_true", help="one JSON result per line")
    grounded.set_defaults(handler=run_groundedness)


def _read_guard_records() -> list[dict[str, Any]]:
    numbered = read_json_lines(sys.stdin, "stdin", ("text",))
    for number, record in numbered:
        if record.get("guard", "input") not in ("input", "output"):
            raise CliError(f"stdin:{number}: 'guard' must be input or output")
    return [record for _, record in numbered]


def _build_guards(settings: Settings, embedder: CachedEmbedder) -> tuple[Guard, Guard]:
    """The (input, output) guards of the policies; a bad policy closes ``embedder``'s store and stops (exit 2)."""
    from app.parts import build_guards
    from safety.groundedness_model import GroundednessModelError
    from safety.guards import PolicyError

    try:
        guards = build_guards(settings, embedder)
    except (PolicyError, GroundednessModelError) as exc:
        embedder.store.close()
        raise CliError(f"bad guard policy: {exc}" if isinstance(exc, PolicyError) else str(exc)) from exc
    assert guards is not None and guards.input is not None and guards.output is not None
    return guards.input, guards.output


def run_guard_check(args: argparse.Namespace) -> int:
    from app.parts import build_cached_embedder
    from safety.guards import answer_evidence

    records = _read_guard_records()
    settings = settings_from(args, guards=True)
    embedder = build_cached_embedder(settings)
    input_guard, output_guard = _build_guards(settings, embedder)
    blocked = False
    try:
        for record in records:
            guard = output_guard if record.get("guard") == "output" else input_guard
            evidence = answer_evidence(record.get("contexts", []), str(record.get("question", "")))
            verdict = guard.check(record["text"], evidence)
            blocked = blocked or not verdict.passed
            if args.json:
                print(json.dumps({"guard": guard.name, "text": verdict.text, **verdict.model_dump(mode="json")}))
            else:
                fired = ", ".join(f"{f.validator} ({f.action})" for f in verdict.fired) or "-"
                print(f"{verdict.action}\t{fired}\t{verdict.text}")
    finally:
        embedder.store.close()
    return EXIT_FAILURE if blocked else EXIT_OK


def run_groundedness(args: argparse.Namespace) -> int:
    from app.parts import build_cached_embedder, build_groundedness
    from safety.groundedness_model import GroundednessModelError

    records = [record for _, record in read_json_lines(sys.stdin, "stdin", ("question", "answer"))]
    settings = settings_from(args)
    embedder = build_cached_embedder(settings)
    try:
        scorer = build_groundedness(settings, embedder)
    except GroundednessModelError as exc:
        embedder.store.close()
        raise CliError(str(exc), EXIT_FAILURE) from exc
    try:
        for record in records:
            result = scorer.score(record["answer"], record.get("contexts", []), question=str(record["question"]))
            supported = result.score is None or result.score >= scorer.threshold
            if args.json:
                # The caller's own answer: its unsupported sentences are shown (an API's verdict only counts them).
                shown = {**result.model_dump(mode="json"), "unsupported": result.unsupported}
                print(json.dumps({**shown, "supported": supported, "sentences": _explained(result)}))
            else:
                score = "n/a" if result.score is None else f"{result.score:.3f}"
                print(f"{score}\t{'supported' if supported else 'UNSUPPORTED'}\t{' | '.join(result.unsupported)}")
    finally:
        embedder.store.close()
    return EXIT_OK


def _explained(result: Groundedness) -> list[dict[str, Any]]:
    """Each sentence's support and, from the offline scorer, its relation check: the name or number judged and
    the span of its kind that stood closer to the claim's words, if one did."""
    return [
        {
            "sentence": s.sentence,
            "support": round(s.support, 4),
            "relation": None if s.relation is None else dataclasses.asdict(s.relation),
        }
        for s in result.sentences
    ]
