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

from collections.abc import Callable, Iterator
from dataclasses import replace

from prompts.loader import Prompt
from serving.answering.stages import Stages, Turn, whole
from serving.contracts.answer import Answer, AnswerRequest
from serving.contracts.generation import GeneratorError, Replaced
from serving.governance.usage import AnswerPricing

__all__ = ["Answer", "AnswerRequest", "RagPipeline", "Replaced", "Stages"]


class RagPipeline:
    def __init__(
        self,
        stages: Stages,
        prompts: Callable[[str | None], Prompt],
        observer: Callable[[AnswerRequest, Answer], None] | None = None,
        pricing: AnswerPricing | None = None,
    ) -> None:
        self.stages = stages
        self._prompts = prompts  # which prompt version answers a user (stable or canary)
        self._observer = observer  # sees every final answer (metrics, tracing)
        self._pricing = pricing or AnswerPricing({})  # every final answer's cost; without prices, 0

    def prompt_for(self, user: str | None = None) -> Prompt:
        """The prompt version that answers this user."""
        return self._prompts(user)

    def answer(self, request: AnswerRequest) -> Answer:
        for event in self.stream(request):
            if isinstance(event, Answer):
                return event
        raise AssertionError("every stream ends with its answer")

    def stream(self, request: AnswerRequest) -> Iterator[str | Replaced | Answer]:
        """Text deltas, then the complete ``Answer`` (answers no generator streamed come as one delta). A
        ``Replaced`` event withdraws the deltas before it; the ones after it make the answer."""
        turn = Turn.start(request, self._prompts(request.user))
        for event in self._run(turn):
            if isinstance(event, Answer):
                # Stamped here, once: a cached answer is a new answer with an id of its own.
                event = self._pricing.price(event.model_copy(update={"id": request.id}), request.scope.tenant)
                if self._observer is not None:
                    # What the guards let through: metrics, traces and the sampled judge never see redacted PII.
                    self._observer(replace(request, question=turn.question, history=turn.history), event)
            yield event

    def _run(self, turn: Turn) -> Iterator[str | Replaced | Answer]:
        s = self.stages
        early = s.input_guard.run(turn) or s.cache.lookup(turn)
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
        generated = s.generate.stream(turn, generation_request)
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
