"""``ragops eval run|gate``: run an eval suite, and gate a candidate prompt against a baseline. The one place the
CLI calls ``evals.runner.run_suite``; the gate's comparability rules live in ``evals.gate``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILURE, EXIT_OK, GENERATORS, REWRITERS, CliError, open_services, settings_from
from app.cli.progress import progress_bar
from prompts.loader import PromptError

if TYPE_CHECKING:
    from app.cli.common import Commands
    from evals.gate import MetricVerdict
    from evals.results import EvalResults
    from evals.suite import Suite
    from serving.answering.rewrite import RewriterName


def add_parser(commands: Commands) -> None:
    evals = commands.add_parser("eval", help="run eval suites and gate prompt changes")
    actions = evals.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run a suite: results.json under --out")
    run.add_argument("suite", type=Path)
    run.add_argument("--prompt", metavar="NAME[@VERSION|@LABEL]", help="default: the suite's prompt")
    run.add_argument("--generator", choices=GENERATORS, help="default: the suite's")
    run.add_argument("--out", type=Path, help="directory for results.json and report.html (default: under DATA_DIR)")
    run.add_argument("--baseline", type=Path, metavar="RESULTS_JSON", help="a run to diff against in the report")
    run.add_argument("--json", action="store_true", help="print the aggregate as JSON")
    run.add_argument("--upload", action="store_true", help="upload the run to LangSmith (needs LANGSMITH_API_KEY)")
    run.set_defaults(handler=run_eval)
    gate = actions.add_parser("gate", help="candidate vs baseline: exit 0 pass, 1 regression, 2 broken")
    gate.add_argument("suite", type=Path)
    gate.add_argument("--baseline", required=True, help="a results.json, or a prompt reference to run")
    gate.add_argument("--candidate", metavar="NAME[@VERSION|@LABEL]", help="default: the suite's prompt")
    gate.add_argument("--generator", choices=GENERATORS, help="default: the suite's")
    gate.add_argument("--baseline-rewriter", choices=REWRITERS, help="the baseline run's query rewriter (default: "
                      "the rewriter setting's)")  # fmt: skip
    gate.add_argument("--candidate-rewriter", choices=REWRITERS, help="the candidate run's (default: likewise)")
    gate.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    gate.add_argument("--out", type=Path, help="directory for the candidate's results.json and report.html")
    gate.add_argument("--allow-policy-change", metavar="REASON", help="pass a candidate whose text weakens the "
                      "answering policy; the reason is recorded in the audit trail")  # fmt: skip
    gate.set_defaults(handler=run_gate)


@contextmanager
def _broken_run() -> Iterator[None]:
    """A suite, dataset or prompt that cannot run: ``broken eval run: ...``, exit 2 (never a regression)."""
    from evals.suite import SuiteError

    try:
        yield
    except (SuiteError, PromptError) as exc:
        raise CliError(f"broken eval run: {exc}") from exc


def _run_suite(
    args: argparse.Namespace, suite: Suite, prompt: str | None, rewriter: RewriterName | None = None
) -> EvalResults:
    """Run ``suite`` with ``prompt`` (default: the suite's) and ``rewriter`` (default: the setting's), its own
    services, closed afterwards."""
    from app.container import eval_parts
    from evals.runner import run_suite

    settings = settings_from(
        args,
        **({"rewriter": rewriter} if rewriter else {}),
        prompt=prompt or suite.prompt,
        generator=args.generator or suite.generator,
        canary_prompt=None,
        live_labels=False,  # registry.yaml's labels (git's), as CI gates them, not a store's run-time moves
        output_guard="report",  # score the model's own answers; groundedness is a metric here
        tracing=False,  # --upload sends the run as an experiment instead
        feedback_retention_days=0,  # eval answers are no traffic: kept, they would count as drift or canary evidence
        drift_every=0,
    )
    services = open_services(settings)
    try:
        progress = partial(progress_bar, unit="sample", desc=suite.name)
        with alerts_above_the_bar():
            results, stats = run_suite(suite, eval_parts(services), progress)
    finally:
        services.close()
    print(
        f"{suite.name}: {stats.samples} samples ({stats.cached} from cache) in {stats.seconds:.1f}s "
        f"with {results.prompt.ref} on {results.generator}",
        file=sys.stderr,
    )
    return results


@contextmanager
def alerts_above_the_bar() -> Iterator[None]:
    """The service's alerts while the suite runs (its rolling rates see the eval's answers too): each one line on
    stderr naming the alert and its figures, written above the progress bar (``tqdm.write``), not through it."""
    import logging

    from tqdm import tqdm

    from serving.observe.metrics import alert_line, alert_log

    class AboveTheBar(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(f"ragops: {alert_line(record)} (over this run's answers)", file=sys.stderr)

    handler, propagates = AboveTheBar(logging.WARNING), alert_log.propagate
    alert_log.addHandler(handler)
    alert_log.propagate = False  # a root handler (logging.basicConfig, which a library may call) would print it bare
    try:
        yield
    finally:
        alert_log.removeHandler(handler)
        alert_log.propagate = propagates


def _read_results(path: Path) -> EvalResults:
    from evals.results import ResultsError, read_results

    try:
        return read_results(path)
    except ResultsError as exc:
        raise CliError(str(exc)) from exc


def _write_run(out: Path, results: EvalResults, baseline: EvalResults | None) -> Path:
    from evals.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    results.write(out / "results.json")
    return write_report(out / "report.html", results, baseline)


def _upload(results: EvalResults) -> dict[str, str]:
    from evals.langsmith_upload import upload_experiment

    try:
        return upload_experiment(results)
    except Exception as exc:  # the run is saved; an upload that fails says so and the command fails
        raise CliError(f"LangSmith upload failed (results are saved locally): {type(exc).__name__}: {exc}") from exc


def run_eval(args: argparse.Namespace) -> int:
    from evals.suite import load_suite

    with _broken_run():
        suite = load_suite(args.suite)
        baseline = _read_results(args.baseline) if args.baseline else None
        if args.upload and not os.environ.get("LANGSMITH_API_KEY"):
            raise CliError("--upload needs LANGSMITH_API_KEY (and LANGSMITH_ENDPOINT for a self-hosted LangSmith)")
        results = _run_suite(args, suite, args.prompt)
        out = args.out or settings_from(args).data_dir / "evals" / (
            f"{suite.name}-{results.prompt.version}-{results.generator}"
        )
        report = _write_run(out, results, baseline)
        _record_run(args, results, out / "results.json")
        uploaded = _upload(results) if args.upload else None
    if args.json:
        aggregate = {metric: summary.model_dump() for metric, summary in results.aggregate.items()}
        print(json.dumps({"results": str(out / "results.json"), "report": str(report),
                          "langsmith": uploaded, "aggregate": aggregate}))  # fmt: skip
    else:
        for metric, summary in results.aggregate.items():
            print(
                f"{metric}: {summary.mean} (n={summary.n}, not applicable={summary.not_applicable}, "
                f"failed={summary.failed})"
            )
        print(f"results: {out / 'results.json'}\nreport: {report}")
        if uploaded:
            print(f"langsmith: experiment {uploaded['experiment']}")
    return EXIT_OK


def _record_run(args: argparse.Namespace, results: EvalResults, path: Path) -> None:
    """An ``eval_run`` lineage event: the run's means and what it ran, by hash."""
    from app.cli.lineage import record_event
    from evals.lineage import run_record

    record = run_record(results, path)
    if record is not None:
        prompt = results.prompt
        record_event(settings_from(args), "eval_run", prompt.name, prompt.version, record.model_dump(mode="json"))


def _record_gate(
    args: argparse.Namespace, baseline: EvalResults, candidate: EvalResults, verdicts: list[MetricVerdict]
) -> None:
    """A ``gate`` lineage event on the candidate version: the verdict and both runs' hashes."""
    from app.cli.lineage import record_event
    from evals.lineage import gate_record

    record = gate_record(baseline, candidate, verdicts)
    if record is not None:
        prompt = candidate.prompt
        record_event(settings_from(args), "gate", prompt.name, prompt.version, record.model_dump(mode="json"))


def _gate_inputs(args: argparse.Namespace) -> tuple[Suite, EvalResults | None]:
    """The suite and the stored baseline (None: ``--baseline`` is a prompt reference, run later)."""
    from evals.gate import GateError, check_judges_prompts
    from evals.suite import load_suite

    with _broken_run():
        suite = load_suite(args.suite)
        baseline_path = Path(args.baseline)
        stored = _read_results(baseline_path) if baseline_path.is_file() else None
        configured = settings_from(args).answering.rewriter
        rewriters = (stored.rewriter if stored else args.baseline_rewriter or configured,
                     args.candidate_rewriter or configured)  # fmt: skip
        try:
            check_judges_prompts(args.generator or suite.generator, rewriters)
        except GateError as exc:
            raise CliError(str(exc)) from exc
    return suite, stored


def _gate_runs(args: argparse.Namespace, suite: Suite, stored: EvalResults | None) -> tuple[EvalResults, EvalResults]:
    """The baseline (the stored run, or the prompt reference run now) and the candidate run."""
    with _broken_run():
        baseline = stored or _run_suite(args, suite, args.baseline, args.baseline_rewriter)
        candidate = _run_suite(args, suite, args.candidate, args.candidate_rewriter)
    return baseline, candidate


def _run_labels(baseline: EvalResults, candidate: EvalResults) -> tuple[str, str]:
    """What tells the two runs apart: their prompts, and their query rewriters when those differ."""
    if baseline.rewriter == candidate.rewriter:
        return baseline.prompt.ref, candidate.prompt.ref
    return tuple(f"{run.prompt.ref} with rewriter={run.rewriter}" for run in (baseline, candidate))  # type: ignore[return-value]


def run_gate(args: argparse.Namespace) -> int:
    from evals.gate import REGRESSION, GateError, build_unknown, check_comparable, compare, verdict_table

    suite, stored = _gate_inputs(args)
    with _broken_run():
        baseline_ref = stored.prompt.ref if stored else args.baseline
        ran = stored.prompt.hash if stored else None
        if not policy_gate(args, baseline_ref, args.candidate or suite.prompt, "ragops eval gate", ran):
            return EXIT_FAILURE
    baseline, candidate = _gate_runs(args, suite, stored)
    try:
        check_comparable(baseline, candidate)
    except GateError as exc:
        raise CliError(f"broken eval run: {exc}") from exc
    if (warning := build_unknown(baseline, candidate)) is not None:
        print(warning, file=sys.stderr)
    verdicts = compare(baseline, candidate, suite, seed=args.seed)
    print(verdict_table(verdicts, *_run_labels(baseline, candidate)))
    _record_gate(args, baseline, candidate, verdicts)
    if args.out:
        print(f"report: {_write_run(args.out, candidate, baseline)}", file=sys.stderr)
    return EXIT_FAILURE if any(v.verdict == REGRESSION for v in verdicts) else EXIT_OK


def policy_gate(
    args: argparse.Namespace,
    baseline_ref: str,
    candidate_ref: str,
    command: str,
    baseline_ran: str | None = None,
    pass_on_stdout: bool = True,
) -> bool:
    """The candidate prompt's text against the baseline's and the answering policy (``evals.prompt_policy``),
    printed. False when the candidate weakens the policy and no ``--allow-policy-change`` reason releases it: the
    caller exits 1 before any suite runs (a 135M model ignores what the prompt says: no suite would show it). A
    released weakening is recorded in the audit trail before anything goes on; one that cannot be recorded is not
    released.
    ``baseline_ran``: the content hash of the prompt a stored baseline ran with. ``pass_on_stdout``: False puts a
    pass on stderr, for a command whose stdout says something else (``prompts promote``)."""
    from evals.prompt_policy import check_prompt_policy, override_detector, override_record
    from prompts.registry import PromptRegistry
    from safety.guards import POLICIES_DIR, PolicyError, load_injection_settings

    settings = settings_from(args)
    registry = PromptRegistry(settings.prompts_dir)
    baseline, candidate = registry.resolve(baseline_ref), registry.resolve(candidate_ref)
    if baseline_ran is not None and baseline_ran != baseline.content_hash:
        print(f"warning: the baseline ran {baseline.ref} as {baseline_ran}, its file is now {baseline.content_hash}: "
              "the policy check reads the file as it is", file=sys.stderr)  # fmt: skip
    try:
        injection = load_injection_settings(settings.safety.policies_dir or POLICIES_DIR)
    except PolicyError as exc:
        raise CliError(str(exc)) from exc
    check = check_prompt_policy(baseline, candidate, override_detector(injection.patterns))
    print(check.describe() + "\n", file=sys.stdout if check.weakens or pass_on_stdout else sys.stderr)
    reason = (getattr(args, "allow_policy_change", None) or "").strip()
    if not check.weakens:
        if reason:
            print("note: --allow-policy-change: the candidate weakens nothing; nothing recorded", file=sys.stderr)
        return True
    if not reason:
        hint = "change the prompt, or release it with --allow-policy-change REASON (recorded in the audit trail)"
        print(f"ragops: {candidate.ref} weakens the answering policy (the sentences above); {hint}", file=sys.stderr)
        return False
    from app.cli.common import open_state
    from serving.governance.audit import append_records

    who = _who()
    record = override_record(check, (baseline.content_hash, candidate.content_hash), reason, who, command)
    with open_state(settings) as state, state.transaction(write=True) as cur:
        (seq,) = append_records(cur, [record])
    print(f"Released by --allow-policy-change ({who}, audit record {seq}): {reason}\n")
    print(f"policy change allowed: recorded as audit record {seq}", file=sys.stderr)
    return True


def _who() -> str:
    """Who released a weakening: CI's actor when it runs in GitHub Actions, else the local user."""
    import getpass

    try:
        return os.environ.get("GITHUB_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's uid without a passwd entry)
        return f"uid {os.getuid()}"
