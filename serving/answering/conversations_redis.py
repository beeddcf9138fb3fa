"""Conversations in Redis (``serving.answering.conversations`` has the protocol and the types): shared by every
replica, each conversation one key holding its JSON, ``ragops:conversation:<tenant hash>:<id>``, which Redis
expires ``period`` after its last turn (each append sets the TTL again). A set per user,
``ragops:conversation-user:<tenant hash>:<user hash>``, lists the user's conversations for erasure; it gets the
same TTL on each of their turns, so it outlives every conversation it lists.

An append is a WATCH/MULTI transaction that reads the conversation, checks the limits and writes it back: two
appends at once each land (the loser of a race retries). A Redis error is a ``ConversationStoreUnavailableError``
(the API answers without history); after one, requests leave Redis alone for a few seconds (``RedisOutage``),
while erasure and retention always try it (they must not pass over a store)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from redis import RedisError
from redis.exceptions import WatchError

from serving.answering.conversations import (
    Clock,
    Conversation,
    ConversationLimits,
    ConversationNotFoundError,
    ConversationStoreUnavailableError,
    ConversationTurn,
    check_period,
    extended,
    is_conversation_id,
    new_conversation_id,
    turn_from,
    turn_json,
    utc_clock,
)
from serving.infra.clock import parse_stamp, stamp
from serving.infra.redis_link import RedisOutage, redis_client

KEY_PREFIX = "ragops:conversation:"
USER_PREFIX = "ragops:conversation-user:"  # not matched by KEY_PREFIX + "*": the character after it differs
SCAN_COUNT = 500
APPEND_TRIES = 100  # WATCH races lost before an append gives up (only a conversation hammered by one client)


def tenant_ref(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


def conversation_key(tenant: str, conversation_id: str) -> str:
    return f"{KEY_PREFIX}{tenant_ref(tenant)}:{conversation_id}"


def user_key(tenant: str, user_hash: str) -> str:
    return f"{USER_PREFIX}{tenant_ref(tenant)}:{hashlib.sha256(user_hash.encode()).hexdigest()[:32]}"


class RedisConversations:
    """Conversations in the Redis at ``url`` (``redis_link``'s client options: short timeouts, one retry)."""

    def __init__(
        self,
        url: str,
        period: timedelta,
        limits: ConversationLimits | None = None,
        clock: Clock = utc_clock,
    ) -> None:
        self._redis = redis_client(url)
        self._period = check_period(period)
        self._ttl_s = max(1, math.ceil(period.total_seconds()))
        self.limits = limits or ConversationLimits()
        self._clock = clock
        self._outage = RedisOutage("conversations", "answering without conversation history", lambda down: None)

    def create(self, tenant: str, key_id: str, user_hash: str | None) -> Conversation:
        now = self._clock()
        conversation = Conversation(id=new_conversation_id(), tenant=tenant, key_id=key_id, user_hash=user_hash,
                                    created_at=now, expires_at=now + self._period)  # fmt: skip
        with self._request():
            pipe = self._redis.pipeline(transaction=True)
            self._write(pipe, conversation)
            pipe.execute()
        return conversation

    def get(self, tenant: str, key_id: str, conversation_id: str) -> Conversation | None:
        if not is_conversation_id(conversation_id):
            return None
        with self._request():
            stored = self._redis.get(conversation_key(tenant, conversation_id))
        return self._live(stored, tenant, key_id)

    def append(self, tenant: str, key_id: str, conversation_id: str, turn: ConversationTurn) -> Conversation:
        if not is_conversation_id(conversation_id):
            raise ConversationNotFoundError(conversation_id)
        key = conversation_key(tenant, conversation_id)
        pipeline: Any = self._redis.pipeline(transaction=True)  # redis-py leaves watch() untyped
        with self._request(), pipeline as pipe:
            for _ in range(APPEND_TRIES):
                try:
                    pipe.watch(key)
                    current = self._live(pipe.get(key), tenant, key_id)
                    if current is None:
                        raise ConversationNotFoundError(conversation_id)
                    self.limits.check(current, turn)  # raised before MULTI: nothing written
                    updated = extended(current, turn, self._clock() + self._period)
                    pipe.multi()
                    self._write(pipe, updated)
                    pipe.execute()
                    return updated
                except WatchError:  # another append landed between our read and our write: read it again
                    continue
        raise ConversationStoreUnavailableError(f"conversation {conversation_id}: {APPEND_TRIES} appends raced it")

    def delete(self, tenant: str, key_id: str, conversation_id: str) -> bool:
        if not is_conversation_id(conversation_id):
            return False
        key = conversation_key(tenant, conversation_id)
        with self._request():
            stored = self._redis.get(key)
            owned = _read(stored)
            if owned is None or owned.key_id != key_id or owned.tenant != tenant:
                return False
            self._redis.delete(key)
            if owned.user_hash is not None:
                self._redis.srem(user_key(tenant, owned.user_hash), conversation_id)
        return owned.expires_at > self._clock()

    def erase_user(self, tenant: str, user_hash: str) -> int:
        index = user_key(tenant, user_hash)
        with self._always():
            ids = sorted(m.decode() for m in _members(self._redis.smembers(index)))
            keys = [conversation_key(tenant, i) for i in ids if is_conversation_id(i)]
            gone = sum(_int(self._redis.delete(*keys[b : b + SCAN_COUNT])) for b in range(0, len(keys), SCAN_COUNT))
            self._redis.delete(index)
        return gone

    def prune(self, now: datetime) -> int:
        """Redis expires conversations by itself; this removes any whose stamped expiry passed before Redis' own
        TTL did (a clock ahead of Redis'), or that cannot be read."""
        gone = 0
        with self._always():
            for name in self._redis.scan_iter(match=f"{KEY_PREFIX}*", count=SCAN_COUNT):
                stored = _read(self._redis.get(name))
                if stored is None or stored.expires_at <= now:
                    gone += _int(self._redis.delete(name))
                    if stored is not None and stored.user_hash is not None:
                        self._redis.srem(user_key(stored.tenant, stored.user_hash), stored.id)
        return gone

    def _write(self, pipe: Any, conversation: Conversation) -> None:
        pipe.set(conversation_key(conversation.tenant, conversation.id), _dumps(conversation), ex=self._ttl_s)
        if conversation.user_hash is not None:
            index = user_key(conversation.tenant, conversation.user_hash)
            pipe.sadd(index, conversation.id)
            pipe.expire(index, self._ttl_s)

    def _live(self, stored: Any, tenant: str, key_id: str) -> Conversation | None:
        conversation = _read(stored)
        if conversation is None or conversation.tenant != tenant or conversation.key_id != key_id:
            return None
        return conversation if conversation.expires_at > self._clock() else None

    @contextmanager
    def _request(self) -> Iterator[None]:
        """A request's use of Redis: none while it is known down, and an error taken as an outage."""
        if not self._outage.usable():
            raise ConversationStoreUnavailableError("redis unreachable: conversations are off for a few seconds")
        try:
            yield
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
            raise ConversationStoreUnavailableError(f"redis: {str(exc)[:200] or type(exc).__name__}") from exc
        self._outage.succeeded()

    @contextmanager
    def _always(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise ConversationStoreUnavailableError(f"redis: {str(exc)[:200] or type(exc).__name__}") from exc


def _dumps(conversation: Conversation) -> str:
    return json.dumps(
        {"id": conversation.id, "tenant": conversation.tenant, "key_id": conversation.key_id,
         "user_hash": conversation.user_hash, "created_at": stamp(conversation.created_at),
         "expires_at": stamp(conversation.expires_at), "turns": [turn_json(t) for t in conversation.turns]},
        ensure_ascii=False,
    )  # fmt: skip


def _read(stored: Any) -> Conversation | None:
    """The conversation stored (None: no such key, or not one this layout wrote)."""
    if not isinstance(stored, bytes):
        return None
    try:
        data = json.loads(stored)
        return Conversation(
            id=str(data["id"]), tenant=str(data["tenant"]), key_id=str(data["key_id"]), user_hash=data["user_hash"],
            created_at=parse_stamp(data["created_at"]), expires_at=parse_stamp(data["expires_at"]),
            turns=tuple(turn_from(turn) for turn in data["turns"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _members(members: Any) -> list[bytes]:
    return [m for m in members if isinstance(m, bytes)]


def _int(value: Any) -> int:
    return int(value)  # the sync client's replies are ints; typed as Awaitable | int
