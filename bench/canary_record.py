"""Record the answers the canary simulation replays: eval runs of the production prompt and of planted versions.

For each suite and planted prompt version, ``ragops eval run`` answers the suite's questions with SmolLM2 in
llama.cpp (guards, groundedness and the fallback chain as served) and this script keeps, per answer, the live
signals the canary analysis reads (``serving.loop.canary.Observation``): outcome, fallback, groundedness, whether it
cites a passage, latency and completion tokens.

The planted versions are the eval tests' (``tests/test_evals.py``): v91 rewords production (neutral), v94 drops
the citations (bad). Production's (v2) answers are the committed baselines' (``evals/baselines/SUITE.json``, made
by the same ``ragops eval run``; the runs are deterministic). Latencies depend on the machine's load while each run
ran: the replay uses answer lengths instead (``bench/canary.py``).

Run once (about 30 minutes on 2 busy cores): ``.venv/bin/python -m bench.canary_record``; it writes
``bench/data/canary_answers.jsonl`` (committed; ``tests/test_canary.py`` and ``bench/canary.py`` replay it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "data" / "canary_answers.jsonl"
SUITES = ("qa", "near_miss", "counterfactual")
BASELINE = "v2"  # production: its answers are the committed baselines'
VERSIONS = ("v94", "v91")  # drops citations (bad), a rewording (neutral)


def eval_run(suite: str, version: str, work: Path, prompts_dir: Path) -> Path:
    """One ``ragops eval run``; returns its results.json."""
    out = work / f"{suite}-{version}"
    env = {
        **os.environ,
        "RAGOPS_DATA_DIR": str(work / "data"),
        "RAGOPS_PROMPTS_DIR": str(prompts_dir),
        "RAGOPS_GENERATION_TIMEOUT_S": "600",  # a busy machine must not turn answers into the fallback's
    }
    argv = [sys.executable, "-m", "app.cli", "eval", "run", str(ROOT / "evals" / "suites" / f"{suite}.yaml"),
            "--prompt", f"rag_answer@{version}", "--out", str(out), "--json"]  # fmt: skip
    subprocess.run(argv, env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    return out / "results.json"


def signals(suite: str, version: str, sample: dict[str, Any]) -> dict[str, Any]:
    """What the canary analysis reads of one answer (as ``AnswerRecord`` carries it in the answer log)."""
    return {
        "suite": suite,
        "version": version,
        "id": sample["id"],
        "outcome": sample["outcome"],
        "fallback": sample["fallback"]["reason"] if sample.get("fallback") else None,
        "groundedness": sample["metrics"].get("groundedness"),
        "cited": any(c.get("cited") for c in sample.get("citations") or []),
        "latency_ms": sample["latency_ms"],
        "completion_tokens": sample["tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--suites", nargs="+", default=list(SUITES))
    parser.add_argument("--work", type=Path, help="keep the runs (and their eval cache, so a re-run resumes) here")
    args = parser.parse_args()
    from tests.test_evals import planted_prompts  # the planted versions are defined once, by the eval tests

    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        prompts_dir = work / "prompts" if (work / "prompts").is_dir() else planted_prompts(work / "prompts")
        for suite in args.suites:
            baseline = ROOT / "evals" / "baselines" / f"{suite}.json"
            for version in (BASELINE, *VERSIONS):
                path = baseline if version == BASELINE else eval_run(suite, version, work, prompts_dir)
                results = json.loads(path.read_text())
                lines += [json.dumps(signals(suite, version, s)) for s in results["samples"]]
                print(f"{suite} {version}: {len(results['samples'])} answers", file=sys.stderr)
                args.out.write_text("\n".join(lines) + "\n")  # kept as it grows: a long run can be cut short


if __name__ == "__main__":
    main()
