"""The answering pipeline's steps. Each is a small class with one job, built by the composition root and
testable on its own; they share one per-request state object, the ``Turn``.

input guard -> rewrite the query -> answer cache -> retrieve -> screen passages -> abstain -> compose prompt ->
generate (fallback chain) -> output guard (``serving.answering.output_stage``) -> cite. A step that ends the
request early (a refusal, a cache hit, an abstention) returns the ``Answer``; otherwise it returns ``None`` or what
the next step needs, and records on the turn what the final answer reports (verdicts, hits, relevance, timings).
``RagPipeline`` wires them (``serving.answering.pipeline.Stages``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from prompts.citations import says_not_in_documents
from prompts.loader import Prompt, PromptPassage
from retrieval.documents import Hit
from retrieval.embedding_cache import CachedEmbedder
from retrieval.index import Scope
from retrieval.search import Searcher
from safety.guards import ContextVerdict, Guard, Guards, GuardVerdict
from safety.pii import redact
from serving.answering.answer_cache import AnswerCache, CacheKey, normalise_question
from serving.answering.extractive import ExtractiveGenerator
from serving.answering.fallback import ChainDelta, ChainResult, FallbackChain
from serving.answering.rewrite import QueryRewriter
from serving.answering.sentences import compress_passages
from serving.contracts.answer import (
    Answer,
    AnswerRequest,
    ChatMessage,
    GuardVerdicts,
    Outcome,
    PromptInfo,
    QueryRewrite,
    resolve_citations,
)
from serving.contracts.generation import (
    NOT_IN_DOCUMENTS,
    Fallback,
    GenerationRequest,
    GeneratorError,
    Replaced,
    Usage,
)
from serving.infra.clock import elapsed_ms

REFUSAL = "I can't help with that request."
GenerateEvent = ChainDelta | Replaced | ChainResult | GeneratorError  # what the generate stage streams


@dataclass(kw_only=True)
class Turn:
    """One request on its way through the steps."""

    request: AnswerRequest
    prompt: Prompt
    question: str  # the question as the steps after the input guard see it (redacted): what the prompt renders
    history: list[ChatMessage] = field(default_factory=list)  # likewise the history (what the prompt renders)
    # What retrieval, the cache, sentence choice and the groundedness check read: the question, or a follow-up
    # made standalone (``RewriteQuery``).
    retrieval_query: str = ""
    rewrite: QueryRewrite | None = None
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
        return cls(request=request, prompt=prompt, question=request.question, history=list(request.history),
                   retrieval_query=request.question)  # fmt: skip

    @property
    def prompt_info(self) -> PromptInfo:
        return PromptInfo(name=self.prompt.name, version=self.prompt.version, hash=self.prompt.content_hash)

    def elapsed_ms(self) -> float:
        return elapsed_ms(self.started)

    def ended(self, outcome: Outcome, text: str, **fields: Any) -> Answer:
        """The request's answer, with what the turn recorded on the way: prompt, timings, relevance, verdicts."""
        return Answer(
            answer=text,
            outcome=outcome,
            prompt=self.prompt_info,
            timings_ms={**self.timings_ms, "total": self.elapsed_ms()},
            relevance=self.relevance,
            rewrite=self.rewrite,
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
        turn.question = turn.retrieval_query = verdict.text
        return None


class RewriteQuery:
    """A follow-up made standalone for retrieval (``serving.answering.rewrite``), from the guarded question and
    history. The rewrite passes the input guard as the question did; one it blocks, or would change (redact), is
    not searched with: retrieval reads the question as asked."""

    def __init__(self, rewriter: QueryRewriter, guard: Guard | None) -> None:
        self.rewriter = rewriter
        self._guard = guard

    def run(self, turn: Turn) -> None:
        if not turn.history:
            return
        started = time.perf_counter()
        rewrite = self.rewriter.rewrite(turn.question, turn.history)
        if rewrite.rewritten and self._guard is not None:
            verdict = self._guard.check(rewrite.query)
            if not verdict.passed or verdict.text != rewrite.query:
                why = f"the input guard stopped the rewrite: {verdict.reasons(verdict.action)}"
                rewrite = rewrite.model_copy(update={"query": turn.question, "rewritten": False, "reason": why})
        turn.rewrite = rewrite.model_copy(update={"ms": elapsed_ms(started)})
        turn.timings_ms["rewrite"] = turn.rewrite.ms
        turn.retrieval_query = rewrite.query


class CachedAnswers:
    """The answer cache in front of retrieval. Its key holds everything an answer depends on: the retrieval query
    (a follow-up's standalone rewrite), scope, index version, prompt version and first generator, and the earlier
    turns when that generator reads them. So with the extractive generator, which answers from the passages alone,
    "When did he die?" after a question about Rollo and "When did Rollo die?" share an entry; a model's answer
    to a follow-up, written with the conversation in its prompt, is only ever that conversation's."""

    def __init__(
        self, cache: AnswerCache, embedder: CachedEmbedder, index_version: Callable[[Scope], str], generator: str
    ) -> None:
        self._cache = cache
        self._embedder = embedder
        self._index_version = index_version
        self._generator = generator

    def lookup(self, turn: Turn) -> Answer | None:
        turn.query_vector = self._embedder.embed_query(turn.retrieval_query)
        scope, prompt = turn.request.scope, turn.prompt
        turn.cache_key = CacheKey(
            question=normalise_question(turn.retrieval_query),
            collection=scope.collection,
            tenant=scope.tenant,
            index_version=self._index_version(scope),  # a digest of the scope's documents (answer_cache.IndexDigest)
            prompt=f"{prompt.ref}#{prompt.content_hash}",
            generator=self._generator,
            top_k=turn.request.top_k,
            conversation=self._conversation_digest(turn),
        )
        cached = self._cache.get(turn.cache_key, turn.query_vector)
        if not isinstance(cached, Answer):
            return None
        # A cache hit generated nothing: no tokens, no cost (it still counts as a request against rate limits).
        return cached.model_copy(
            update={
                "outcome": "cached",
                "cached": True,
                "usage": Usage(),
                "rewrite": turn.rewrite,
                "timings_ms": {**turn.timings_ms, "total": elapsed_ms(turn.started)},
            }
        )

    def _conversation_digest(self, turn: Turn) -> str:
        if not turn.history or self._generator == ExtractiveGenerator.name:
            return ""
        turns = json.dumps([message.as_dict() for message in turn.history], ensure_ascii=False)
        return hashlib.sha256(turns.encode()).hexdigest()

    def store(self, turn: Turn, answer: Answer) -> None:
        if turn.cache_key is not None:
            self._cache.put(turn.cache_key, answer, turn.query_vector)


class Retrieve:
    """Hybrid search in the request's scope."""

    def __init__(self, searcher: Searcher) -> None:
        self._searcher = searcher

    def run(self, turn: Turn) -> None:
        result = self._searcher.search(turn.retrieval_query, turn.request.scope, top_k=turn.request.top_k)
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


class ComposePrompt:
    """The versioned prompt over numbered passages, each cut to its best sentences for an LLM."""

    def __init__(self, embedder: CachedEmbedder, context_sentences: int) -> None:
        self._embedder = embedder
        self._context_sentences = context_sentences

    def run(self, turn: Turn) -> GenerationRequest:
        passages = [PromptPassage(i, h.doc_id, h.text, h.title) for i, h in enumerate(turn.hits, 1)]
        if self._context_sentences:
            passages = compress_passages(turn.retrieval_query, passages, self._embedder, self._context_sentences)
        return GenerationRequest(
            messages=turn.prompt.render(turn.question, passages, turn.history),
            question=turn.retrieval_query,
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
                    turn.timings_ms["generate"] = elapsed_ms(started)
                yield event
        except GeneratorError as exc:
            yield exc
        finally:
            events.close()
            turn.timings_ms.setdefault("generate", elapsed_ms(started))  # a stream the output guard stopped

    def failed(self, turn: Turn, error: GeneratorError) -> Answer:
        """Every generator failed: the fixed answer, saying so. An outage, never an abstention."""
        fallback = Fallback(from_=self.chain.names[0], reason=str(error))
        return turn.ended("failed", NOT_IN_DOCUMENTS, fallback=fallback)


class Cite:
    """The final answer: citation markers resolved against the passages shown, every verdict attached. With
    ``redact_retrieved`` (``redact``, or the service's ``RedactionMemo`` of it), the passages' text and titles come
    with personal data redacted, as the answer's own; None: as retrieved."""

    def __init__(self, redact_retrieved: Callable[[str], str] | None = redact) -> None:
        self._redact = redact_retrieved

    def run(self, turn: Turn, result: ChainResult) -> Answer:
        text, citations = resolve_citations(result.generation.text, turn.hits, self._redact)
        checked = turn.verdicts.fallback_output or turn.verdicts.output
        # A model that says the passages lack the answer, in the fixed sentence or its own words, abstains, as the
        # similarity rule does; ``generator`` tells the two apart.
        abstained = says_not_in_documents(text)
        moved = turn.verdicts.citation_check.moved if turn.verdicts.citation_check is not None else 0
        return turn.ended(
            "abstained" if abstained else "answered",
            text,
            citations=citations,
            generator=result.generator,
            model=result.generation.model,
            fallback=result.fallback,
            usage=result.generation.usage,
            groundedness=checked.groundedness if checked is not None else None,
            citations_moved=moved,
        )
