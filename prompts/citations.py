"""Citation markers: the prompts ask the model to cite passages as ``[N]`` (or ``[1, 3]``). One definition of the
marker, used by the pipeline (resolving citations), the guards (citation validity, groundedness) and the evals."""

from __future__ import annotations

import re

MARKER = r"\[(\d+(?:\s*,\s*\d+)*)\]"  # [1] or [1, 3]; the pattern, for building others around it
CITATION = re.compile(MARKER)


def citation_numbers(marker_body: str) -> list[int]:
    """The numbers inside one citation marker's brackets."""
    return [int(n) for n in re.split(r"\s*,\s*", marker_body)]


def cited_numbers(text: str) -> list[int]:
    """Every passage number the text cites, in order of appearance."""
    return [n for body in CITATION.findall(text) for n in citation_numbers(body)]


def strip_citations(text: str) -> str:
    return CITATION.sub("", text).strip()
