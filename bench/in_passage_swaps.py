"""The in-passage swapped-entity family: the gold answer against another span of the same kind (a name, a number,
a year) from the same passage that the question does not name — the model picked the wrong entity from the
right passage.

Two shapes, each with its own supported twin built the same way, so a scorer is judged on the entity alone:
- short: "The answer is SPAN." (twin: ``supported_short``, the gold span);
- sentence: a paraphrase, never the passage's own sentence (whose changed n-grams would give a swap away): the
  question turned into a statement around the span (``statement``), twin ``supported_paraphrase``.
Used by ``bench/guards.py`` (ROC AUC per corpus) and ``bench/build_suites.py`` (the ``entity_swap`` suite's
questions: those whose passage holds a competing span).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retrieval.chunking import split_sentences

# A capitalised run ("Thomas Jefferson", "New York Times") or a number ("1,200", "3.5").
SPAN = re.compile(r"\b(?:[A-Z][A-Za-z'.-]*[A-Za-z](?:\s+(?:of\s+)?[A-Z][A-Za-z'.-]*[A-Za-z])*|\d[\d,.]*\d|\d)\b")
_COMMON = frozenset(
    """the a an in on it this that he she they his her its but and as at for of after before during when while
    however although though since because if then there these those some many most all both each one two three
    what which who where why how yes no not also""".split()
)
_DO = frozenset({"did", "does", "do"})
_SUBJECT_WH = frozenset({"who", "what", "which"})


@dataclass(frozen=True)
class Swap:
    """One question's pair: the gold span and a competitor of its kind from the same passage."""

    gold: str
    other: str


def kind(span: str) -> str:
    """The span's kind: "year" (a four-digit number from 1000 to 2099), "number", or "name"."""
    digits = span.replace(",", "")
    if re.fullmatch(r"1\d{3}|20\d{2}", digits):
        return "year"
    return "number" if any(ch.isdigit() for ch in span) else "name"


def competitors(passage: str, gold: str, question: str) -> list[str]:
    """Spans of ``gold``'s kind in the passage (any sentence, the gold one included) that share no word with the
    gold answer or the question and are not a capitalised common word ("However", "The")."""
    taken = set(re.findall(r"\w+", (gold + " " + question).lower()))
    lowercase = set(re.findall(r"\b[a-z]+\b", passage))
    found: list[str] = []
    for sentence in split_sentences(passage):
        for span in SPAN.findall(sentence):
            words = re.findall(r"\w+", span.lower())
            if not words or set(words) & taken or kind(span) != kind(gold):
                continue
            if all(w in _COMMON or w in lowercase for w in words) or span in found:
                continue
            found.append(span)
    return found


def statement(question: str, span: str) -> str:
    """The question turned into a claim about ``span``: "Who wrote the declaration?" -> "Thomas Jefferson wrote
    the declaration."; other questions keep their words after the wh-phrase: "When did Rollo die?" -> "Rollo
    die: 933." (a clumsy sentence, as small models write; the scorer reads its words, not its grammar)."""
    words = question.strip().rstrip("?").strip().split()
    if not words:
        return f"{span}."
    if words[0].lower() in _SUBJECT_WH and len(words) > 1 and words[1].lower() not in _DO:
        return f"{span} {' '.join(words[1:])}."
    rest = words[1:]
    if rest and rest[0].lower() in _DO | {"is", "was", "are", "were"}:
        rest = rest[1:]
    return f"{' '.join(rest) or words[0]}: {span}."


def is_assertable(gold: str) -> bool:
    """A gold answer the family applies to: a name or a number, short."""
    return bool(gold) and len(gold) <= 40 and (kind(gold) != "name" or gold[:1].isupper())
