"""Groundedness: how well the retrieved passages support each sentence of an answer.

Per answer sentence, three signals against the passages' sentences: embedding similarity (the best cosine to
one passage sentence), lexical support (share of the sentence's content words found in the passages) and
entity support (share of its numbers and names found in the passages; an invented date or name is the typical
hallucination that embeddings miss). Their weighted sum is the sentence's support; the answer's score is the
lowest support over its sentences (one invented claim is enough to distrust an answer), and sentences below
the threshold are listed as unsupported. Weights and threshold are calibrated on held-out data
(``bench/guards.py``, which reports the ROC AUC).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from prompts.citations import CITATION
from retrieval.chunking import split_sentences

Vectors = np.ndarray[Any, np.dtype[np.float32]]

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'.,-]*[A-Za-z0-9]|[A-Za-z0-9]")
_STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being it its this that
    these those he she they them his her their there here what which who whom whose when where why how not no
    do does did has have had can could would should will may might must shall than then so such also into about
    over under after before between during through up down out very more most other some any each all both one
    i you we us our your my me""".split()
)
_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")  # redactions such as [EMAIL]: no claim to support
_ABSTAIN_MARKERS = ("do not contain the answer", "not in the documents", "cannot answer")


@dataclass(frozen=True)
class GroundednessWeights:
    """Calibrated by ``bench/guards.py --calibrate`` on Disfl-QA questions 3000-3999."""

    dense: float = 0.2
    lexical: float = 0.3
    entity: float = 0.5


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str
    support: float
    dense: float
    lexical: float
    entity: float


class Groundedness(BaseModel):
    """How well the passages support an answer: the least supported sentence's score, and the sentences below
    the threshold. Per-sentence signals are kept for calibration, not shown to clients."""

    model_config = ConfigDict(frozen=True)

    score: float | None = Field(description="Support of the least supported sentence; null: nothing to judge.")
    unsupported: list[str] = Field(default_factory=list, description="Answer sentences below the threshold.")
    sentences: list[SentenceSupport] = Field(default_factory=list, exclude=True)

    @field_serializer("score")
    def _rounded(self, score: float | None) -> float | None:
        return None if score is None else round(score, 4)


def _tokens(text: str) -> list[str]:
    return [t.lower().strip(".,'") for t in _WORD.findall(text)]


def _content_words(text: str) -> set[str]:
    return {t for t in _tokens(text) if t not in _STOPWORDS and len(t) > 1}


def _entities(sentence: str) -> set[str]:
    """Numbers, and capitalised words that do not start the sentence."""
    words = _WORD.findall(sentence)
    found = {w.lower().strip(".,") for w in words if any(ch.isdigit() for ch in w)}
    found |= {w.lower() for w in words[1:] if w[:1].isupper() and w.lower() not in _STOPWORDS}
    return found


class GroundednessScorer:
    def __init__(
        self,
        embed: Callable[[list[str]], Vectors],
        threshold: float = 0.66,
        weights: GroundednessWeights | None = None,
    ) -> None:
        self._embed = embed
        self.threshold = threshold
        self.weights = weights or GroundednessWeights()

    def sentence_supports(self, answer: str, contexts: list[str]) -> list[SentenceSupport]:
        text = _PLACEHOLDER.sub("", CITATION.sub("", answer)).strip()
        sentences = [s for s in split_sentences(text) if _content_words(s)]
        context_sentences = [s for c in contexts for s in split_sentences(c) if s.strip()]
        if not sentences or not context_sentences:
            return []
        vectors = self._embed(sentences + context_sentences)
        similarity = vectors[: len(sentences)] @ vectors[len(sentences) :].T
        context_words = set().union(*(_content_words(c) for c in contexts))
        context_text = " ".join(contexts).lower()
        supports = []
        for i, sentence in enumerate(sentences):
            dense = float(max(0.0, similarity[i].max()))
            words = _content_words(sentence)
            lexical = len(words & context_words) / len(words)
            entities = _entities(sentence)
            entity = sum(e in context_text for e in entities) / len(entities) if entities else 1.0
            w = self.weights
            support = w.dense * dense + w.lexical * lexical + w.entity * entity
            supports.append(SentenceSupport(sentence, support, dense, lexical, entity))
        return supports

    def score(self, answer: str, contexts: list[str]) -> Groundedness:
        if not answer.strip() or any(marker in answer.lower() for marker in _ABSTAIN_MARKERS):
            return Groundedness(score=None)
        supports = self.sentence_supports(answer, contexts)
        if not supports:
            return Groundedness(score=0.0 if not contexts else None)
        return Groundedness(
            score=min(s.support for s in supports),
            unsupported=[s.sentence for s in supports if s.support < self.threshold],
            sentences=supports,
        )
