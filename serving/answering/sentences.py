"""Ranking the sentences of retrieved passages against a question. The extractive generator answers with the
best ones; the context compressor keeps only the best ones in an LLM's prompt (a shorter prompt is a faster
first token on CPU, and less for a small model to get lost in)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from prompts.loader import PromptPassage
from retrieval.chunking import split_sentences
from retrieval.embedding import Embedder

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    (
        "a an the of in on at to for by with and or is are was were be been what which who whom when where why how "
        "did do does no sorry uh um i mean it its this that as from"
    ).split()
)


@dataclass(frozen=True)
class ScoredSentence:
    passage: int  # the passage's citation number
    position: int  # the sentence's place in its passage
    text: str
    similarity: float  # cosine to the question
    score: float  # similarity plus a word-overlap bonus


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def rank_sentences(
    question: str, passages: list[PromptPassage], embedder: Embedder, shortlist: int = 12
) -> list[ScoredSentence]:
    """Best first; ties by passage and position, so the same input always ranks the same way. Word overlap
    shortlists the sentences (cheap); only those are embedded (the model is the cost here)."""
    candidates = [
        (passage.index, position, sentence)
        for passage in passages
        for position, sentence in enumerate(split_sentences(passage.text))
        if len(sentence.split()) >= 3
    ]
    if not candidates:
        return []
    question_words = _words(question)
    overlap = [len(question_words & _words(c[2])) / max(1, len(question_words)) for c in candidates]
    kept = sorted(sorted(range(len(candidates)), key=lambda i: (-overlap[i], candidates[i][:2]))[:shortlist])
    vectors = embedder.embed([question, *(candidates[i][2] for i in kept)])
    similarity = vectors[1:] @ vectors[0]
    scored = [
        ScoredSentence(*candidates[i], float(sim), float(sim) + 0.3 * overlap[i])
        for i, sim in zip(kept, np.asarray(similarity), strict=True)
    ]
    return sorted(scored, key=lambda s: (-round(s.score, 6), s.passage, s.position))


def compress_passages(
    question: str, passages: list[PromptPassage], embedder: Embedder, sentences: int
) -> list[PromptPassage]:
    """Each passage cut down to its sentences among the ``sentences`` best overall (in reading order); passages
    left empty are dropped. Citation numbers stay those of the full list."""
    best = rank_sentences(question, passages, embedder)[:sentences]
    compressed = []
    for passage in passages:
        kept = sorted((s for s in best if s.passage == passage.index), key=lambda s: s.position)
        if kept:
            text = " ".join(s.text for s in kept)
            compressed.append(PromptPassage(passage.index, passage.doc_id, text, passage.title))
    return compressed
