"""The answering pipeline: answer cache -> retrieval -> abstention -> versioned prompt -> generator chain ->
citations. Every answer says which generator produced it, whether a fallback was used and why, whether it came
from the cache, and which prompt version made it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from prompts.loader import Prompt, PromptPassage
from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import Scope
from retrieval.search import Searcher
from serving.answer_cache import AnswerCache, CacheKey, normalise_question
from serving.fallback import ChainDelta, ChainResult, FallbackChain
from serving.generation import NOT_IN_DOCUMENTS, GenerationRequest, GeneratorError, Usage
from serving.sentences import compress_passages

CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")  # [1] or [1, 3]


def citation_numbers(marker_body: str) -> list[int]:
    """The numbers inside one citation marker's brackets."""
    return [int(n) for n in re.split(r"\s*,\s*", marker_body)]


@dataclass(frozen=True)
class Citation:
    index: int
    doc_id: str
    chunk_id: str
    title: str | None
    source: str | None
    text: str
    score: float
    cited: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "doc_id": self.doc_id,
            "chunk_id": self.chunk_id,
            "title": self.title,
            "source": self.source,
            "text": self.text,
            "score": self.score,
            "cited": self.cited,
        }


@dataclass(frozen=True)
class Answer:
    answer: str
    citations: list[Citation]
    generator: str
    fallback: dict[str, str] | None
    cached: bool
    prompt: dict[str, str]
    usage: Usage
    timings_ms: dict[str, float]
    abstained: bool = False
    relevance: float | None = None
    model: str | None = None  # what the generator ran (None: no model answered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "citations": [c.to_dict() for c in self.citations],
            "generator": self.generator,
            "model": self.model,
            "fallback": self.fallback,
            "cached": self.cached,
            "prompt": self.prompt,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            },
            "timings_ms": self.timings_ms,
            "abstained": self.abstained,
            "relevance": self.relevance,
        }


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    scope: Scope
    top_k: int = 4
    history: list[dict[str, str]] = field(default_factory=list)
    user: str | None = None  # picks the prompt when a canary takes a share of users (sticky per user)


def resolve_citations(text: str, hits: list[Hit]) -> tuple[str, list[Citation]]:
    """Keep citation markers that point at a retrieved passage, drop the others; list every passage shown."""
    valid = set(range(1, len(hits) + 1))
    cited: set[int] = set()

    def keep(match: re.Match[str]) -> str:
        numbers = citation_numbers(match.group(1))
        kept = [n for n in numbers if n in valid]
        cited.update(kept)
        return "[" + ", ".join(map(str, kept)) + "]" if kept else ""

    cleaned = re.sub(r"[ \t]{2,}", " ", CITATION.sub(keep, text)).strip()
    citations = [
        Citation(i, h.doc_id, h.chunk_id, h.title, h.source, h.text, h.score, i in cited) for i, h in enumerate(hits, 1)
    ]
    return cleaned, citations


class RagPipeline:
    def __init__(
        self,
        searcher: Searcher,
        embedder: CachedEmbedder,
        chain: FallbackChain,
        prompt: Callable[[str | None], Prompt],
        cache: AnswerCache,
        index_version: Callable[[], int],
        abstain_below: float = 0.0,
        context_sentences: int = 0,
    ) -> None:
        self._searcher = searcher
        self._embedder = embedder
        self._chain = chain
        self._prompt = prompt
        self._cache = cache
        self._index_version = index_version
        self._abstain_below = abstain_below
        self._context_sentences = context_sentences

    def prompt_for(self, user: str | None = None) -> Prompt:
        """The prompt version that answers this user."""
        return self._prompt(user)

    def answer(self, request: AnswerRequest) -> Answer:
        result: Answer | None = None
        for event in self.stream(request):
            if isinstance(event, Answer):
                result = event
        assert result is not None
        return result

    def stream(self, request: AnswerRequest) -> Iterator[str | Answer]:
        """Text deltas, then the complete ``Answer`` (cached answers and abstentions come as one delta)."""
        started = time.perf_counter()
        prompt = self._prompt(request.user)
        query_vector = self._embedder.embed_query(request.question)
        key = CacheKey(
            normalise_question(request.question),
            request.scope.collection,
            request.scope.tenant,
            self._index_version(),
            f"{prompt.ref}#{prompt.content_hash}",
            self._chain.names[0],
        )
        if not request.history:
            cached = self._cache.get(key, query_vector)
            if isinstance(cached, Answer):
                answer = replace(cached, cached=True, timings_ms={"total": _ms(started)})
                yield answer.answer
                yield answer
                return

        result = self._searcher.search(request.question, request.scope, top_k=request.top_k)
        timings = dict(result.timings_ms)
        relevance = self._relevance(query_vector, result.hits)
        prompt_info = {"name": prompt.name, "version": prompt.version, "hash": prompt.content_hash}
        if relevance is None or relevance < self._abstain_below:
            abstention = self._fixed_answer("abstain", None, prompt_info, timings, started, relevance)
            if not request.history:
                self._cache.put(key, abstention, query_vector)
            yield abstention.answer
            yield abstention
            return

        passages = [PromptPassage(i, h.doc_id, h.text, h.title) for i, h in enumerate(result.hits, 1)]
        if self._context_sentences:
            passages = compress_passages(request.question, passages, self._embedder, self._context_sentences)
        generation_request = GenerationRequest(
            messages=prompt.render(request.question, passages, request.history),
            question=request.question,
            passages=passages,
            params=prompt.params,
        )
        generate_started = time.perf_counter()
        first_token: float | None = None
        chain_result: ChainResult | None = None
        try:
            for event in self._chain.stream(generation_request):
                if isinstance(event, ChainDelta):
                    first_token = first_token or time.perf_counter()
                    yield event.text
                else:
                    chain_result = event
        except GeneratorError as exc:  # even the last generator failed: say so, never a 500
            failure = {"from": self._chain.names[0], "reason": str(exc)}
            answer = self._fixed_answer("none", failure, prompt_info, timings, started, relevance)
            yield answer.answer
            yield answer
            return
        assert chain_result is not None
        text, citations = resolve_citations(chain_result.generation.text, result.hits)
        answer = Answer(
            answer=text,
            citations=citations,
            generator=chain_result.generator,
            fallback=chain_result.fallback.to_dict() if chain_result.fallback else None,
            cached=False,
            prompt=prompt_info,
            usage=chain_result.generation.usage,
            timings_ms={
                **timings,
                "first_token": round((first_token - started) * 1000, 3) if first_token else _ms(started),
                "generate": _ms(generate_started),
                "total": _ms(started),
            },
            relevance=relevance,
            model=chain_result.generation.model,
        )
        if answer.fallback is None and not request.history:
            self._cache.put(key, answer, query_vector)  # a fallback answer is not worth keeping
        yield answer

    def _fixed_answer(
        self,
        generator: str,
        fallback: dict[str, str] | None,
        prompt_info: dict[str, str],
        timings: dict[str, float],
        started: float,
        relevance: float | None,
    ) -> Answer:
        """The 'not in the documents' answer: for abstentions and when no generator could answer."""
        return Answer(
            answer=NOT_IN_DOCUMENTS,
            citations=[],
            generator=generator,
            fallback=fallback,
            cached=False,
            prompt=prompt_info,
            usage=Usage(),
            timings_ms={**timings, "generate": 0.0, "total": _ms(started)},
            abstained=True,
            relevance=relevance,
        )

    def _relevance(self, query_vector: np.ndarray[Any, Any], hits: list[Hit]) -> float | None:
        """Best cosine between the question and a retrieved chunk (chunk vectors come from the cache)."""
        if not hits:
            return None
        vectors = self._embedder.embed([hit.embedding_text for hit in hits])
        return round(float(np.max(vectors @ query_vector)), 4)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
