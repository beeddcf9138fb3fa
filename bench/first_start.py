"""The first start as a newcomer meets it, and a warm one (issue goal: `make run` serving within 3 minutes of a
fresh clone, the venv's setup excluded, with a progress line at least every 5 s).

What `make run` does after setup, one process at a time, each timed from its start to its end (ingest) or to its
"ready:" line (serve), with the longest wait between two lines it printed (stdout and stderr, merged):

* ``cold``: a fresh models dir (the int8 ONNX export runs, and ``serve`` makes the default GGUF, the bundled
  SmolLM2 requantized to Q8_0: about a second) and a fresh data dir: ``ragops ingest`` of the sample
  corpus with ``RAGOPS_EMBEDDING_SEED`` pointing at a fresh seed (as ``make ingest`` runs it; ``serve`` without), then
  ``ragops serve`` (the default generator: llama.cpp with SmolLM2) until it prints its ready line;
* ``new data dir``: the same with the models dir and the seed of the cold run: what a second data dir, a
  scratch deployment or a test meets (the passage vectors come from the seed);
* ``warm``: the cold run's data dir again: re-ingest of the unchanged corpus, then serve.

Run: ``.venv/bin/python bench/first_start.py [--out FILE]`` (about two minutes on a quiet 2-core machine). The
machine's load is printed beside the figures: on a loaded machine every figure grows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit  # noqa: E402

SAMPLE = ROOT / "data" / "sample" / "disfl_qa_passages.jsonl"
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StepTiming:
    seconds: float
    longest_silence_s: float  # the longest wait between two printed lines (or from the start to the first)
    lines: int


def watch(argv: list[str], env: dict[str, str], until: str | None) -> StepTiming:
    """Run ``argv``; timed to its exit, or to the first line containing ``until`` (then it is stopped)."""
    started = last = time.monotonic()
    silence, lines = 0.0, 0
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stream: IO[str] = process.stdout  # type: ignore[assignment]
    try:
        for line in iter(stream.readline, ""):
            now = time.monotonic()
            for part in line.split("\r"):  # a progress bar redraws with carriage returns
                if part.strip():
                    silence, last, lines = max(silence, now - last), now, lines + 1
            if until is not None and until in line:
                return StepTiming(round(now - started, 2), round(silence, 2), lines)
            if now - started > READY_TIMEOUT_S:
                raise RuntimeError(f"{argv[1:3]} took over {READY_TIMEOUT_S} s")
        if process.wait() != 0:
            raise RuntimeError(f"{argv[1:3]} exited with {process.returncode}")
        return StepTiming(round(time.monotonic() - started, 2), round(silence, 2), lines)
    finally:
        process.terminate()
        process.wait(timeout=30)


def start(env: dict[str, str], seed: Path, port: int) -> dict[str, StepTiming]:
    """As ``make run``: the seed is the ingest's only (``make ingest`` sets it), never the server's."""
    ragops = str(VENV_BIN / "ragops")
    seeded = {**env, "RAGOPS_EMBEDDING_SEED": str(seed)}
    ingest = watch([ragops, "ingest", str(SAMPLE), "--collection", "sample"], seeded, until=None)
    serve = watch([ragops, "serve", "--port", str(port)], env, until="ready: open")
    return {"ingest": ingest, "serve": serve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ragops-first-start-") as scratch:
        root = Path(scratch)
        base = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGOPS_MODELS_DIR": str(root / "models")}
        seed = root / "sample-embeddings.sqlite"
        runs: dict[str, dict[str, StepTiming]] = {
            "cold": start({**base, "RAGOPS_DATA_DIR": str(root / "data")}, seed, args.port),
            "new data dir": start({**base, "RAGOPS_DATA_DIR": str(root / "data2")}, seed, args.port),
            "warm": start({**base, "RAGOPS_DATA_DIR": str(root / "data")}, seed, args.port),
        }
    figures: dict[str, Any] = {
        "runs": {name: {step: asdict(t) for step, t in steps.items()} for name, steps in runs.items()},
        "total_s": {name: round(sum(t.seconds for t in steps.values()), 1) for name, steps in runs.items()},
        "longest_silence_s": max(t.longest_silence_s for steps in runs.values() for t in steps.values()),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "how": "bench/first_start.py: ingest of data/sample then serve to its ready line, per run; setup excluded",
    }
    emit(figures, args.out)


if __name__ == "__main__":
    main()
