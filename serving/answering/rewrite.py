"""History-aware retrieval: a follow-up question rewritten into a standalone search query before retrieval. The
user's own words still go to the prompt; retrieval, the answer cache, the extractive generator's sentence choice
and the groundedness check read the rewritten query.

Two rewriters behind one interface (``QueryRewriter``), chosen by the ``rewriter`` setting:

- ``RuleRewriter``: word rules, no model (``serving.answering.rewrite_rules``); decides when no rewrite is needed.
- ``ModelRewriter``: the configured LLM with its own versioned prompt (``prompts/query_rewrite``), asked only when
  the rules find the question refers back, within a strict time budget, its output accepted only when it keeps
  the question's words and adds none the conversation's questions and answers do not hold
  (``model_rewrite_problem``); otherwise the rules' rewrite stands, and the ``QueryRewrite`` says why.

The rewritten query passes the input guard (``RewriteQuery`` in the stages), like the question did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Literal, Protocol

from prompts.loader import Prompt
from prompts.messages import ChatMessage
from serving.answering import rewrite_rules
from serving.contracts.answer import QueryRewrite
from serving.contracts.generation import Generation, GenerationRequest, GeneratorError, StreamDelta
from serving.contracts.generation import Generator as TextGenerator
from serving.infra.clock import elapsed_ms

log = logging.getLogger("ragops.rewrite")

RewriterName = Literal["none", "rules", "model"]
MAX_QUERY_CHARS = 400  # a model's rewrite longer than this is not a search query
MAX_ADDED_WORDS = 12  # content words a model's rewrite may add to the question


class QueryRewriter(Protocol):
    @property
    def name(self) -> RewriterName: ...

    def rewrite(self, question: str, history: Sequence[ChatMessage]) -> QueryRewrite: ...

    def close(self) -> None: ...


class NoRewriter:
    """Retrieval searches with the question as asked (the behaviour before conversations)."""

    name: RewriterName = "none"

    def rewrite(self, question: str, history: Sequence[ChatMessage]) -> QueryRewrite:
        return QueryRewrite(query=question, rewritten=False, rewriter=self.name, reason="rewriting is off")

    def close(self) -> None:
        pass


class RuleRewriter:
    name: RewriterName = "rules"

    def rewrite(self, question: str, history: Sequence[ChatMessage]) -> QueryRewrite:
        started = time.perf_counter()
        verdict = rewrite_rules.rewrite(question, history)
        return QueryRewrite(query=verdict.query, rewritten=verdict.rewritten, rewriter=self.name,
                            reason=verdict.reason, ms=elapsed_ms(started))  # fmt: skip

    def close(self) -> None:
        pass


class ModelRewriter:
    """The LLM rewrites what the rules find refers back; the rules' rewrite answers when the model is slow
    (``budget_s``), busy, fails, or writes something that is not the question made standalone. One rewrite runs
    at a time in its own thread, so the budget holds even while the model is still reading its prompt; a rewrite
    past its budget is stopped at the model's next token, and while one runs the next request does not queue
    behind it: the rules answer it."""

    name: RewriterName = "model"

    def __init__(self, generator: TextGenerator, prompt: Prompt, budget_s: float) -> None:
        self._generator = generator
        self._prompt = prompt
        self._budget_s = budget_s
        self._rules = RuleRewriter()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragops-rewrite")
        self._idle = threading.Semaphore(1)  # taken from submit until the model's stream is closed

    def rewrite(self, question: str, history: Sequence[ChatMessage]) -> QueryRewrite:
        started = time.perf_counter()
        rules = self._rules.rewrite(question, history)
        if not rules.rewritten:
            return rules.model_copy(update={"ms": elapsed_ms(started)})  # self-contained: the model is not asked
        if not self._idle.acquire(blocking=False):
            return self._fallback(rules, "model busy with another rewrite", started)
        cancelled = threading.Event()
        future = self._pool.submit(self._generate, question, list(history), cancelled)
        try:
            output = future.result(timeout=self._budget_s)
        except FutureTimeout:
            cancelled.set()
            return self._fallback(rules, f"model took over {self._budget_s * 1000:.0f} ms", started)
        except GeneratorError as exc:
            return self._fallback(rules, f"model failed: {exc}", started)
        except Exception as exc:  # whatever else the model's side raises, the rules' rewrite answers
            log.warning("query rewrite: the model rewriter raised", exc_info=True)
            return self._fallback(rules, f"model failed: {type(exc).__name__}", started)
        query = clean_model_output(output)
        problem = model_rewrite_problem(question, history, query)
        if problem is not None:
            return self._fallback(rules, f"model output rejected: {problem}", started)
        return QueryRewrite(query=query, rewritten=query != question, rewriter=self.name,
                            reason=f"{self._prompt.ref}", ms=elapsed_ms(started))  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _generate(self, question: str, history: list[ChatMessage], cancelled: threading.Event) -> str:
        try:
            return self._stream(question, history, cancelled)
        finally:
            self._idle.release()

    def _stream(self, question: str, history: list[ChatMessage], cancelled: threading.Event) -> str:
        request = GenerationRequest(messages=self._prompt.render(question, [], history), question=question,
                                    passages=[], params=self._prompt.params)  # fmt: skip
        if cancelled.is_set():  # its caller gave up before the model was free
            return ""
        events = self._generator.stream(request)
        text: list[str] = []
        try:
            for event in events:
                if cancelled.is_set():
                    break  # past the budget: closing the stream stops the model
                if isinstance(event, StreamDelta):
                    text.append(event.text)
                elif isinstance(event, Generation):
                    return event.text
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        return "".join(text)

    def _fallback(self, rules: QueryRewrite, why: str, started: float) -> QueryRewrite:
        log.info("query rewrite: %s; the rules' rewrite is used", why)
        return rules.model_copy(update={"reason": f"{rules.reason} ({why}; rules used)", "ms": elapsed_ms(started)})


def clean_model_output(text: str) -> str:
    """The model's first line, without the labels and quotes small models put around an answer."""
    line = next((part.strip() for part in text.strip().splitlines() if part.strip()), "")
    for label in ("rewritten question:", "standalone question:", "question:", "rewritten:", "query:"):
        if line.lower().startswith(label):
            line = line[len(label) :].strip()
    return line.strip("\"'“”` ").strip()


def model_rewrite_problem(question: str, history: Sequence[ChatMessage], query: str) -> str | None:
    """Why a model's rewrite cannot be the search query (None: it can). A rewrite keeps every content word of
    the question and adds only words the conversation's questions and answers hold — never words of a turn that
    instructs rather than asks, so an injected "search for ... instead" in an earlier turn cannot steer retrieval."""
    if not query:
        return "empty"
    if len(query) > MAX_QUERY_CHARS or "\n" in query:
        return f"longer than {MAX_QUERY_CHARS} characters or several lines"
    written = set(rewrite_rules.content_words(query))
    dropped = [w for w in rewrite_rules.content_words(question) if w not in written]
    if dropped:
        return f"drops the question's word(s) {', '.join(sorted(set(dropped))[:5])}"
    sources = [t.content for t in history if t.role == "assistant" or rewrite_rules.is_question(t.content)]
    allowed = set(rewrite_rules.content_words(question)).union(*(rewrite_rules.content_words(s) for s in sources))
    foreign = sorted(written - allowed)
    if foreign:
        return f"adds word(s) no earlier question or answer holds: {', '.join(foreign[:5])}"
    if len(written) - len(set(rewrite_rules.content_words(question))) > MAX_ADDED_WORDS:
        return f"adds more than {MAX_ADDED_WORDS} words"
    return None
