"""``ragops canary status|start|stop``: the canary analysis of each prompt, and an operator's switches.

``status`` shows, per prompt with a canary, the arms (versions, answers, users), the live share and status, per
signal the arms' rates, the difference, the sequential test's p-value and verdict, and per tenant its answers,
users and refusals per arm and each signal's difference: for a running canary as the analysis sees it now (from
the kept answers in the state store), for a decided one the evidence it was decided on.
``start`` (re)starts the canary the settings name (``canary_prompt``, resolved through the live labels) at a
share, its evidence from now on; ``stop`` sends it no more users. Running servers follow within
``label_refresh_s``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from app.cli.common import EXIT_OK, CliError, open_state, settings_from
from serving.loop.canary import SIGNALS, CanaryAnalysis
from serving.loop.canary_control import CanaryRow

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from prompts.registry import PromptRegistry
    from serving.infra.state_store import StateStore


def add_parser(commands: Commands) -> None:
    canary = commands.add_parser("canary", help="canary analysis: status, start, stop")
    actions = canary.add_subparsers(dest="canary_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="arms, per-signal tests and the decision")
    status.add_argument("name", nargs="?", help="one prompt (default: every prompt with a canary)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=run_status)
    start = actions.add_parser("start", help="(re)start the canary of canary_prompt at a share of users")
    start.add_argument("--share", type=_share, help="default: canary_share")
    start.set_defaults(handler=run_start)
    stop = actions.add_parser("stop", help="send the canary no more users (share 0)")
    stop.add_argument("name")
    stop.set_defaults(handler=run_stop)


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 < share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share of users in (0, 1]: {text!r}")
    return share


@dataclass(frozen=True)
class CanaryView:
    """A canary as ``status`` shows it: its row, and its analysis (current while it runs, else the deciding one)."""

    row: CanaryRow
    analysis: CanaryAnalysis | None


def _view(row: CanaryRow, state: StateStore, settings: Settings) -> CanaryView:
    from functools import partial

    from app.parts import canary_policy
    from serving.loop.canary_control import current_analysis, ratings_by_answer

    if row.status != "running":
        return CanaryView(row, row.decision)
    ratings = partial(ratings_by_answer, state)
    return CanaryView(row, current_analysis(row, state, ratings, canary_policy(settings)))


def run_status(args: argparse.Namespace) -> int:
    from serving.loop.canary_control import CanaryBook

    settings = settings_from(args)
    with open_state(settings) as state:
        rows = CanaryBook(state, settings.canary.share).all()
        rows = [r for r in rows if args.name in (None, r.prompt)]
        if args.name and not rows:
            raise CliError(f"no canary for prompt {args.name!r}")
        views = [_view(row, state, settings) for row in rows]
    if args.json:
        print(TypeAdapter(list[CanaryView]).dump_json(views).decode())
        return EXIT_OK
    for view in views:
        print(_text(view))
    if not views:
        print(f"no canary: {_how_to_start(settings)}")
    return EXIT_OK


def _how_to_start(settings: Settings) -> str:
    """What starts a canary here, with real arguments: the settings' canary prompt, or else a released version
    of the stable prompt other than the stable one (set on the servers too: they route by the setting)."""
    share, wanted = f"--share {settings.canary.share or 0.1:g}", settings.canary.prompt
    unresolved = _unresolved(settings, wanted) if wanted else None
    if wanted and unresolved is None:
        return f"start the one RAGOPS_CANARY_PROMPT names ({wanted}) with `ragops canary start {share}`"
    example = _example_canary(settings)
    if example is None:
        return f"release a second version of the prompt {settings.prompt} to try it as a canary"
    why = f"RAGOPS_CANARY_PROMPT={wanted} does not resolve ({unresolved}): " if wanted else ""
    return (f"{why}set RAGOPS_CANARY_PROMPT to the version to try, here and on the servers (e.g. {example}), then "
            f"`RAGOPS_CANARY_PROMPT={example} ragops canary start {share}`")  # fmt: skip


def _registry(settings: Settings) -> PromptRegistry:
    from prompts.registry import PromptRegistry

    return PromptRegistry(settings.prompts_dir)


def _unresolved(settings: Settings, ref: str) -> str | None:
    """Why ``ref`` does not resolve in registry.yaml; None when it does."""
    from prompts.loader import PromptError

    try:
        _registry(settings).resolve(ref)
    except PromptError as exc:
        return str(exc)
    return None


def _example_canary(settings: Settings) -> str | None:
    """The newest released version of the stable prompt other than the stable one (registry.yaml's labels)."""
    from prompts.loader import PromptError

    registry = _registry(settings)
    try:
        stable = registry.resolve(settings.prompt)
    except PromptError:
        return None
    others = [version for version in registry.versions(stable.name) if version != stable.version]
    return f"{stable.name}@{others[-1]}" if others else None


def _text(view: CanaryView) -> str:
    row, analysis = view.row, view.analysis
    counts = "none yet"
    if analysis:
        counts = (f"canary {analysis.canary_answers} ({analysis.canary_users} users), "
                  f"stable {analysis.stable_answers} ({analysis.stable_users} users)")  # fmt: skip
    lines = [
        f"{row.prompt}: canary {row.version} vs stable {row.stable_version}, {row.status}, share {row.share:.2f}, "
        f"since {row.started_at.isoformat()}; answers: {counts}; decision: {analysis.decision if analysis else '-'}",
        f"  {'signal':<12} {'canary':>8} {'stable':>8} {'diff':>8} {'margin':>7} {'p-value':>8} {'alpha':>7}  verdict",
    ]
    for test in analysis.tests if analysis else ():
        cells = [_number(v) for v in (test.canary_mean, test.stable_mean, test.difference)]
        lines.append(f"  {test.signal:<12} {cells[0]:>8} {cells[1]:>8} {cells[2]:>8} {test.margin:>7.3f} "
                     f"{test.p_value:>8.4f} {test.alpha:>7.4f}  {test.verdict}")  # fmt: skip
    if analysis and analysis.tenants:
        lines += _tenant_lines(analysis)
    return "\n".join(lines)


def _tenant_lines(analysis: CanaryAnalysis) -> list[str]:
    """Per tenant: answers/users per arm, refusals (left out), and each signal's canary-minus-stable difference."""
    names = [spec.name for spec in SIGNALS]
    lines = [f"  {'tenant':<16} {'canary':>11} {'stable':>11} {'refused':>7} " + " ".join(f"{n:>11}" for n in names)]
    for t in analysis.tenants:
        arms = f"{t.canary_answers}/{t.canary_users}", f"{t.stable_answers}/{t.stable_users}"
        diffs = " ".join(f"{_signed(t.differences.get(n)):>11}" for n in names)
        lines.append(f"  {t.tenant:<16} {arms[0]:>11} {arms[1]:>11} {t.refused:>7} {diffs}")
    lines.append("  (per tenant: answers/users of each arm; signals: canary minus stable over the tenant's users)")
    if analysis.hangs_on_tenant is not None:
        lines.append(f"  rollback held: no signal is worse without tenant {analysis.hangs_on_tenant!r}'s answers")
    return lines


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _served(settings: Settings, state: StateStore) -> tuple[str, str, str]:
    """(prompt, canary version, stable version) of the settings' canary, through the live labels."""
    from prompts.loader import PromptError
    from serving.loop.labels import StoreLabels

    if not settings.canary.prompt:
        raise CliError(f"no canary prompt is set: {_how_to_start(settings)}")
    registry = _registry(settings)
    labels = StoreLabels(state)
    labels.adopt_declared(registry)
    live = registry.with_labels(labels)
    try:
        canary, stable = live.resolve(settings.canary.prompt), live.resolve(settings.prompt)
    except PromptError as exc:
        example = _example_canary(settings)
        instead = f": name a released version instead, e.g. RAGOPS_CANARY_PROMPT={example}" if example else ""
        raise CliError(f"{exc}{instead}") from exc
    if canary.version == stable.version:
        raise CliError(f"{settings.canary.prompt} and {settings.prompt} both name {stable.version}: nothing to compare")
    return stable.name, canary.version, stable.version


def run_start(args: argparse.Namespace) -> int:
    from serving.loop.canary_control import CanaryBook

    settings = settings_from(args)
    with open_state(settings) as state:
        prompt, version, stable = _served(settings, state)
        share = args.share if args.share is not None else settings.canary.share
        if not share:
            raise CliError("a share of 0 starts nothing: pass --share or set canary_share")
        CanaryBook(state, share).start(prompt, version, stable, share, "cli")
    print(f"{prompt}: canary {version} vs stable {stable} running at share {share:.2f}")
    return EXIT_OK


def run_stop(args: argparse.Namespace) -> int:
    from serving.loop.canary_control import CanaryBook

    settings = settings_from(args)
    with open_state(settings) as state:
        row = CanaryBook(state, settings.canary.share).stop(args.name, "cli")
    if row is None:
        raise CliError(f"no canary for prompt {args.name!r}")
    if row.status != "stopped":
        raise CliError(f"the canary {row.version} of {row.prompt!r} is already {row.status.replace('_', ' ')}")
    print(f"{row.prompt}: canary {row.version} stopped (share 0)")
    return EXIT_OK
