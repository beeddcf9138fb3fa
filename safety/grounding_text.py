"""The words groundedness reads: content stems, names and numbers, negations, and the passages' sentences
analysed once (their stems, which sentence answers the question).

Plain rules, no model: a crude suffix stemmer (applied alike to answers, questions and passages, so a plural or
a tense still matches), names as capitalised words, numbers with their separators removed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Self, TypeVar

from retrieval.chunking import split_sentences

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'.,-]*[A-Za-z0-9]|[A-Za-z0-9]")
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being it its this that
    these those he she they them his her their there here what which who whom whose when where why how not no
    do does did has have had can could would should will may might must shall than then so such also into about
    over under after before between during through up down out very more most other some any each all both one
    i you we us our your my me s""".split()
)
# Disfl-QA's disfluencies, and the frames answers put around a fact ("the passage mentions that ..."): no claim
# of their own.
_FILLERS = frozenset(
    """uh um er erm oh mean wait sorry rather actually answer answers passage passages document documents text
    context question mention mentions mentioned state states stated say says said write writes wrote written
    according describe describes described refer refers referred discuss discusses discussed""".split()
)
_NEGATIONS = frozenset("not no never none neither nor without cannot n't nobody nothing".split())
NEIGHBOUR_WEIGHT = 0.3  # an answer sometimes sits next to the sentence that restates the question
COSINE_WEIGHT = 0.5  # the question's embedding adds to its shared words (measured on the calibration range)
_Read = TypeVar("_Read")


# Words longer than this are read without a cache: real words are shorter, and a hostile text's long tokens would
# otherwise pin their strings in it. Each word cache holds at most 16,384 words: with the longest, about 6 MB.
_CACHED_WORD = 40


def word_cache(read: Callable[[str], _Read]) -> Callable[[str], _Read]:
    """``read``, a pure function of a word, cached for words of up to _CACHED_WORD characters: vocabularies repeat,
    and passages are read again in every request that retrieves them."""
    cached = lru_cache(maxsize=1 << 14)(read)

    def reading(word: str) -> _Read:
        return cached(word) if len(word) <= _CACHED_WORD else read(word)

    return reading


def tokens(text: str) -> list[str]:
    return [t.lower().strip(".,'") for t in _WORD.findall(text.replace("n't", " n't"))]


@word_cache  # (a tenth of a guard's time was here)
def stem(word: str) -> str:
    """Crude, but the same on both sides: plurals, -ed, -ing, possessives."""
    word = word.removesuffix("'s")
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + keep
    return word


def is_number(word: str) -> bool:
    return any(map(str.isdigit, word))


@dataclass(frozen=True, slots=True)
class WordReading:
    """One word as ``tokens`` writes it, read the three ways the checks read words."""

    content_stem: str | None  # its stem, None for a stopword, filler or one-letter word (no claim)
    word: str  # lower case, a number without its separators: as ``names_and_numbers`` writes a name or number
    negation: bool


@word_cache
def read_word(word: str) -> WordReading:
    content = word not in STOPWORDS and word not in _FILLERS and len(word) > 1
    written = normal_number(word) if is_number(word) else word.removesuffix("'s")
    return WordReading(stem(word) if content else None, written, word in _NEGATIONS)


def content_stems(text: str) -> frozenset[str]:
    """Stems of the words that carry a claim: no stopwords, fillers or one-letter words."""
    return Wording.of(text).stems


def normal_number(word: str) -> str:
    return word.lower().strip(".,").replace(",", "")


def names_and_numbers(sentence: str, common_words: AbstractSet[str]) -> set[str]:
    """Numbers, and capitalised words: inside the sentence, or first when ``common_words`` (lower-case words of
    the passages) does not hold them in lower case (so "Rollo led" counts Rollo, "The" and "Many" do not)."""
    words = _WORD.findall(sentence)
    found = {normal_number(w) for w in words if is_number(w)}
    for i, word in enumerate(words):
        lower = word.lower().strip(".,")
        if not word[:1].isupper() or lower in STOPWORDS or lower in _FILLERS:
            continue
        if i > 0 or lower not in common_words:
            found.add(lower.removesuffix("'s"))
    return found


@dataclass(frozen=True)
class Wording:
    """A text's words as the checks read them, read once: its content stems (``content_stems``), its words in
    lower case and numbers as ``names_and_numbers`` writes them (what a name is looked up in), and how many
    negations it holds."""

    text: str
    stems: frozenset[str]
    words: frozenset[str]
    negations: int

    @classmethod
    def of(cls, text: str) -> Self:
        read = list(map(read_word, tokens(text)))
        stems = frozenset(r.content_stem for r in read if r.content_stem is not None)
        return cls(text, stems, frozenset(r.word for r in read), sum(r.negation for r in read))


@dataclass(frozen=True)
class Token:
    """A passage word where the relation check reads it: as ``read_word`` writes it, its stem, and whether it is a
    name or number an answer could assert (``names_and_numbers``' rule)."""

    word: str
    stem: str
    entity: bool
    number: bool


@word_cache  # (of the word as written: passages share their Token objects)
def _token(raw: str) -> Token:
    lower = raw.lower().strip(".,'")
    number = is_number(raw)
    word = read_word(lower).word
    named = raw[:1].isupper() and lower not in STOPWORDS and lower not in _FILLERS
    return Token(word, stem(word), number or named, number)


@dataclass(frozen=True)
class SentenceTokens:
    """A sentence's tokens as any set reads them, but for its first word: a capitalised first word is a name only
    where the set's passages never write it in lower case (``names_and_numbers``' rule), so ``in_set`` decides."""

    tokens: tuple[Token, ...]
    first_lower: str | None  # the first word in lower case when the set may unname it (a capitalised non-number)

    @classmethod
    def of(cls, text: str) -> SentenceTokens:
        written = _WORD.findall(text)
        out = tuple(map(_token, written))
        named_first = bool(out) and out[0].entity and not out[0].number  # (a number is an entity that stays one)
        return cls(out, written[0].lower().strip(".,'") if named_first else None)

    def in_set(self, common_words: frozenset[str]) -> tuple[Token, ...]:
        if self.first_lower is not None and self.first_lower in common_words:
            return (replace(self.tokens[0], entity=False), *self.tokens[1:])
        return self.tokens


@dataclass(frozen=True)
class PassageSentence(Wording):
    """A passage's sentence, read as an answer's is."""

    passage: int = 0  # which context it comes from


@dataclass(frozen=True)
class PassageReading:
    """One passage as ``Passages`` reads it, the same in every set it is retrieved in: its sentences (numbered as
    passage 0), its words written in lower case, and its sentences' tokens once the relation check reads them
    (kept here, so a reading cache keeps them for the passage's next set: an eighth of groundedness's time)."""

    sentences: tuple[PassageSentence, ...]
    lowercase: frozenset[str]
    _tokens: dict[int, SentenceTokens] = field(default_factory=dict, compare=False, repr=False)

    def tokens(self, index: int) -> SentenceTokens:
        if index not in self._tokens:
            self._tokens[index] = SentenceTokens.of(self.sentences[index].text)
        return self._tokens[index]

    @classmethod
    def of(cls, text: str) -> PassageReading:
        sentences = tuple(PassageSentence.of(s) for s in split_sentences(text) if s.strip())
        return cls(sentences, frozenset(filter(str.islower, _WORD.findall(text))))


@dataclass(frozen=True)
class Passages:
    """The passages' sentences with their stems and words, and vocabularies over all of them."""

    sentences: tuple[PassageSentence, ...]
    stems: frozenset[str]
    words: frozenset[str]
    lowercase: frozenset[str]  # words written in lower case somewhere: common words, not names
    idf: dict[str, float] = field(default_factory=dict)
    # Where each sentence comes from (its passage's reading, and its place there): its tokens are read there.
    sources: tuple[tuple[PassageReading, int], ...] = field(default=(), compare=False, repr=False)
    # Each sentence's tokens, made when the relation check first reads that sentence: most answers assert no
    # name, and those that do need only the sentences holding it or the claim's words.
    _tokens: dict[int, tuple[Token, ...]] = field(default_factory=dict, compare=False, repr=False)

    def tokens(self, index: int) -> tuple[Token, ...]:
        """The tokens of sentence ``index`` as this set reads them, made once."""
        if index not in self._tokens:
            reading, place = self.sources[index]
            self._tokens[index] = reading.tokens(place).in_set(self.lowercase)
        return self._tokens[index]

    @classmethod
    def of(cls, contexts: list[str], read: Callable[[str], PassageReading] = PassageReading.of) -> Passages:
        """``read``: each passage's reading (``PassageReading.of``, or a cache of it)."""
        readings = [read(c) for c in contexts]
        lowercase = frozenset().union(*(r.lowercase for r in readings))
        sentences = tuple(
            PassageSentence(s.text, s.stems, s.words, s.negations, i)
            for i, r in enumerate(readings)
            for s in r.sentences
        )
        sources = tuple((r, place) for r in readings for place in range(len(r.sentences)))
        stems = frozenset().union(*(s.stems for s in sentences)) if sentences else frozenset()
        words = frozenset().union(*(s.words for s in sentences)) if sentences else frozenset()
        frequency: dict[str, int] = {}
        for sentence in sentences:
            for s in sentence.stems:
                frequency[s] = frequency.get(s, 0) + 1
        idf = {s: math.log(1 + len(sentences) / n) for s, n in frequency.items()}
        return cls(sentences, stems, words, lowercase, idf, sources)

    def question_match(self, asked: AbstractSet[str], similarity: Sequence[float] | None = None) -> list[float]:
        """Per passage sentence, how well it matches the question: IDF-weighted shared stems (scaled to 1 at
        best) plus COSINE_WEIGHT times ``similarity`` (its cosine to the question), each sentence also taking
        NEIGHBOUR_WEIGHT of its neighbours' match. An extractive reader's guess at where the answer is, scaled so
        the best sentence has 1 (all 1 when the question matches nothing). ``asked``: the question's content
        stems."""
        shared = [sum(self.idf.get(s, 0.0) for s in asked & sentence.stems) for sentence in self.sentences]
        most = max(shared, default=0.0) or 1.0
        cosines = similarity if similarity is not None else [0.0] * len(shared)
        raw = [s / most + COSINE_WEIGHT * max(0.0, float(c)) for s, c in zip(shared, cosines, strict=True)]
        smoothed = [
            max([r] + [NEIGHBOUR_WEIGHT * raw[j] for j in (i - 1, i + 1) if 0 <= j < len(raw)])
            for i, r in enumerate(raw)
        ]
        best = max(smoothed, default=0.0)
        return [s / best for s in smoothed] if best > 0 else [1.0] * len(smoothed)
