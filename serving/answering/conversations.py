"""Conversations kept server-side: a chat request names a conversation by its id and the server supplies the
history, instead of the client sending it back each turn.

A conversation belongs to the tenant and the API key that created it: any other tenant or key asking for its id
finds nothing, as it would for an unknown or an expired id. What is kept per turn is what the pipeline kept
anyway: the question as the input guard redacted it, the guarded answer, the answer's id and the retrieval query
the pipeline searched with. It expires ``period`` after its last turn (``conversation_retention_days``; each turn
extends it), and holds at most ``ConversationLimits`` (``conversation_max_turns``, ``conversation_max_chars``):
a turn past them is refused before anything is written (``ConversationFullError``).

``ConversationStore`` is the protocol; ``StateConversations`` keeps them in the state store (table
``conversations``, one row a conversation, its turns a JSON list), ``RedisConversations``
(``serving.answering.conversations_redis``) in Redis, shared by replicas and expired by Redis itself. Erasure of a
user (``erase_user``, by the request's canary subject) and retention (``prune``) reach both
(``serving.rights``)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from prompts.messages import ChatMessage
from serving.infra.clock import parse_stamp, stamp
from serving.infra.state_store import Cursor, Row, StateStore, StateStoreUnavailableError

CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{32}")
Clock = Callable[[], datetime]


def utc_clock() -> datetime:
    return datetime.now(UTC)


def new_conversation_id() -> str:
    """``conv_`` and 32 random hex digits: made by the server, never by a client."""
    return f"conv_{secrets.token_hex(16)}"


def is_conversation_id(text: object) -> bool:
    """Whether ``text`` has the shape of an id this server makes; anything else names no conversation (and never
    reaches a query or a Redis key)."""
    return isinstance(text, str) and CONVERSATION_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class ConversationTurn:
    """One question and its answer, as kept: the question redacted by the input guard, the guarded answer."""

    question: str
    answer: str
    answer_id: str
    retrieval_query: str | None  # what retrieval searched with (the question rewritten with its history)
    at: datetime

    @property
    def chars(self) -> int:
        return len(self.question) + len(self.answer)


@dataclass(frozen=True)
class Conversation:
    """A conversation as stored. ``user_hash``: the request's canary subject (tenant, key and user hashed), by
    which erasing a user finds it; None for a request that named no user."""

    id: str
    tenant: str
    key_id: str
    user_hash: str | None
    created_at: datetime
    expires_at: datetime
    turns: tuple[ConversationTurn, ...] = ()

    @property
    def chars(self) -> int:
        """What ``ConversationLimits.max_chars`` counts: the turns' questions and answers."""
        return sum(turn.chars for turn in self.turns)

    @property
    def messages(self) -> list[ChatMessage]:
        """The history a chat request carries: the user's question, then the assistant's answer, per turn."""
        return [
            message
            for turn in self.turns
            for message in (ChatMessage(role="user", content=turn.question),
                            ChatMessage(role="assistant", content=turn.answer))
        ]  # fmt: skip


class ConversationFullError(Exception):
    """A turn would take the conversation past a limit: nothing was written; the client starts a new one."""

    def __init__(self, limit: str, would_hold: int, most: int) -> None:
        self.limit = limit  # the setting: conversation_max_turns or conversation_max_chars
        self.would_hold = would_hold
        self.most = most
        unit = "turns" if limit.endswith("turns") else "characters"
        super().__init__(
            f"this conversation is full: it would hold {would_hold} {unit}, over its limit of {most} ({limit}); "
            "start a new conversation"
        )


class ConversationNotFoundError(KeyError):
    """No such conversation for this tenant and key: unknown, expired, erased, or someone else's."""

    def __str__(self) -> str:
        return f"no conversation {self.args[0]!r}: unknown, expired or not yours; start a new one"


class ConversationStoreUnavailableError(Exception):
    """The store did not answer: the API answers without the conversation's history."""


@dataclass(frozen=True)
class ConversationLimits:
    """The most a conversation holds: turns, and characters of its questions and answers together."""

    max_turns: int = 25
    max_chars: int = 50_000

    def check(self, conversation: Conversation, turn: ConversationTurn) -> None:
        """``ConversationFullError`` when ``turn`` would take ``conversation`` past a limit."""
        if len(conversation.turns) + 1 > self.max_turns:
            raise ConversationFullError("conversation_max_turns", len(conversation.turns) + 1, self.max_turns)
        if conversation.chars + turn.chars > self.max_chars:
            raise ConversationFullError("conversation_max_chars", conversation.chars + turn.chars, self.max_chars)


class ConversationStore(Protocol):
    """Where conversations are kept. Every read and write is scoped to one tenant and key."""

    limits: ConversationLimits  # what ``append`` holds a conversation to (the API checks a question against it)

    def create(self, tenant: str, key_id: str, user_hash: str | None) -> Conversation: ...

    def get(self, tenant: str, key_id: str, conversation_id: str) -> Conversation | None:
        """None: unknown, expired, another tenant's or another key's."""
        ...

    def append(self, tenant: str, key_id: str, conversation_id: str, turn: ConversationTurn) -> Conversation:
        """Add a turn and extend the expiry, atomically (concurrent appends all land);
        ``ConversationFullError`` before anything is written; ``ConversationNotFoundError`` as ``get``'s None."""
        ...

    def delete(self, tenant: str, key_id: str, conversation_id: str) -> bool:
        """Whether a live conversation was there."""
        ...

    def erase_user(self, tenant: str, user_hash: str) -> int:
        """Remove every conversation of the user named by ``user_hash`` (expired ones too); how many went."""
        ...

    def prune(self, now: datetime) -> int:
        """Remove the conversations expired at ``now``; how many went."""
        ...


def check_period(period: timedelta) -> timedelta:
    if period <= timedelta(0):
        raise ValueError("a conversation store needs a retention period above 0 (at 0 none is built)")
    return period


def turn_json(turn: ConversationTurn) -> dict[str, Any]:
    return {"question": turn.question, "answer": turn.answer, "answer_id": turn.answer_id,
            "retrieval_query": turn.retrieval_query, "at": stamp(turn.at)}  # fmt: skip


def turn_from(data: dict[str, Any]) -> ConversationTurn:
    return ConversationTurn(question=str(data["question"]), answer=str(data["answer"]),
                            answer_id=str(data["answer_id"]), retrieval_query=data.get("retrieval_query"),
                            at=parse_stamp(str(data["at"])))  # fmt: skip


def extended(conversation: Conversation, turn: ConversationTurn, expires_at: datetime) -> Conversation:
    return replace(conversation, expires_at=expires_at, turns=(*conversation.turns, turn))


_COLUMNS = "id, tenant, key_id, user_hash, created_at, expires_at, turns"


class StateConversations:
    """Conversations in the state store (SQLite or Postgres): table ``conversations``. An append reads, checks
    and rewrites the row in one write transaction under the conversation's lock, so concurrent appends (on any
    replica) each land; expired rows are invisible at once and removed by ``prune`` (the retention run)."""

    def __init__(
        self,
        state: StateStore,
        period: timedelta,
        limits: ConversationLimits | None = None,
        clock: Clock = utc_clock,
    ) -> None:
        self._state = state
        self._period = check_period(period)
        self.limits = limits or ConversationLimits()
        self._clock = clock

    def create(self, tenant: str, key_id: str, user_hash: str | None) -> Conversation:
        now = self._clock()
        conversation = Conversation(id=new_conversation_id(), tenant=tenant, key_id=key_id, user_hash=user_hash,
                                    created_at=now, expires_at=now + self._period)  # fmt: skip
        with self._transaction(write=True) as cur:
            cur.execute(
                f"INSERT INTO conversations ({_COLUMNS}, chars) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation.id, tenant, key_id, user_hash, stamp(now), stamp(conversation.expires_at), "[]", 0),
            )
        return conversation

    def get(self, tenant: str, key_id: str, conversation_id: str) -> Conversation | None:
        if not is_conversation_id(conversation_id):
            return None
        with self._transaction() as cur:
            return self._live(cur, tenant, key_id, conversation_id)

    def append(self, tenant: str, key_id: str, conversation_id: str, turn: ConversationTurn) -> Conversation:
        if not is_conversation_id(conversation_id):
            raise ConversationNotFoundError(conversation_id)
        with self._transaction(write=True) as cur:
            cur.lock(f"ragops.conversation.{conversation_id}")  # Postgres; SQLite's BEGIN IMMEDIATE already is one
            current = self._live(cur, tenant, key_id, conversation_id)
            if current is None:
                raise ConversationNotFoundError(conversation_id)
            self.limits.check(current, turn)  # raised inside the transaction: rolled back, nothing written
            updated = extended(current, turn, self._clock() + self._period)
            cur.execute(
                "UPDATE conversations SET turns = ?, chars = ?, expires_at = ? WHERE id = ?",
                (json.dumps([turn_json(t) for t in updated.turns], ensure_ascii=False), updated.chars,
                 stamp(updated.expires_at), conversation_id),
            )  # fmt: skip
        return updated

    def delete(self, tenant: str, key_id: str, conversation_id: str) -> bool:
        if not is_conversation_id(conversation_id):
            return False
        where, params = "WHERE id = ? AND tenant = ? AND key_id = ?", (conversation_id, tenant, key_id)
        with self._transaction(write=True) as cur:
            rows = cur.execute(f"SELECT expires_at FROM conversations {where}", params)
            cur.execute(f"DELETE FROM conversations {where}", params)  # an expired one too: it is due anyway
        return bool(rows) and str(rows[0]["expires_at"]) > stamp(self._clock())

    def erase_user(self, tenant: str, user_hash: str) -> int:
        with self._transaction(write=True) as cur:
            return _delete(cur, "WHERE tenant = ? AND user_hash = ?", (tenant, user_hash))

    def prune(self, now: datetime) -> int:
        with self._transaction(write=True) as cur:
            return _delete(cur, "WHERE expires_at <= ?", (stamp(now),))

    def _live(self, cur: Cursor, tenant: str, key_id: str, conversation_id: str) -> Conversation | None:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM conversations WHERE id = ? AND tenant = ? AND key_id = ? AND expires_at > ?",
            (conversation_id, tenant, key_id, stamp(self._clock())),
        )
        return _from_row(rows[0]) if rows else None

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Cursor]:
        try:
            with self._state.transaction(write=write) as cur:
                yield cur
        except StateStoreUnavailableError as exc:
            raise ConversationStoreUnavailableError(str(exc)) from exc


def _delete(cur: Cursor, where: str, params: tuple[Any, ...]) -> int:
    count = int(cur.execute(f"SELECT COUNT(*) AS n FROM conversations {where}", params)[0]["n"])
    if count:
        cur.execute(f"DELETE FROM conversations {where}", params)
    return count


def _from_row(row: Row) -> Conversation:
    return Conversation(
        id=str(row["id"]), tenant=str(row["tenant"]), key_id=str(row["key_id"]), user_hash=row["user_hash"],
        created_at=parse_stamp(str(row["created_at"])), expires_at=parse_stamp(str(row["expires_at"])),
        turns=tuple(turn_from(turn) for turn in json.loads(row["turns"])),
    )  # fmt: skip
