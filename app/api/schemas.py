"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from retrieval.index import MetadataValue, SearchMode

COLLECTION_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


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


class OpenAIMessage(BaseModel):
    # Lenient like OpenAI's own API: unknown fields (name, tool_calls, ...) are accepted and ignored.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body; sampling parameters are accepted, the prompt version decides them.
    ``collection`` and ``top_k`` are ragops extensions (the SDK's ``extra_body``)."""

    model: str
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=100)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1)
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)
    top_k: int | None = Field(None, ge=1, le=20)
    user: str | None = Field(None, max_length=256)
