"""``POST /v1/chat``: a question in; the answer, its citations and how it was made out. With ``stream``, the
answer comes as server-sent events: ``delta`` events, each a sentence that passed the output guard; a
``replaced`` event when what was streamed is withdrawn (clients clear it), followed by the replacement's
deltas; then one ``answer`` event, whose text is the deltas after the last ``replaced`` joined; then
``[DONE]``. The answer, streamed or not, carries ``generated_by``: whether an AI system wrote it, and which.

Earlier turns come as ``history``, or from a server-side conversation (``conversation_id``,
``app.api.conversations``); a question with earlier turns is searched by its standalone rewrite
(``retrieval_query``)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.conversations import ChatConversation
from app.api.deps import Reader, ServicesDep, answer_request
from app.api.errors import ApiError, error_responses
from app.api.metering import MeteredAnswer
from app.api.schemas import ChatAnswer, ChatAnswerEvent, ChatDelta, ChatReplacedEvent, ChatRequest
from app.api.sse import sse_event, sse_response, sse_responses
from serving.contracts.answer import Answer, ChatMessage
from serving.contracts.generation import Replaced

router = APIRouter(tags=["chat"], responses=error_responses(400, 401, 403, 404, 413, 429, 503))


@router.post(
    "/v1/chat",
    response_model=ChatAnswer,
    responses=sse_responses("ChatStreamEvent", "The answer; with stream, ChatStreamEvent events, then [DONE]."),
)
def chat(body: ChatRequest, services: ServicesDep, caller: Reader) -> ChatAnswer | StreamingResponse:
    conversation = None
    history = [ChatMessage(role=turn.role, content=turn.content) for turn in body.history]
    if body.conversation_id is not None:
        if history:
            raise ApiError(400, "send either history or conversation_id, not both: the conversation holds the "
                           "earlier turns", param="history")  # fmt: skip
        conversation = ChatConversation.open(services, caller, body.conversation_id)
        history = conversation.history
    request = answer_request(
        services=services,
        caller=caller,
        question=body.question,
        collection=body.collection,
        top_k=body.top_k,
        history=history,
        user=body.user,
    )
    if conversation is not None:
        conversation.check_question(request.question)
        request = conversation.bind(request)
    metered = MeteredAnswer(services, caller, request)

    def final(answer: Answer) -> ChatAnswer:
        if conversation is None:
            return ChatAnswer.of(answer)
        conversation.keep(request, answer)
        return ChatAnswer.of(answer, conversation.id, conversation.note)

    if not body.stream:
        return final(metered.answer())

    def events() -> Iterator[str]:
        for event in metered.events():
            if isinstance(event, Answer):
                yield sse_event(ChatAnswerEvent(**dict(final(event))))
            elif isinstance(event, Replaced):
                yield sse_event(ChatReplacedEvent(from_=event.from_, reason=event.reason, code=event.code))
            else:
                yield sse_event(ChatDelta(text=event))

    return sse_response(events())
