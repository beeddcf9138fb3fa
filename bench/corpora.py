"""The benchmark corpora, defined once, and the percentile every bench script reports with.

Disfl-QA (``evals/corpora`` passages as the source tokenised them, ``evals/datasets`` questions) is the corpus
weights and thresholds are tuned on (each script names its range); SQuADShifts' new_wiki, nyt and amazon
(``data/squad_shifts``) are the corpora nobody tuned on. ``data/sample`` ships the Disfl-QA passages detokenised
and titled (``bench/build_sample.py``): no figure is measured on it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SQUAD_SHIFTS_DIR = ROOT / "data" / "squad_shifts"


@dataclass(frozen=True)
class BenchCorpus:
    name: str
    passages: Path  # JSON lines: {"id", "text"} (SQuADShifts: and "title")
    questions: Path  # JSON lines: {"id", "question", "passage_id", "answers"}


DISFL_QA = BenchCorpus(
    "disfl_qa",
    ROOT / "evals" / "corpora" / "disfl_qa_passages.jsonl",
    ROOT / "evals" / "datasets" / "disfl_qa_questions.jsonl",
)
SQUAD_SHIFTS = tuple(
    BenchCorpus(name, SQUAD_SHIFTS_DIR / f"{name}_passages.jsonl", SQUAD_SHIFTS_DIR / f"{name}_questions.jsonl")
    for name in ("new_wiki", "nyt", "amazon")
)
CORPORA = {corpus.name: corpus for corpus in (DISFL_QA, *SQUAD_SHIFTS)}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a reported p95 is a latency that was measured)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def emit(figures: dict[str, Any], out: Path | None) -> None:
    """Print a benchmark's figures as JSON, and write them to ``out`` when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


def write_or_check(files: dict[Path, str], command: str, check: bool) -> None:
    """A builder's output: written (one line each on stderr), or with ``check`` compared with what is committed,
    exiting 1 with the stale files named and the ``command`` that rebuilds them."""
    stale = [path for path, content in files.items() if not path.is_file() or path.read_text("utf-8") != content]
    if check:
        if stale:
            sys.exit(f"out of date (run {command}): " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return
    for path, content in files.items():
        path.write_text(content, encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {content.count(chr(10))} lines", file=sys.stderr)
