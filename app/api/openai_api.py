"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models``, so the ``openai`` SDK and LangChain's
``ChatOpenAI`` work unchanged. The last user message is the question, earlier turns are history; citations
ride in an extra ``citations`` field (streaming: in the final chunk) and ``ragops`` says how the answer was made."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.chat import SSE_HEADERS, answer_request, sse
from app.api.deps import ServicesDep, TenantDep
from app.api.errors import ApiError
from app.api.schemas import ChatCompletionRequest
from serving.pipeline import Answer

router = APIRouter(tags=["openai"])
MODEL_ID = "ragops"


@router.get("/v1/models")
def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "ragops"}]}


EXTRA_FIELDS = (
    "generator", "fallback", "cached", "prompt", "timings_ms", "abstained", "refused", "guards", "groundedness"
)  # fmt: skip


def _extras(answer: Answer) -> dict[str, Any]:
    details = answer.to_dict()
    return {"citations": details["citations"], "ragops": {k: details[k] for k in EXTRA_FIELDS}}


@router.post("/v1/chat/completions", response_model=None)
def chat_completions(
    body: ChatCompletionRequest, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any] | StreamingResponse:
    if body.model != MODEL_ID:
        raise ApiError(404, f"model {body.model!r} does not exist; use {MODEL_ID!r}", "model", "model_not_found")
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must come from the user", param="messages")
    history = [{"role": m.role, "content": m.text()} for m in turns[:-1]]
    request = answer_request(services, tenant, turns[-1].text(), body.collection, body.top_k, history, body.user)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if not body.stream:
        answer = services.pipeline.answer(request)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL_ID,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer.answer}, "finish_reason": "stop"}
            ],
            "usage": answer.to_dict()["usage"],
            **_extras(answer),
        }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID}
        return sse({**base, "choices": [choice], **extra})

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        for event in services.pipeline.stream(request):
            if isinstance(event, Answer):
                yield chunk({}, "stop", usage=event.to_dict()["usage"], **_extras(event))
            else:
                yield chunk({"content": event})
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
