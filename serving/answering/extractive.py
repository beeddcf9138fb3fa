"""The extractive generator: no model, deterministic. It answers with the passage sentences most similar to the
question (embedding cosine, with a small bonus for shared words), each cited with its passage number. A sentence
that carries instructions (``screen``: the injection patterns' flagged sentences of a passage) is never quoted,
whatever the passage screen upstream let through."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace

from prompts.loader import PromptPassage
from retrieval.chunking import split_sentences
from retrieval.embedding import Embedder
from serving.answering.sentences import rank_sentences
from serving.contracts.generation import (
    NOT_IN_DOCUMENTS,
    Generation,
    GenerationRequest,
    GeneratorError,
    StreamDelta,
    Usage,
)


class ExtractiveGenerator:
    name = "extractive"

    def __init__(
        self,
        embedder: Embedder,
        max_sentences: int = 2,
        min_similarity: float = 0.2,
        screen: Callable[[str], Collection[int]] | None = None,
    ) -> None:
        self._embedder = embedder
        self._max_sentences = max_sentences
        self._min_similarity = min_similarity
        self._screen = screen  # a passage's text -> the places of its flagged sentences (``split_sentences``)

    def generate(self, request: GenerationRequest) -> Generation:
        ranked = rank_sentences(request.question, self._screened(request.passages), self._embedder)
        if not ranked:
            raise GeneratorError("empty", "no passage sentences to answer from")
        chosen = [s for s in ranked[: self._max_sentences] if s.similarity >= self._min_similarity]
        if not chosen:
            text = NOT_IN_DOCUMENTS
        else:
            chosen.sort(key=lambda s: (s.passage, s.position))  # reading order
            text = " ".join(f"{s.text} [{s.passage}]" for s in chosen)
        return Generation(
            text=text, usage=Usage(completion_tokens=len(text.split())), finish_reason="stop", model="extractive"
        )

    def _screened(self, passages: list[PromptPassage]) -> list[PromptPassage]:
        """The passages without their flagged sentences (citation numbers unchanged)."""
        if self._screen is None:
            return passages
        screened = []
        for passage in passages:
            flagged = self._screen(passage.text)
            if flagged:
                kept = [s for i, s in enumerate(split_sentences(passage.text)) if i not in flagged]
                passage = replace(passage, text=" ".join(kept))
            screened.append(passage)
        return screened

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        generation = self.generate(request)
        for word in re.findall(r"\S+\s*", generation.text):
            yield StreamDelta(word)
        yield generation
