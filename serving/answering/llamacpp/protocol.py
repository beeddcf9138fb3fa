"""What the API process and its llama.cpp worker say to each other: one JSON object per line, over the worker's
stdin (jobs, cancellations) and a pipe the worker keeps for itself (events). Jobs carry an id; every event names
the job it belongs to, so a cancelled job's late events are told apart from the next job's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from serving.answering.llamacpp.build import LlamaBuild
from serving.contracts.generation import GenerationRequest


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class Job(_Message):
    """One chat completion: the request's messages, sampling parameters and answer grammar."""

    kind: Literal["job"] = "job"
    id: int
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    stop: list[str]
    seed: int | None
    grammar: str | None

    @classmethod
    def of(cls, job_id: int, request: GenerationRequest) -> Job:
        p = request.params
        return cls(id=job_id, messages=request.messages, temperature=p.temperature, max_tokens=p.max_tokens,
                   stop=list(p.stop), seed=p.seed, grammar=request.grammar)  # fmt: skip


class Cancel(_Message):
    """Stop the job at its next token (its consumer went away), or skip it if it has not started."""

    kind: Literal["cancel"] = "cancel"
    id: int


class Ready(_Message):
    """The model is loaded and has written a few tokens: the worker takes jobs."""

    kind: Literal["ready"] = "ready"
    model: str
    build: LlamaBuild
    decode_tokens_per_s: float = Field(description="Measured on the warm-up's tokens, after the first.")


class Unusable(_Message):
    """The worker cannot serve (the model file is missing or unreadable, the warm-up failed) and exits."""

    kind: Literal["unusable"] = "unusable"
    reason: str


class Started(_Message):
    kind: Literal["started"] = "started"
    id: int


class Delta(_Message):
    kind: Literal["delta"] = "delta"
    id: int
    text: str


class Done(_Message):
    kind: Literal["done"] = "done"
    id: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    worker_ms: float = Field(0.0, description="The job's time inside the worker, from its start to this event.")
    prompt_ms: float = Field(0.0, description="From the job's start to its first token: prompt evaluation, mostly.")
    prompt_tokens_reused: int = Field(
        0, description="Prompt tokens (chat template applied) the KV cache held from earlier jobs: not evaluated."
    )


class Failed(_Message):
    """The job failed inside the worker (the worker lives on): past its deadline, or llama.cpp refused it."""

    kind: Literal["failed"] = "failed"
    id: int
    error: Literal["timeout", "error"]
    message: str


ToWorker = Annotated[Job | Cancel, Field(discriminator="kind")]
FromWorker = Annotated[Ready | Unusable | Started | Delta | Done | Failed, Field(discriminator="kind")]
TO_WORKER: TypeAdapter[Job | Cancel] = TypeAdapter(ToWorker)
FROM_WORKER: TypeAdapter[Ready | Unusable | Started | Delta | Done | Failed] = TypeAdapter(FromWorker)


def encode(message: _Message) -> bytes:
    return message.model_dump_json().encode() + b"\n"
