"""The answering pipeline: input guard -> answer cache -> retrieval -> context screening -> abstention ->
versioned prompt -> generator chain -> output guard (PII, citations, groundedness) -> citations. Every answer
says which generator produced it, whether a fallback was used and why, whether it came from the cache, which
prompt version made it, what the guards found, and how well the passages support it.

Streaming: the output guard needs the whole answer, so it runs after the last delta; the final event carries
the guarded answer (redacted, or replaced by the fallback) and clients must show that one."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from safety.guards import Guards, GuardVerdict
    from serving.generation import Generator

REFUSAL = "I can't help with that request."

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
    refused: bool = False  # a guard blocked the question or the answer
    guards: dict[str, Any] | None = None  # verdicts: {"input": ..., "context": ..., "output": ...}
    groundedness: dict[str, Any] | None = None  # {"score", "unsupported"}

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
            "refused": self.refused,
            "guards": self.guards,
            "groundedness": self.groundedness,
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
        guards: Guards | None = None,
        fallback_generator: Generator | None = None,
        enforce_output_guard: bool = True,
        observer: Callable[[AnswerRequest, Answer], None] | None = None,
    ) -> None:
        self._searcher = searcher
        self._embedder = embedder
        self._chain = chain
        self._prompt = prompt
        self._cache = cache
        self._index_version = index_version
        self._abstain_below = abstain_below
        self._context_sentences = context_sentences
        self._guards = guards
        self._fallback_generator = fallback_generator  # answers when the output guard rejects an answer
        self._enforce_output_guard = enforce_output_guard  # False: verdicts only (evals measure the model)
        self._observer = observer  # sees every final answer (metrics, tracing)

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
        for event in self._stream(request):
            if isinstance(event, Answer) and self._observer is not None:
                self._observer(request, event)
            yield event

    def _stream(self, request: AnswerRequest) -> Iterator[str | Answer]:
        started = time.perf_counter()
        prompt = self._prompt(request.user)
        prompt_info = {"name": prompt.name, "version": prompt.version, "hash": prompt.content_hash}
        verdicts: dict[str, Any] = {}
        if self._guards is not None and self._guards.input is not None:
            checked = self._guards.input.check(request.question)
            verdicts["input"] = checked.to_dict()
            if not checked.passed:
                refusal = self._refusal(checked, prompt_info, verdicts, started)
                yield refusal.answer
                yield refusal
                return
            request = replace(request, question=checked.text)  # PII redacted: nothing downstream sees it
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
        hits = result.hits
        if self._guards is not None:
            kept, fired = self._guards.screen_passages([hit.text for hit in hits])
            if fired:
                verdicts["context"] = {"fired": [f.__dict__ for f in fired], "kept": len(kept), "of": len(hits)}
                hits = [replace(hits[i], text=text) for i, text in kept]
        relevance = self._relevance(query_vector, hits)
        if relevance is None or relevance < self._abstain_below:
            abstention = self._fixed_answer("abstain", None, prompt_info, timings, started, relevance)
            abstention = replace(abstention, guards=verdicts or None)
            if not request.history:
                self._cache.put(key, abstention, query_vector)
            yield abstention.answer
            yield abstention
            return

        passages = [PromptPassage(i, h.doc_id, h.text, h.title) for i, h in enumerate(hits, 1)]
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
        generation, generator = chain_result.generation, chain_result.generator
        fallback = chain_result.fallback.to_dict() if chain_result.fallback else None
        timings["generate"] = _ms(generate_started)
        groundedness = None
        if self._guards is not None and self._guards.output is not None:
            guard_started = time.perf_counter()
            evidence = {"contexts": [h.text for h in hits], "passages": len(hits)}
            checked = self._guards.output.check(generation.text, evidence)
            verdicts["output"] = {**checked.to_dict(), "enforced": self._enforce_output_guard}
            if self._enforce_output_guard and checked.action == "block":
                yield self._refusal(checked, prompt_info, verdicts, started)
                return
            replace_answer = checked.action == "fallback" and generator != "extractive"
            if self._enforce_output_guard and replace_answer and self._fallback_generator is not None:
                fallback = {"from": generator, "reason": f"output guard: {checked.reasons('fallback')}"}
                generation = self._fallback_generator.generate(generation_request)
                generator = self._fallback_generator.name
                checked = self._guards.output.check(generation.text, evidence)
                verdicts["fallback_output"] = checked.to_dict()
            groundedness = checked.details.get("groundedness")
            generation = replace(generation, text=checked.text)
            timings["output_guard"] = _ms(guard_started)
        text, citations = resolve_citations(generation.text, hits)
        answer = Answer(
            answer=text,
            citations=citations,
            generator=generator,
            fallback=fallback,
            cached=False,
            prompt=prompt_info,
            usage=generation.usage,
            timings_ms={
                **timings,
                "first_token": round((first_token - started) * 1000, 3) if first_token else _ms(started),
                "total": _ms(started),
            },
            relevance=relevance,
            model=generation.model,
            guards=verdicts or None,
            groundedness=groundedness,
        )
        if answer.fallback is None and not request.history:
            self._cache.put(key, answer, query_vector)  # a fallback answer is not worth keeping
        yield answer

    def _refusal(
        self, verdict: GuardVerdict, prompt_info: dict[str, str], verdicts: dict[str, Any], started: float
    ) -> Answer:
        return Answer(
            answer=f"{REFUSAL} ({verdict.reasons(verdict.action)})",
            citations=[],
            generator="guard",
            fallback=None,
            cached=False,
            prompt=prompt_info,
            usage=Usage(),
            timings_ms={"total": _ms(started)},
            refused=True,
            guards=verdicts,
        )

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
