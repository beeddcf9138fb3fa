"""Eval-suite files an erasure reaches: the JSON-lines files under ``evals_dir`` that hold a subject, listed, or
rewritten without its lines with a note of what went (``erasures.jsonl`` beside them, naming no identifier). Which
lines hold it is the erasure's rule (``serving.rights.erasure``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from serving.infra.clock import utc_now

SUITE_NOTE = "erasures.jsonl"  # beside the rewritten suite files: what went from which file, by erasure
LineTest = Callable[[dict[str, Any]], bool]


def files_holding(root: Path, holds: LineTest) -> list[Path]:
    """The JSON-lines files under ``root`` with a line that ``holds`` the subject."""
    return [path for path in sorted(root.rglob("*.jsonl")) if path.name != SUITE_NOTE and _any_line(path, holds)]


def rewrite_without(root: Path, files: list[Path], holds: LineTest, ref: str, erasure_id: str) -> None:
    """Rewrite each file without the lines that hold the subject, noting in ``root/erasures.jsonl`` how many went."""
    for path in files:
        removed = _rewrite_without(path, holds)
        _note_removal(root / SUITE_NOTE, path, removed, ref, erasure_id)


def _lines(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            yield text, parsed if isinstance(parsed, dict) else None


def _any_line(path: Path, holds: LineTest) -> bool:
    return any(parsed is not None and holds(parsed) for _, parsed in _lines(path))


def _rewrite_without(path: Path, holds: LineTest) -> int:
    """Rewrite ``path`` without the lines that hold the subject (atomically: a crash leaves the old file or the
    new one); returns how many went."""
    kept, removed = [], 0
    for text, parsed in _lines(path):
        if parsed is not None and holds(parsed):
            removed += 1
        else:
            kept.append(text)
    partial = path.with_name(f".{path.name}.erasing")
    partial.write_text("".join(kept), encoding="utf-8")
    partial.replace(path)
    return removed


def _note_removal(note: Path, path: Path, removed: int, ref: str, erasure_id: str) -> None:
    line = {"ts": utc_now(), "erasure_id": erasure_id, "subject_ref": ref, "file": str(path), "lines_removed": removed}
    with note.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
