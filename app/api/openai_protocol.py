"""The OpenAI-compatible shapes of ``/v1/chat/completions`` and ``/v1/models``, apart from the serving logic
(as in vLLM's ``entrypoints/openai/protocol.py``). ragops' extensions are marked as such: ``collection`` and
``top_k`` in the request (the SDK's ``extra_body``), ``citations``, ``ragops`` and ``generated_by`` in the
response (OpenAI clients keep unknown fields: the SDK's ``model_extra``). Clients that can send no extra field
pick a collection by model: ``ragops/COLLECTION``."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from app.api.schemas import COLLECTION_PATTERN, GENERATED_BY, GeneratedBy
from safety.groundedness import Groundedness
from safety.guards import is_none
from serving.contracts.answer import Answer, Citation, GuardVerdicts, Outcome, PromptInfo, QueryRewrite
from serving.contracts.generation import Fallback, Usage

MODEL_ID = "ragops"  # the caller's default collection, or the one the ``collection`` field names
COLLECTION_MODEL_PREFIX = f"{MODEL_ID}/"  # ``ragops/COLLECTION``: for clients that can only pick a model


def collection_model_id(collection: str) -> str:
    """The model id that selects ``collection``, as ``/v1/models`` lists it."""
    return f"{COLLECTION_MODEL_PREFIX}{collection}"


RAGOPS_EXTENSION = "ragops extension (not in OpenAI's API)."


class OpenAIMessage(BaseModel):
    # Lenient like OpenAI's own API: unknown fields (name, tool_calls, ...) are accepted and ignored.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body; sampling parameters are accepted, the prompt version decides them."""

    model: str = Field(
        description=f"{MODEL_ID!r} (the ``collection`` field's collection, else the default one; while the default "
        "is empty, the caller's only collection with documents), or "
        f"'{COLLECTION_MODEL_PREFIX}COLLECTION' for one collection of the caller's tenant (see /v1/models)."
    )
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=100)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1)
    user: str | None = Field(None, max_length=256)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN, description=RAGOPS_EXTENSION)
    top_k: int | None = Field(None, ge=1, le=20, description=RAGOPS_EXTENSION)
    conversation_id: str | None = Field(
        None, max_length=64, description=f"{RAGOPS_EXTENSION} A conversation from POST /v1/conversations: send only "
        "the new user message, the server supplies the earlier turns and keeps this one."
    )  # fmt: skip


class RagopsDetails(BaseModel):
    """How the answer was made (ragops extension)."""

    outcome: Outcome
    generator: str | None
    fallback: Fallback | None
    cached: bool
    prompt: PromptInfo
    timings_ms: dict[str, float]
    abstained: bool
    refused: bool
    guards: GuardVerdicts | None
    groundedness: Groundedness | None
    cost_usd: float
    rewrite: QueryRewrite | None = Field(None, exclude_if=is_none)
    conversation_id: str | None = Field(None, exclude_if=is_none)
    conversation_note: str | None = Field(None, exclude_if=is_none)

    @classmethod
    def of(cls, answer: Answer, conversation_id: str | None = None, conversation_note: str | None = None) -> Self:
        conversation = {"conversation_id": conversation_id, "conversation_note": conversation_note}
        fields = {name: getattr(answer, name) for name in cls.model_fields if name not in conversation}
        return cls(**fields, **conversation)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = MODEL_ID
    choices: list[Choice]
    usage: Usage
    citations: list[Citation] = Field(description=RAGOPS_EXTENSION + " ``[N]`` in the answer is citations[N-1].")
    ragops: RagopsDetails = Field(description=RAGOPS_EXTENSION)
    generated_by: GeneratedBy = Field(description=f"{RAGOPS_EXTENSION} {GENERATED_BY}")


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=is_none)
    content: str | None = Field(None, exclude_if=is_none)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop"] | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed chunk; the last one (``finish_reason: "stop"``) carries usage, citations, ragops and
    generated_by. Content deltas are text the output guard passed, sentence by sentence; joined, they are the
    answer's text (after a replacement: the text sent before it, a notice, then the replacement's text)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str = MODEL_ID
    choices: list[ChunkChoice]
    # usage, citations, ragops and generated_by ride in the final chunk only; the others leave them out.
    usage: Usage | None = Field(None, exclude_if=is_none)
    citations: list[Citation] | None = Field(None, exclude_if=is_none, description=RAGOPS_EXTENSION)
    ragops: RagopsDetails | None = Field(None, exclude_if=is_none, description=RAGOPS_EXTENSION)
    generated_by: GeneratedBy | None = Field(None, exclude_if=is_none, description=f"{RAGOPS_EXTENSION} {GENERATED_BY}")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "ragops"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
