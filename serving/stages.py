"""The answering pipeline's steps. Each is a small class with one job, built by the composition root and
testable on its own; they share one per-request state object, the ``Turn``.

input guard -> answer cache -> retrieve -> screen passages -> abstain -> compose prompt -> generate (fallback
chain) -> output guard -> cite. A step that ends the request early (a refusal, a cache hit, an abstention)
returns the ``Answer``; otherwise it returns ``None`` or what the next step needs, and records on the turn what
the final answer reports (verdicts, hits, relevance, timings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from prompts.loader import Prompt, PromptPassage
from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import Scope
from retrieval.search import Searcher
from safety.guards import ContextVerdict, Guard, Guards, GuardVerdict
from serving.answer import Answer, GuardVerdicts, Outcome, PromptInfo, resolve_citations
from serving.answer_cache import AnswerCache, CacheKey, normalise_question
from serving.fallback import ChainDelta, ChainResult, Fallback, FallbackChain
from serving.generation import NOT_IN_DOCUMENTS, GenerationRequest, GeneratorError
from serving.generation import Generator as TextGenerator
from serving.sentences import compress_passages

REFUSAL = "I can't help with that request."


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    scope: Scope
    top_k: int = 4
    history: list[dict[str, str]] = field(default_factory=list)
    user: str | None = None  # picks the prompt when a canary takes a share of users (sticky per user)


@dataclass
class Turn:
    """One request on its way through the steps."""

    request: AnswerRequest
    prompt: Prompt
    question: str  # the question as the steps after the input guard see it (redacted)
    started: float = field(default_factory=time.perf_counter)
    verdicts: GuardVerdicts = field(default_factory=GuardVerdicts)
    query_vector: np.ndarray[Any, Any] | None = None
    cache_key: CacheKey | None = None
    hits: list[Hit] = field(default_factory=list)
    relevance: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, request: AnswerRequest, prompt: Prompt) -> Turn:
        return cls(request, prompt, request.question)

    @property
    def prompt_info(self) -> PromptInfo:
        return PromptInfo(name=self.prompt.name, version=self.prompt.version, hash=self.prompt.content_hash)

    def elapsed_ms(self) -> float:
        return _ms(self.started)

    def ended(self, outcome: Outcome, text: str, **fields: Any) -> Answer:
        """An answer no generator wrote: a refusal, an abstention, an outage."""
        return Answer(
            answer=text,
            outcome=outcome,
            prompt=self.prompt_info,
            timings_ms={**self.timings_ms, "total": self.elapsed_ms()},
            relevance=self.relevance,
            guards=self.verdicts if self.verdicts.model_fields_set else None,
            refused=outcome == "refused",
            abstained=outcome == "abstained",
            **fields,
        )


def refusal(turn: Turn, verdict: GuardVerdict) -> Answer:
    return turn.ended("refused", f"{REFUSAL} ({verdict.reasons(verdict.action)})")


class InputGuard:
    """Blocks what the input policy refuses; redacts PII so that nothing downstream sees it."""

    def __init__(self, guard: Guard | None) -> None:
        self._guard = guard

    def run(self, turn: Turn) -> Answer | None:
        if self._guard is None:
            return None
        verdict = self._guard.check(turn.request.question)
        turn.verdicts.input = verdict
        if not verdict.passed:
            return refusal(turn, verdict)
        turn.question = verdict.text
        return None


class CachedAnswers:
    """The answer cache in front of retrieval. Its key holds everything an answer depends on: the question,
    scope, index version, prompt version and first generator; conversations with history are not cached."""

    def __init__(
        self, cache: AnswerCache, embedder: CachedEmbedder, index_version: Callable[[], int], generator: str
    ) -> None:
        self._cache = cache
        self._embedder = embedder
        self._index_version = index_version
        self._generator = generator

    def lookup(self, turn: Turn) -> Answer | None:
        turn.query_vector = self._embedder.embed_query(turn.question)
        scope, prompt = turn.request.scope, turn.prompt
        turn.cache_key = CacheKey(
            normalise_question(turn.question),
            scope.collection,
            scope.tenant,
            self._index_version(),
            f"{prompt.ref}#{prompt.content_hash}",
            self._generator,
        )
        if turn.request.history:
            return None
        cached = self._cache.get(turn.cache_key, turn.query_vector)
        if not isinstance(cached, Answer):
            return None
        return cached.model_copy(
            update={"outcome": "cached", "cached": True, "timings_ms": {"total": _ms(turn.started)}}
        )

    def store(self, turn: Turn, answer: Answer) -> None:
        if turn.cache_key is not None and not turn.request.history:
            self._cache.put(turn.cache_key, answer, turn.query_vector)


class Retrieve:
    """Hybrid search in the request's scope."""

    def __init__(self, searcher: Searcher) -> None:
        self._searcher = searcher

    def run(self, turn: Turn) -> None:
        result = self._searcher.search(turn.question, turn.request.scope, top_k=turn.request.top_k)
        turn.hits = result.hits
        turn.timings_ms.update(result.timings_ms)


class ScreenPassages:
    """Retrieved passages that carry instructions are dropped (or neutralised) before any prompt sees them."""

    def __init__(self, guards: Guards | None) -> None:
        self._guards = guards

    def run(self, turn: Turn) -> None:
        if self._guards is None:
            return
        kept, fired = self._guards.screen_passages([hit.text for hit in turn.hits])
        if fired:
            turn.verdicts.context = ContextVerdict(fired=fired, kept=len(kept), of=len(turn.hits))
            turn.hits = [replace(turn.hits[i], text=text) for i, text in kept]


class Abstain:
    """When no passage is similar enough to the question, say the documents do not hold the answer and call no
    model."""

    def __init__(self, embedder: CachedEmbedder, threshold: float) -> None:
        self._embedder = embedder
        self._threshold = threshold

    def run(self, turn: Turn) -> Answer | None:
        turn.relevance = self._relevance(turn)
        if turn.relevance is not None and turn.relevance >= self._threshold:
            return None
        return turn.ended("abstained", NOT_IN_DOCUMENTS)

    def _relevance(self, turn: Turn) -> float | None:
        """Best cosine between the question and a retrieved chunk (chunk vectors come from the cache)."""
        if not turn.hits:
            return None
        query = turn.query_vector if turn.query_vector is not None else self._embedder.embed_query(turn.question)
        vectors = self._embedder.embed([hit.embedding_text for hit in turn.hits])
        return round(float(np.max(vectors @ query)), 4)


class ComposePrompt:
    """The versioned prompt over numbered passages, each cut to its best sentences for an LLM."""

    def __init__(self, embedder: CachedEmbedder, context_sentences: int) -> None:
        self._embedder = embedder
        self._context_sentences = context_sentences

    def run(self, turn: Turn) -> GenerationRequest:
        passages = [PromptPassage(i, h.doc_id, h.text, h.title) for i, h in enumerate(turn.hits, 1)]
        if self._context_sentences:
            passages = compress_passages(turn.question, passages, self._embedder, self._context_sentences)
        return GenerationRequest(
            messages=turn.prompt.render(turn.question, passages, turn.request.history),
            question=turn.question,
            passages=passages,
            params=turn.prompt.params,
        )


class Generate:
    """The fallback chain, streamed: yields text deltas, returns the chain's result, or the error when even the
    last generator failed."""

    def __init__(self, chain: FallbackChain) -> None:
        self.chain = chain

    def stream(self, turn: Turn, request: GenerationRequest) -> Generator[str, None, ChainResult | GeneratorError]:
        started = time.perf_counter()
        first_token: float | None = None
        try:
            for event in self.chain.stream(request):
                if isinstance(event, ChainDelta):
                    first_token = first_token or time.perf_counter()
                    yield event.text
                else:
                    turn.timings_ms["generate"] = _ms(started)
                    turn.timings_ms["first_token"] = round(
                        ((first_token or time.perf_counter()) - turn.started) * 1000, 3
                    )
                    return event
        except GeneratorError as exc:
            return exc
        raise AssertionError("a chain's stream ends with its result or raises")

    def failed(self, turn: Turn, error: GeneratorError) -> Answer:
        """Every generator failed: the fixed answer, saying so. An outage, never an abstention."""
        fallback = Fallback(from_=self.chain.names[0], reason=str(error))
        return turn.ended("failed", NOT_IN_DOCUMENTS, fallback=fallback)


class OutputGuard:
    """Redacts the answer; with ``enforce``, a block refuses and a fallback action replaces the answer with the
    fallback generator's (itself checked). Without ``enforce`` (eval runs) verdicts are only reported."""

    def __init__(self, guard: Guard | None, fallback: TextGenerator | None, enforce: bool) -> None:
        self._guard = guard
        self._fallback = fallback
        self._enforce = enforce

    def run(self, turn: Turn, result: ChainResult, request: GenerationRequest) -> ChainResult | Answer:
        if self._guard is None:
            return result
        started = time.perf_counter()
        evidence = {"contexts": [h.text for h in turn.hits], "passages": len(turn.hits)}
        verdict = self._guard.check(result.generation.text, evidence)
        turn.verdicts.output = verdict.model_copy(update={"enforced": self._enforce})
        if self._enforce and verdict.action == "block":
            return refusal(turn, verdict)
        if self._enforce and verdict.action == "fallback" and self._replaceable(result):
            assert self._fallback is not None
            reason = f"output guard: {verdict.reasons('fallback')}"
            generation = self._fallback.generate(request)
            verdict = self._guard.check(generation.text, evidence)
            turn.verdicts.fallback_output = verdict
            result = ChainResult(generation, self._fallback.name, Fallback(from_=result.generator, reason=reason))
        turn.timings_ms["output_guard"] = _ms(started)
        return replace(result, generation=replace(result.generation, text=verdict.text))

    def _replaceable(self, result: ChainResult) -> bool:
        return self._fallback is not None and result.generator != self._fallback.name


def cite(turn: Turn, result: ChainResult) -> Answer:
    """The final answer: citation markers resolved against the passages shown, every verdict attached."""
    text, citations = resolve_citations(result.generation.text, turn.hits)
    checked = turn.verdicts.fallback_output or turn.verdicts.output
    return Answer(
        answer=text,
        outcome="answered",
        citations=citations,
        generator=result.generator,
        model=result.generation.model,
        fallback=result.fallback,
        prompt=turn.prompt_info,
        usage=result.generation.usage,
        timings_ms={**turn.timings_ms, "total": turn.elapsed_ms()},
        relevance=turn.relevance,
        guards=turn.verdicts if turn.verdicts.model_fields_set else None,
        groundedness=checked.groundedness if checked is not None else None,
    )


@dataclass(frozen=True)
class Stages:
    """The steps, in the order they run (``RagPipeline`` wires them; the composition root builds them)."""

    input_guard: InputGuard
    cache: CachedAnswers
    retrieve: Retrieve
    screen: ScreenPassages
    abstain: Abstain
    compose: ComposePrompt
    generate: Generate
    output_guard: OutputGuard


def whole(answer: Answer) -> Iterator[str | Answer]:
    """An answer that was never streamed (refusal, cache hit, abstention, outage): its text as one delta, then
    the answer."""
    yield answer.answer
    yield answer


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
