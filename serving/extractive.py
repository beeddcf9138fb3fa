"""The extractive generator: no model, deterministic. It answers with the passage sentences most similar to the
question (embedding cosine, with a small bonus for shared words), each cited with its passage number."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from retrieval.chunking import split_sentences
from retrieval.embedding import Embedder
from serving.generation import NOT_IN_DOCUMENTS, Generation, GenerationRequest, GeneratorError, StreamDelta, Usage

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    (
        "a an the of in on at to for by with and or is are was were be been what which who whom when where why how "
        "did do does no sorry uh um i mean it its this that as from"
    ).split()
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


class ExtractiveGenerator:
    name = "extractive"

    def __init__(self, embedder: Embedder, max_sentences: int = 2, min_similarity: float = 0.2) -> None:
        self._embedder = embedder
        self._max_sentences = max_sentences
        self._min_similarity = min_similarity

    def generate(self, request: GenerationRequest) -> Generation:
        candidates = [
            (passage.index, position, sentence.strip())
            for passage in request.passages
            for position, sentence in enumerate(split_sentences(passage.text))
            if len(sentence.split()) >= 3
        ]
        if not candidates:
            raise GeneratorError("empty", "no passage sentences to answer from")
        vectors = self._embedder.embed([request.question, *(c[2] for c in candidates)])
        similarity = vectors[1:] @ vectors[0]
        question_words = _words(request.question)
        overlap = np.array([len(question_words & _words(c[2])) / max(1, len(question_words)) for c in candidates])
        scores = similarity + 0.3 * overlap
        # Highest score first; ties broken by passage and position, so the same input gives the same answer.
        ranked = sorted(range(len(candidates)), key=lambda i: (-round(float(scores[i]), 6), candidates[i][:2]))
        chosen = [i for i in ranked[: self._max_sentences] if similarity[i] >= self._min_similarity]
        if not chosen:
            text = NOT_IN_DOCUMENTS
        else:
            chosen.sort(key=lambda i: candidates[i][:2])  # reading order
            text = " ".join(f"{candidates[i][2]} [{candidates[i][0]}]" for i in chosen)
        return Generation(text=text, usage=Usage(0, len(text.split())), finish_reason="stop", model="extractive")

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        generation = self.generate(request)
        for word in re.findall(r"\S+\s*", generation.text):
            yield StreamDelta(word)
        yield generation
