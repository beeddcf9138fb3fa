"""One chat interface over every generator backend: messages in; text, usage and finish reason out; tokens
streamed. The request also carries the question and passages, which the extractive backend works from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, computed_field

from prompts.answer_format import answer_grammar
from prompts.citations import NOT_IN_DOCUMENTS as NOT_IN_DOCUMENTS  # re-exported: its users import it from here
from prompts.loader import ModelParams, PromptPassage

# "crashed": the backend's process died or is restarting (the llama.cpp worker); the breaker opens at once.
FailureKind = Literal["timeout", "connection", "status", "empty", "malformed", "circuit_open", "crashed", "error"]


class GeneratorError(Exception):
    """A backend failed in a way the fallback chain understands."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]
    question: str
    passages: list[PromptPassage]
    params: ModelParams = field(default_factory=ModelParams)

    @property
    def grammar(self) -> str | None:
        """The grammar the prompt's answer format puts on decoding, over the passages shown; ``None``: free text.
        Model backends honour it where their engine can; the extractive generator cites by construction."""
        return answer_grammar(self.params.answer_format, (p.index for p in self.passages))


class Usage(BaseModel):
    """Tokens of one answer, as OpenAI's API reports them."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Generation:
    text: str
    usage: Usage
    finish_reason: str
    model: str


@dataclass(frozen=True)
class StreamDelta:
    """A piece of text; the last event of a stream is the whole ``Generation`` instead."""

    text: str


class Generator(Protocol):
    @property
    def name(self) -> str: ...

    def generate(self, request: GenerationRequest) -> Generation: ...

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        """Deltas, then one ``Generation`` with the full text, usage and finish reason."""
        ...


def check_output(generation: Generation, backend: str) -> Generation:
    """An empty answer is a failure the chain falls back on, not something to show a user."""
    if not generation.text.strip():
        raise GeneratorError("empty", f"{backend} returned an empty answer")
    return generation


class Fallback(BaseModel):
    """Why the answer did not come from the first generator: ``{"from", "reason"}``."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from", description="The generator that was passed over.")
    reason: str


# Why a streamed answer was withdrawn, for clients to say in their own words: the output guard found it not
# supported by the passages ("ungrounded") or broke another of its rules ("policy"), or its generator failed or
# timed out part-way ("generator_failed").
ReplacedCode = Literal["ungrounded", "policy", "generator_failed"]


class Replaced(Fallback):
    """An event of an answer's stream: the text streamed so far is withdrawn (a generator failed mid-answer, or
    the output guard stopped it); what follows replaces it."""

    code: ReplacedCode = Field(
        description="Why, machine-readable: ``ungrounded`` (the output guard found it unsupported by the "
        "passages), ``policy`` (another output guard rule), ``generator_failed`` (it failed or timed out); "
        "``reason`` says it in the operator's terms."
    )
