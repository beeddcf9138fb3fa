"""Server-side conversations: ``POST /v1/conversations`` starts one, ``GET`` shows its turns, ``DELETE`` removes it;
``conversation_id`` on ``/v1/chat`` (and on ``/v1/chat/completions``) makes the server supply the earlier turns,
so a client sends only the new question.

A conversation is its tenant's and its key's: any other caller gets the 404 an unknown id gets. It expires
``conversation_retention_days`` after its last turn, is erased with its user's data, and holds at most
``conversation_max_turns`` turns and ``conversation_max_chars`` characters (413 past either: start a new one).
Kept per turn: the question and the guarded answer, redacted as the answer log keeps them, for answered, cached
and abstained turns only: a refused question, or an answer no generator could give, never becomes history.

When the store does not answer, the question is answered without the earlier turns and the response says so
(``conversation_note``); nothing fails for it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import Reader, ServicesDep
from app.api.errors import ApiError, error_responses
from app.container import Services
from prompts.messages import ChatMessage
from serving.answering.conversations import (
    Conversation,
    ConversationFullError,
    ConversationNotFoundError,
    ConversationStore,
    ConversationStoreUnavailableError,
    ConversationTurn,
    is_conversation_id,
)
from serving.contracts.answer import Answer, AnswerRequest, canary_subject
from serving.governance.access import Principal
from serving.loop.answer_log import kept_text

log = logging.getLogger("ragops.conversations")
router = APIRouter(tags=["conversations"], responses=error_responses(400, 401, 403, 404, 429, 503))

KEPT_OUTCOMES = frozenset({"answered", "cached", "abstained"})
UNAVAILABLE_NOTE = "the conversation store did not answer: answered without the earlier turns; this turn was not kept"


class ConversationStart(BaseModel):
    user: str | None = Field(None, max_length=256, description="User or session id: erasing this user erases it.")


class KeptTurn(BaseModel):
    question: str = Field(description="The question as kept: personal data redacted.")
    answer: str
    answer_id: str
    retrieval_query: str | None = Field(description="What retrieval searched with, when the question was rewritten.")
    at: datetime


class ConversationInfo(BaseModel):
    id: str
    object: str = "conversation"
    created_at: datetime
    expires_at: datetime = Field(description="When it goes unless another turn comes first.")
    turns: list[KeptTurn]

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationInfo:
        turns = [KeptTurn(question=t.question, answer=t.answer, answer_id=t.answer_id,
                          retrieval_query=t.retrieval_query, at=t.at) for t in conversation.turns]  # fmt: skip
        return cls(id=conversation.id, created_at=conversation.created_at, expires_at=conversation.expires_at,
                   turns=turns)  # fmt: skip


class ConversationDeleted(BaseModel):
    id: str
    object: str = "conversation.deleted"
    deleted: bool = True


def conversation_store(services: Services) -> ConversationStore:
    store = services.conversations
    if store is None:
        raise ApiError(404, "conversations are not kept on this server (conversation_retention_days = 0)",
                       param="conversation_id")  # fmt: skip
    return store


def _not_found(conversation_id: str) -> ApiError:
    shown = conversation_id if len(conversation_id) <= 64 else f"{conversation_id[:64]}…"  # a path has no length cap
    return ApiError(404, f"no conversation {shown!r}: unknown, expired, or not this key's; start a new one",
                    param="conversation_id")  # fmt: skip


def _unavailable() -> ApiError:
    return ApiError(503, "the conversation store did not answer; try again shortly", param="conversation_id")


def _find(store: ConversationStore, caller: Principal, conversation_id: str) -> Conversation:
    if not is_conversation_id(conversation_id):
        raise _not_found(conversation_id)
    try:
        conversation = store.get(caller.tenant, caller.key_id, conversation_id)
    except ConversationStoreUnavailableError as exc:
        raise _unavailable() from exc
    if conversation is None:
        raise _not_found(conversation_id)
    return conversation


@router.post("/v1/conversations", response_model=ConversationInfo, status_code=201)
def start_conversation(
    services: ServicesDep, caller: Reader, body: ConversationStart | None = None
) -> ConversationInfo:
    """Start a conversation; pass its ``id`` as ``conversation_id`` to ``/v1/chat``."""
    store = conversation_store(services)
    user = body.user if body is not None else None
    try:
        conversation = store.create(caller.tenant, caller.key_id, canary_subject(caller.tenant, caller.key_id, user))
    except ConversationStoreUnavailableError as exc:
        raise _unavailable() from exc
    return ConversationInfo.of(conversation)


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationInfo)
def show_conversation(conversation_id: str, services: ServicesDep, caller: Reader) -> ConversationInfo:
    return ConversationInfo.of(_find(conversation_store(services), caller, conversation_id))


@router.delete("/v1/conversations/{conversation_id}", response_model=ConversationDeleted)
def delete_conversation(conversation_id: str, services: ServicesDep, caller: Reader) -> ConversationDeleted:
    store = conversation_store(services)
    _find(store, caller, conversation_id)
    try:
        store.delete(caller.tenant, caller.key_id, conversation_id)
    except ConversationStoreUnavailableError as exc:
        raise _unavailable() from exc
    return ConversationDeleted(id=conversation_id)


class ChatConversation:
    """A chat request's server-side conversation: the earlier turns in (``history``), the new turn kept
    (``keep``). A store that does not answer leaves ``history`` empty and ``note`` saying so."""

    def __init__(
        self, store: ConversationStore, caller: Principal, conversation_id: str, conversation: Conversation | None
    ) -> None:
        self._store = store
        self._caller = caller
        self.id = conversation_id
        self._conversation = conversation
        self.note: str | None = None if conversation is not None else UNAVAILABLE_NOTE

    @classmethod
    def open(cls, services: Services, caller: Principal, conversation_id: str) -> ChatConversation:
        """The conversation, or a 404 (``check_question`` then says whether it has room for the question)."""
        store = conversation_store(services)
        try:
            conversation = _find(store, caller, conversation_id)
        except ApiError as exc:
            if exc.status != 503:
                raise
            log.warning("conversation store unavailable: answering without history")
            return cls(store, caller, conversation_id, None)
        return cls(store, caller, conversation_id, conversation)

    @property
    def history(self) -> list[ChatMessage]:
        return [] if self._conversation is None else self._conversation.messages

    def bind(self, request: AnswerRequest) -> AnswerRequest:
        """The request as this conversation's: its user is the conversation's (the canary's subject and the kept
        answers' user), so erasing the user finds both; a request that names another user is a 400."""
        if self._conversation is None:
            return request
        if request.user is not None and request.canary_subject != self._conversation.user_hash:
            raise ApiError(400, "this conversation was started for a different user, or for none: start one for this "
                           "user",
                           param="user")  # fmt: skip
        return replace(request, canary_subject=self._conversation.user_hash)

    def check_question(self, question: str) -> None:
        """413 before any work when the question alone would take the conversation past its limit (an answer
        that then does is given, and ``note`` says the turn was not kept)."""
        if self._conversation is None:
            return
        try:
            self._store.limits.check(self._conversation, self._turn(question, "", "", None))
        except ConversationFullError as exc:
            raise ApiError(413, str(exc), param="conversation_id") from exc

    def keep(self, request: AnswerRequest, answer: Answer) -> None:
        """The turn appended, when its outcome is one a conversation goes on from; what the store refuses is
        said in ``note``, never an error (the answer was given)."""
        if self._conversation is None or answer.outcome not in KEPT_OUTCOMES:
            return
        query = answer.rewrite.query if answer.rewrite is not None and answer.rewrite.rewritten else None
        turn = self._turn(request.question, answer.answer, answer.id, query)
        try:
            self._store.append(self._caller.tenant, self._caller.key_id, self.id, turn)
        except ConversationFullError as exc:
            self.note = f"this turn was not kept: {exc}"
        except (ConversationStoreUnavailableError, ConversationNotFoundError) as exc:
            log.warning("conversation turn not kept: %s", exc)
            self.note = f"this turn was not kept: {exc}"

    @staticmethod
    def _turn(question: str, answer: str, answer_id: str, query: str | None) -> ConversationTurn:
        """A turn as kept: its text redacted as kept answers are (the answer already passed the output guard,
        unless guards are off)."""
        return ConversationTurn(question=kept_text(question), answer=kept_text(answer), answer_id=answer_id,
                                retrieval_query=None if query is None else kept_text(query),
                                at=datetime.now(UTC))  # fmt: skip
