"""Bodies of ``POST /v1/feedback``: a user's rating of one answer, and what was kept of it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from app.api.schemas import StrictModel
from serving.contracts.answer import ANSWER_ID
from serving.loop.feedback import Rating

MAX_FEEDBACK_CHARS = 2000


class FeedbackRequest(StrictModel):
    id: str = Field(
        pattern=ANSWER_ID.pattern,
        description="The answer's id: the `id` of a /v1/chat answer (ans_...) or an OpenAI completion (chatcmpl-...).",
    )
    rating: Rating = Field(
        description="Thumbs up or down. Rating an answer again replaces your key's earlier rating; another reader's "
        "rating of the same answer is kept beside it."
    )
    comment: str | None = Field(None, max_length=MAX_FEEDBACK_CHARS, description="What was wrong or right.")
    correction: str | None = Field(
        None, max_length=MAX_FEEDBACK_CHARS, description="The right answer: the expected answer once exported."
    )

    @field_validator("comment", "correction")
    @classmethod
    def _no_nul(cls, text: str | None) -> str | None:
        if text is not None and "\x00" in text:
            raise ValueError("must not contain NUL characters")
        return text


class FeedbackReceipt(BaseModel):
    """The rating as kept: comment and correction redacted (PII replaced by placeholders such as [EMAIL])."""

    id: str
    rating: Rating
    comment: str | None
    correction: str | None
    prompt: str = Field(description="The prompt version that made the rated answer, NAME@VERSION.")
    rated_at: datetime
