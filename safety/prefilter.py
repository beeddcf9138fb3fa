"""A cheap test that rules a regular expression out before it runs: the literal strings one of which every match
must contain ("required factors", as code search engines use them to skip files).

Python's ``re`` tries every alternative of a pattern at every word of a text: sixty instruction patterns over a
passage took 6 ms, most of an ingest's time per chunk. Almost every benign passage lacks the factors of almost
every pattern (no "instructions", "guidance", "directives" ... in it), and a substring test is a fraction of a
microsecond. Factors are taken from the pattern as written and tested against the text with its spaces removed
(``despaced``), so a match split by spaces ("ign ore") still passes the test; "i" and "l" are folded alike for the
folded view, where they stand for each other.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

# The regex parser and its opcodes: private modules, typed loosely in typeshed (mypy resolves them differently
# depending on what else it checks), so taken as ``Any``.
sre_parse: Any = importlib.import_module("re._parser")
sre: Any = importlib.import_module("re._constants")

Factors = frozenset[str] | None  # None: nothing is required (the pattern always runs)
_COMMON = frozenset("you your the all any and what from this that been with were have are was for not".split())


@functools.lru_cache(maxsize=1024)
def required_factors(pattern: str) -> Factors:
    """Strings (lower case, no spaces or hyphens), one of which is in every text the pattern matches
    (case-insensitively, spaces and hyphens removed); None when the pattern requires no literal."""
    return _Node.of_sequence(list(sre_parse.parse(pattern, re.IGNORECASE))).required


def despaced(text: str, fold_il: bool = False) -> str:
    """Lower case, without spaces and hyphens ("in-struc tions" -> "instructions")."""
    flat = text.lower().replace(" ", "").replace("-", "")  # (normalised text: one space between words)
    return flat.replace("l", "i") if fold_il else flat


def fold_il(factors: Factors) -> Factors:
    return None if factors is None else frozenset(f.replace("l", "i") for f in factors)


_MAX_EXACT = 64  # strings an exact set may hold (a product of alternations grows fast)
_EMPTY = frozenset([""])


def _product(left: frozenset[str], right: frozenset[str]) -> frozenset[str] | None:
    if len(left) * len(right) > _MAX_EXACT:
        return None
    return frozenset(a + b for a in left for b in right)


def _rarity(factors: frozenset[str]) -> tuple[int, int]:
    """The longest shortest string (a common word counts as one letter), then the fewest strings."""
    return min(1 if s in _COMMON else len(s) for s in factors), -len(factors)


class _Node:
    """What a piece of a pattern matches: ``exact``, every string it can match when that set is small (spaces
    and hyphens dropped), and ``required``, strings one of which each of its matches contains."""

    def __init__(self, exact: frozenset[str] | None, required: Factors) -> None:
        self.exact = exact
        self.required = required

    @classmethod
    def of_sequence(cls, items: list[tuple[Any, Any]]) -> _Node:
        candidates: list[frozenset[str]] = []
        run: frozenset[str] | None = _EMPTY  # the exact strings of the items since the last inexact one
        whole: frozenset[str] | None = _EMPTY
        for op, value in items:
            node = cls.of(op, value)
            joined = _product(run, node.exact) if run is not None and node.exact is not None else None
            whole = _product(whole, node.exact) if whole is not None and node.exact is not None else None
            if joined is not None:
                run = joined
                continue
            if run is not None and "" not in run:
                candidates.append(run)
            if node.required:
                candidates.append(node.required)
            run = node.exact if node.exact is not None else _EMPTY
        if run is not None and "" not in run:
            candidates.append(run)
        return cls(whole, max(candidates, key=_rarity) if candidates else None)

    @classmethod
    def of(cls, op: Any, value: Any) -> _Node:
        if op is sre.LITERAL:
            char = chr(value).lower()
            return cls(_EMPTY if char.isspace() or char == "-" else frozenset([char]), None)
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            return cls(_EMPTY, None)  # zero width
        if op is sre.SUBPATTERN:
            return cls.of_sequence(list(value[-1]))
        if op is sre.ATOMIC_GROUP:
            return cls.of_sequence(list(value))
        if op is sre.IN and all(o is sre.LITERAL for o, _ in value):
            return cls(frozenset("" if chr(v) in " -" else chr(v).lower() for _, v in value), None)
        if op is sre.BRANCH:
            return cls._branch([cls.of_sequence(list(branch)) for branch in value[1]])
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, item = value
            node = cls.of_sequence(list(item))
            required = node.required if low >= 1 else None
            if high == 1 and node.exact is not None:  # "x?" or "(x)"
                return cls(node.exact | _EMPTY if low == 0 else node.exact, required)
            return cls(None, required)
        return cls(None, None)  # other classes, any character: no literal

    @classmethod
    def _branch(cls, branches: list[_Node]) -> _Node:
        exact: frozenset[str] | None = frozenset()
        required: set[str] | None = set()
        for node in branches:
            exact = exact | node.exact if exact is not None and node.exact is not None else None
            own = node.required or (node.exact if node.exact is not None and "" not in node.exact else None)
            required = required | own if required is not None and own is not None else None
        if exact is not None and len(exact) > _MAX_EXACT:
            exact = None
        return cls(exact, None if required is None else frozenset(required))


class Prefilter:
    """Which of a list of patterns a text may match, from their required factors: a factor of four characters or
    more is looked up by its first four in the set of the text's four-character substrings (one pass over the
    text, then a set look-up per factor), and only then searched for."""

    GRAM = 4

    def __init__(self, factors: list[Factors], fold: bool = False) -> None:
        self._fold = fold
        self._factors = [fold_il(f) if fold else f for f in factors]
        every = frozenset().union(*(f for f in self._factors if f))
        self._short = [f for f in every if len(f) < self.GRAM]
        self._long: dict[str, list[str]] = {}
        for factor in every:
            if len(factor) >= self.GRAM:
                self._long.setdefault(factor[: self.GRAM], []).append(factor)

    def candidates(self, text: str) -> list[bool]:
        """For each pattern: whether it can match ``text`` (a normalised text or its folded view)."""
        flat = despaced(text, fold_il=self._fold)
        grams = {flat[i : i + self.GRAM] for i in range(len(flat) - self.GRAM + 1)}
        present = {f for f in self._short if f in flat}
        for gram in grams.intersection(self._long):
            present.update(f for f in self._long[gram] if len(f) == self.GRAM or f in flat)
        return [needed is None or not needed.isdisjoint(present) for needed in self._factors]
