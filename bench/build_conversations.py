"""Builds the multi-turn conversation eval datasets, corpora and suites (``conversations``: tuning part from
SQuADShifts new_wiki; ``conversations_heldout``: held-out part from SQuADShifts nyt and amazon).

Deterministic: no randomness and no model, only ``data/squad_shifts``, so a re-run writes byte-identical files.
Each conversation has two to four turns over ONE passage, all of them real SQuADShifts questions about it:

- Anchor: a span that the first question, every later question and the passage mention (case-insensitive, on word
  boundaries). A named entity (a run of capitalised words of the passage, possibly with an inner "of", "the",
  "de" or "and": "Armenian Apostolic Church", "Don Mattingly", or a part of one: "Mattingly") is preferred to a
  definite noun phrase of one to three words ("the brotherhood"; in the passage without its "the"). The anchor
  with the most follow-ups wins, then a named entity, then the longer span, then the earlier first question.
- Follow-ups (turns 2..4, in file order): the later questions rewritten so that they refer back to the anchor.
  "ellipsis" drops a trailing prepositional phrase that holds it ("What is the capital of Normandy?" -> "What is
  the capital?"), for about a third of the questions where it applies (chosen by a CRC32 of the question id);
  "pronoun" replaces it (with a "the" before it) by its/his/her/their for a possessive ("X's", "X'"), else by
  it/he/she/they after a wh-word, an auxiliary or a conjunction and it/him/her/them after a verb or a preposition.
  A person is he or she (see ``sex``: a name, by its title or the passage's he/his/him against she/her; no
  pronoun follow-up where the sex is unknown); a plural noun phrase ("the brotherhoods", "the children"), a name
  in "s" after "the" ("the Yankees") or in -ans/-ers ("Republicans") is they; anything else is it. A question is
  no follow-up when the anchor occurs in it more than once, when the anchor is part of a larger phrase there (a
  determiner or an adjective before it, a noun, a relative clause or a longer name after it: "a full size flag",
  "the homeless population", "Dr. Coggan", "the land they own"), when it is one side of an "or", or when fewer
  than two words other than the wh-word would remain. These are rules of thumb, not a parser: a few follow-ups
  read oddly.
- ``standalone`` is the question as the SQuAD annotator wrote it (standalone, by hand); ``answers`` are its gold
  spans. Turn 1 has form "first", asks the standalone question and has an empty history. The history of turn k
  is the earlier turns as asked, each answered by its gold answer (the shortest of at least two characters):
  teacher forcing, as CoQA and QReCC evaluations do, so the history is fixed.
- Passages in file order, at most ``PER_TITLE`` conversations per title (an article; for nyt its URL; for amazon
  a bin of about five reviews of unrelated products), up to ``TARGET`` conversations per part (held out: half nyt,
  half amazon); a passage without a follow-up is skipped. new_wiki has 48 articles, so its part stops short of
  the target. A corpus is the conversations' passages and, as distractors, the other passages of their titles,
  one title at a time round robin in file order, up to ``CORPUS_SIZE`` passages. Ids stay SQuADShifts'.

Source: SQuADShifts (Miller, Krauth, Recht, Schmidt, ICML 2020; CC BY 4.0) via BIG-bench ``squad_shifts``; its
files carry BIG-bench's canary: evaluate and calibrate on them, never train. See ``data/squad_shifts/README.md``.

Run: ``.venv/bin/python -m bench.build_conversations`` (``--check`` fails when the committed files differ).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import textwrap
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.build_suites import Passage, Question, read_passages, read_questions
from bench.corpora import write_or_check

ROOT = Path(__file__).resolve().parents[1]
SHIFTS = ROOT / "data" / "squad_shifts"
DATASETS, CORPORA, SUITES = ROOT / "evals" / "datasets", ROOT / "evals" / "corpora", ROOT / "evals" / "suites"
TARGET = 120  # conversations per part
PER_TITLE = 2  # conversations per title at most
CORPUS_SIZE = 500  # passages per corpus at most (the conversations' own always count)
MAX_TURNS = 4
ELLIPSIS_SHARE = 3  # one in ELLIPSIS_SHARE of the follow-ups where ellipsis applies


def wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


WH = wordset("what which who whom whose when where why how")
AUXILIARIES = wordset(
    "is are was were be been being am do does did has have had will would can could should shall may might must "
    "isn't aren't wasn't weren't doesn't don't didn't hasn't haven't won't can't couldn't"
)
# After these the next word is a verb: "How does the brotherhood make decisions?"
MODALS = wordset("do does did doesn't don't didn't will would can could should shall may might must")
VERB_BEFORE = MODALS | {"to"}
CONJUNCTIONS = wordset("and or but that if while because as than so once whether though although when")
PREPOSITIONS = wordset(
    "of in on at for to from by with about into onto over under after before during since until within without "
    "against among between through across behind beyond near toward towards upon per via like besides despite "
    "inside outside around along"
)
DETERMINERS = wordset("a an the this that these those his her its their my your our some any each every whose")
PERSONAL = wordset("i you we they he she it me us them him one people someone")
RELATIVES = wordset("that which who whom whose")
NAMING = wordset("named called titled nicknamed termed spelled")  # "named Nguyen": the word, not the thing
KINDS = frozenset("kind of,type of,sort of,kinds of,types of,form of,brand of,version of,piece of".split(","))
RESTRICTIVE = wordset("of between in on at from with about for")  # prepositions that often restrict a noun phrase
DEGREE = wordset("more most less least very so too")
ADVERBS = wordset(
    "first ever also still now originally currently usually typically initially once not never recently previously "
    "eventually later mostly really actually primarily mainly often always finally already officially ultimately"
)
STOP = (
    WH | AUXILIARIES | CONJUNCTIONS | PREPOSITIONS | DETERMINERS | PERSONAL | DEGREE | ADVERBS
    | wordset("i'm i've i'd there here then no yes according both many much all other another such what's who's it's")
)  # fmt: skip
CONNECTORS = (("of", "the"), ("of",), ("the",), ("de",), ("and",))
# Words before a name that make it a person's, with the sex they tell when they do.
TITLES = {
    "Mr.": "he", "Mrs.": "she", "Ms.": "she", "Miss": "she", "Sir": "he", "Lady": "she", "King": "he",
    "Queen": "she", "Prince": "he", "Princess": "she", "Dr.": "", "Prof.": "", "Professor": "", "President": "",
    "Sen.": "", "Senator": "", "Gov.": "", "Governor": "", "Judge": "", "Justice": "", "Coach": "",
}  # fmt: skip
ABBREVIATION = re.compile(r"(?:[A-Z]\.)+|(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gov|Sen|Rep|Gen|Lt|Col|Capt|Mt|Ft|No|v|vs)\.")
NAME_WORD = re.compile(r"[A-Z][a-z]*[A-Z]?[a-z]+(?:-[A-Z][a-z]+)?|[A-Z]\.")
CAPITALISED = re.compile(r"[A-Z][\w'’.&-]*")
# First and last words that make a capitalised name an institution, a place or a thing rather than a person.
PLACE_FIRST = wordset("new north south east west saint san santa los las fort port lake mount upper lower great")
NOT_PEOPLE = wordset(
    "act army assembly association bank bay beach bridge building center centre church city club college company "
    "congress corporation council county court district empire festival foundation government hall hospital hotel "
    "house institute island islands kingdom lake league library mountain mountains museum navy ocean park party "
    "railway republic river road school sea senate society square state states station street team times union "
    "university valley war york jersey angeles francisco america africa asia europe records review post journal "
    "series cup games award awards prize group press media network airlines airport desert gate canyon "
    "forest highway avenue tower castle palace cathedral temple stadium arena"
)
# Definite noun phrases about people: their pronoun would need a sex the data does not give.
PEOPLE_NOUNS = wordset(
    "author writer reviewer user customer buyer person man woman wife husband son daughter boy girl mother father "
    "child kid player coach owner seller reader narrator speaker friend boyfriend girlfriend mom dad baby shopper "
    "purchaser consumer judge officer president director manager chef doctor teacher student artist singer actor "
    "actress lawyer official spokesman spokeswoman senator governor mayor king queen guy lady gentleman worker "
    "employee pilot driver patient victim suspect defendant candidate winner founder designer creator inventor "
    "programmer developer architect engineer scientist researcher professor editor host leader chairman captain "
    "emperor pope bishop priest abbot soldier general minister commissioner detective"
)
# Words that end a definite noun phrase without being its noun: "the highest", "the same".
ADJECTIVES = wordset(
    "same first last next other former latter new old main following previous original current only whole entire "
    "total average most least best worst major minor final early late top bottom left right"
)
IRREGULAR_PLURALS = wordset("children people men women police mice feet teeth geese cattle")
NOT_PLURAL = wordset(
    "lens news series species means gas bus analysis physics mathematics politics economics headquarters "
    "states netherlands philippines times bahamas status campus virus chassis games olympics"
)
PLACE_PREPOSITIONS = "in|at|near|to|from|across|throughout|around|into|outside"
GROUP_ENDINGS = ("ans", "ers", "ists", "ites")  # "Republicans", "Partisans": a plural name without "the"


@dataclass(frozen=True)
class Anchor:
    text: str
    entity: bool  # a named entity (capitalised in the passage), else a definite noun phrase


@dataclass(frozen=True)
class Turn:
    question: Question
    asked: str
    form: str  # first, pronoun or ellipsis


@dataclass(frozen=True)
class Conversation:
    id: str
    passage: Passage
    anchor: Anchor
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Token:
    """A word of a passage without the punctuation around it (an abbreviation keeps its dot)."""

    text: str
    start: int
    initial: bool  # first word of a sentence
    opens: bool  # punctuation before it: a name does not run into it
    closes: bool  # punctuation or a possessive after it: a name does not run on


def gold(question: Question) -> str | None:
    """The shortest gold answer of at least two characters."""
    answers = [a.strip() for a in question.answers if len(a.strip()) >= 2]
    return min(answers, key=lambda a: (len(a), a)) if answers else None


def occurrences(span: str, text: str, case: bool = False) -> list[re.Match[str]]:
    """The span as whole words, case-insensitively unless ``case`` (a possessive "'s" may follow)."""
    flags = 0 if case else re.IGNORECASE
    return list(re.finditer(rf"(?<![\w'’.-]){re.escape(span)}(?![\w-]|['’][a-rt-z]|\.\w)", text, flags))


def words(text: str) -> list[str]:
    return re.findall(r"\w[\w'’.-]*", text)


def bare(word: str) -> str:
    """A question's word without the punctuation after it, lowercased."""
    return re.sub(r"[?!,;:\"”)]+$|\.$", "", word).lower()


# anchors --------------------------------------------------------------------------------------------------------


def tokenise(text: str) -> list[Token]:
    tokens: list[Token] = []
    initial = True
    for match in re.finditer(r"\S+", text):
        raw = match.group()
        body = raw.lstrip("\"“‘'([{")
        core = body.rstrip(',;:!?)]}"”’')
        word = core if ABBREVIATION.fullmatch(core) else core.rstrip(".")
        owner = re.search(r"(?<=\w)['’]s?$", word)
        if owner:
            word = word[: owner.start()]
        tokens.append(Token(word, match.start() + len(raw) - len(body), initial, raw != body, word != body))
        initial = bool(re.search(r"[.!?:][\"”’)]*$", raw)) and not ABBREVIATION.fullmatch(core)
    return tokens


def is_capitalised(token: Token) -> bool:
    return bool(CAPITALISED.fullmatch(token.text)) and token.text.lower() not in STOP and token.text != "I"


def connector_at(tokens: list[Token], i: int) -> int:
    """How many words of an inner connector ("of the", "de") start at ``i`` before a capitalised word."""
    for connector in CONNECTORS:
        inner, after = tokens[i : i + len(connector)], i + len(connector)
        if (
            tuple(t.text for t in inner) == connector
            and not any(t.closes or t.opens for t in inner)
            and after < len(tokens)
            and is_capitalised(tokens[after])
            and not tokens[after].opens
        ):
            return len(connector)
    return 0


def capitalised_runs(tokens: list[Token]) -> list[list[Token]]:
    """Runs of capitalised words, an inner connector allowed ("Mother See of Holy Etchmiadzin"), without the
    function words a sentence starts with."""
    runs: list[list[Token]] = []
    run: list[Token] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if is_capitalised(token) and not (run and token.opens):
            run.append(token)
            i += 1
            if not token.closes:
                continue
        elif run and not run[-1].closes and connector_at(tokens, i):
            run += tokens[i : i + connector_at(tokens, i)]
            i += connector_at(tokens, i)
            continue
        else:
            i += int(not run)  # a run ends before this word, which may start the next one
        if run:
            runs.append(run)
        run = []
    if run:
        runs.append(run)
    return runs


def is_entity(span: str, passage: Passage, tokens: list[Token]) -> bool:
    """A name of its own in the passage: capitalised, somewhere neither at a sentence's start nor inside a longer
    name nor before a noun (as "Cartesian coordinates" is), and capitalised at least as often as lowercase."""
    starts = {t.start: i for i, t in enumerate(tokens)}
    size = len(span.split())
    alone = 0
    for match in occurrences(span, passage.text, case=True):
        i = starts.get(match.start())
        if i is None or i + size > len(tokens):
            continue
        previous = tokens[i - 1] if i > 0 else None
        following = tokens[i + size] if i + size < len(tokens) else None
        initial = tokens[i].initial or (previous is not None and previous.initial and previous.text.lower() in STOP)
        longer = (previous is not None and is_capitalised(previous) and not previous.closes and not initial) or (
            following is not None and not tokens[i + size - 1].closes and is_capitalised(following)
        )
        noun_after = (
            following is not None
            and not tokens[i + size - 1].closes
            and following.text.lower() not in STOP
            and not following.text.endswith("ed")
        )
        alone += not initial and not longer and not noun_after
    lowercase = sum(m.group() == m.group().lower() for m in occurrences(span, passage.text))
    return alone >= 1 and alone >= lowercase


def entity_spans(passage: Passage, tokens: list[Token]) -> set[str]:
    """Named entities of the passage and their parts that start and end with a capitalised word."""
    spans: set[str] = set()
    for run in capitalised_runs(tokens):
        texts = [t.text for t in run]
        for start in range(len(texts)):
            for end in range(start + 1, min(len(texts), start + 6) + 1):
                part = texts[start:end]
                if part[0][0].isupper() and part[-1][0].isupper() and part[-1] not in TITLES and part != [part[0][:1]]:
                    spans.add(" ".join(part))
    return {span for span in spans if is_entity(span, passage, tokens)}


def noun_phrases(question: str, passage: Passage) -> set[str]:
    """Definite noun phrases of one to three lowercase words ("the monastic brotherhood", "the brotherhood")
    that the passage has (without the "the")."""
    phrases: set[str] = set()
    tokens = question.split()
    for i, token in enumerate(tokens):
        if token.lower() != "the":
            continue
        phrase: list[str] = []
        for following in tokens[i + 1 : i + 4]:
            word = re.sub(r"['’]s?$|[?.!,;:]+$", "", following)
            if not re.fullmatch(r"[a-z][a-z-]*[a-z]", word) or word in STOP:
                break
            phrase.append(word)
            if word != following:
                break
        if any(word in PEOPLE_NOUNS for word in phrase):
            continue  # "the federal judge": no "the federal" either
        for length in range(1, len(phrase) + 1):
            head = phrase[length - 1]
            if head in PEOPLE_NOUNS or len(head) < 3 or head in ADJECTIVES or head.endswith("est"):
                continue
            if occurrences(" ".join(phrase[:length]), passage.text):
                phrases.add("the " + " ".join(phrase[:length]))
    return phrases


def mentions(anchor: Anchor, question: str) -> list[re.Match[str]]:
    """A named entity is capitalised in the question too, unless the question is all lowercase."""
    found = occurrences(anchor.text, question)
    if anchor.entity and any(c.isupper() for c in question[1:]):
        found = [m for m in found if m.group()[0].isupper()]
    return found


# follow-ups -----------------------------------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])[\"”’)]*\s+(?=[\"“‘(]*[A-Z])", text)


def pronoun_counts(text: str) -> tuple[int, int, int]:
    """he/his/him, she/her/hers, its."""
    lower = text.lower()
    male, female, its = (len(re.findall(rf"\b(?:{p})\b", lower)) for p in ("he|his|him", "she|her|hers", "its"))
    return male, female, its


def sex(anchor: Anchor, passage: Passage, tokens: list[Token]) -> str | None:
    """ "he" or "she" for a person, "?" for a person of unknown sex, None for anything else.

    A person's name is one to three name-like words (not an institution's or a place's, no "the" before it in the
    passage) that a title ("Mr.", "Dr.") precedes in the passage, or that is a name of two or three words there or
    its first or last word. The sex is the title's, else the majority of he/his/him and she/her in the sentences
    that name it (and the next ones). "in X", "to X" or an "its" with no he or she there make it a thing; a passage
    that titles people ("Ms. Quick") but not this name leaves the sex unknown."""
    parts = [p for p in anchor.text.split() if p not in TITLES]
    if not anchor.entity or not 1 <= len(parts) <= 3 or not all(NAME_WORD.fullmatch(p) for p in parts):
        return None
    if parts[-1].lower() in NOT_PEOPLE or parts[0].lower() in PLACE_FIRST:
        return None
    titled: set[str] = set()
    for match in occurrences(" ".join(parts), passage.text, case=True):
        if passage.text[: match.start()].lower().endswith("the "):
            return None
    for match in occurrences(parts[-1], passage.text, case=True):  # "Ms. Kirby" for "Erika Kirby"
        before = passage.text[: match.start()].split()[-1:]
        if before and before[0] in TITLES:
            titled.add(TITLES[before[0]])
    own = anchor.text.split()[0]
    if own in TITLES:
        titled = {TITLES[own]}
    segments = [
        segment.split()
        for run in capitalised_runs(tokens)
        for segment in re.split(r" (?:of|the|and) ", " ".join(t.text for t in run))
    ]
    names = [
        run
        for run in segments
        if 2 <= len(run) <= 3 and all(NAME_WORD.fullmatch(word) for word in run)
        and run[-1].lower() not in NOT_PEOPLE and run[0].lower() not in PLACE_FIRST
    ]  # fmt: skip
    named = any(parts == name or (len(parts) == 1 and parts[0] in (name[0], name[-1])) for name in names)
    if "he" in titled or "she" in titled:
        return "?" if {"he", "she"} <= titled else "he" if "he" in titled else "she"
    if not titled and re.search(r"\b(?:Mr|Mrs|Ms)\. [A-Z]", passage.text):
        return "?"  # the passage titles people, not this one: a company or a place may be named so
    said = [i for i, s in enumerate(sentences(passage.text)) if occurrences(parts[-1], s, case=True)]
    nearby = " ".join(s for i, s in enumerate(sentences(passage.text)) if i in said or i - 1 in said)
    male, female, its = pronoun_counts(nearby)
    place = re.search(rf"\b(?:{PLACE_PREPOSITIONS}) {re.escape(anchor.text)}\b", passage.text)
    if place or (its and not male + female) or (not titled and not named and its >= male + female):
        return None
    if male != female:
        return "he" if male > female else "she"
    return "?"


def pronouns(anchor: Anchor, passage: Passage, tokens: list[Token], the: bool) -> tuple[str, str, str] | None:
    """(subject, object, possessive), or None when the anchor is a person of unknown sex."""
    person = sex(anchor, passage, tokens)
    if person == "?":
        return None
    if person is not None:
        return ("he", "him", "his") if person == "he" else ("she", "her", "her")
    last = anchor.text.split()[-1].lower()
    regular = last.endswith("s") and not last.endswith(("ss", "us", "is", "ics", "ous")) and last not in NOT_PLURAL
    plural = regular or last in IRREGULAR_PLURALS
    if anchor.entity and last.endswith(("ese", "ish")):
        return None  # "Vietnamese", "English": a people or a language
    connected = {"of", "the", "de", "and"} & set(anchor.text.split())
    if plural and (not anchor.entity or (the and not connected) or last.endswith(GROUP_ENDINGS)):
        return "they", "them", "their"
    return "it", "it", "its"


def modifier(
    anchor: Anchor,
    words_around: tuple[list[str], list[str]],
    possessive: bool,
    the: bool,
    entities: set[str],
    passage: Passage,
) -> bool:
    """Whether the anchor is part of a larger noun phrase or name here ("a Yankee player", "the new church",
    "the church hall", "Dr. Coggan", "the custom of a woman", "what kind of church", "the female or the male"):
    replacing it would make no sense, or be ambiguous."""
    before, after = words_around
    previous = bare(before[-1]) if before else ""
    following = bare(after[0]) if after and not possessive else ""
    if previous in NAMING or " ".join(bare(w) for w in before[-2:]) in KINDS or "or" in (previous, following):
        return True
    core = anchor.text.removeprefix("the ")
    for longer in (f"{previous} {core}", f"{core} {following}"):  # "the homeless population", "Windows 95"
        outer = longer.split()
        if len(outer) > len(core.split()) and not STOP & {outer[0], outer[-1]} and occurrences(longer, passage.text):
            return True
    if previous in DETERMINERS | DEGREE | {"what", "which"} or re.search(r"['’]s?$", previous):
        return True
    if anchor.entity and previous in {"of", "de", "the", "and"} and len(before) > 1 and before[-2][0].isupper():
        return True  # "the Ishtar Gate of Babylon"
    if before and (before[-1].endswith(".") or (before[-1][0].isupper() and len(before) > 1)):
        return True  # "Dr. Coggan", "Texas v. White", "Robert A. Levinson", "Whistling Kettle"
    if len(before) >= 2 and bare(before[-2]) in DETERMINERS and previous not in STOP:
        return True
    if possessive and after and re.match(r"[\"“‘(]*[A-Z]", after[0]):
        return True  # "the Women's Health Initiative"
    if following in {"of", "and", "de"} and len(after) > 1 and after[1][0].isupper():
        return True  # "Drum and Bass", "Ministry of Sound"
    noun = re.sub(r"['’]s?$", "", following)
    if not possessive and after:
        if re.match(r"[\"“‘(]*[A-Z]", after[0]) or following in DETERMINERS | PERSONAL | RELATIVES:
            return True
        if re.fullmatch(r"[:–-]", after[0]) and len(after) > 1 and after[1][0].isupper():
            return True  # "The Hunger Games: Mockingjay"
        if following and following not in STOP and not following.endswith("ed"):
            # A noun, unless a verb follows a subject ("How does the brotherhood make decisions?"), and even then
            # not a noun of the passage ("Can the machine handle be fixed?", "the New York attorney general").
            determined = rf"\b(?:the|a|an|this|its|their|my|your) {re.escape(noun)}\b"
            if previous not in MODALS or the or re.search(determined, passage.text, re.IGNORECASE):
                return True
        if following in PREPOSITIONS and (
            previous in MODALS or ((not anchor.entity or the) and following in RESTRICTIVE)
        ):
            return True  # "does the increase in cholesterol begin", "the name of the airport in Newark"
    if anchor.entity:  # part of a longer name in the passage: "armenian church" is not "church"
        for extended in (" ".join([*before[-1:], anchor.text]), " ".join([anchor.text, *after[:1]])):
            word = re.sub(r"['’]s?$|[?.!,;:]+$", "", extended).lower()
            if word != anchor.text.lower() and word in {e.lower() for e in entities}:
                return True
    return False


def subject_position(before: list[str]) -> bool | None:
    """True where a subject goes, False where an object goes, None where it is not clear."""
    if not before:
        return True
    previous, earlier = bare(before[-1]), [bare(w) for w in before[:-1]]
    if before[-1].endswith(","):
        return None if before[-1][0].isupper() else True
    if previous in AUXILIARIES:
        return not any(w in AUXILIARIES for w in earlier)  # "How long has the author had X?": a main verb
    if previous in WH | CONJUNCTIONS:
        return True
    if previous in PREPOSITIONS or previous.endswith("ed"):
        return False
    if earlier and (earlier[-1] in PERSONAL | VERB_BEFORE | AUXILIARIES or earlier[-1] == "who"):
        return False  # "Who sold X?", "How do you obtain X?": a verb before X
    return None


def rewrite(
    question: Question, anchor: Anchor, passage: Passage, tokens: list[Token], entities: set[str]
) -> tuple[str, str] | None:
    """The question as a follow-up (its text and form), or None when it cannot be one."""
    text = question.question
    found = mentions(anchor, text)
    if len(found) != 1 or len(occurrences(anchor.text, text)) != 1:
        return None
    start, end = found[0].start(), found[0].end()
    before, after = text[:start].split(), text[end:].split()
    the = not anchor.text.lower().startswith("the ") and bool(before) and before[-1].lower() == "the"
    if the:
        start, before = text.lower().rindex("the", 0, start), before[:-1]
    owner = re.match(r"['’]s?(?=\W|$)", text[end:])
    after = text[end + owner.end() :].split() if owner else after
    if modifier(anchor, (before, after), bool(owner), the, entities, passage):
        return None
    wh_words = sum(1 for w in words(text) if w.lower() in WH)
    trailing = re.fullmatch(
        rf"(?P<head>.*?\w)\s+(?:{'|'.join(sorted(PREPOSITIONS))})\s+{re.escape(text[start:end])}\s*(?P<end>[?.!]*)\s*",
        text,
        re.IGNORECASE | re.DOTALL,
    )
    if trailing and zlib.crc32(question.id.encode()) % ELLIPSIS_SHARE == 0:
        asked = trailing["head"] + (trailing["end"] or "?")
        if len(words(asked)) - wh_words >= 2:
            return asked, "ellipsis"
    forms = pronouns(anchor, passage, tokens, the)
    position = subject_position(before)
    if forms is None or (position is None and not owner):
        return None
    if owner:
        pronoun, end = forms[2], end + owner.end()
    else:
        pronoun = forms[0] if position else forms[1]
    if not before:
        pronoun = pronoun.capitalize()
    asked = text[:start] + pronoun + text[end:]
    if len(words(asked)) - wh_words < 2:
        return None
    return asked, "pronoun"


def conversation(passage: Passage, questions: list[Question], conversation_id: str) -> Conversation | None:
    """The anchor with the most follow-ups (then a named entity, a longer span, an earlier first question)."""
    seen: set[str] = set()
    unique = []
    for q in questions:
        key = " ".join(q.question.lower().split()).rstrip("?. ")
        if gold(q) is not None and key not in seen:
            seen.add(key)
            unique.append(q)
    tokens = tokenise(passage.text)
    entities = entity_spans(passage, tokens)
    candidates: dict[str, Anchor] = {}
    for q in unique:
        for span in sorted(entities):
            if span.lower() not in STOP and mentions(Anchor(span, entity=True), q.question):
                candidates.setdefault(span.lower(), Anchor(span, entity=True))
        for phrase in sorted(noun_phrases(q.question, passage)):
            candidates.setdefault(phrase.lower(), Anchor(phrase, entity=False))
    best: tuple[tuple[int, int, int, int], Conversation] | None = None
    for anchor in candidates.values():
        mentioning = [q for q in unique if len(mentions(anchor, q.question)) == 1]
        if len(mentioning) < 2:
            continue
        follow = {q.id: rewrite(q, anchor, passage, tokens, entities) for q in mentioning}
        # The first question: the first that cannot be a follow-up, else the first.
        first = next((q for q in mentioning if follow[q.id] is None), mentioning[0])
        later = [q for q in mentioning if q is not first and follow[q.id] is not None][: MAX_TURNS - 1]
        if not later:
            continue
        turns = [Turn(first, first.question, "first")]
        for q in later:
            asked, form = follow[q.id] or ("", "")
            turns.append(Turn(q, asked, form))
        rank = (-len(later), 0 if anchor.entity else 1, -len(anchor.text), unique.index(first))
        if best is None or rank < best[0]:
            best = rank, Conversation(conversation_id, passage, anchor, tuple(turns))
    return best[1] if best else None


# parts ----------------------------------------------------------------------------------------------------------


def conversations(domain: str, prefix: str, target: int) -> tuple[list[Conversation], list[Passage]]:
    """Conversations over passages in file order, at most ``PER_TITLE`` per title, and the domain's passages."""
    passages = read_passages(SHIFTS / f"{domain}_passages.jsonl")
    asked: dict[str, list[Question]] = collections.defaultdict(list)
    for question in read_questions(SHIFTS / f"{domain}_questions.jsonl"):
        asked[question.passage_id].append(question)
    made: list[Conversation] = []
    per_title: collections.Counter[str] = collections.Counter()
    for passage in passages:
        if per_title[passage.title] >= PER_TITLE:
            continue
        made_one = conversation(passage, asked[passage.id], f"cv-{prefix}-{len(made) + 1:04d}")
        if made_one is not None:
            made.append(made_one)
            per_title[passage.title] += 1
        if len(made) == target:
            break
    return made, passages


def corpus(chosen: list[Conversation], passages: list[Passage], size: int) -> list[Passage]:
    """The conversations' passages and the other passages of their titles, a title at a time, in file order."""
    kept = {c.passage.id for c in chosen}
    titles = list(dict.fromkeys(c.passage.title for c in chosen))
    others = {t: [p for p in passages if p.title == t and p.id not in kept] for t in titles}
    while len(kept) < size and any(others.values()):
        for title in titles:
            if others[title] and len(kept) < size:
                kept.add(others[title].pop(0).id)
    return [p for p in passages if p.id in kept]


def dataset(chosen: Iterable[Conversation]) -> str:
    lines = []
    for conv in chosen:
        history: list[dict[str, str]] = []
        for number, turn in enumerate(conv.turns, 1):
            record = {
                "id": f"{conv.id}-t{number}",
                "question": turn.asked,
                "answers": list(turn.question.answers),
                "reference_doc_ids": [conv.passage.id],
                "expected": "answer",
                "history": list(history),
                "standalone": turn.question.question,
                "turn": number,
                "conversation": conv.id,
                "form": turn.form,
                "anchor": conv.anchor.text,
            }
            lines.append(json.dumps(record, ensure_ascii=False))
            history += [
                {"role": "user", "content": turn.asked},
                {"role": "assistant", "content": gold(turn.question) or ""},
            ]
    return "\n".join(lines) + "\n"


def corpus_jsonl(passages: Iterable[Passage]) -> str:
    lines = [json.dumps({"id": p.id, "text": p.text, "title": p.title}, ensure_ascii=False) for p in passages]
    return "\n".join(lines) + "\n"


SUITE = """\
name: {name}
description: >-
  {description}
dataset: evals/datasets/{name}.jsonl
corpus: evals/corpora/{corpus}.jsonl
collection: {collection}
prompt: rag_answer@production
generator: extractive
top_k: 5
metrics:
  retrieval_recall: {{threshold: 0.6, tolerance: 0.03}}
  retrieval_ndcg: {{tolerance: 0.03}}
  contains_answer: {{tolerance: 0.05}}
  citation_accuracy: {{tolerance: 0.05}}
"""
DESCRIPTIONS = {
    "conversations": "Tuning part of the multi-turn conversations (bench/build_conversations.py): {n} conversations, "
    "{turns} turns over SQuADShifts new_wiki paragraphs, each conversation on one paragraph; the corpus is those "
    "paragraphs and other paragraphs of their Wikipedia articles. Turns 2-4 are real SQuADShifts questions that "
    "refer back to the first turn by a pronoun or an ellipsis; the history holds the gold answers (teacher "
    "forcing) and each turn keeps its standalone question. Tune query rewriting on this part, never on the "
    "held-out one.",
    "conversations_heldout": "Held-out part of the multi-turn conversations (bench/build_conversations.py): {n} "
    "conversations, {turns} turns over SQuADShifts nyt articles and amazon reviews (about half each), each "
    "conversation on one passage; the corpus is those passages and the other passages of their articles and "
    "review bins. Turns 2-4 are real SQuADShifts questions that refer back to the first turn by a pronoun or an "
    "ellipsis; the history holds the gold answers (teacher forcing) and each turn keeps its standalone question. "
    "Measure on it, do not tune on it.",
}


def suite(name: str, corpus_name: str, collection: str, chosen: list[Conversation]) -> str:
    turns = sum(len(c.turns) for c in chosen)
    description = DESCRIPTIONS[name].format(n=len(chosen), turns=turns)
    folded = "\n  ".join(textwrap.wrap(description, 116))  # lines of 118 characters at most, as the other suites
    return SUITE.format(name=name, description=folded, corpus=corpus_name, collection=collection)


# files ----------------------------------------------------------------------------------------------------------


def built() -> tuple[dict[Path, str], dict[str, list[Conversation]]]:
    """Every file this script makes, by path, with its content, and the conversations of each part."""
    wiki, wiki_passages = conversations("new_wiki", "nw", TARGET)
    nyt, nyt_passages = conversations("nyt", "ny", TARGET // 2)
    amazon, amazon_passages = conversations("amazon", "am", TARGET - len(nyt))
    nyt_share = round(CORPUS_SIZE * len(nyt) / (len(nyt) + len(amazon)))
    heldout_corpus = corpus(nyt, nyt_passages, nyt_share) + corpus(amazon, amazon_passages, CORPUS_SIZE - nyt_share)
    files = {
        DATASETS / "conversations.jsonl": dataset(wiki),
        DATASETS / "conversations_heldout.jsonl": dataset(nyt + amazon),
        CORPORA / "conversations_new_wiki.jsonl": corpus_jsonl(corpus(wiki, wiki_passages, CORPUS_SIZE)),
        CORPORA / "conversations_heldout.jsonl": corpus_jsonl(heldout_corpus),
        SUITES / "conversations.yaml": suite("conversations", "conversations_new_wiki", "eval-conversations", wiki),
        SUITES / "conversations_heldout.yaml": suite(
            "conversations_heldout", "conversations_heldout", "eval-conversations-heldout", nyt + amazon
        ),
    }
    return files, {"tuning (new_wiki)": wiki, "held out (nyt)": nyt, "held out (amazon)": amazon}


def summary(groups: dict[str, list[Conversation]]) -> str:
    lines = []
    for name, chosen in groups.items():
        forms = collections.Counter(t.form for c in chosen for t in c.turns)
        lengths = collections.Counter(len(c.turns) for c in chosen)
        entities = sum(c.anchor.entity for c in chosen)
        lines.append(
            f"{name}: {len(chosen)} conversations, {sum(forms.values())} turns "
            f"({', '.join(f'{k} {v}' for k, v in sorted(forms.items()))}); "
            f"by length {dict(sorted(lengths.items()))}; named-entity anchors {entities}, "
            f"titles {len({c.passage.title for c in chosen})}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file differs")
    args = parser.parse_args()
    files, groups = built()
    write_or_check(files, "python -m bench.build_conversations", args.check)
    if args.check:
        return
    print(summary(groups), file=sys.stderr)


if __name__ == "__main__":
    main()
