"""Request and response bodies of ragops' own HTTP API (the OpenAI-compatible shapes are in
``app.api.openai_protocol``; the answer itself is ``serving.answer.Answer``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from retrieval.index import SCOPE_NAME_PATTERN, MetadataValue, SearchMode
from serving.answer import Answer

COLLECTION_PATTERN = SCOPE_NAME_PATTERN


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchFilterBody(StrictModel):
    doc_ids: list[str] = Field(default_factory=list, max_length=1000, description="Only these documents.")
    metadata: dict[str, MetadataValue | list[MetadataValue]] = Field(
        default_factory=dict, description="Document metadata fields: a value, or a list of accepted values."
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
    id: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1)
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(StrictModel):
    documents: list[DocumentBody] = Field(min_length=1)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)


class ChatTurn(StrictModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class ChatRequest(StrictModel):
    question: str = Field(min_length=1)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)
    top_k: int | None = Field(None, ge=1, le=20)
    stream: bool = False
    history: list[ChatTurn] = Field(default_factory=list, max_length=50)
    user: str | None = Field(None, max_length=256, description="User or session id: keeps a user on one prompt.")


class ChatDelta(BaseModel):
    """A piece of the answer's text, as the generator writes it."""

    type: Literal["delta"] = "delta"
    text: str


class ChatAnswerEvent(Answer):
    """The last event of a stream: the whole answer, guarded (clients show this one)."""

    type: Literal["answer"] = "answer"


class ChatStreamEvent(RootModel[ChatDelta | ChatAnswerEvent]):
    """One ``data:`` line of ``POST /v1/chat`` with ``stream``: deltas, then the answer, then ``[DONE]``."""
