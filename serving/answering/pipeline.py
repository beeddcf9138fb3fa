"""The answering pipeline: the steps of ``serving.answering.stages`` wired in order, read top to bottom in ``_run``.

Every answer says how the request ended (``outcome``), which generator produced it, whether a fallback was used
and why, whether it came from the cache, which prompt version made it, what the guards found, how well the
passages support it, and what it cost (``AnswerPricing``, applied to every final answer before the observer).

Streaming: the output guard checks the answer sentence by sentence as the model writes it, so every delta is
guarded text (redacted, and checked for groundedness and the rest of the policy) before a client sees it. When a
sentence fails, the model is stopped and a ``Replaced`` event says the text so far is withdrawn; the fallback's
answer (or the refusal) follows. The final ``Answer``'s text is exactly the deltas after the last ``Replaced``
event joined."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace

from prompts.loader import Prompt
from serving.answering.abstention import Abstain
from serving.answering.fallback import ChainDelta
from serving.answering.output_stage import OutputGuard
from serving.answering.stages import (
    CachedAnswers,
    Cite,
    ComposePrompt,
    Generate,
    GenerateEvent,
    InputGuard,
    Retrieve,
    RewriteQuery,
    ScreenPassages,
    Turn,
)
from serving.contracts.answer import Answer, AnswerRequest, CutOutcome, StreamProgress
from serving.contracts.generation import GenerationRequest, GeneratorError, Replaced, Usage
from serving.governance.usage import AnswerPricing
from serving.infra.clock import elapsed_ms

__all__ = ["Answer", "AnswerRequest", "RagPipeline", "Replaced", "Stages"]

CHARS_PER_TOKEN = 4  # the usual English average: a cut stream's prompt tokens, estimated


@dataclass(frozen=True, kw_only=True)
class Stages:
    """The steps, in the order they run (``RagPipeline`` wires them; the composition root builds them)."""

    input_guard: InputGuard
    rewrite: RewriteQuery
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


class RagPipeline:
    def __init__(
        self,
        stages: Stages,
        prompts: Callable[[str | None], Prompt],
        observer: Callable[[AnswerRequest, Answer], None] | None = None,
        pricing: AnswerPricing | None = None,
    ) -> None:
        self.stages = stages
        self._prompts = prompts  # which prompt version answers a canary subject (stable or canary)
        self._observer = observer  # sees every final answer (metrics, tracing)
        self._pricing = pricing or AnswerPricing({})  # every final answer's cost; without prices, 0

    def prompt_for(self, user: str | None = None) -> Prompt:
        """The prompt version that answers this user."""
        return self._prompts(user)

    def answer(self, request: AnswerRequest, progress: StreamProgress | None = None) -> Answer:
        for event in self.stream(request, progress):
            if isinstance(event, Answer):
                return event
        raise AssertionError("every stream ends with its answer")

    def stream(
        self, request: AnswerRequest, progress: StreamProgress | None = None
    ) -> Iterator[str | Replaced | Answer]:
        """Text deltas, then the complete ``Answer`` (answers no generator streamed come as one delta). A
        ``Replaced`` event withdraws the deltas before it; the ones after it make the answer. ``progress`` is kept
        up to date on the way, for ``cut``."""
        progress = progress or StreamProgress()
        turn = Turn.start(request, self._prompts(request.canary_subject))
        progress.prompt = turn.prompt_info
        for event in self._run(turn, progress):
            if isinstance(event, Answer):
                # Stamped here, once: a cached answer is a new answer with an id of its own.
                event = self._pricing.price(event.model_copy(update={"id": request.id}), request.scope.tenant)
                if self._observer is not None:
                    # What the guards let through: metrics, traces and the sampled judge never see redacted PII.
                    self._observer(replace(request, question=turn.question, history=turn.history), event)
            elif isinstance(event, Replaced):
                progress.shown.clear()
            else:
                progress.shown.append(event)
            yield event

    def cut(self, request: AnswerRequest, progress: StreamProgress, outcome: CutOutcome) -> Answer:
        """The answer of a stream that ended before its final answer (its client left, the server shut down, it
        failed): the text shown until then, and what was generated until then, priced. The generator's own count
        comes only with its last event, so the usage is estimated: the prompt at ``CHARS_PER_TOKEN`` characters a
        token (once the generator was asked), one token per streamed piece. Not observed: no user saw an answer."""
        started = progress.generation_started
        usage, timings = Usage(), {}
        if started is not None:
            prompt_tokens = math.ceil(progress.prompt_chars / CHARS_PER_TOKEN)
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=progress.deltas)
            timings["generate"] = elapsed_ms(started)
        prompt = progress.prompt or Turn.start(request, self._prompts(request.canary_subject)).prompt_info
        answer = Answer(id=request.id, answer="".join(progress.shown), outcome=outcome, generator=progress.generator,
                        prompt=prompt, usage=usage, timings_ms=timings)  # fmt: skip
        return self._pricing.price(answer, request.scope.tenant)

    def _run(self, turn: Turn, progress: StreamProgress) -> Iterator[str | Replaced | Answer]:
        s = self.stages
        early = s.input_guard.run(turn)
        if early is None:
            s.rewrite.run(turn)
            early = s.cache.lookup(turn)
        if early is not None:
            yield from whole(early)
            return
        s.retrieve.run(turn)
        s.screen.run(turn)
        abstention = s.abstain.run(turn)
        if abstention is not None:
            s.cache.store(turn, abstention)
            yield from whole(abstention)
            return
        generation_request = s.compose.run(turn)
        generated = _metered(progress, generation_request, s.generate.stream(turn, generation_request))
        guarded = yield from s.output_guard.stream(turn, generated, generation_request)
        if isinstance(guarded, GeneratorError):
            yield from whole(s.generate.failed(turn, guarded))
            return
        if isinstance(guarded, Answer):  # the output guard refused
            yield from whole(guarded)
            return
        answer = s.cite.run(turn, guarded)
        if answer.fallback is None:  # a fallback answer is not worth keeping
            s.cache.store(turn, answer)
        yield answer


def _metered(
    progress: StreamProgress, request: GenerationRequest, events: Generator[GenerateEvent, None, None]
) -> Generator[GenerateEvent, None, None]:
    """The generator's events, counted into ``progress`` as they come; closing this closes the generator."""
    progress.generation_started = time.perf_counter()
    progress.prompt_chars = sum(len(message["content"]) for message in request.messages)
    try:
        for event in events:
            if isinstance(event, ChainDelta):
                progress.deltas += 1
                progress.generator = event.generator
            yield event
    finally:
        events.close()
