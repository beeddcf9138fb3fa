"""``POST /v1/feedback``: a user rates an answer (thumbs up or down, an optional comment and correction). The
answer must be one of the caller's tenant's kept answers (another tenant's id is as unknown as a made-up one);
the rating updates the prompt version's feedback metrics and, past ``alert_thumbs_down_rate``, its alert."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Reader, ServicesDep
from app.api.errors import ApiError, error_responses
from app.api.feedback_schemas import FeedbackReceipt, FeedbackRequest

router = APIRouter(tags=["feedback"], responses=error_responses(400, 401, 403, 404, 429, 503))


@router.post("/v1/feedback", response_model=FeedbackReceipt)
def give_feedback(body: FeedbackRequest, services: ServicesDep, caller: Reader) -> FeedbackReceipt:
    """Rate an answer of the last ``feedback_retention_days``; exported with ``ragops feedback export``."""
    if services.answer_log is None or services.feedback is None:
        raise ApiError(404, "answers are not kept on this server (feedback_retention_days = 0)", param="id")
    answer = services.answer_log.find(body.id, caller.tenant)
    if answer is None:
        raise ApiError(404, f"no answer {body.id!r} (unknown, another tenant's, or past retention)", param="id")
    rated = services.feedback.rate(answer, body.rating, body.comment, body.correction, caller.key_id)
    services.metrics.observe_feedback(rated.prompt_name, rated.feedback.rating, rated.recent)
    kept = rated.feedback
    return FeedbackReceipt(
        id=kept.answer_id, rating=kept.rating, comment=kept.comment, correction=kept.correction,
        prompt=f"{answer.prompt_name}@{answer.prompt_version}", rated_at=kept.ts,
    )  # fmt: skip
