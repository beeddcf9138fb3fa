"""The lineage records of eval runs and gates (``serving.loop.lineage``'s bodies), made from their results."""

from __future__ import annotations

from pathlib import Path

from evals.gate import REGRESSION, MetricVerdict
from evals.results import EvalResults
from serving.loop.lineage import EvalRunRecord, GateRecord


def run_record(results: EvalResults, results_path: Path | None) -> EvalRunRecord | None:
    """None for results made without lineage (a runner not given the models)."""
    if results.lineage is None:
        return None
    means = {metric: summary.mean for metric, summary in results.aggregate.items()}
    path = str(results_path) if results_path else None
    return EvalRunRecord(suite=results.suite, results=path, means=means, lineage=results.lineage)


def gate_record(baseline: EvalResults, candidate: EvalResults, verdicts: list[MetricVerdict]) -> GateRecord | None:
    if candidate.lineage is None:
        return None
    regressions = [v.metric for v in verdicts if v.verdict == REGRESSION]
    return GateRecord(
        suite=candidate.suite, passed=not regressions, regressions=regressions,
        baseline=f"{baseline.prompt.name}@{baseline.prompt.version}", baseline_lineage=baseline.lineage,
        lineage=candidate.lineage,
    )  # fmt: skip
