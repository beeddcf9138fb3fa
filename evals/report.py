"""A self-contained HTML report of an eval run: one file, no scripts or styles fetched from anywhere.

Per-metric tables, score distributions as inline SVG charts, the worst samples with their answers and
contexts, and, given a baseline run of the same suite, a side-by-side diff of what changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

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


def _sample_score(row: dict[str, Any]) -> float | None:
    values = [v for v in row["metrics"].values() if v is not None]
    return sum(values) / len(values) if values else None


def worst_samples(results: dict[str, Any], limit: int = WORST) -> list[dict[str, Any]]:
    """The samples with the lowest mean score over their scored metrics (failed judgements first)."""
    scored = [(row, _sample_score(row)) for row in results["samples"]]
    ranked = sorted(
        (pair for pair in scored if pair[1] is not None or pair[0].get("failures")),
        key=lambda pair: (not pair[0].get("failures"), pair[1] if pair[1] is not None else 0.0),
    )
    return [{**row, "score": value} for row, value in ranked[:limit]]


def sample_diff(baseline: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    """Samples of both runs whose answer or a metric changed, the largest drop first."""
    base_rows = {row["id"]: row for row in baseline["samples"]}
    changed = []
    for row in results["samples"]:
        before = base_rows.get(row["id"])
        if before is None:
            continue
        deltas = {
            name: value - before["metrics"][name]
            for name, value in row["metrics"].items()
            if value is not None and before["metrics"].get(name) is not None and value != before["metrics"][name]
        }
        if deltas or row["answer"] != before["answer"]:
            changed.append({"id": row["id"], "question": row["question"], "baseline": before, "candidate": row,
                            "deltas": deltas})  # fmt: skip
    return sorted(changed, key=lambda item: min(item["deltas"].values(), default=0.0))


def render_report(results: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    environment = Environment(
        loader=PackageLoader("evals", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    charts = {
        name: histogram([row["metrics"][name] for row in results["samples"] if row["metrics"].get(name) is not None])
        for name in results["aggregate"]
    }
    return environment.get_template("report.html").render(
        results=results,
        baseline=baseline,
        charts=charts,
        worst=worst_samples(results),
        diff=sample_diff(baseline, results) if baseline else [],
    )


def write_report(path: Path, results: dict[str, Any], baseline: dict[str, Any] | None = None) -> Path:
    path.write_text(render_report(results, baseline), encoding="utf-8")
    return path
