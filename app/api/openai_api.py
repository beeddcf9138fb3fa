"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models``, so the ``openai`` SDK and LangChain's
``ChatOpenAI`` work unchanged. The last user message is the question, earlier turns are history (or, with the
extra field ``conversation_id``, a server-side conversation's kept turns); citations
ride in an extra ``citations`` field (streaming: in the final chunk), ``ragops`` says how the answer was made and
``generated_by`` who wrote it (an AI system or not, which model and prompt).
The shapes are in ``app.api.openai_protocol``.

What a stream guarantees: every content delta is text that passed the output guard (sentence by sentence,
redacted); nothing is ever sent and then retracted, since an OpenAI client cannot clear what it has shown. The
content deltas joined are the assistant message, and that message is the final answer's text:
``ragops``' answer text (``message.content`` of the same request without ``stream``) when nothing was withdrawn;
when the answer was replaced after part of it was sent (the output guard stopped the model, or the model failed
mid-answer), the part already sent, then ``WITHDRAWN_NOTICE``, then the replacement's text, with
``ragops.fallback`` (and ``generated_by.fallback``) in the last chunk saying why: ``generated_by`` names who wrote the
replacement, the text before the notice came from ``fallback.from``."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.conversations import ChatConversation
from app.api.deps import Reader, ServicesDep, answer_request
from app.api.errors import ApiError, error_responses
from app.api.metering import MeteredAnswer
from app.api.openai_protocol import (
    COLLECTION_MODEL_PREFIX,
    MODEL_ID,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ModelCard,
    ModelList,
    RagopsDetails,
    collection_model_id,
)
from app.api.schemas import MAX_HISTORY_TURNS, MAX_TURN_CHARS, GeneratedBy
from app.api.sse import sse_event, sse_response, sse_responses
from retrieval.index import is_scope_name
from serving.contracts.answer import Answer, AnswerRequest, ChatMessage
from serving.contracts.generation import Replaced
from serving.governance.access import Principal

router = APIRouter(tags=["openai"], responses=error_responses(400, 401, 403, 404, 413, 429, 503))

WITHDRAWN_NOTICE = "\n\n[The answer above was withdrawn; a checked answer follows.]\n\n"


@router.get("/v1/models")
def models(services: ServicesDep, caller: Reader) -> ModelList:
    """``ragops`` (the default collection, or the only one with documents while it is empty), then
    ``ragops/COLLECTION`` for each collection of the caller's tenant that holds documents: choosing one selects
    that collection, for clients that can send no extra field."""
    collections = services.index.collections(caller.tenant)
    return ModelList(data=[ModelCard(id=MODEL_ID), *(ModelCard(id=collection_model_id(c)) for c in collections)])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=sse_responses("ChatCompletionChunk", "A chat.completion; with stream, chat.completion.chunk events."),
)
def chat_completions(
    body: ChatCompletionRequest, services: ServicesDep, caller: Reader
) -> ChatCompletion | StreamingResponse:
    conversation = None
    if body.conversation_id is not None:
        conversation = ChatConversation.open(services, caller, body.conversation_id)
    request = _answer_request(body, services, caller, conversation)
    completion_id, created = request.id, int(time.time())  # the completion id is the answer's (feedback)
    metered = MeteredAnswer(services, caller, request)

    def details(answer: Answer) -> RagopsDetails:
        if conversation is None:
            return RagopsDetails.of(answer)
        conversation.keep(request, answer)
        return RagopsDetails.of(answer, conversation.id, conversation.note)

    if not body.stream:
        answer = metered.answer()
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[Choice(message=AssistantMessage(content=answer.answer))],
            usage=answer.usage,
            citations=answer.citations,
            ragops=details(answer),
            generated_by=GeneratedBy.of(answer),
        )

    def chunk(delta: DeltaMessage) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=None)
        return sse_event(ChatCompletionChunk(id=completion_id, created=created, model=body.model, choices=[choice]))

    def last_chunk(answer: Answer) -> str:
        choice = ChunkChoice(delta=DeltaMessage(), finish_reason="stop")
        return sse_event(
            ChatCompletionChunk(
                id=completion_id, created=created, model=body.model, choices=[choice], usage=answer.usage,
                citations=answer.citations, ragops=details(answer), generated_by=GeneratedBy.of(answer),
            )
        )  # fmt: skip

    def events() -> Iterator[str]:
        yield chunk(DeltaMessage(role="assistant", content=""))
        for content in streamed_content(metered.events()):
            if isinstance(content, Answer):
                yield last_chunk(content)
            else:
                yield chunk(DeltaMessage(content=content))

    return sse_response(events())


def streamed_content(events: Iterator[str | Replaced | Answer]) -> Iterator[str | Answer]:
    """The pipeline's events as an OpenAI stream's content: deltas as they are, a replacement announced by
    ``WITHDRAWN_NOTICE`` when some text was already sent (none is needed before anything was), then the answer."""
    sent = False
    for event in events:
        if isinstance(event, Replaced):
            if sent:
                yield WITHDRAWN_NOTICE
        elif isinstance(event, str):
            sent = sent or bool(event)
            yield event
        else:
            yield event


def _answer_request(
    body: ChatCompletionRequest, services: ServicesDep, caller: Principal, conversation: ChatConversation | None
) -> AnswerRequest:
    """The last user message is the question; earlier user and assistant turns are history, or with a
    conversation, its kept turns (the messages then hold only the new one)."""
    collection = requested_collection(body)
    turns = [
        ChatMessage(role=m.role, content=m.text()) for m in body.messages if m.role == "user" or m.role == "assistant"
    ]
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must come from the user", param="messages")
    history = turns[:-1]
    if len(history) > MAX_HISTORY_TURNS or any(len(turn.content) > MAX_TURN_CHARS for turn in history):
        limit = f"at most {MAX_HISTORY_TURNS} earlier messages of at most {MAX_TURN_CHARS} characters each"
        raise ApiError(400, limit, param="messages")
    if conversation is not None:
        if history:
            raise ApiError(400, "with conversation_id, send only the new user message: the conversation holds the "
                           "earlier turns", param="messages")  # fmt: skip
        history = conversation.history
    request = answer_request(
        services=services,
        caller=caller,
        question=turns[-1].content,
        collection=collection,
        top_k=body.top_k,
        history=history,
        user=body.user,
        id_prefix="chatcmpl-",
    )
    if conversation is None:
        return request
    conversation.check_question(request.question)
    return conversation.bind(request)


def requested_collection(body: ChatCompletionRequest) -> str | None:
    """The collection a request asks for (None: the default). ``ragops`` leaves it to the ``collection`` field;
    ``ragops/C`` names C, and a ``collection`` field that names another one is a 400 rather than a silent pick."""
    if body.model == MODEL_ID:
        return body.collection
    named = body.model.removeprefix(COLLECTION_MODEL_PREFIX)
    if named == body.model or not is_scope_name(named):
        known = f"use {MODEL_ID!r} or '{COLLECTION_MODEL_PREFIX}COLLECTION' (GET /v1/models lists them)"
        raise ApiError(404, f"model {body.model!r} does not exist; {known}", "model", "model_not_found")
    if body.collection is not None and body.collection != named:
        conflict = f"model {body.model!r} selects collection {named!r}, but collection is {body.collection!r}"
        raise ApiError(400, f"{conflict}: send one, or the same in both", param="collection")
    return named
