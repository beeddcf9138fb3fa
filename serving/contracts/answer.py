"""What the answering pipeline returns: one ``Answer`` per request, typed all the way out (the HTTP API, its
SSE events, the OpenAI-compatible endpoint, metrics, tracing and the eval runner all read these fields).

``outcome`` says how the request ended; ``generator`` is the backend that wrote the text, or null when none did
(a refusal, an abstention, or an outage in which every generator failed)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prompts.citations import CITATION, citation_numbers, cited_numbers
from prompts.messages import ChatMessage as ChatMessage  # re-exported: the type of a request's history
from retrieval.documents import Hit
from retrieval.index import Scope
from safety.groundedness import Groundedness
from safety.guards import ContextVerdict, Fired, GuardVerdict, is_none
from serving.contracts.generation import Fallback, Usage

# client_closed / cut_by_shutdown: a stream that ended before its answer (the client left; the server shut down),
# charged for what was generated until then.
Outcome = Literal["answered", "cached", "abstained", "refused", "failed", "client_closed", "cut_by_shutdown"]
CutOutcome = Literal["client_closed", "cut_by_shutdown", "failed"]
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


class QueryRewrite(BaseModel):
    """How retrieval's query was made from the question: in the answer, its trace and the logs."""

    model_config = ConfigDict(frozen=True)

    query: str = Field(description="What retrieval searched with: the question, or its standalone rewrite.")
    rewritten: bool = Field(description="The query differs from the question.")
    rewriter: str = Field(description="Which rewriter decided: rules, model, or none.")
    reason: str = Field(description="Why: self-contained, what a pronoun or ellipsis was resolved to, a fallback.")
    ms: float = 0.0


class CitationCheck(BaseModel):
    """The output guard's check of the answer's cited sentences, each scored against the passage it cites alone:
    counts only, never the sentences (a withdrawn one must not come back through it). A checked sentence that no
    single passage supports is withdrawn: the output verdict's groundedness finding says so."""

    model_config = ConfigDict(frozen=True)

    checked: int = Field(0, description="Cited sentences scored against the passage they cite.")
    moved: int = Field(0, description="Of those, sentences whose marker was moved to the passage that supports them.")


class GuardVerdicts(BaseModel):
    """Every guard's verdict on one request; a guard that did not run is left out."""

    input: GuardVerdict | None = Field(None, exclude_if=is_none)
    context: ContextVerdict | None = Field(None, exclude_if=is_none)
    output: GuardVerdict | None = Field(None, exclude_if=is_none)
    fallback_output: GuardVerdict | None = Field(
        None, exclude_if=is_none, description="The output guard on the fallback's answer."
    )
    citation_check: CitationCheck | None = Field(
        None, exclude_if=is_none, description="The cited sentences of the answer shown, checked against their passage."
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
    rewrite: QueryRewrite | None = Field(
        None,
        exclude_if=is_none,
        description="How retrieval's query was made from a question that came with earlier turns (absent without any).",
    )
    guards: GuardVerdicts | None = None
    groundedness: Groundedness | None = None
    citations_moved: int = Field(
        0, description="Sentences whose citation marker the output guard moved to the passage that supports them."
    )


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
    user: str | None = None  # the client's name for its end user (``user`` of the request body)
    # Who the canary splits and counts: made by the server from the caller's key and ``user`` (``canary_subject``),
    # so a client cannot pick its arm by naming a user another key was given. None: the stable prompt.
    canary_subject: str | None = None
    id: str = field(default_factory=new_answer_id)  # the answer's id: made by the server, never by the client


def canary_subject(tenant: str, key_id: str, user: str | None) -> str | None:
    """The canary's unit for a request: a hash of the tenant, the caller's key and the ``user`` it names (None
    without a user: anonymous requests get the stable prompt). The same user under another key is another
    subject; what is kept of it names nobody."""
    if user is None:
        return None
    return hashlib.sha256("\x1f".join(("ragops-canary", tenant, key_id, user)).encode()).hexdigest()[:32]


def drop_invalid_citations(text: str, passages: int) -> str:
    """Citation markers that point at one of ``passages`` retrieved passages kept, the others dropped (with the
    double space a dropped marker leaves). Works on any part of an answer that does not cut a marker in two,
    so a stream can apply it sentence by sentence and match the whole answer's."""

    def keep(match: re.Match[str]) -> str:
        kept = [n for n in citation_numbers(match.group(1)) if 1 <= n <= passages]
        return "[" + ", ".join(map(str, kept)) + "]" if kept else ""

    return SPACE_RUN.sub(" ", CITATION.sub(keep, text))


def resolve_citations(
    text: str, hits: list[Hit], redact_retrieved: Callable[[str], str] | None = None
) -> tuple[str, list[Citation]]:
    """Keep citation markers that point at a retrieved passage, drop the others; list every passage shown, its
    text and title passed through ``redact_retrieved`` when given (personal data redacted, as the answer's own
    text is: the service's ``RedactionMemo``, since the same passages come back answer after answer)."""
    cleaned = drop_invalid_citations(text, len(hits)).strip()
    cited = set(cited_numbers(cleaned))
    shown = redact_retrieved or _unchanged
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


@dataclass(kw_only=True)
class StreamProgress:
    """How far an answer's stream got, kept by the pipeline as it goes: what a stream cut before its final answer is
    charged for (``RagPipeline.cut``). Read from another thread while the stream runs: plain counters only."""

    generation_started: float | None = None  # perf_counter when the generator was asked
    prompt_chars: int = 0  # of the messages the generator was given
    deltas: int = 0  # pieces the generator streamed (the streaming backends send one token each)
    generator: str | None = None  # which one streamed them
    prompt: PromptInfo | None = None  # the prompt version answering
    shown: list[str] = field(default_factory=list)  # text sent to the client since the last withdrawal
