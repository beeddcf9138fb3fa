"""The regression gate: a candidate run against a baseline run of the same suite, metric by metric.

Small models are noisy, so a regression is judged on the paired per-sample differences (candidate minus
baseline, on the samples both scored) with a seeded bootstrap confidence interval of their mean. A metric
regresses when the change is both real and large: the interval lies wholly below zero (worse beyond noise)
and the mean difference is below ``-tolerance`` (worse by more than the suite accepts); or when the
candidate's mean falls under the metric's absolute ``threshold``.

Runs are only compared when the comparison means something (``check_judges_prompts``, ``check_comparable``);
otherwise the gate is broken (``GateError``: exit code 2), which is never a regression verdict.

Before any run, the candidate prompt's text is read against the answering policy (``evals.prompt_policy``): a
small model ignores what a prompt says, so a weakening no metric can show still fails the gate (exit 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from evals.results import EvalResults
from evals.suite import Suite

PASS, REGRESSION = "pass", "regression"


class GateError(Exception):
    """Runs the gate cannot judge: the gate's exit code 2, never a regression verdict."""


def check_judges_prompts(generator: str, rewriters: tuple[str | None, str | None] = (None, None)) -> None:
    """The gate compares prompts, so it needs a generator that reads them; or query rewriters (baseline's,
    candidate's), which change what is retrieved whatever the generator."""
    if generator == "extractive" and rewriters[0] == rewriters[1]:
        raise GateError(
            "the gate judges prompts through a model; the extractive generator ignores prompts (it can compare "
            "query rewriters: --baseline-rewriter, --candidate-rewriter)"
        )


def check_comparable(baseline: EvalResults, candidate: EvalResults) -> None:
    """Baseline and candidate must answer the same dataset with the same generator, and llama.cpp's runs the same
    build (when both record it): only the prompt differs, or the query rewriter."""
    if candidate.dataset.hash != baseline.dataset.hash:
        raise GateError("the baseline was run on another dataset (dataset hashes differ)")
    if candidate.generator != baseline.generator:
        raise GateError(f"the baseline was run on {baseline.generator}, not {candidate.generator}")
    multi_turn = any(sample.turn > 1 for sample in candidate.samples)  # the rewriter reads earlier turns only
    rewriters = {baseline.rewriter, candidate.rewriter}
    if multi_turn and None not in rewriters and len(rewriters) == 2 and baseline.prompt.hash != candidate.prompt.hash:
        raise GateError("the prompt and the query rewriter both differ: the gate could not tell which made the change")
    builds = [_build(run) for run in (baseline, candidate)]
    if None not in builds and builds[0] != builds[1]:
        raise GateError(
            f"the baseline was run on another llama.cpp build ({builds[0]}), the candidate on {builds[1]}: builds "
            "decode differently, so the difference would not be the prompt's. Re-run the baseline on this build"
        )


def build_unknown(baseline: EvalResults, candidate: EvalResults) -> str | None:
    """A warning when one run does not record its llama.cpp build (made before builds were recorded)."""
    runs = {"baseline": baseline, "candidate": candidate}
    unknown = [name for name, run in runs.items() if run.generator == "llamacpp" and not _build(run)]
    if not unknown:
        return None
    return (f"warning: the {' and '.join(unknown)} does not record its llama.cpp build: if the builds differ, "
            "so do the answers, and the gate cannot tell that from the prompt's effect")  # fmt: skip


def _build(run: EvalResults) -> str | None:
    return run.lineage.models.generator_build if run.lineage else None


@dataclass(frozen=True, kw_only=True)
class MetricVerdict:
    metric: str
    baseline: float | None
    candidate: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    pairs: int
    threshold: float | None
    tolerance: float
    verdict: str
    reason: str


def bootstrap_interval(
    differences: list[float], seed: int = 0, resamples: int = 2000, confidence: float = 0.95
) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(sum(rng.choices(differences, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]


def _mean(results: EvalResults, metric: str) -> float | None:
    summary = results.aggregate.get(metric)
    return summary.mean if summary is not None else None


def compare(baseline: EvalResults, candidate: EvalResults, suite: Suite, seed: int = 0) -> list[MetricVerdict]:
    base_rows = {row.id: row for row in baseline.samples}
    verdicts = []
    for metric, spec in suite.metrics.items():
        pairs = [
            (base_rows[row.id].metrics.get(metric), row.metrics.get(metric))
            for row in candidate.samples
            if row.id in base_rows
        ]
        scored = [(b, c) for b, c in pairs if b is not None and c is not None]
        candidate_mean, baseline_mean = _mean(candidate, metric), _mean(baseline, metric)
        difference = ci_low = ci_high = None
        verdict, reason = PASS, "within tolerance"
        if scored:
            differences = [c - b for b, c in scored]
            difference = sum(differences) / len(differences)
            ci_low, ci_high = bootstrap_interval(differences, seed)
            if ci_high < 0 and difference < -spec.tolerance:
                verdict, reason = REGRESSION, f"worse by more than {spec.tolerance}, 95% CI below 0"
        else:
            reason = "no sample scored by both runs"
        if spec.threshold is not None and (candidate_mean is None or candidate_mean < spec.threshold):
            verdict, reason = REGRESSION, f"mean below threshold {spec.threshold}"
        verdicts.append(
            MetricVerdict(
                metric=metric,
                baseline=baseline_mean,
                candidate=candidate_mean,
                difference=difference,
                ci_low=ci_low,
                ci_high=ci_high,
                pairs=len(scored),
                threshold=spec.threshold,
                tolerance=spec.tolerance,
                verdict=verdict,
                reason=reason,
            )
        )
    return verdicts


def verdict_table(verdicts: list[MetricVerdict], baseline_ref: str, candidate_ref: str) -> str:
    """A Markdown table (it reads in a terminal and renders as a CI job summary)."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"Gate: candidate {candidate_ref} vs baseline {baseline_ref}",
        "",
        "| metric | baseline | candidate | diff | 95% CI | pairs | threshold | tolerance | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        interval = "n/a" if v.ci_low is None else f"[{v.ci_low:+.3f}, {v.ci_high:+.3f}]"
        lines.append(
            f"| {v.metric} | {number(v.baseline)} | {number(v.candidate)} | "
            f"{'n/a' if v.difference is None else f'{v.difference:+.3f}'} | {interval} | {v.pairs} | "
            f"{number(v.threshold)} | {v.tolerance} | **{v.verdict}**: {v.reason} |"
        )
    overall = REGRESSION if any(v.verdict == REGRESSION for v in verdicts) else PASS
    lines += ["", f"Overall: **{overall.upper()}**"]
    return "\n".join(lines)
