"""Eval suites, metrics, the runner's cache and the regression gate."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evals.gate import PASS, REGRESSION, bootstrap_interval, compare
from evals.metrics import METRICS, Sample
from evals.suite import MetricSpec, Suite, SuiteError, load_dataset, load_suite
from prompts.loader import PROMPTS_DIR

ROOT = Path(__file__).resolve().parents[1]


def body(answer: str, cited: list[tuple[int, str, str]] = (), abstained: bool = False) -> dict[str, Any]:  # type: ignore[assignment]
    citations = [{"index": i, "doc_id": d, "text": t, "cited": True} for i, d, t in cited]
    return {"answer": answer, "citations": citations, "abstained": abstained}


def test_metrics() -> None:
    sample = Sample("s", "Who?", ("the Normans",), ("p1",))
    good = body("The Normans [1].", [(1, "p1", "It was the Normans who came.")])
    assert METRICS["exact_match"](sample, good) == 1.0
    assert METRICS["token_f1"](sample, body("Normans and Franks")) == pytest.approx(0.5)  # P 1/3, R 1
    assert METRICS["contains_answer"](sample, good) == 1.0
    assert METRICS["citation_accuracy"](sample, good) == 1.0
    assert METRICS["citation_format"](sample, good) == 1.0
    assert METRICS["citation_format"](sample, body("The Normans [3].", [(1, "p1", "x")])) == 0.0
    assert METRICS["citation_format"](sample, body("The Normans.")) == 0.0
    assert METRICS["retrieval_recall"](sample, good) == 1.0
    assert METRICS["abstained_when_expected"](sample, good) == 1.0
    unanswerable = Sample("u", "Weather?", expected="abstain")
    assert METRICS["abstained_when_expected"](unanswerable, body("The documents do not contain the answer.")) == 1.0
    assert METRICS["token_f1"](unanswerable, good) is None  # not applicable: left out of means


def suite(tmp_path: Path, metrics: dict[str, MetricSpec]) -> Suite:
    return Suite("t", tmp_path / "s.yaml", tmp_path, (tmp_path,), "c", "rag_answer", "extractive", metrics)


def results(scores: list[float | None], metric: str = "token_f1") -> dict[str, Any]:
    rows = [{"id": str(i), "metrics": {metric: s}} for i, s in enumerate(scores)]
    values = [s for s in scores if s is not None]
    return {"samples": rows, "aggregate": {metric: {"mean": sum(values) / len(values)}}, "prompt": {"ref": "x"}}


def test_gate_uses_paired_bootstrap_intervals(tmp_path: Path) -> None:
    spec = suite(tmp_path, {"token_f1": MetricSpec(tolerance=0.02)})
    baseline = results([0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.5, 0.4] * 5)
    same = compare(baseline, baseline, spec)[0]
    assert (same.verdict, same.difference, same.ci_low, same.ci_high) == (PASS, 0.0, 0.0, 0.0)
    worse = compare(baseline, results([s - 0.2 for s in [0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.5, 0.4] * 5]), spec)[0]
    assert worse.verdict == REGRESSION and worse.ci_high is not None and worse.ci_high < 0
    # Noise around the baseline (some samples up, some down) is no regression.
    noisy = results([s + (0.1 if i % 2 else -0.1) for i, s in enumerate([0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.5, 0.4] * 5)])
    assert compare(baseline, noisy, spec)[0].verdict == PASS
    assert bootstrap_interval([0.1, -0.2, 0.3], seed=1) == bootstrap_interval([0.1, -0.2, 0.3], seed=1)


def test_gate_threshold_and_excluded_samples(tmp_path: Path) -> None:
    spec = suite(tmp_path, {"token_f1": MetricSpec(threshold=0.5)})
    verdict = compare(results([0.6, None, 0.6]), results([0.4, 0.45, None]), spec)[0]
    assert verdict.pairs == 1 and verdict.verdict == REGRESSION and "threshold" in verdict.reason


def test_suite_and_dataset_validation(tmp_path: Path) -> None:
    assert load_suite(ROOT / "evals" / "suites" / "qa.yaml").metrics["retrieval_recall"].threshold == 0.8
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("name: x\n", "missing 'dataset'"),
        ("name: x\ndataset: a\ncorpus: b\ncollection: c\nmetrics: {bleu: {}}\n", "unknown metric 'bleu'"),
        ("name: x\ndataset: nope.jsonl\ncorpus: b\ncollection: c\nmetrics: {token_f1: {}}\n", "does not exist"),
        ("[unclosed", "invalid YAML"),
    ]:
        bad.write_text(text)
        with pytest.raises(SuiteError, match=message):
            load_suite(bad, root=tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": 1, "question": "q", "expected": "maybe"}\n')
    with pytest.raises(SuiteError, match="expected must be one of"):
        load_dataset(data)


def ragops_eval(*args: str, data_dir: Path, models_dir: Path, prompts_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RAGOPS_DATA_DIR": str(data_dir),
        "RAGOPS_MODELS_DIR": str(models_dir),
        "RAGOPS_PROMPTS_DIR": str(prompts_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "eval", *args], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """The shipped prompts plus planted versions: a neutral rewording and two broken ones."""
    root = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    v1 = (root / "rag_answer" / "v1.yaml").read_text()
    (root / "rag_answer" / "v91.yaml").write_text(
        v1.replace("version: v1", "version: v91").replace("Answer in one short sentence", "Reply in one brief sentence")
    )
    own_knowledge = "user: |\n  {% if false %}{{ passages }}{% endif %}Answer from your own knowledge: {{ question }}\n"
    (root / "rag_answer" / "v92.yaml").write_text(  # drops the passages: answers from the model's own knowledge
        v1.replace("version: v1", "version: v92").split("user: |")[0] + own_knowledge
    )
    return root


def test_eval_run_writes_results_and_reruns_from_cache(tmp_path: Path, models_dir: Path, prompts_dir: Path) -> None:
    suite_file = ROOT / "evals" / "suites" / "qa.yaml"
    args = ("run", str(suite_file), "--generator", "extractive", "--out", str(tmp_path / "out"), "--json")
    first = ragops_eval(*args, data_dir=tmp_path / "d", models_dir=models_dir, prompts_dir=prompts_dir)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["prompt"]["ref"] == "rag_answer@v1" and saved["generator"] == "extractive"
    assert saved["dataset"]["samples"] == 40 and len(saved["samples"]) == 40 and saved["dataset"]["hash"]
    assert summary["aggregate"]["retrieval_recall"]["mean"] >= 0.8
    assert not math.isnan(summary["aggregate"]["token_f1"]["mean"])
    again = ragops_eval(*args, data_dir=tmp_path / "d", models_dir=models_dir, prompts_dir=prompts_dir)
    assert "(40 from cache)" in again.stderr and json.loads(again.stdout)["aggregate"] == summary["aggregate"]


def test_gate_catches_a_broken_prompt_and_passes_a_rewording(
    tmp_path: Path, models_dir: Path, prompts_dir: Path
) -> None:
    """With the embedded model (llama.cpp), as the gate runs in CI."""
    suite_file = str(ROOT / "evals" / "suites" / "qa.yaml")
    common = {"data_dir": tmp_path / "d", "models_dir": models_dir, "prompts_dir": prompts_dir}
    baseline = ragops_eval("run", suite_file, "--out", str(tmp_path / "base"), **common)
    assert baseline.returncode == 0, baseline.stderr
    base_file = str(tmp_path / "base" / "results.json")
    neutral = ragops_eval("gate", suite_file, "--baseline", base_file, "--candidate", "rag_answer@v91", **common)
    assert neutral.returncode == 0, neutral.stdout + neutral.stderr
    assert "Overall: **PASS**" in neutral.stdout
    broken = ragops_eval("gate", suite_file, "--baseline", base_file, "--candidate", "rag_answer@v92", **common)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "regression" in broken.stdout and "95% CI" in broken.stdout
    missing = ragops_eval("gate", suite_file, "--baseline", "rag_answer@v404", **common)
    assert missing.returncode == 2 and missing.stderr.startswith("ragops: error: broken eval run")
