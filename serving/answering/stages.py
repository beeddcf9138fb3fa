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

from prompts.citations import says_not_in_documents
from prompts.loader import Prompt, PromptPassage
from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import Scope
from retrieval.search import Searcher
from safety.guards import GROUNDEDNESS_CHECK, ContextVerdict, Guard, GuardAction, Guards, GuardVerdict
from serving.answering.answer_cache import AnswerCache, CacheKey, normalise_question
from serving.answering.fallback import ChainDelta, ChainResult, FallbackChain
from serving.answering.sentences import compress_passages
from serving.answering.streaming_guard import SentenceGuard, SplitGuard
from serving.contracts.answer import (
    Answer,
    AnswerRequest,
    ChatMessage,
    GuardVerdicts,
    Outcome,
    PromptInfo,
    resolve_citations,
)
from serving.contracts.generation import (
    NOT_IN_DOCUMENTS,
    Fallback,
    Generation,
    GenerationRequest,
    GeneratorError,
    Replaced,
    ReplacedCode,
    StreamDelta,
    Usage,
)
from serving.contracts.generation import Generator as TextGenerator

REFUSAL = "I can't help with that request."
GenerateEvent = ChainDelta | Replaced | ChainResult | GeneratorError  # what the generate stage streams


@dataclass(kw_only=True)
class Turn:
    """One request on its way through the steps."""

    request: AnswerRequest
    prompt: Prompt
    question: str  # the question as the steps after the input guard see it (redacted)
    history: list[ChatMessage] = field(default_factory=list)  # likewise the history (what the prompt renders)
    started: float = field(default_factory=time.perf_counter)
    verdicts: GuardVerdicts = field(default_factory=GuardVerdicts)
    query_vector: np.ndarray[Any, Any] | None = None
    cache_key: CacheKey | None = None
    hits: list[Hit] = field(default_factory=list)
    dropped: list[Hit] = field(default_factory=list)  # retrieved passages the screen left out (instructions)
    relevance: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, request: AnswerRequest, prompt: Prompt) -> Turn:
        return cls(request=request, prompt=prompt, question=request.question, history=list(request.history))

    @property
    def prompt_info(self) -> PromptInfo:
        return PromptInfo(name=self.prompt.name, version=self.prompt.version, hash=self.prompt.content_hash)

    def elapsed_ms(self) -> float:
        return _ms(self.started)

    def ended(self, outcome: Outcome, text: str, **fields: Any) -> Answer:
        """The request's answer, with what the turn recorded on the way: prompt, timings, relevance, verdicts."""
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
    """Blocks what the input policy refuses; redacts PII so that nothing downstream sees it. The history goes
    into the prompt too, so every turn of it is checked like the question: a blocked turn refuses the request
    (the verdict's finding names the turn), and the prompt gets the history as redacted."""

    def __init__(self, guard: Guard | None) -> None:
        self._guard = guard

    def run(self, turn: Turn) -> Answer | None:
        if self._guard is None:
            return None
        verdict = self._guard.check(turn.request.question)
        turn.verdicts.input = verdict
        if not verdict.passed:
            return refusal(turn, verdict)
        if turn.request.history:
            turn.history = self._guard.check_history(turn.request.history, verdict)
            if not verdict.passed:
                return refusal(turn, verdict)
        turn.question = verdict.text
        return None


class CachedAnswers:
    """The answer cache in front of retrieval. Its key holds everything an answer depends on: the question,
    scope, index version, prompt version and first generator; conversations with history are not cached."""

    def __init__(
        self, cache: AnswerCache, embedder: CachedEmbedder, index_version: Callable[[Scope], str], generator: str
    ) -> None:
        self._cache = cache
        self._embedder = embedder
        self._index_version = index_version
        self._generator = generator

    def lookup(self, turn: Turn) -> Answer | None:
        turn.query_vector = self._embedder.embed_query(turn.question)
        scope, prompt = turn.request.scope, turn.prompt
        turn.cache_key = CacheKey(
            question=normalise_question(turn.question),
            collection=scope.collection,
            tenant=scope.tenant,
            index_version=self._index_version(scope),  # a digest of the scope's documents (index_digest)
            prompt=f"{prompt.ref}#{prompt.content_hash}",
            generator=self._generator,
            top_k=turn.request.top_k,
        )
        if turn.request.history:
            return None
        cached = self._cache.get(turn.cache_key, turn.query_vector)
        if not isinstance(cached, Answer):
            return None
        # A cache hit generated nothing: no tokens, no cost (it still counts as a request against rate limits).
        return cached.model_copy(
            update={"outcome": "cached", "cached": True, "usage": Usage(), "timings_ms": {"total": _ms(turn.started)}}
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
    """Retrieved passages that carry instructions are dropped (or their flagged sentences replaced, with
    ``neutralise``) before any prompt sees them; the context verdict names each flagged sentence by its place and
    hash, never quoting it (``Guards.screen_passages``)."""

    def __init__(self, guards: Guards | None) -> None:
        self._guards = guards

    def run(self, turn: Turn) -> None:
        if self._guards is None:
            return
        kept, fired = self._guards.screen_passages([hit.text for hit in turn.hits])
        if fired:
            turn.verdicts.context = ContextVerdict(fired=fired, kept=len(kept), of=len(turn.hits))
            kept_indices = {i for i, _ in kept}
            turn.dropped = [hit for i, hit in enumerate(turn.hits) if i not in kept_indices]
            turn.hits = [replace(turn.hits[i], text=text) for i, text in kept]


class Abstain:
    """When no passage is similar enough to the question, or the passage that held the answer was dropped by the
    screen, say the documents do not hold the answer and call no model."""

    def __init__(self, embedder: CachedEmbedder, threshold: float) -> None:
        self._embedder = embedder
        self._threshold = threshold

    def run(self, turn: Turn) -> Answer | None:
        turn.relevance = self._relevance(turn, turn.hits)
        if turn.relevance is not None and turn.relevance >= self._threshold and not self._answer_was_dropped(turn):
            return None
        return turn.ended("abstained", NOT_IN_DOCUMENTS)

    def _answer_was_dropped(self, turn: Turn) -> bool:
        """The rule: abstain when a dropped passage is at least as close to the question as every kept one. The
        closest passage is the one the answer would come from; once it is gone, what is left is by the same
        measure further from the question, and an answer from it is about something else (the extractive
        generator quoted an unrelated passage). The price: a flagged document silences the questions it is
        closest to, rather than letting something else answer them; the ingest report names it for removal."""
        dropped = self._relevance(turn, turn.dropped)
        if dropped is None:
            return False
        return turn.relevance is None or dropped >= turn.relevance

    def _relevance(self, turn: Turn, hits: list[Hit]) -> float | None:
        """Best cosine between the question and one of ``hits`` (chunk vectors come from the cache)."""
        if not hits:
            return None
        query = turn.query_vector  # set by the cache lookup, which always runs first
        assert query is not None
        vectors = self._embedder.embed([hit.embedding_text for hit in hits])
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
            messages=turn.prompt.render(turn.question, passages, turn.history),
            question=turn.question,
            passages=passages,
            params=turn.prompt.params,
        )


class Generate:
    """The fallback chain, streamed: its deltas, then its result, or the error when even the last generator
    failed. Closing the stream closes the chain's, so the model stops generating."""

    def __init__(self, chain: FallbackChain) -> None:
        self.chain = chain

    def stream(self, turn: Turn, request: GenerationRequest) -> Generator[GenerateEvent, None, None]:
        started = time.perf_counter()
        events = self.chain.stream(request)
        try:
            for event in events:
                if isinstance(event, ChainDelta):
                    turn.timings_ms.setdefault("first_token", turn.elapsed_ms())
                else:
                    turn.timings_ms["generate"] = _ms(started)
                yield event
        except GeneratorError as exc:
            yield exc
        finally:
            events.close()
            turn.timings_ms.setdefault("generate", _ms(started))  # a stream the output guard stopped

    def failed(self, turn: Turn, error: GeneratorError) -> Answer:
        """Every generator failed: the fixed answer, saying so. An outage, never an abstention."""
        fallback = Fallback(from_=self.chain.names[0], reason=str(error))
        return turn.ended("failed", NOT_IN_DOCUMENTS, fallback=fallback)


class OutputGuard:
    """Checks the answer as it streams, sentence by sentence (``SentenceGuard``), so only checked, redacted text
    reaches the client. With ``enforce``, a sentence the policy blocks, or sends to the fallback, stops the
    model: a ``Replaced`` event follows, then the refusal or the fallback generator's answer (itself checked
    and redacted). Without ``enforce`` (eval runs) verdicts are only reported and only redaction applies."""

    def __init__(self, guard: Guard | None, fallback: TextGenerator | None, enforce: bool) -> None:
        self._guard = None if guard is None else SplitGuard.of(guard)
        self._fallback = fallback
        self._enforce = enforce

    def stream(
        self, turn: Turn, events: Generator[GenerateEvent, None, None], request: GenerationRequest
    ) -> Generator[str | Replaced, None, ChainResult | Answer | GeneratorError]:
        """The released text (and a ``Replaced`` event where the chain cut an answer off), then the guarded
        result, the refusal, or the error when every generator failed."""
        sentences: SentenceGuard | None = None
        try:
            for event in events:
                if isinstance(event, Replaced):  # a generator failed mid-answer; the next one's answer follows
                    if sentences is not None and sentences.text:  # withdraw only what a client was shown
                        yield event
                    sentences = None
                    continue
                if not isinstance(event, ChainDelta):
                    return (yield from self._finish(turn, sentences, event, request))
                sentences = sentences or self._sentences(turn, event.generator)
                yield from _shown(turn, sentences.feed(event.text))
                if sentences.stopped is not None:
                    events.close()  # the model stops now, before the fallback runs
                    return (yield from self._replace(turn, sentences, request))
        finally:
            events.close()
        raise AssertionError("the generate stage ends with its result or the error")

    def _finish(
        self, turn: Turn, sentences: SentenceGuard | None, outcome: ChainResult | GeneratorError,
        request: GenerationRequest,
    ) -> Generator[str | Replaced, None, ChainResult | Answer | GeneratorError]:  # fmt: skip
        if isinstance(outcome, GeneratorError):
            if sentences is not None and sentences.text:  # shown text the failed answer cannot stand behind
                yield Replaced(from_=sentences.generator, reason=str(outcome), code="generator_failed")
            return outcome
        if sentences is None:  # a generator that gave its answer in no delta
            sentences = self._sentences(turn, outcome.generator)
            yield from _shown(turn, sentences.feed(outcome.generation.text))
        yield from _shown(turn, sentences.finish())
        if sentences.stopped is not None:
            return (yield from self._replace(turn, sentences, request))
        self._record(turn, sentences)
        return replace(outcome, generation=replace(outcome.generation, text=sentences.text))

    def _replace(
        self, turn: Turn, sentences: SentenceGuard, request: GenerationRequest
    ) -> Generator[str | Replaced, None, ChainResult | Answer | GeneratorError]:
        """The model's answer stopped: say so, then the refusal (block) or the fallback's answer."""
        stopped = sentences.stopped
        assert stopped is not None and sentences.verdict is not None
        self._record(turn, sentences)
        reason = f"output guard: {stopped.reasons(stopped.action)}"
        stoppers = {fired.kind for fired in stopped.fired if fired.action == stopped.action}
        code: ReplacedCode = "ungrounded" if stoppers == {GROUNDEDNESS_CHECK} else "policy"
        yield Replaced(from_=sentences.generator, reason=reason, code=code)
        if stopped.action == "block" or self._fallback is None:
            return refusal(turn, sentences.verdict)
        # The fallback's own verdict is reported, not enforced (as it always was): it is the last resort.
        checked = SentenceGuard(self._guard, [h.text for h in turn.hits], (), self._fallback.name, turn.question)
        generation = yield from self._stream_fallback(turn, checked, request)
        if isinstance(generation, GeneratorError):
            return generation
        assert checked.verdict is not None
        turn.verdicts.fallback_output = checked.verdict
        self._add_latency(turn, checked.verdict)
        fallback = Fallback(from_=sentences.generator, reason=reason)
        return ChainResult(replace(generation, text=checked.text), self._fallback.name, fallback)

    def _stream_fallback(
        self, turn: Turn, checked: SentenceGuard, request: GenerationRequest
    ) -> Generator[str, None, Generation | GeneratorError]:
        assert self._fallback is not None
        generation: Generation | GeneratorError = GeneratorError("empty", f"{self._fallback.name} gave no answer")
        try:
            for event in self._fallback.stream(request):
                if isinstance(event, StreamDelta):
                    yield from _shown(turn, checked.feed(event.text))
                else:
                    generation = event
        except GeneratorError as exc:
            return exc
        yield from _shown(turn, checked.finish())
        return generation

    def _sentences(self, turn: Turn, generator: str) -> SentenceGuard:
        """The guard over ``generator``'s answer: a block always stops it, a fallback verdict unless it is the
        fallback's own answer; neither without ``enforce``."""
        stop_on: set[GuardAction] = set()
        if self._enforce:
            stop_on = {"block", "fallback"} if self._replaceable(generator) else {"block"}
        return SentenceGuard(self._guard, [h.text for h in turn.hits], stop_on, generator, turn.question)

    def _record(self, turn: Turn, sentences: SentenceGuard) -> None:
        if sentences.verdict is not None:
            turn.verdicts.output = sentences.verdict.model_copy(update={"enforced": self._enforce})
            self._add_latency(turn, sentences.verdict)

    @staticmethod
    def _add_latency(turn: Turn, verdict: GuardVerdict) -> None:
        turn.timings_ms["output_guard"] = round(turn.timings_ms.get("output_guard", 0.0) + verdict.latency_ms, 3)

    def _replaceable(self, generator: str) -> bool:
        return self._fallback is not None and generator != self._fallback.name


def _shown(turn: Turn, texts: list[str]) -> Iterator[str]:
    """Released text, on its way to the client; the first piece's time is the answer's ``first_shown``."""
    for text in texts:
        turn.timings_ms.setdefault("first_shown", turn.elapsed_ms())
        yield text


class Cite:
    """The final answer: citation markers resolved against the passages shown, every verdict attached. With
    ``redact_retrieved``, the passages' text and titles come with personal data redacted, as the answer's own."""

    def __init__(self, redact_retrieved: bool = True) -> None:
        self._redact = redact_retrieved

    def run(self, turn: Turn, result: ChainResult) -> Answer:
        text, citations = resolve_citations(result.generation.text, turn.hits, self._redact)
        checked = turn.verdicts.fallback_output or turn.verdicts.output
        # A model that says the passages lack the answer abstains, as the similarity rule does; ``generator``
        # tells the two apart.
        return turn.ended(
            "abstained" if says_not_in_documents(text) else "answered",
            text,
            citations=citations,
            generator=result.generator,
            model=result.generation.model,
            fallback=result.fallback,
            usage=result.generation.usage,
            groundedness=checked.groundedness if checked is not None else None,
        )


@dataclass(frozen=True, kw_only=True)
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
    cite: Cite = field(default_factory=Cite)


def whole(answer: Answer) -> Iterator[str | Replaced | Answer]:
    """An answer that was never streamed (refusal, cache hit, abstention, outage): its text as one delta, then
    the answer."""
    yield answer.answer
    yield answer


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
