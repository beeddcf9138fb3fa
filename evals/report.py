"""A self-contained HTML report of an eval run: one file, no scripts or styles fetched from anywhere.

Per-metric tables, score distributions as inline SVG charts, the worst samples with their answers and
contexts, and, given a baseline run of the same suite, a side-by-side diff of what changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from evals.results import EvalResults, SampleResult

BINS = 10
WORST = 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    count: int
    label: str


def histogram(values: list[float], bins: int = BINS, width: float = 300, height: float = 120) -> list[Bar]:
    """Bars of a [0, 1] score histogram, laid out in an SVG of ``width`` x ``height`` (bottom at y=height)."""
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, max(0, int(value * bins)))] += 1
    tallest = max(counts) or 1
    step = width / bins
    bars = []
    for i, count in enumerate(counts):
        bar_height = height * count / tallest
        label = f"{i / bins:.1f}–{(i + 1) / bins:.1f}: {count}"
        bars.append(Bar(i * step, height - bar_height, bar_height, count, label))
    return bars


@dataclass(frozen=True)
class RankedSample:
    row: SampleResult
    score: float | None  # mean over the sample's scored metrics


@dataclass(frozen=True)
class ChangedSample:
    baseline: SampleResult
    candidate: SampleResult
    deltas: dict[str, float]  # metric -> candidate minus baseline


def _sample_score(row: SampleResult) -> float | None:
    values = [v for v in row.metrics.values() if v is not None]
    return sum(values) / len(values) if values else None


def worst_samples(results: EvalResults, limit: int = WORST) -> list[RankedSample]:
    """The samples with the lowest mean score over their scored metrics (failed judgements first)."""
    scored = [RankedSample(row, _sample_score(row)) for row in results.samples]
    ranked = sorted(
        (item for item in scored if item.score is not None or item.row.failures),
        key=lambda item: (not item.row.failures, item.score if item.score is not None else 0.0),
    )
    return ranked[:limit]


def sample_diff(baseline: EvalResults, results: EvalResults) -> list[ChangedSample]:
    """Samples of both runs whose answer or a metric changed, the largest drop first."""
    base_rows = {row.id: row for row in baseline.samples}
    changed = []
    for row in results.samples:
        before = base_rows.get(row.id)
        if before is None:
            continue
        deltas = {
            name: value - old
            for name, value in row.metrics.items()
            if value is not None and (old := before.metrics.get(name)) is not None and value != old
        }
        if deltas or row.answer != before.answer:
            changed.append(ChangedSample(before, row, deltas))
    return sorted(changed, key=lambda item: min(item.deltas.values(), default=0.0))


def html_templates(package: str) -> Environment:
    """The Jinja environment of a self-contained HTML report: ``package``'s ``templates/``, autoescaped, and an
    undefined name an error (a page with a silent blank would mislead its reader)."""
    return Environment(
        loader=PackageLoader(package, "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(results: EvalResults, baseline: EvalResults | None = None) -> str:
    environment = html_templates("evals")
    charts = {
        name: histogram([v for row in results.samples if (v := row.metrics.get(name)) is not None])
        for name in results.aggregate
    }
    return environment.get_template("report.html").render(
        results=results,
        baseline=baseline,
        charts=charts,
        worst=worst_samples(results),
        diff=sample_diff(baseline, results) if baseline else [],
    )


def write_report(path: Path, results: EvalResults, baseline: EvalResults | None = None) -> Path:
    path.write_text(render_report(results, baseline), encoding="utf-8")
    return path
