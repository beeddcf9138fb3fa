"""Groundedness: how well the retrieved passages support each sentence of an answer to a question.

``GroundednessBackend`` is what the guards, the evals and ``ragops groundedness`` call. ``GroundednessScorer``
is the offline default: per answer sentence, eight signals against the passages' sentences and the question,
each in [0, 1] with 1 meaning supported:

- ``dense``: the best cosine to one passage sentence (off-topic sentences);
- ``lexical``, ``novel``: the share of the sentence's content words found in the passages (or the question), and
  1 / (1 + how many are found in neither): one invented word is enough to doubt a sentence;
- ``names``: the share of its names and numbers found in the passages (a swapped name, a changed date);
- ``aligned``: the share of them found in the passage sentence it restates (or its neighbours, or the
  question): a number or a name moved in from elsewhere in the passages;
- ``negation``: it and that passage sentence hold as many negations;
- ``question``: its names (or new words) come from the passage sentences that answer the question (an
  extractive reader's view: which sentence answers it, judged by IDF-weighted shared words), so a name that
  is in the passages but does not answer the question fails;
- ``relation``: the name or number it asserts is the one the passage places next to the claim's and the
  question's words, not another span of its kind from the same passage (``safety.relation``: "drafted by
  Benjamin Franklin" when the passage says "drafted by Thomas Jefferson ... edited by Benjamin Franklin").

The sentence's support is the logistic of their weighted sum; the answer's score is the lowest support over its
sentences (one unsupported claim is enough to distrust an answer), and sentences below the threshold are listed
as unsupported. Weights and threshold are calibrated by ``bench/guards.py --calibrate`` on Disfl-QA questions
3000-3999. ``safety.groundedness_model`` is the other backend: a trained detector read from a local directory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from prompts.citations import CITATION, says_not_in_documents
from retrieval.chunking import split_sentences
from retrieval.lru import Lru
from safety.grounding_text import PassageReading, Passages, Wording, content_stems, names_and_numbers
from safety.relation import RelationCheck, relation_check

Vectors = np.ndarray[Any, np.dtype[np.float32]]

_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")  # redactions such as [EMAIL]: no claim to support
RESTATES = 0.5  # share of an answer sentence's words in a passage sentence for it to restate that sentence
_PASSAGE_SET_CACHE = 64  # analysed passage sets kept: a streamed answer is scored sentence by sentence
# Single passages read: the same passages come back question after question, in other sets. A reading of an
# 826-character passage (Disfl-QA's mean) holds about 23 KB (each sentence's text and two sets; the words in them
# are shared), and 2 KB more once the relation check has read its sentences' tokens (shared Token objects): 512 of
# them, about 13 MB. A set's vectors add 1.5 KB a sentence (384 floats).
_PASSAGE_CACHE = 512


@dataclass(frozen=True, kw_only=True)
class SupportSignals:
    """Each in [0, 1], 1 meaning supported (see the module's docstring)."""

    dense: float
    lexical: float
    novel: float
    names: float
    aligned: float
    negation: float
    question: float
    relation: float


@dataclass(frozen=True, kw_only=True)
class GroundednessWeights:
    """Logistic weights of the signals; calibrated by ``bench/guards.py --calibrate`` on Disfl-QA questions
    3000-3999."""

    bias: float = -14.23
    dense: float = 0.0  # fitted to 0: the word-level signals already separate what it does
    lexical: float = 0.99
    novel: float = 6.58
    names: float = 0.0  # fitted to 0 once ``aligned`` and ``relation`` place the names
    aligned: float = 2.11
    negation: float = 1.79
    question: float = 1.7
    relation: float = 3.19

    def support(self, signals: SupportSignals) -> float:
        total = self.bias + sum(getattr(self, f.name) * getattr(signals, f.name) for f in fields(signals))
        return 1 / (1 + math.exp(-total))


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str
    support: float
    signals: SupportSignals | None = None  # the offline scorer's; None from a trained detector
    relation: RelationCheck | None = None  # the offline scorer's explanation of its ``relation`` signal
    passage: int | None = None  # the offline scorer's: which context holds the passage sentence it restates


class Groundedness(BaseModel):
    """How well the passages support an answer: the least supported sentence's score, and the sentences below
    the threshold. Its JSON counts those sentences and never quotes them: it is part of the output guard's
    verdict, and a sentence the guard withdrew must not come back to the client through it (nor a piece of the
    prompt a model echoed). The sentences themselves, and the per-sentence signals (for calibration), stay in
    process: ``ragops groundedness`` prints them for the answer it was given."""

    model_config = ConfigDict(frozen=True)

    score: float | None = Field(description="Support of the least supported sentence; null: nothing to judge.")
    unsupported: list[str] = Field(default_factory=list, exclude=True)
    unsupported_sentences: int = Field(0, description="How many answer sentences score below the threshold.")
    sentences: list[SentenceSupport] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _counted(cls, data: Any) -> Any:
        """The count from the sentences, unless given (a stored answer's JSON has the count only)."""
        if isinstance(data, dict) and "unsupported_sentences" not in data:
            return {**data, "unsupported_sentences": len(data.get("unsupported") or ())}
        return data

    @field_serializer("score")
    def _rounded(self, score: float | None) -> float | None:
        return None if score is None else round(score, 4)


class GroundednessBackend(Protocol):
    """What scores an answer's groundedness: the offline scorer, or a trained detector."""

    threshold: float

    def score(self, answer: str, contexts: list[str], *, question: str) -> Groundedness: ...


def answer_sentences(answer: str) -> list[str]:
    """The answer's sentences that make a claim: citations and redaction placeholders removed."""
    text = _PLACEHOLDER.sub("", CITATION.sub("", answer)).strip()
    return [s for s in split_sentences(text) if content_stems(s)]


def judged(answer: str, contexts: list[str], supports: list[SentenceSupport], threshold: float) -> Groundedness:
    """One answer's result from its sentences' supports (shared by the backends). An answer that is not an
    abstention (the callers return those unjudged) yet has no sentence to support is degenerate ("The document is
    from the document.", a bare citation): it scores 0, never passes unjudged."""
    if not supports:
        return Groundedness(score=0.0, unsupported=[answer.strip()])
    return Groundedness(
        score=min(s.support for s in supports),
        unsupported=[s.sentence for s in supports if s.support < threshold],
        sentences=supports,
    )


def is_abstention(answer: str) -> bool:
    """Nothing claimed: an empty answer, or the not-in-documents sentence (the one rule, in prompts.citations)."""
    return not answer.strip() or says_not_in_documents(answer)


@dataclass(frozen=True)
class _AnalysedSet:
    """A passage set as every sentence of a streamed answer is scored against it: read, and each sentence
    embedded (fetching the vectors from the embedder's cache again cost a hash of every sentence a check)."""

    passages: Passages
    vectors: Vectors


class GroundednessScorer:
    """The offline backend: embeddings of the answer's sentences (the passages' come from the embedder's cache)
    and word-level checks against the passages and the question."""

    def __init__(
        self,
        embed: Callable[[list[str]], Vectors],
        threshold: float = 0.6,
        weights: GroundednessWeights | None = None,
    ) -> None:
        self._embed = embed
        self.threshold = threshold
        self.weights = weights or GroundednessWeights()
        self._passage_sets: Lru[tuple[str, ...], _AnalysedSet] = Lru(_PASSAGE_SET_CACHE)
        self._readings: Lru[str, PassageReading] = Lru(_PASSAGE_CACHE)

    def score(self, answer: str, contexts: list[str], *, question: str) -> Groundedness:
        if is_abstention(answer):
            return Groundedness(score=None)
        return judged(answer, contexts, self.sentence_supports(answer, contexts, question), self.threshold)

    def sentence_supports(self, answer: str, contexts: list[str], question: str) -> list[SentenceSupport]:
        sentences = answer_sentences(answer)
        analysed = self._analysed(contexts)
        passages, passage_vectors = analysed.passages, analysed.vectors
        if not sentences or not passages.sentences:
            return []
        embedded = [question] if question.strip() else []  # in the embedder's cache: retrieval embedded it
        vectors = self._embed(sentences + embedded)
        similarity = vectors[: len(sentences)] @ passage_vectors.T
        question_similarity = passage_vectors @ vectors[len(sentences)] if embedded else None
        asked = Wording.of(question)
        reader = passages.question_match(asked.stems, question_similarity)
        supports = []
        for i, sentence in enumerate(sentences):
            said = Wording.of(sentence)
            names = names_and_numbers(sentence, passages.lowercase)
            relation = relation_check(said, asked, names, passages)
            overlap = stem_overlap(said.stems, passages)
            at = int(np.argmax(similarity[i] + overlap))  # the passage sentence it restates: cosine plus overlap
            signals = sentence_signals(said, asked, names, passages, similarity[i], reader, relation, at, overlap)
            support = self.weights.support(signals)
            supports.append(SentenceSupport(sentence, support, signals, relation, passages.sentences[at].passage))
        return supports

    def _analysed(self, contexts: list[str]) -> _AnalysedSet:
        return self._passage_sets.get_or_make(tuple(contexts), lambda: self._analyse(contexts))

    def _analyse(self, contexts: list[str]) -> _AnalysedSet:
        passages = Passages.of(contexts, self._reading)
        texts = [p.text for p in passages.sentences]
        return _AnalysedSet(passages, self._embed(texts) if texts else np.zeros((0, 0), dtype=np.float32))

    def _reading(self, text: str) -> PassageReading:
        return self._readings.get_or_make(text, lambda: PassageReading.of(text))


def stem_overlap(stems: frozenset[str], passages: Passages) -> Vectors:
    """The share of the sentence's content stems in each passage sentence."""
    return np.asarray([len(stems & p.stems) / len(stems) for p in passages.sentences], dtype=np.float32)


def sentence_signals(
    said: Wording, asked: Wording, names: set[str], passages: Passages, similarity: Vectors, reader: list[float],
    relation: RelationCheck | None, at: int, overlap: Vectors,
) -> SupportSignals:  # fmt: skip
    """The eight signals of answer sentence ``said`` to question ``asked`` (``names``: the sentence's names and
    numbers; ``similarity``: its cosine to each passage sentence; ``reader``: each passage sentence's match to the
    question; ``relation``: its asserted span's check; ``at``: the passage sentence it restates; ``overlap``: its
    share of content stems in each passage sentence)."""
    stems, asked_stems, asked_words = said.stems, asked.stems, asked.words
    unknown = stems - passages.stems - asked_stems
    restated = passages.sentences[at]
    negated = said.negations
    # Negations are counted alike only where the sentence restates that passage sentence (or negates itself).
    same_polarity = negated == restated.negations or (not negated and overlap[at] < RESTATES)
    return SupportSignals(
        dense=float(max(0.0, similarity.max())),
        lexical=1 - len(unknown) / len(stems),
        novel=1 / (1 + len(unknown)),
        names=_share(names, passages.words),
        aligned=_share(names, restated.words | asked_words),
        negation=float(same_polarity),
        question=_answers_question(names - asked_words, stems - asked_stems, passages, reader),
        relation=1.0 if relation is None else relation.margin,
    )


def _share(found: set[str], vocabulary: set[str] | frozenset[str]) -> float:
    return sum(f in vocabulary for f in found) / len(found) if found else 1.0


def _answers_question(names: set[str], stems: frozenset[str], passages: Passages, reader: list[float]) -> float:
    """How well the sentences holding the answer's new names (else its new words) match the question: the
    least for names (one wrong name is wrong), the mean for words (a paraphrase spreads them); 0 for a sentence
    with nothing new, which only restates the question (small models often do)."""
    if names:
        return min(_best_reader_match(reader, [n in p.words for p in passages.sentences]) for n in names)
    held = [_best_reader_match(reader, [s in p.stems for p in passages.sentences]) for s in stems]
    return sum(held) / len(held) if held else 0.0


def _best_reader_match(reader: list[float], holds: list[bool]) -> float:
    """The best question match among the passage sentences that hold a word (0 when none does)."""
    return max((match for match, held in zip(reader, holds, strict=True) if held), default=0.0)
