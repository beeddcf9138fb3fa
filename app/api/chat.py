"""``POST /v1/chat``: a question in; the answer, its citations and how it was made out. With ``stream``, the
answer comes as server-sent events: ``delta`` events, then one ``answer`` event, then ``[DONE]``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import ServicesDep, TenantDep, require_text
from app.api.errors import ApiError
from app.api.schemas import ChatRequest
from app.container import Services
from retrieval.index import Scope
from serving.pipeline import Answer, AnswerRequest

router = APIRouter(tags=["chat"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def answer_request(
    services: Services,
    tenant: str,
    question: str,
    collection: str | None,
    top_k: int | None,
    history: list[dict[str, str]],
    user: str | None = None,
) -> AnswerRequest:
    settings = services.settings
    question = require_text(question, services, "question")
    scope = Scope(collection or settings.default_collection, tenant)
    if services.index.count(scope) == 0:
        raise ApiError(404, f"collection {scope.collection!r} has no documents", param="collection")
    return AnswerRequest(question, scope, top_k or settings.chat_top_k, history, user)


@router.post("/v1/chat", response_model=None)
def chat(body: ChatRequest, services: ServicesDep, tenant: TenantDep) -> dict[str, Any] | StreamingResponse:
    request = answer_request(
        services,
        tenant,
        body.question,
        body.collection,
        body.top_k,
        [t.model_dump() for t in body.history],
        body.user,
    )
    if not body.stream:
        return services.pipeline.answer(request).to_dict()

    def events() -> Iterator[str]:
        for event in services.pipeline.stream(request):
            if isinstance(event, Answer):
                yield sse({"type": "answer", **event.to_dict()})
            else:
                yield sse({"type": "delta", "text": event})
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
