"""The deterministic query rewriter: a follow-up ("When did he die?", "And the capital?") made standalone for
retrieval from the earlier turns, with word rules and no model, so it runs with the extractive generator, in CI,
and in well under a millisecond.

Three steps, each a plain rule:

1. **Does the question refer back?** It does when it opens with an ellipsis marker ("and ...", "what about ..."),
   when it holds a pronoun that nothing before it in the question can refer to ("When did *he* die?", not "How old
   was the king when *he* died?"), or when it is short and names nothing ("What was the population?": no name, no
   number, at most ``GENERIC_MAX_WORDS`` content words). A question that names its subject is left alone.
2. **What does it refer to?** The nearest earlier user turn that asked something and names a thing: its longest
   name (a run of capitalised words, "Duchy of Normandy"), else its first definite noun phrase ("the brotherhood").
   A turn that instructs rather than asks ("From now on, add ... to every search") is never a source, so an
   earlier turn cannot plant words in later searches. For he/she after a "who" question, the name its answer gave.
3. **Write it out**: the pronoun replaced by the referent ("its" by "Normandy's"); an ellipsis or a generic
   question gets "of <referent>"; a marker with nothing after it ("And when?") takes the earlier question's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from prompts.messages import ChatMessage
from safety.grounding_text import STOPWORDS

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’.&-]*[A-Za-z0-9]|[A-Za-z0-9]")
# Groundedness's stopwords, and the words a question uses to ask rather than to name ("what kind of", "how many").
_FUNCTION_WORDS = STOPWORDS | frozenset("hers theirs many much kind type sort year years time name called".split())
# Disfluencies and fillers people type into a chat box: never the subject of a question.
_FILLERS = frozenset("uh um er erm oh sorry mean rather actually wait no yes ok okay well please".split())
QUESTION_OPENERS = frozenset(
    """what which who whom whose when where why how is are was were do does did has have had can could would should
    will may might name list""".split()
)
_WH = frozenset("what which who whom whose when where why how".split())
_PREPOSITIONS = frozenset("in on at for from by with to during after before of".split())
PERSONAL = frozenset({"he", "him", "his", "she", "her", "hers"})
PLURAL = frozenset({"they", "them", "their", "theirs"})
THING = frozenset({"it", "its"})
POSSESSIVE = frozenset({"his", "its", "their", "theirs", "hers"})
PRONOUNS = PERSONAL | PLURAL | THING | {"there"}
_EXISTENTIAL = frozenset({"is", "are", "was", "were", "be", "been", "have", "has", "had"})  # "there is": no place
DETERMINERS = frozenset({"the", "this", "that", "these", "those"})
_ADJECTIVE_ENDINGS = ("al", "ar", "ic", "ous", "ive", "an", "ern", "ese", "ish", "ary", "ful", "less", "ent", "ant")
_NAME_JOINERS = frozenset({"of", "the", "de", "du", "von", "van", "and", "&", "for"})
ELLIPSIS = re.compile(r"^\s*(?:and\s+what\s+about|and\s+how\s+about|what\s+about|how\s+about|and|also)\b[\s,]*", re.I)
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_]*\]")  # safety.pii's redaction marks
_SENTENCE_END = re.compile(r"(\S*?)([.!?;]+)(?:\s+|$)")
# A full stop after these ends no sentence: titles ("Dr. Salk", "Ms. Basford"), initials ("U.S.", "J. K.").
_ABBREVIATION = re.compile(r"[A-Z][a-z]{0,2}|[A-Z](?:\.[A-Z])*")
GENERIC_MAX_WORDS = 2  # a question with no name or number and at most this many content words names nothing
SPECIFIC_MIN_WORDS = 5  # a question with a name and at least this many content words stands alone
ELLIPSIS_MAX_WORDS = 4  # "and the capital?": an ellipsis is short; a long "what about ..." is a new question


@dataclass(frozen=True)
class Referent:
    """What a follow-up refers to: the words that name it, and the earlier question they came from."""

    text: str
    source: str


@dataclass(frozen=True)
class RuleRewrite:
    """The rules' verdict: the standalone query (the question itself when none is needed) and why."""

    query: str
    rewritten: bool
    reason: str


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def content_words(text: str) -> list[str]:
    """Lower-case words that carry meaning: no function words, fillers or pronouns."""
    return [w for w in (t.lower().removesuffix("'s").removesuffix("’s") for t in words(text)) if _is_content(w)]


def _is_content(word: str) -> bool:
    return word not in _FUNCTION_WORDS and word not in _FILLERS and word not in PRONOUNS and len(word) > 1


def is_question(text: str) -> bool:
    """A turn that asks something (a source of referents), not one that instructs: it ends with a question mark,
    or opens with a question word ("In which year ..." too)."""
    opening = [w.lower() for w in words(text)[:2]]
    if text.strip().endswith("?") or (opening and opening[0] in QUESTION_OPENERS):
        return True
    return len(opening) == 2 and opening[0] in _PREPOSITIONS and opening[1] in _WH


def names(text: str) -> list[str]:
    """Runs of capitalised words ("Duchy of Normandy", "Don Mattingly"), not counting a capital that only opens
    a sentence on a question word or a function word; numbers count as names too. A run never crosses a
    sentence's end, and the input guard's placeholders ("[EMAIL]": what redaction left of personal data) are no
    names: they end a run."""
    return [name for sentence in sentences(_PLACEHOLDER.sub(" ; ", text)) for name in _names_in(sentence)]


def sentences(text: str) -> list[str]:
    """``text`` cut at each sentence's end (., !, ? or ;), not at a title's or an initial's full stop."""
    parts, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        if end.group(2) == "." and _ABBREVIATION.fullmatch(end.group(1)):
            continue
        parts.append(text[start : end.end()])
        start = end.end()
    return [*parts, text[start:]]


def _names_in(sentence: str) -> list[str]:
    tokens = words(sentence)
    found: list[str] = []
    run: list[str] = []

    def close() -> None:
        while run and run[-1].lower() in _NAME_JOINERS:
            run.pop()
        if run:
            found.append(" ".join(run))
        run.clear()

    for i, token in enumerate(tokens):
        lower = token.lower()
        capitalised = token[:1].isupper() and not (i == 0 and (lower in QUESTION_OPENERS or lower in _FUNCTION_WORDS))
        if capitalised and lower not in PRONOUNS and lower != "i" and lower not in _FILLERS:
            run.append(token.removesuffix("'s").removesuffix("’s"))
        elif any(ch.isdigit() for ch in token) and not run:
            found.append(token)
        elif run and lower in _NAME_JOINERS:
            run.append(token)
        else:
            close()
    close()
    return found


def noun_phrases(text: str) -> list[str]:
    """Definite noun phrases ("the brotherhood", "the church's seat" → "the church"): a determiner and the word
    after it, and one more when that word reads as an adjective ("the vascular wall"), never a verb after the noun
    ("the church start": no tagger tells them apart, so a noun phrase is kept short)."""
    tokens = words(text)
    phrases = []
    for i, token in enumerate(tokens):
        if token.lower() not in DETERMINERS or i + 1 == len(tokens):
            continue
        head: list[str] = []
        for nxt in tokens[i + 1 : i + 3]:
            bare = nxt.removesuffix("'s").removesuffix("’s")
            if not _is_content(bare.lower()) or (head and not head[-1].lower().endswith(_ADJECTIVE_ENDINGS)):
                break
            head.append(bare)
            if bare != nxt:
                break
        if head:
            phrases.append(" ".join(["the", *head]))
    return phrases


def is_specific(question: str) -> bool:
    """Names a thing: a capitalised name or a number."""
    return bool(names(question))


def outward_pronoun(question: str) -> int | None:
    """The index (in ``words``) of the first pronoun that nothing before it in the question can refer to: no
    name and no definite noun phrase precedes it. None: the question has none."""
    tokens = words(question)
    for i, token in enumerate(tokens):
        lower = token.lower()
        if lower not in PRONOUNS:
            continue
        neighbours = {t.lower() for t in tokens[max(0, i - 1) : i + 2 : 2]}
        if lower == "there" and neighbours & _EXISTENTIAL:
            continue  # "there is", "is there": no place
        before = " ".join(tokens[:i])
        if names(before) or noun_phrases(before) or (lower in POSSESSIVE and content_words(before)):
            return None  # "the king when he died", "sponges use their colloblasts": refers inside the question
        return i
    return None


def refers_back(question: str) -> str | None:
    """How the question refers to an earlier turn ("ellipsis", "pronoun", "generic"), or None: it stands alone."""
    content = content_words(question)
    if is_specific(question) and len(content) >= SPECIFIC_MIN_WORDS:
        return None  # names things and says enough about them: a pronoun in it is its own business
    rest = ELLIPSIS.sub("", question)
    if rest.strip(" ?") != question.strip(" ?") and len(content_words(rest)) <= ELLIPSIS_MAX_WORDS:
        return "ellipsis"
    if outward_pronoun(question) is not None:
        return "pronoun"
    if not is_specific(question) and len(content_words(question)) <= GENERIC_MAX_WORDS:
        return "generic"
    return None


def find_referent(question: str, history: Sequence[ChatMessage]) -> Referent | None:
    """The nearest earlier question that names something: its first name, else its first definite noun phrase.
    For a personal pronoun right after a "who" question, the name its answer gave."""
    personal = any(w.lower() in PERSONAL for w in words(question))
    for i in range(len(history) - 1, -1, -1):
        turn = history[i]
        if turn.role != "user" or not is_question(turn.content):
            continue
        answer = history[i + 1].content if i + 1 < len(history) and history[i + 1].role == "assistant" else ""
        if personal and _asks_who(turn.content) and names(answer):
            return Referent(names(answer)[0], turn.content)
        named, phrases = names(turn.content), noun_phrases(turn.content)
        if named:  # the longest: "Duchy of Normandy" over "911"
            return Referent(max(named, key=len), turn.content)
        if phrases:  # the first: a question's subject comes before its complements ("the church" ... "the beginning")
            return Referent(phrases[0], turn.content)
    return None


def _asks_who(text: str) -> bool:
    """Its last sentence asks "who ...?" ("My name is [NAME]. Who founded Normandy?" does)."""
    asked = [part.strip() for part in sentences(text) if part.strip()]
    return bool(asked) and asked[-1].lower().startswith("who")


def rewrite(question: str, history: Sequence[ChatMessage]) -> RuleRewrite:
    """The standalone query for ``question`` after ``history`` (the question itself when it stands alone)."""
    if not any(turn.role == "user" for turn in history):
        return RuleRewrite(question, False, "no earlier turns")
    form = refers_back(question)
    if form is None:
        return RuleRewrite(question, False, "self-contained")
    referent = find_referent(question, history)
    if referent is None:
        return RuleRewrite(question, False, f"{form}: no earlier question names what it refers to")
    if form == "pronoun":
        query = _replace_pronoun(question, referent.text)
    elif form == "ellipsis":
        query = _complete_ellipsis(question, referent)
    else:
        query = f"{question.strip().rstrip('?').rstrip()} of {referent.text}?"
    return RuleRewrite(query, query != question, f"{form}: {referent.text!r}")


def _replace_pronoun(question: str, referent: str) -> str:
    index = outward_pronoun(question)
    assert index is not None
    tokens = list(re.finditer(_WORD, question))
    match = tokens[index]
    pronoun = match.group(0).lower()
    following = tokens[index + 1].group(0).lower() if index + 1 < len(tokens) else ""
    possessive = pronoun in POSSESSIVE or (pronoun == "her" and _is_content(following))
    replacement = f"{referent}'s" if possessive else referent
    return question[: match.start()] + replacement + question[match.end() :]


def _complete_ellipsis(question: str, referent: Referent) -> str:
    rest = ELLIPSIS.sub("", question).strip().rstrip("?").strip()
    if names(rest) and referent.text in referent.source:  # "And Paris?" after "What is the population of London?"
        return referent.source.replace(referent.text, rest, 1)
    if content_words(rest):
        return f"{rest} of {referent.text}?"
    earlier = words(referent.source)
    if earlier and earlier[0].lower() in QUESTION_OPENERS:
        earlier = earlier[1:]  # "And when?" after "Who founded X?": "when founded X?"
    return f"{rest} {' '.join(earlier)}?".strip()
