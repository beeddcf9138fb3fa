"""The output guard's step: the answer checked sentence by sentence as the model writes it
(``serving.answering.streaming_guard.SentenceGuard``), the model stopped and its text withdrawn when a sentence
fails, then the refusal or the fallback generator's answer."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace

from safety.guards import GROUNDEDNESS_CHECK, Guard, GuardAction, GuardVerdict
from serving.answering.fallback import ChainDelta, ChainResult
from serving.answering.stages import GenerateEvent, Turn, refusal
from serving.answering.streaming_guard import SentenceGuard, SplitGuard
from serving.contracts.answer import Answer
from serving.contracts.generation import (
    Fallback,
    Generation,
    GenerationRequest,
    GeneratorError,
    Replaced,
    ReplacedCode,
    StreamDelta,
)
from serving.contracts.generation import Generator as TextGenerator


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
        if sentences.verdict is not None:
            turn.verdicts.citation_check = sentences.citations
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
        checked = SentenceGuard(self._guard, [h.text for h in turn.hits], (), self._fallback.name, turn.retrieval_query)
        generation = yield from self._stream_fallback(turn, checked, request)
        if isinstance(generation, GeneratorError):
            return generation
        assert checked.verdict is not None
        turn.verdicts.fallback_output = checked.verdict
        turn.verdicts.citation_check = checked.citations  # the answer shown is the fallback's
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
        return SentenceGuard(self._guard, [h.text for h in turn.hits], stop_on, generator, turn.retrieval_query)

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
