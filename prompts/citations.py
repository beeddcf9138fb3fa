"""Citation markers: the prompts ask the model to cite passages as ``[N]`` (or ``[1, 3]``). One definition of the
marker, used by the pipeline (resolving citations), the guards (citation validity, groundedness) and the evals."""

from __future__ import annotations

import re

MARKER = r"\[(\d+(?:\s*,\s*\d+)*)\]"  # [1] or [1, 3]; the pattern, for building others around it
CITATION = re.compile(MARKER)
# The one sentence that says the passages lack the answer: the pipeline's abstention, the outage answer, the
# extractive generator's "nothing fits", and the abstention branch of the cited-sentences answer grammar.
NOT_IN_DOCUMENTS = "The documents do not contain the answer."


def citation_numbers(marker_body: str) -> list[int]:
    """The numbers inside one citation marker's brackets."""
    return [int(n) for n in re.split(r"\s*,\s*", marker_body)]


def cited_numbers(text: str) -> list[int]:
    """Every passage number the text cites, in order of appearance."""
    return [n for body in CITATION.findall(text) for n in citation_numbers(body)]


def strip_citations(text: str) -> str:
    return CITATION.sub("", text).strip()


_CLAIM_AFTER = re.compile(r"[,;:]|\bbut\b|[.!?]\s+\S")  # a clause or a sentence that goes on to answer


def says_not_in_documents(text: str) -> bool:
    """The answer is the model's abstention: the not-in-documents sentence alone (free-text versions may end it
    otherwise: "... the answer to this question."), not one that goes on to answer anyway."""
    answer, opening = strip_citations(text).lower(), NOT_IN_DOCUMENTS.rstrip(".").lower()
    return answer.startswith(opening) and not _CLAIM_AFTER.search(answer[len(opening) :])
