"""The top frames of a py-spy profile as a Markdown table (``bench/load.py --profile FILE`` writes one).

py-spy's raw format is one collapsed stack a line ("frame;frame;... count"). For each frame, the share of all
samples whose stack holds it (inclusive) and whose stack ends in it (self); library paths are cut to the package.

Run: ``.venv/bin/python bench/flame_table.py FILE [--top 25] [--under FRAME]`` (``--under``: only the stacks
holding that text, e.g. ``WorkerThread.run`` for the request threads).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_PATH = re.compile(r" \(/.*?/(?:site-packages|main)/")


def frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return [_PATH.sub(" (", frame) for frame in stack.split(";")], int(count)


def table(path: Path, top: int, under: str | None) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip() or (under and under not in line):
            continue
        stack, count = frames(line)
        total += count
        for frame in set(stack):
            inclusive[frame] += count
        own[stack[-1]] += count
    rows = ["| frame | inclusive | self |", "|---|---|---|"]
    for frame, count in inclusive.most_common(top):
        rows.append(f"| `{frame}` | {100 * count / total:.1f}% | {100 * own[frame] / total:.1f}% |")
    return f"{total} samples\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", help="only stacks holding this text")
    args = parser.parse_args()
    print(table(args.profile, args.top, args.under))


if __name__ == "__main__":
    main()
