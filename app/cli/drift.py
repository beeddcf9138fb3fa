"""``ragops drift baseline`` (save a reference profile from an eval suite or from served traffic) and ``ragops
drift check`` (compare the latest answers with it). Both use the state store and the embedder only, so they run
beside a server on the same data dir or against the Postgres the replicas share.

``check`` exits 0 (no drift), 1 (drift) or 2 (it could not check: no profile, no kept answers, a store that
cannot be opened, every signal skipped for too few values): 1 means drift here, so a failure to check is never 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_OK, EXIT_USAGE, CliError, moment_arg, open_state, settings_from
from retrieval.index import SCOPE_NAME_RULE, is_scope_name

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings
    from retrieval.embedding_cache import CachedEmbedder
    from serving.infra.state_store import StateStore
    from serving.loop.answer_log import AnswerRecord
    from serving.loop.drift import DriftProfile, DriftProfiles, DriftReport, ProfileLineage
    from serving.loop.drift_stats import AnswerSignals

EXIT_DRIFT = 1


MAX_ANSWERS = 1_000_000  # a window or profile larger than this is a typo, and SQLite's integers end near 9e18


def add_parser(commands: Commands) -> None:
    drift = commands.add_parser("drift", help="drift reference profiles and checks")
    actions = drift.add_subparsers(dest="drift_command", required=True, metavar="ACTION")
    baseline = actions.add_parser("baseline", help="save a reference profile (the newest of a name is the reference)")
    source = baseline.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-suite", type=Path, metavar="SUITE.yaml", help="an eval suite's questions and results")
    source.add_argument("--from-traffic", action="store_true", help="answers served since --since")
    baseline.add_argument("--results", type=Path, help="the suite's results.json (default: evals/baselines/NAME.json)")
    baseline.add_argument("--since", help="traffic: from (a date, an ISO time, or 7d ago)")
    baseline.add_argument("--limit", type=int, default=2000, help="traffic: at most the newest N answers")
    baseline.add_argument("--name", default="default", help="profile name (default: default, the server's)")
    baseline.add_argument("--json", action="store_true")
    baseline.set_defaults(handler=run_baseline)
    check = actions.add_parser("check", help="compare the latest answers with the profile (exit 1: drift)")
    check.add_argument("--window", type=int, help="latest answers to compare (default: drift_window)")
    check.add_argument("--name", help="profile name (default: default; without one, the only profile there is)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=run_check)


def run_baseline(args: argparse.Namespace) -> int:
    from serving.loop.drift import DriftProfiles
    from serving.loop.drift_stats import DriftSample

    name = _profile_name(args.name)
    if args.from_traffic and args.since is None:
        raise CliError("--from-traffic needs --since")
    since = moment_arg(args.since, "--since") if args.since is not None else None
    if not 1 <= args.limit <= MAX_ANSWERS:
        raise CliError(f"--limit must be within 1..{MAX_ANSWERS}")
    if args.results is not None and not args.results.is_file():
        raise CliError(f"--results: no such file: {args.results}")
    settings = settings_from(args)
    with _embedder(settings) as embedder, open_state(settings) as store:
        if args.from_suite is not None:
            answers, lineage = _suite_source(args, embedder)
        else:
            answers, lineage = _traffic_source(since, args.limit, settings, store, embedder.model_id)
        profile = DriftProfiles(store).save(name, DriftSample.of(answers, embedder.embed_questions), lineage)
    print(json.dumps(_profile_json(profile), indent=2) if args.json else _profile_line(profile))
    return EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    try:
        return _check(args)
    except CliError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc  # 1 means drift: a check that could not run is 2


def _check(args: argparse.Namespace) -> int:
    from serving.loop.drift import DriftError, DriftProfiles, check, record_check
    from serving.loop.drift_stats import AnswerSignals
    from serving.loop.lineage import Lineage

    settings = settings_from(args)
    window = settings.drift.window if args.window is None else args.window
    if not 1 <= window <= MAX_ANSWERS:
        raise CliError(f"--window must be within 1..{MAX_ANSWERS}")
    with _embedder(settings) as embedder, open_state(settings) as store:
        profile = _reference(DriftProfiles(store), args.name)
        records = _kept_answers(settings, store, None, window)
        if not records:
            raise CliError("no kept answers to check (none served yet, or feedback_retention_days is 0)")
        signals = [AnswerSignals.of_record(r) for r in records]
        try:
            report = check(profile, signals, embedder.embed_questions, embedder.model_id, settings.drift.alpha)
        except DriftError as exc:
            raise CliError(str(exc)) from exc
        if report.tested:  # a check with no signal tested is no verdict: not in the lineage
            record_check(Lineage(store), profile, report)
    print(json.dumps(report.as_json(), indent=2) if args.json else "\n".join(_report_table(profile, report)))
    if not report.tested:
        raise CliError(f"could not check: {report.why_untested()}")
    return EXIT_DRIFT if report.drifted else EXIT_OK


def _reference(profiles: DriftProfiles, asked: str | None) -> DriftProfile:
    """The newest profile of the name asked for; without ``--name``, ``default`` (the server's), or else the only
    profile there is (said on stderr). None found: one line naming the profiles that exist."""
    from serving.loop.drift import DEFAULT_PROFILE

    name = _profile_name(asked or DEFAULT_PROFILE)
    if (profile := profiles.latest(name)) is not None:
        return profile
    existing = profiles.names()
    if asked is None and len(existing) == 1:
        (only,) = existing
        print(f"no drift profile named {name!r} (the server's): checking against {only!r}, the only one",
              file=sys.stderr)  # fmt: skip
        if (profile := profiles.latest(only)) is not None:
            return profile
    make = "ragops drift baseline --from-suite SUITE.yaml" + ("" if name == DEFAULT_PROFILE else f" --name {name}")
    if not existing:
        raise CliError(f"no drift profile yet: make one with `{make}` (or --from-traffic --since 7d)")
    there = ", ".join(f"{n} (from {source})" for n, source in existing.items())
    raise CliError(f"no drift profile named {name!r} (profiles: {there}): check one of them with `ragops drift check "
                   f"--name NAME`, or make {name!r} with `{make}`")  # fmt: skip


def _suite_source(args: argparse.Namespace, embedder: CachedEmbedder) -> tuple[list[AnswerSignals], ProfileLineage]:
    from evals.drift_baseline import suite_reference
    from evals.suite import SuiteError

    try:
        reference = suite_reference(args.from_suite, embedder.embed, embedder.model_id, args.results)
    except SuiteError as exc:
        raise CliError(str(exc)) from exc
    return reference.answers, reference.lineage


def _traffic_source(
    since: datetime | None, limit: int, settings: Settings, store: StateStore, embedder_id: str
) -> tuple[list[AnswerSignals], ProfileLineage]:
    from serving.loop.drift import ProfileLineage
    from serving.loop.drift_stats import AnswerSignals

    records = _kept_answers(settings, store, since, limit)
    if not records:
        raise CliError(f"no kept answers since {since}")
    (prompt, version), _ = Counter((r.prompt_name, r.prompt_version) for r in records).most_common(1)[0]
    lineage = ProfileLineage(
        source="traffic", embedder=embedder_id, since=records[0].ts.isoformat(), until=records[-1].ts.isoformat(),
        prompt=prompt, version=version, questions=len(records),
    )  # fmt: skip
    return [AnswerSignals.of_record(r) for r in records], lineage


def _kept_answers(settings: Settings, store: StateStore, since: datetime | None, limit: int) -> list[AnswerRecord]:
    from serving.loop.answer_log import kept_answers

    return kept_answers(store, since=since, limit=limit)


@contextmanager
def _embedder(settings: Settings) -> Iterator[CachedEmbedder]:
    """The cached embedder alone (not the index: a running server may hold it), closed after use."""
    from app.parts import build_cached_embedder

    embedder = build_cached_embedder(settings)
    try:
        yield embedder
    finally:
        embedder.store.close()


def _profile_name(name: str) -> str:
    if not is_scope_name(name):
        raise CliError(f"--name must be {SCOPE_NAME_RULE}: {name!r}")
    return name


def _profile_json(profile: DriftProfile) -> dict[str, object]:
    sample = profile.sample
    counts = {"questions": sample.questions, "top_score": len(sample.top_score), "abstention": len(sample.abstention),
              "fallback": len(sample.fallback), "groundedness": len(sample.groundedness),
              "answer_length": len(sample.answer_length)}  # fmt: skip
    return {"id": profile.id, "name": profile.name, "created_at": profile.created_at.isoformat(), "values": counts,
            "lineage": profile.lineage.model_dump(exclude_none=True)}  # fmt: skip


def _profile_line(profile: DriftProfile) -> str:
    source = profile.lineage.suite or f"traffic {profile.lineage.since} to {profile.lineage.until}"
    return (f"saved drift profile {profile.id} ({profile.name}) from {profile.lineage.source} {source}: "
            f"{profile.sample.questions} questions, {len(profile.sample.abstention)} answers")  # fmt: skip


def _report_table(profile: DriftProfile, report: DriftReport) -> Iterator[str]:
    source = f"{profile.lineage.source} {profile.lineage.suite or profile.lineage.since}"
    yield f"drift check of the latest {report.answers} answers against {profile.id} ({profile.name}, {source})"
    row = "{:<16} {:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {}"
    yield row.format("signal", "test", "ref mean", "win mean", "statistic", "p-value", "Holm p", "reference",
                     "window", "verdict")  # fmt: skip
    for r in report.signals:
        verdict = "DRIFT" if r.drifted else ("skipped" if r.p_value is None else "ok")
        yield row.format(r.signal, r.test, _num(r.reference_mean), _num(r.current_mean), _num(r.statistic),
                         _p(r.p_value), _p(r.adjusted_p), r.reference, r.current, verdict)  # fmt: skip
    drifted = [r.signal for r in report.signals if r.drifted]
    verdict = "drift in " + ", ".join(drifted) if drifted else ("no drift" if report.tested else "could not check")
    yield f"verdict: {verdict} ({report.took_ms:.0f} ms)"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"
