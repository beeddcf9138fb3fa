"""Request and response bodies of ragops' own HTTP API (the OpenAI-compatible shapes are in
``app.api.openai_protocol``; the answer itself is ``serving.contracts.answer.Answer``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema

from app.api.errors import ApiError
from retrieval.index import SCOPE_NAME_PATTERN, SearchMode
from retrieval.validation import (
    INT64_MAX,
    INT64_MIN,
    MAX_DOC_ID_CHARS,
    MAX_FILTER_VALUES,
    MAX_SOURCE_CHARS,
    MAX_TITLE_CHARS,
    METADATA_KEY_RULE,
    InvalidFieldError,
)
from safety.guards import is_none
from serving.answering.extractive import ExtractiveGenerator
from serving.contracts.answer import Answer, PromptInfo
from serving.contracts.generation import Fallback, Replaced

COLLECTION_PATTERN = SCOPE_NAME_PATTERN

# Metadata and filters are checked by retrieval.validation's rules (one definition, shared with the .jsonl
# loader), which name the exact field at fault; pydantic only sees JSON objects here, and the schema below
# documents what those rules accept.
_FILTER_SCALAR: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}, {"type": "boolean"}]
}
_FILTER_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            _FILTER_SCALAR,
            {"type": "array", "items": _FILTER_SCALAR, "minItems": 1, "maxItems": MAX_FILTER_VALUES},
        ]
    },
}


def invalid_field(prefix: str, exc: InvalidFieldError) -> ApiError:
    """A broken validation rule as the 400 that names the request field, e.g. ``documents.2.metadata.tags``."""
    param = f"{prefix}.{exc.field}"
    return ApiError(400, f"{param}: {exc.reason}", param=param, code="invalid_value")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchFilterBody(StrictModel):
    doc_ids: list[str] = Field(default_factory=list, max_length=MAX_FILTER_VALUES, description="Only these documents.")
    metadata: Annotated[dict[str, Any], WithJsonSchema(_FILTER_METADATA_SCHEMA)] = Field(
        default_factory=dict,
        description="Top-level document metadata fields: a string, 64-bit integer or boolean, or a list of "
        f"accepted values. Keys: {METADATA_KEY_RULE}.",
    )


class SearchRequest(StrictModel):
    query: str = Field(min_length=1, description="The question or keywords.")
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)
    top_k: int | None = Field(None, ge=1, le=100)
    mode: SearchMode | None = None
    filter: SearchFilterBody | None = None


class HitBody(BaseModel):
    doc_id: str
    chunk_id: str
    score: float
    text: str
    title: str | None
    source: str | None
    metadata: dict[str, Any]
    headings: list[str]
    chunk_index: int


class SearchResponse(BaseModel):
    hits: list[HitBody]
    collection: str
    mode: SearchMode
    timings_ms: dict[str, float]


class DocumentBody(StrictModel):
    id: str = Field(
        min_length=1, max_length=MAX_DOC_ID_CHARS, description="Not blank; no control characters (newline included)."
    )
    text: str = Field(
        min_length=1,
        description="At most max_document_chars characters; no control characters but tab, newline and CR.",
    )
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)
    source: str | None = Field(None, max_length=MAX_SOURCE_CHARS)
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="A JSON object of at most max_metadata_keys keys (all levels), max_metadata_depth levels and "
        f"max_metadata_bytes as JSON. Keys: {METADATA_KEY_RULE}. Values: strings, 64-bit integers, finite "
        "numbers, booleans, null, lists and objects (no NaN or Infinity).",
    )


class IngestRequest(StrictModel):
    documents: list[DocumentBody] = Field(min_length=1)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)


# A conversation's history, on both chat routes: the input guard checks every turn, so its size is bounded.
MAX_HISTORY_TURNS = 50
MAX_TURN_CHARS = 20_000


class ChatTurn(StrictModel):
    """A turn as the API takes it (bounded, strict); the pipeline carries it on as a ``ChatMessage``."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TURN_CHARS)


class ChatRequest(StrictModel):
    question: str = Field(min_length=1)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)
    top_k: int | None = Field(None, ge=1, le=20)
    stream: bool = False
    history: list[ChatTurn] = Field(default_factory=list, max_length=MAX_HISTORY_TURNS)
    user: str | None = Field(None, max_length=256, description="User or session id: keeps a user on one prompt.")
    conversation_id: str | None = Field(
        None,
        max_length=64,
        description="A conversation from POST /v1/conversations: the server supplies its earlier turns (send no "
        "history) and keeps this one.",
    )


class ChatDelta(BaseModel):
    """A piece of the answer's text: a sentence that passed the output guard (redacted)."""

    type: Literal["delta"] = "delta"
    text: str


class GeneratedBy(BaseModel):
    """Who wrote an answer's text, machine-readable (EU AI Act art. 50: text an AI system generates is marked as
    such). Drawn from the answer alone, so it is as true as the answer's own fields: a cached answer repeats the
    one it comes from (``cached``), an extractive fallback names ``extractive`` and why (``fallback``)."""

    model_config = ConfigDict(frozen=True)

    ai_generated: bool = Field(
        description="True when a generator wrote the text: a language model, or the extractive generator (the "
        "passage sentences an embedding model ranks closest to the question, quoted). False when the text is "
        "ragops' fixed wording: a refusal, an abstention by the similarity rule, an outage in which every "
        "generator failed."
    )
    generator: str | None = Field(description="The backend that wrote the text; null when none did.")
    model: str | None = Field(description="The model the generator ran (``extractive`` for the extractive one).")
    prompt: PromptInfo | None = Field(
        description="The prompt version the model was given; null when no model read a prompt (the extractive "
        "generator reads none; fixed wording neither)."
    )
    fallback: Fallback | None = Field(
        description="Why the configured generator did not write the text (it failed, or the output guard "
        "withdrew its answer), or, with no generator, why none could; null when it did."
    )
    cached: bool = Field(
        description="The answer repeats an earlier one from the answer cache: the fields above are that answer's."
    )

    @classmethod
    def of(cls, answer: Answer) -> GeneratedBy:
        prompted = answer.generator is not None and answer.generator != ExtractiveGenerator.name
        return cls(
            ai_generated=answer.generator is not None,
            generator=answer.generator,
            model=answer.model,
            prompt=answer.prompt if prompted else None,
            fallback=answer.fallback,
            cached=answer.cached,
        )


GENERATED_BY = "Who wrote the answer: an AI system or ragops' fixed wording, which model and prompt, fallback, cache."


class ChatAnswer(Answer):
    """``POST /v1/chat``'s answer: the pipeline's ``Answer`` and ``generated_by``, which marks it as AI-generated
    (or not) in one place."""

    generated_by: GeneratedBy = Field(description=GENERATED_BY)
    retrieval_query: str | None = Field(
        None, description="What retrieval searched with when the question came with earlier turns: the question "
        "made standalone (``rewrite`` says how), or the question itself; null without earlier turns."
    )  # fmt: skip
    conversation_id: str | None = Field(None, exclude_if=is_none, description="The conversation this turn is in.")
    conversation_note: str | None = Field(
        None, exclude_if=is_none, description="Why the earlier turns were not used, or this turn not kept."
    )

    @classmethod
    def of(cls, answer: Answer, conversation_id: str | None = None, conversation_note: str | None = None) -> Self:
        query = answer.rewrite.query if answer.rewrite is not None else None
        return cls(**dict(answer), generated_by=GeneratedBy.of(answer), retrieval_query=query,
                   conversation_id=conversation_id, conversation_note=conversation_note)  # fmt: skip


class ChatAnswerEvent(ChatAnswer):
    """The last event of a stream: the whole answer, guarded (clients show this one)."""

    type: Literal["answer"] = "answer"


class ChatReplacedEvent(Replaced):
    """The text streamed so far is withdrawn (the output guard stopped the answer, or its generator failed
    mid-answer): clear it. The deltas that follow are the replacement (the fallback's answer or a refusal)."""

    type: Literal["replaced"] = "replaced"


class ChatStreamEvent(RootModel[ChatDelta | ChatReplacedEvent | ChatAnswerEvent]):
    """One ``data:`` line of ``POST /v1/chat`` with ``stream``: deltas (every one checked by the output guard),
    maybe a ``replaced`` event and the replacement's deltas, then the answer, then ``[DONE]``. The answer's text
    is the deltas after the last ``replaced`` event, joined."""
