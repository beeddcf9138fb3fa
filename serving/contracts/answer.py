"""What the answering pipeline returns: one ``Answer`` per request, typed all the way out (the HTTP API, its
SSE events, the OpenAI-compatible endpoint, metrics, tracing and the eval runner all read these fields).

``outcome`` says how the request ended; ``generator`` is the backend that wrote the text, or null when none did
(a refusal, an abstention, or an outage in which every generator failed)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prompts.citations import CITATION, citation_numbers, cited_numbers
from prompts.messages import ChatMessage as ChatMessage  # re-exported: the type of a request's history
from retrieval.documents import Hit
from retrieval.index import Scope
from safety.groundedness import Groundedness
from safety.guards import ContextVerdict, Fired, GuardVerdict, is_none
from safety.pii import redact
from serving.contracts.generation import Fallback, Usage

Outcome = Literal["answered", "cached", "abstained", "refused", "failed"]
SPACE_RUN = re.compile(r"[ \t]{2,}")  # what a dropped citation marker leaves: collapsed to one space


class Citation(BaseModel):
    """A passage shown to the generator; ``[index]`` in the answer refers to it, ``cited`` says it was."""

    model_config = ConfigDict(frozen=True)

    index: int
    doc_id: str
    chunk_id: str
    title: str | None
    source: str | None
    text: str
    score: float
    cited: bool


class PromptInfo(BaseModel):
    """The prompt version that made the answer."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    hash: str


class GuardVerdicts(BaseModel):
    """Every guard's verdict on one request; a guard that did not run is left out."""

    input: GuardVerdict | None = Field(None, exclude_if=is_none)
    context: ContextVerdict | None = Field(None, exclude_if=is_none)
    output: GuardVerdict | None = Field(None, exclude_if=is_none)
    fallback_output: GuardVerdict | None = Field(
        None, exclude_if=is_none, description="The output guard on the fallback's answer."
    )

    def fired(self) -> list[tuple[str, Fired]]:
        """(guard, validator that fired) over every guard that ran."""
        verdicts = {"input": self.input, "context": self.context, "output": self.output,
                    "fallback_output": self.fallback_output}  # fmt: skip
        return [(guard, f) for guard, verdict in verdicts.items() if verdict is not None for f in verdict.fired]


class Answer(BaseModel):
    """One answer: its text and citations, how it ended and how it was made."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(
        "", description="The server's id of this answer (POST /v1/feedback refers to it); made per request."
    )
    answer: str
    outcome: Outcome
    citations: list[Citation] = Field(default_factory=list)
    generator: str | None = Field(None, description="The backend that wrote the answer; null when none did.")
    model: str | None = Field(None, description="What the generator ran.")
    fallback: Fallback | None = Field(None, description="Why the first generator did not answer, if it did not.")
    cached: bool = False
    prompt: PromptInfo
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = Field(0.0, description="What generating the answer cost, from the price table (0: unpriced).")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    refused: bool = Field(False, description="A guard blocked the question or the answer.")
    abstained: bool = Field(False, description="The documents do not hold the answer (never set by an outage).")
    relevance: float | None = Field(None, description="Best cosine between the question and a retrieved passage.")
    guards: GuardVerdicts | None = None
    groundedness: Groundedness | None = None


ANSWER_ID = re.compile(r"^(ans_|chatcmpl-)[0-9a-f]{32}$")


def new_answer_id(prefix: str = "ans_") -> str:
    """A fresh answer id: ``ans_`` for /v1/chat, ``chatcmpl-`` for the OpenAI endpoint (its completion id)."""
    return f"{prefix}{uuid.uuid4().hex}"


@dataclass(frozen=True, kw_only=True)
class AnswerRequest:
    question: str
    scope: Scope
    top_k: int = 4
    history: list[ChatMessage] = field(default_factory=list)
    user: str | None = None  # picks the prompt when a canary takes a share of users (sticky per user)
    id: str = field(default_factory=new_answer_id)  # the answer's id: made by the server, never by the client


def drop_invalid_citations(text: str, passages: int) -> str:
    """Citation markers that point at one of ``passages`` retrieved passages kept, the others dropped (with the
    double space a dropped marker leaves). Works on any part of an answer that does not cut a marker in two,
    so a stream can apply it sentence by sentence and match the whole answer's."""

    def keep(match: re.Match[str]) -> str:
        kept = [n for n in citation_numbers(match.group(1)) if 1 <= n <= passages]
        return "[" + ", ".join(map(str, kept)) + "]" if kept else ""

    return SPACE_RUN.sub(" ", CITATION.sub(keep, text))


def resolve_citations(text: str, hits: list[Hit], redact_retrieved: bool = False) -> tuple[str, list[Citation]]:
    """Keep citation markers that point at a retrieved passage, drop the others; list every passage shown, its
    text and title with personal data redacted when ``redact_retrieved`` (as the answer's own text is)."""
    cleaned = drop_invalid_citations(text, len(hits)).strip()
    cited = set(cited_numbers(cleaned))
    shown = redact if redact_retrieved else _unchanged
    citations = [
        Citation(
            index=i, doc_id=h.doc_id, chunk_id=h.chunk_id, title=None if h.title is None else shown(h.title),
            source=h.source, text=shown(h.text), score=h.score, cited=i in cited,
        )
        for i, h in enumerate(hits, 1)
    ]  # fmt: skip
    return cleaned, citations


def _unchanged(text: str) -> str:
    return text
