"""Builds the shipped sample corpus (``data/sample/disfl_qa_passages.jsonl``) from the Disfl-QA passages as the
source tokenised them (``evals/corpora/disfl_qa_passages.jsonl``, what the benchmarks, eval suites and tests
measure on): normal spacing restored, and a title and a source for each passage.

Deterministic: rules only, no model and no randomness, so a re-run writes byte-identical output. The rules only
remove spaces (and the invisible zero-width characters of Wikipedia's templates); they never add, drop or change
a visible character. Where a rule cannot tell (a spaced "-" is taken for a hyphen, a spaced en dash between
lower-case words for a dash) it keeps to the commonest reading in this corpus; chemical formulas are joined only
for the few symbols the corpus uses ("O 2" → "O2", "CO 2" → "CO2"). The check is text the rules were not written
from: Disfl-QA's gold answers are SQuAD's spans in Wikipedia's own spacing, and the built passages hold 99.7% of
them verbatim (the tokenised ones 81%; ``tests/test_sample.py``).

The title is the passage's opening sentence, clipped at a word boundary (``TITLE_CHARS``) with "…": Disfl-QA keeps
no article titles, and a title made up any other way would be invented.

Run: ``.venv/bin/python -m bench.build_sample`` (``--check`` fails when the committed file differs).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENISED = ROOT / "evals" / "corpora" / "disfl_qa_passages.jsonl"
SHIPPED = ROOT / "data" / "sample" / "disfl_qa_passages.jsonl"
SOURCE = "Wikipedia via SQuAD v2 (Disfl-QA), CC BY-SA 4.0"
TITLE_CHARS = 70

INVISIBLE = frozenset({"\u200b", "\ufeff"})  # zero-width space, zero-width no-break space
OPENING = frozenset("([{")
CLOSING = frozenset({".", ",", ";", ":", "?", "!", ")", "]", "}", "%", "…"})
CLITICS = frozenset({"s", "t", "re", "ve", "ll", "d", "m", "S", "T"})
ELIDING = frozenset({"d", "D", "l", "L", "O", "dell", "dall", "nell", "sull", "all", "Sant"})  # d'Hondt, dell’Ordine
NOT_POSSESSIVE = frozenset({"as", "is", "was", "has", "his", "this", "its", "us", "thus", "plus", "whereas"})
FORMULA = frozenset({"O", "N", "H", "CO", "SiO", "CH", "Fe"})  # the element groups the corpus subscripts
COMPASS = frozenset({"N", "S", "E", "W", "C", "F"})  # after a degree or minute sign: 9°C, 47°39′N
CURRENCY = frozenset({"$", "£", "€"})
CURRENCY_PREFIXES = frozenset({"A", "C", "HK", "NZ", "US"})  # A$, US$
IPA_MARKS = frozenset("ˈˌː")
DASH_RANGE_END = re.compile(r"(?:\d|%|\d(?:st|nd|rd|th))$")  # 1623 – 25, 30 % – 50 %, 15th – 17th
# Letter-dot abbreviations written without spaces; other chains are a person's initials ("G. H. Hardy").
ABBREVIATED = frozenset({"U.S.A.", "U.S.", "U.K.", "U.N.", "D.C.", "L.A.", "e.g.", "i.e.", "a.m.", "p.m.", "a.k.a."})
EDITORIAL = re.compile(  # Wikipedia's notes: [citation needed], [update], [note 1], [b], [according to whom?]
    r"(?:citation|clarification|verification|attribution|page|further explanation) needed"
    r"|update|vague|not in citation given|[Nn]ote \d+|[a-z]|[^\]]*\?"
)

# The role of a quote or apostrophe token: which side it sticks to.
OPEN, CLOSE, INNER, MARK = "open", "close", "inner", "mark"


def _wordish_end(token: str) -> bool:
    return token[-1].isalnum() or token[-1] in ")]}%°′″²³"


def _wordish_start(token: str) -> bool:
    return token[0].isalnum() or token[0] in "([{$£€"


def _ipa(token: str) -> bool:
    return any(ch in IPA_MARKS for ch in token)


def _number_start(tokens: list[str], end: int) -> int:
    """The index of the first token of the spaced number that ends at ``end`` ("58 . 23" → the "58")."""
    start = end
    while start >= 2 and tokens[start - 1] in {".", ","} and tokens[start - 2].isdigit():
        start -= 2
    return start


def _digit_group_commas(tokens: list[str]) -> set[int]:
    """Boundaries inside numbers ("1 , 000 , 000"). A chain of comma-separated digit tokens is a number only when its
    groups after the first have three digits and the first has one to three; a leading group of four or more digits
    is a number of its own ("In 2006 , 304 , 016"); any other chain is a list ("1563 , 1593")."""
    joined: set[int] = set()
    i = 0
    while i < len(tokens):
        if not tokens[i].isdigit():
            i += 1
            continue
        chain = [i]
        while chain[-1] + 2 < len(tokens) and tokens[chain[-1] + 1] == "," and tokens[chain[-1] + 2].isdigit():
            chain.append(chain[-1] + 2)
        groups = [tokens[k] for k in chain]
        if len(groups[0]) > 3 and len(groups) > 2:
            chain, groups = chain[1:], groups[1:]
        if len(groups) > 1 and len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
            joined.update(b for k in chain[:-1] for b in (k + 1, k + 2))
        i = chain[-1] + 1
    return joined


def _abbreviations(tokens: list[str]) -> set[int]:
    """Boundaries inside the letter-dot abbreviations of ``ABBREVIATED`` ("U . S ." → "U.S."), longest first."""
    joined: set[int] = set()
    for i in range(len(tokens)):
        if i - 1 in joined or i in joined:
            continue
        for length in (3, 2):
            span = tokens[i : i + 2 * length]
            if len(span) == 2 * length and "".join(span) in ABBREVIATED:
                joined.update(range(i + 1, i + 2 * length - 1))
                break
    return joined


def _bracket_notation(tokens: list[str]) -> set[int]:
    """Boundaries before brackets that belong to the word before them: function and article notation ("T ( n )",
    "Article 101 ( 1 )", "Z [ i ]", "wid [ en ]") and Wikipedia's editorial notes ("so . [ citation needed ]")."""
    joined: set[int] = set()
    for i in range(1, len(tokens) - 2):
        before, bracket = tokens[i - 1], tokens[i]
        if bracket not in {"(", "["}:
            continue
        close = ")" if bracket == "(" else "]"
        end = tokens.index(close, i) if close in tokens[i:] else -1
        inside = tokens[i + 1 : end] if end > 0 else []
        editorial = bracket == "[" and EDITORIAL.fullmatch(" ".join(inside))
        if editorial or (len(inside) == 1 and _notation(tokens[i - 2] if i >= 2 else "", before, bracket, inside[0])):
            joined.add(i)
    return joined


def _notation(two_before: str, before: str, bracket: str, inside: str) -> bool:
    """Whether ``before ( inside )`` is a notation: an argument (T(n), DTIME(n2), C(O)), an article's paragraph
    (101(1), 501(c)) or a bracketed letter inside a word (Z[i], wid[en]); never a unit's ("kbit / s ( T1 )")."""
    if len(inside) > 3 or not inside.isalnum() or (inside[0].isupper() and len(inside) > 1):
        return False
    if bracket == "[":
        return before.isalpha() and len(inside) <= 2
    letter = len(before) == 1 and before.isalpha() and two_before != "/"
    return letter or (before.isupper() and len(before) > 1) or before.isdigit()


def _quote_roles(tokens: list[str]) -> dict[int, str]:
    """Which way each quote mark and apostrophe sticks. Double quotes pair up in order (context decides first: one
    after an opening bracket opens, one before closing punctuation closes); ASCII single quotes are, in turn, a
    minute mark, an apostrophe before a clitic ("Earth ' s"), the close of an open single quote, an elision
    ("L ' Oyseleur", "Ba ' athist"), a plural possessive ("Years ' War") or an opening quote."""
    roles: dict[int, str] = {}
    double_open = single_open = False
    for i, token in enumerate(tokens):
        before = tokens[i - 1] if i else None
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if token == "'" and after == "'":  # '' standing for a double quote
            roles[i + 1] = INNER
            token = '"'
        elif token == "'" and before == "'" and roles.get(i) == INNER:
            continue
        if token in {"'", '"'} and before is not None and before[-1].isdigit():
            start = _number_start(tokens, i - 1)
            if start and tokens[start - 1] in {"°", "′", "'"}:  # 37 ° 9 ' 58 . 23 "
                roles[i] = MARK
                continue
        ellipsis_next = after == "." and i + 2 < len(tokens) and tokens[i + 2] == "."
        closing_next = after is None or (after in CLOSING and not ellipsis_next)
        forced = OPEN if before is None or before in OPENING else CLOSE if closing_next else None
        if token == '"':
            role = forced or (CLOSE if double_open else OPEN)
            double_open = role == OPEN
        elif (
            token in {"'", "’"} and after in CLITICS and before is not None and (_wordish_end(before) or before == ".")
        ):
            role = INNER
        elif token in {"'", "’"} and single_open and forced != OPEN:
            role, single_open = CLOSE, False
        elif token in {"'", "’"} and before is not None and after is not None and _elision(before, after):
            role = INNER
        elif token == "’" or (token == "'" and before is not None and _plural_possessive(tokens, i)):
            role = forced or CLOSE
        elif token in {"'", "‘", "“", "`"}:
            role = forced if token == "'" and forced else OPEN
            single_open = single_open or (role == OPEN and token != "“")
        elif token == "”":
            role = CLOSE
        else:
            continue
        roles[i] = role
    return roles


def _elision(before: str, after: str) -> bool:
    """An apostrophe inside a name: d'Hondt, L'Oyseleur, dell’Ordine, or a transliteration (Ba'athist, Ch'i)."""
    if not (before.isalpha() and after[0].isalpha()):
        return False
    if before in ELIDING:
        return True
    short_name = len(before) <= 4 and before[0].isupper() and before[1:].islower() and before not in {"A", "I"}
    return short_name and not before.endswith("s") and after[0].islower()


def _plural_possessive(tokens: list[str], i: int) -> bool:
    """ "Years ' War", unless a quote closes a few words on ("kteis ' comb ' and")."""
    before = tokens[i - 1]
    if not (before.isalpha() and before.endswith("s") and before.lower() not in NOT_POSSESSIVE):
        return False
    for k in range(i + 2, min(i + 7, len(tokens))):
        if tokens[k] == "'" and not tokens[k - 1].endswith("s") and tokens[k + 1 : k + 2] != ["s"]:
            return False
    return True


def _continues_number(tokens: list[str], i: int) -> bool:
    """Whether the digits at ``i`` go on as a number or a sum ("Fe 1 − xO", "N 9 . 317")."""
    after = tokens[i + 1 : i + 3]
    return after[:1] == ["−"] or (len(after) == 2 and after[0] in {".", ","} and after[1][0].isdigit())


def _minus_sticks(tokens: list[str], i: int) -> tuple[bool, bool]:
    """A minus sign: unary before a number ("of − 11 . 7" → "of −11.7"), a unit's exponent ("mol − 1" after
    "kJ ·" → "mol−1"), or an operator that keeps its spaces ("p − 1")."""
    before = tokens[i - 1] if i else None
    after = tokens[i + 1] if i + 1 < len(tokens) else ""
    if i >= 2 and tokens[i - 2] == "·":
        return True, True
    unary = before is None or not _wordish_end(before) or (before.isalpha() and before.islower() and len(before) > 1)
    return False, unary and (after[:1].isdigit() or after == ".")


def _glued(tokens: list[str], i: int, roles: dict[int, str], joined: set[int], spaced: set[int]) -> bool:
    """Whether token ``i`` follows token ``i - 1`` with no space between them."""
    a, b = tokens[i - 1], tokens[i]
    before_a = tokens[i - 2] if i >= 2 else ""
    after_b = tokens[i + 1] if i + 1 < len(tokens) else ""
    if i in joined:
        return True
    if roles.get(i) in {CLOSE, INNER, MARK} or roles.get(i - 1) in {OPEN, INNER}:
        return True
    if roles.get(i - 1) == MARK:
        return b[0].isdigit() or b == "."
    if b == "." and after_b == "." and a != ".":  # an ellipsis keeps its space after an operator or a comma
        return _wordish_end(a) or (a in CLOSING and a != ",")
    if b in CLOSING or a in OPENING:
        return True
    if a in {".", ":"} and b[0].isdigit() and (before_a[-1:].isdigit() or before_a in {"-", "−"}):
        return True  # 20 . 8, 9 : 15, r = - . 907
    if a == "." and b.isdigit() and before_a == "X" and (i < 3 or tokens[i - 3] != "."):
        return True  # the ITU's X . 25
    return _glued_symbol(tokens, i, spaced)


def _glued_symbol(tokens: list[str], i: int, spaced: set[int]) -> bool:
    """The rules for hyphens, dashes, slashes and signs between words and numbers."""
    a, b = tokens[i - 1], tokens[i]
    before_a = tokens[i - 2] if i >= 2 else ""
    after_b = tokens[i + 1] if i + 1 < len(tokens) else ""
    if a == "-" and b == "-":
        return True  # "- -": an ASCII dash, spaced as a whole
    if b == "-" and a != "-" and after_b != "-":
        return _wordish_end(a)
    if a == "-" and b != "-" and before_a != "-":
        return _wordish_start(b) or b == "."
    if "–" in {a, b}:
        left, right = (before_a, b) if a == "–" else (a, after_b)
        if DASH_RANGE_END.search(left) and right[:1].isdigit():
            return True
        return all(w.isalpha() and w[0].isupper() for w in (left, right))  # Miller – Urey
    if b == "/":
        return not {i, i + 1} & spaced and (_ipa(a) or (_wordish_end(a) and bool(after_b) and not _ipa(after_b)))
    if a == "/":
        return not {i - 1, i} & spaced and (_ipa(b) or (_wordish_start(b) and bool(before_a) and not _ipa(before_a)))
    if "—" in {a, b} or "⁄" in {a, b}:
        return True  # Wikipedia's em dash is unspaced ("Dartmouth—which"); 1 ⁄ 3
    if "·" in {a, b}:  # kJ · mol → kJ·mol; between numbers a product keeps its spaces: 2 · 1017
        left, right = (a, after_b) if b == "·" else (before_a, b)
        return bool(left and right) and not (left[-1].isdigit() and right[0].isdigit())
    if "−" in {a, b}:
        sticks_left, sticks_right = _minus_sticks(tokens, i if b == "−" else i - 1)
        return sticks_left if b == "−" else sticks_right
    if b in {"°", "′", "″"}:  # 45°, 47°39′N; a temperature keeps its space: 0 °C
        return a[-1].isdigit() and not (b == "°" and after_b in {"C", "F"})
    if a in {"°", "′", "″"}:
        return b.isdigit() or b in COMPASS
    if a in CURRENCY:
        return b[0].isdigit()
    if b == "$":
        return a in CURRENCY_PREFIXES
    if b == "&" or a == "&":
        left, right = (a, after_b) if b == "&" else (before_a, b)
        return all(w.isupper() and w.isalpha() and len(w) <= 2 for w in (left, right))  # AT & T, S & P
    if b == "+":  # Sky + HD (a brand's plus), not n + 1
        return ((a.isalpha() and len(a) > 1) or a == ")") and not (after_b[:1].isdigit() or len(after_b) == 1)
    if a in {"~", "#", ">", "<", "≈"} and (a in {"~", "#"} or not before_a[-1:].isalnum()):
        return b[0].isalnum()  # ~3000, #P, > 500
    # O 2 → O2
    return (
        a in FORMULA and b.isdigit() and len(b) <= 2 and before_a not in {"°", "′"} and not _continues_number(tokens, i)
    )


def detokenise(text: str) -> str:
    """``text`` with the source's tokenised spacing undone: 'the Earth ' s atmosphere ( see Occurrence )' becomes
    "the Earth's atmosphere (see Occurrence)"."""
    tokens: list[str] = []
    spaced: set[int] = set()  # boundaries an invisible character sat on: a slash there keeps its spaces
    for token in text.split():
        if token in INVISIBLE:
            spaced.add(len(tokens))
            continue
        tokens.append(token)
    if not tokens:
        return ""
    roles = _quote_roles(tokens)
    joined = _digit_group_commas(tokens) | _abbreviations(tokens) | _bracket_notation(tokens)
    parts = [tokens[0]]
    for i in range(1, len(tokens)):
        parts.append(tokens[i] if _glued(tokens, i, roles, joined, spaced) else " " + tokens[i])
    return "".join(parts)


SENTENCE_END = re.compile(r"[.!?][\"”’')]*\s+(?=[A-Z0-9\"“(])")
ABBREVIATIONS = "St Mr Mrs Ms Dr Rev Rep Sen Gov Gen Col Lt Capt Prof Fr Ft No pp Jr Sr Mt Co Inc Ltd Bros ca vs approx"
NOT_AN_END = re.compile(rf"(?:\b[A-Za-z]|\b(?:{'|'.join(ABBREVIATIONS.split())})|\.[A-Za-z])\.$")  # J. U.S. Rev.
DANGLING = frozenset(
    "a an and as at by for from in into its of on or that the their to which who whose with was were is are his "
    "her".split()
)


def sentences(text: str) -> list[str]:
    found, start = [], 0
    for end in SENTENCE_END.finditer(text):
        if not NOT_AN_END.search(text[: end.start() + 1]):
            found.append(text[start : end.start() + 1])
            start = end.end()
    return [*found, text[start:]]


def opening_sentence(text: str) -> str:
    """The first sentence, or the first whole one where the passage opens mid-sentence ("are prime. Prime…")."""
    whole = sentences(text)
    return next((s for s in whole if not s[0].islower()), whole[0])


def title_of(text: str, limit: int = TITLE_CHARS) -> str:
    """The passage's opening sentence, clipped at a word boundary to at most ``limit`` characters with "…" (never
    inside an unclosed bracket or quote, never after a dangling "of the")."""
    sentence = opening_sentence(text).rstrip(".")
    if len(sentence) <= limit:
        return sentence
    words = sentence[:limit].split(" ")[:-1]  # the last word may be cut; the room it leaves takes the "…"
    while words:
        clipped = " ".join(words).rstrip(",;:–—-")
        if clipped.split(" ")[-1].lower() not in DANGLING and _balanced(clipped):
            return clipped + "…"
        words.pop()
    return sentence[: limit - 1] + "…"


def _balanced(text: str) -> bool:
    return text.count("(") == text.count(")") and text.count('"') % 2 == 0 and text.count("“") == text.count("”")


def clean_record(record: dict[str, str]) -> dict[str, str]:
    text = detokenise(record["text"])
    return {"id": record["id"], "title": title_of(text), "source": SOURCE, "text": text}


def build(tokenised: Path = TOKENISED) -> str:
    """The shipped sample file's content, built from the tokenised passages."""
    lines = tokenised.read_text(encoding="utf-8").splitlines()
    return "".join(json.dumps(clean_record(json.loads(line))) + "\n" for line in lines if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed file differs")
    args = parser.parse_args()
    content = build()
    if args.check:
        if not SHIPPED.is_file() or SHIPPED.read_text(encoding="utf-8") != content:
            sys.exit(f"out of date (run python -m bench.build_sample): {SHIPPED.relative_to(ROOT)}")
        return
    SHIPPED.write_text(content, encoding="utf-8")
    print(f"{SHIPPED.relative_to(ROOT)}: {content.count(chr(10))} passages", file=sys.stderr)


if __name__ == "__main__":
    main()
