"""Eval harness speed: the 200-sample ``retrieval`` suite with the extractive generator, cold and re-run.

Each run is ``ragops eval run evals/suites/retrieval.yaml`` in a subprocess, timed on the wall clock (process
start, model load, corpus ingest, answers, metrics incl. ragas' context precision/recall, results.json and
report.html). Cold: an empty data dir (the ONNX export is made beforehand and shared, as in any set-up
machine). Re-run: the same suite again, unchanged, so answers come from the eval cache. Goals: cold <= 60 s,
re-run <= 10% of that.

Run: ``.venv/bin/python bench/evals.py [--runs 3] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "evals" / "suites" / "retrieval.yaml"


def timed_run(data_dir: Path, models_dir: Path, out: Path) -> tuple[float, str]:
    env = {**os.environ, "RAGOPS_DATA_DIR": str(data_dir), "RAGOPS_MODELS_DIR": str(models_dir)}
    argv = [str(ROOT / ".venv" / "bin" / "ragops"), "eval", "run", str(SUITE), "--out", str(out), "--json"]
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold/re-run pairs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp) / "models"
        timed_run(Path(tmp) / "warmup", models_dir, Path(tmp) / "out")  # makes the ONNX export once
        cold, rerun = [], []
        for i in range(args.runs):
            data_dir = Path(tmp) / f"data{i}"
            seconds, line = timed_run(data_dir, models_dir, Path(tmp) / f"out{i}")
            cold.append(seconds)
            print(f"cold   {seconds:5.1f} s  {line}", file=sys.stderr)
            seconds, line = timed_run(data_dir, models_dir, Path(tmp) / f"out{i}")
            rerun.append(seconds)
            print(f"re-run {seconds:5.1f} s  {line}", file=sys.stderr)
        results = json.loads((Path(tmp) / "out0" / "results.json").read_text())
    report: dict[str, Any] = {
        "suite": "retrieval (200 samples, extractive)",
        "cold_s": {"median": round(statistics.median(cold), 1), "max": round(max(cold), 1)},
        "rerun_s": {"median": round(statistics.median(rerun), 1), "max": round(max(rerun), 1)},
        "rerun_share_of_60s_goal": round(statistics.median(rerun) / 60, 3),
        "rerun_share_of_cold": round(statistics.median(rerun) / statistics.median(cold), 3),
        "aggregate": {name: summary["mean"] for name, summary in results["aggregate"].items()},
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
