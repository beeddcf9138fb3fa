"""Server-side conversations (``serving.answering.conversations``): both adapters, the state store on real SQLite and
Postgres and Redis on a real server, behave alike: a conversation belongs to its tenant and key (anyone else's id
is not found), expires a period after its last turn (an injected clock), is pruned by the retention run, refuses a
turn past its limits before writing anything, loses no turn to concurrent appends, and goes with its user's
erasure (no one else's does); ids that are not the server's shape are never found; a Redis that is down is a
``ConversationStoreUnavailableError``."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.settings import flat_fields
from serving.answering.conversations import (
    ConversationFullError,
    ConversationLimits,
    ConversationNotFoundError,
    ConversationStore,
    ConversationStoreUnavailableError,
    ConversationTurn,
    StateConversations,
)
from serving.answering.conversations_redis import KEY_PREFIX, RedisConversations
from serving.contracts.answer import ChatMessage, canary_subject
from serving.governance.access import ANONYMOUS_KEY_ID
from serving.governance.subjects import SubjectKeys
from serving.infra.state_store import StateStore
from serving.rights.erasure import Eraser, ErasureIncompleteError, ErasureStores, ErasureSubject
from serving.rights.retention import CLI, Retention, periods_from

TENANT, OTHER_TENANT = "acme", "globex"
KEY, OTHER_KEY = "k1", "k2"
USER, OTHER_USER = "alice@example.org", "bob@example.org"
PERIOD = timedelta(days=7)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def state(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """The state store the test runs against (SQLite beside Redis: erasure and retention need one)."""
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    opened = StateStore.open(url, tmp_path / "state.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def make(
    backend: str, state: StateStore, clock: Clock, request: pytest.FixtureRequest
) -> Callable[..., ConversationStore]:
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None

    def make(period: timedelta = PERIOD, max_turns: int = 25, max_chars: int = 50_000) -> ConversationStore:
        limits = ConversationLimits(max_turns=max_turns, max_chars=max_chars)
        if redis_url is not None:
            return RedisConversations(redis_url, period, limits, clock)
        return StateConversations(state, period, limits, clock)

    return make


@pytest.fixture
def conversations(make: Callable[..., ConversationStore]) -> ConversationStore:
    return make()


def turn(n: int, clock: Clock, question: str | None = None, answer: str | None = None) -> ConversationTurn:
    return ConversationTurn(question=question or f"question {n}?", answer=answer or f"answer {n} [1].",
                            answer_id=f"ans_{n}", retrieval_query=f"query {n}", at=clock())  # fmt: skip


def user_hash(user: str, key: str = KEY, tenant: str = TENANT) -> str:
    subject = canary_subject(tenant, key, user)
    assert subject is not None
    return subject


# --- create, get, append, delete -----------------------------------------------------------------------------------


def test_a_conversation_is_created_read_appended_to_and_deleted(conversations: ConversationStore, clock: Clock) -> None:
    made = conversations.create(TENANT, KEY, user_hash(USER))
    assert made.id.startswith("conv_") and len(made.id) == 37 and made.turns == ()
    assert made.expires_at == clock() + PERIOD
    assert conversations.get(TENANT, KEY, made.id) == made
    clock.advance(timedelta(hours=1))
    first = conversations.append(TENANT, KEY, made.id, turn(1, clock, question="Who léased it? ✓"))
    clock.advance(timedelta(hours=1))
    second = conversations.append(TENANT, KEY, made.id, turn(2, clock))
    assert second.expires_at == clock() + PERIOD > first.expires_at  # each turn extends it
    stored = conversations.get(TENANT, KEY, made.id)
    assert stored == second and stored.created_at == made.created_at
    assert [t.answer_id for t in stored.turns] == ["ans_1", "ans_2"] and stored.turns[0].question == "Who léased it? ✓"
    assert stored.turns[1].retrieval_query == "query 2" and stored.turns[1].at == clock()
    assert stored.messages == [
        ChatMessage(role="user", content="Who léased it? ✓"), ChatMessage(role="assistant", content="answer 1 [1]."),
        ChatMessage(role="user", content="question 2?"), ChatMessage(role="assistant", content="answer 2 [1]."),
    ]  # fmt: skip
    assert conversations.create(TENANT, KEY, None).user_hash is None
    assert conversations.delete(TENANT, KEY, made.id) is True
    assert conversations.get(TENANT, KEY, made.id) is None
    assert conversations.delete(TENANT, KEY, made.id) is False
    with pytest.raises(ConversationNotFoundError, match="start a new one"):
        conversations.append(TENANT, KEY, made.id, turn(3, clock))


def test_another_tenants_or_keys_id_is_not_found(conversations: ConversationStore, clock: Clock) -> None:
    made = conversations.create(TENANT, KEY, user_hash(USER))
    conversations.append(TENANT, KEY, made.id, turn(1, clock))
    for tenant, key in [(OTHER_TENANT, KEY), (TENANT, OTHER_KEY), (OTHER_TENANT, OTHER_KEY)]:
        assert conversations.get(tenant, key, made.id) is None
        with pytest.raises(ConversationNotFoundError):
            conversations.append(tenant, key, made.id, turn(2, clock))
        assert conversations.delete(tenant, key, made.id) is False
    stored = conversations.get(TENANT, KEY, made.id)
    assert stored is not None and len(stored.turns) == 1  # untouched by the others' attempts


@pytest.mark.parametrize(
    "hostile",
    ["", "conv_", "*", "conv_*", "conv_' OR '1'='1", "conv_%", "x' OR 1=1 --", "../conv", "conv_" + "A" * 32,
     "conv_" + "0" * 31, "conv_" + "0" * 33, "conv_" + "0" * 32 + "\n", f"{KEY_PREFIX}*", "conv_" + "g" * 32],
)  # fmt: skip
def test_an_id_not_of_the_servers_shape_is_never_found(
    conversations: ConversationStore, clock: Clock, hostile: str
) -> None:
    made = conversations.create(TENANT, KEY, user_hash(USER))
    assert conversations.get(TENANT, KEY, hostile) is None
    with pytest.raises(ConversationNotFoundError):
        conversations.append(TENANT, KEY, hostile, turn(1, clock))
    assert conversations.delete(TENANT, KEY, hostile) is False
    assert conversations.get(TENANT, KEY, made.id) == made  # nothing else was touched
    for near in (made.id.upper(), made.id + " ", made.id[:-1]):
        assert conversations.get(TENANT, KEY, near) is None


# --- expiry and retention ------------------------------------------------------------------------------------------


def test_a_conversation_expires_a_period_after_its_last_turn_and_prune_removes_it(
    conversations: ConversationStore, clock: Clock
) -> None:
    quiet = conversations.create(TENANT, KEY, user_hash(USER))
    busy = conversations.create(TENANT, KEY, user_hash(USER))
    clock.advance(PERIOD - timedelta(seconds=1))
    assert conversations.get(TENANT, KEY, quiet.id) is not None  # a second before its expiry
    conversations.append(TENANT, KEY, busy.id, turn(1, clock))  # extends busy by a whole period
    clock.advance(timedelta(seconds=1))
    assert conversations.get(TENANT, KEY, quiet.id) is None
    with pytest.raises(ConversationNotFoundError):
        conversations.append(TENANT, KEY, quiet.id, turn(2, clock))
    assert conversations.delete(TENANT, KEY, quiet.id) is False  # expired: not there for its owner either
    assert conversations.prune(clock()) == 0  # the delete removed it
    third = conversations.create(TENANT, KEY, None)
    clock.advance(timedelta(hours=1))
    conversations.append(TENANT, KEY, busy.id, turn(3, clock))
    clock.advance(PERIOD - timedelta(minutes=1))
    assert conversations.get(TENANT, KEY, busy.id) is not None
    assert conversations.prune(clock()) == 1  # third, expired now; busy is not yet
    assert conversations.get(TENANT, KEY, third.id) is None and conversations.get(TENANT, KEY, busy.id) is not None
    assert conversations.prune(clock()) == 0  # idempotent


def test_the_retention_run_prunes_expired_conversations(
    conversations: ConversationStore, state: StateStore, clock: Clock
) -> None:
    old = conversations.create(TENANT, KEY, user_hash(USER))
    clock.advance(PERIOD + timedelta(days=1))
    new = conversations.create(TENANT, KEY, user_hash(USER))
    periods = periods_from({name: field.default for name, field in flat_fields().items()})
    assert periods["conversations"] == PERIOD
    retention = Retention(state, None, periods, CLI, conversations=conversations)
    dry = retention.apply(dry_run=True, now=clock())
    [dry_run] = [run for run in dry.stores if run.store == "conversations"]
    assert not dry_run.removed and conversations.get(TENANT, KEY, new.id) is not None
    report = retention.apply(now=clock())
    [run] = [run for run in report.stores if run.store == "conversations"]
    assert report.ok and run.removed == {"conversations": 1} and run.period == "7 days"
    assert conversations.get(TENANT, KEY, new.id) is not None and conversations.get(TENANT, KEY, old.id) is None
    without = Retention(state, None, periods, CLI).apply(now=clock())  # no store: reported, not failed
    assert without.ok and next(r for r in without.stores if r.store == "conversations").note


# --- limits and concurrency ----------------------------------------------------------------------------------------


def test_a_turn_past_a_limit_is_refused_before_anything_is_written(
    make: Callable[..., ConversationStore], clock: Clock
) -> None:
    conversations = make(max_turns=2, max_chars=100)
    made = conversations.create(TENANT, KEY, user_hash(USER))
    conversations.append(TENANT, KEY, made.id, turn(1, clock, "q" * 20, "a" * 20))
    before = conversations.get(TENANT, KEY, made.id)
    clock.advance(timedelta(hours=1))
    with pytest.raises(ConversationFullError, match="start a new conversation") as chars:
        conversations.append(TENANT, KEY, made.id, turn(2, clock, "q" * 30, "a" * 31))
    assert (chars.value.limit, chars.value.would_hold, chars.value.most) == ("conversation_max_chars", 101, 100)
    assert conversations.get(TENANT, KEY, made.id) == before  # not even its expiry moved
    conversations.append(TENANT, KEY, made.id, turn(2, clock, "q" * 30, "a" * 30))  # exactly 100
    full = conversations.get(TENANT, KEY, made.id)
    with pytest.raises(ConversationFullError, match="3 turns, over its limit of 2") as turns:
        conversations.append(TENANT, KEY, made.id, turn(3, clock, "q", "a"))
    assert turns.value.limit == "conversation_max_turns"
    assert conversations.get(TENANT, KEY, made.id) == full and full is not None and len(full.turns) == 2


def test_concurrent_appends_lose_no_turn(make: Callable[..., ConversationStore], clock: Clock) -> None:
    conversations = make(max_turns=1000, max_chars=1_000_000)
    made = conversations.create(TENANT, KEY, user_hash(USER))
    threads, each = 8, 6
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def append_some(worker: int) -> None:
        try:
            start.wait()
            for n in range(each):
                conversations.append(TENANT, KEY, made.id, turn(worker * 100 + n, clock))
        except BaseException as exc:
            errors.append(exc)

    running = [threading.Thread(target=append_some, args=(w,)) for w in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(60)
    assert errors == []
    stored = conversations.get(TENANT, KEY, made.id)
    assert stored is not None
    assert sorted(t.answer_id for t in stored.turns) == sorted(f"ans_{w * 100 + n}" for w in range(threads)
                                                               for n in range(each))  # fmt: skip
    for worker in range(threads):  # each thread's turns in the order it appended them
        mine = [t.answer_id for t in stored.turns if t.answer_id.startswith(f"ans_{worker * 100}")]
        assert mine == sorted(mine, key=lambda a: int(a.removeprefix("ans_")))


def test_a_limit_holds_under_concurrent_appends(make: Callable[..., ConversationStore], clock: Clock) -> None:
    conversations = make(max_turns=5)
    made = conversations.create(TENANT, KEY, None)
    outcomes: list[str] = []

    def append_one(n: int) -> None:
        try:
            conversations.append(TENANT, KEY, made.id, turn(n, clock))
            outcomes.append("ok")
        except ConversationFullError:
            outcomes.append("full")

    running = [threading.Thread(target=append_one, args=(n,)) for n in range(12)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(60)
    stored = conversations.get(TENANT, KEY, made.id)
    assert stored is not None and len(stored.turns) == 5 and sorted(outcomes) == ["full"] * 7 + ["ok"] * 5


# --- erasure --------------------------------------------------------------------------------------------------------


def seen_key(state: StateStore, tenant: str, key_id: str) -> None:
    """A key the usage ledger counted: erasure tries the user's subject under it."""
    with state.transaction(write=True) as cur:
        cur.execute(
            "INSERT INTO usage_daily (day, tenant, key_id, requests, cached, prompt_tokens, completion_tokens, "
            "cost_usd) VALUES (?, ?, ?, 1, 0, 1, 1, 0.0)",
            ("2026-01-01", tenant, key_id),
        )


def test_erasing_a_user_removes_their_conversations_under_every_key_and_no_one_elses(
    conversations: ConversationStore, state: StateStore, clock: Clock
) -> None:
    seen_key(state, TENANT, KEY)
    seen_key(state, TENANT, OTHER_KEY)
    mine = [
        conversations.create(TENANT, KEY, user_hash(USER)),
        conversations.create(TENANT, KEY, user_hash(USER)),
        conversations.create(TENANT, OTHER_KEY, user_hash(USER, OTHER_KEY)),
        conversations.create(TENANT, ANONYMOUS_KEY_ID, user_hash(USER, ANONYMOUS_KEY_ID)),
    ]
    conversations.append(TENANT, KEY, mine[0].id, turn(1, clock))
    expired = conversations.create(TENANT, KEY, user_hash(USER))
    clock.advance(PERIOD)  # an expired one, not pruned yet, goes too
    mine = [conversations.create(TENANT, KEY, user_hash(USER)), *mine]
    others = [
        (TENANT, KEY, conversations.create(TENANT, KEY, user_hash(OTHER_USER))),
        (TENANT, KEY, conversations.create(TENANT, KEY, None)),
        (OTHER_TENANT, KEY, conversations.create(OTHER_TENANT, KEY, user_hash(USER, tenant=OTHER_TENANT))),
    ]
    eraser = Eraser(ErasureStores(state=state, subjects=SubjectKeys(state), conversations=conversations))
    report = eraser.erase(ErasureSubject(kind="user", tenant=TENANT, identifier=USER))
    assert report.removed["conversations"] == 6  # under each key the eraser knows of, the expired ones too
    for made in [*mine, expired]:
        assert conversations.get(made.tenant, made.key_id, made.id) is None
    for tenant, key, made in others:
        assert conversations.get(tenant, key, made.id) == made
    assert conversations.prune(clock() + PERIOD * 2) == 3  # only the others were left
    again = eraser.erase(ErasureSubject(kind="user", tenant=TENANT, identifier=USER))
    assert again.removed["conversations"] == 0
    document = eraser.erase(ErasureSubject(kind="document", tenant=TENANT, identifier="d1", collection="c"))
    assert "conversations" not in document.removed
    assert conversations.erase_user(TENANT, user_hash(USER)) == 0  # idempotent


# --- Redis down -----------------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_a_redis_that_is_down_is_a_store_unavailable_error(tmp_path: Path, clock: Clock) -> None:
    down = RedisConversations(f"redis://127.0.0.1:{closed_port()}/0", PERIOD, ConversationLimits(), clock)
    calls: list[Callable[[], Any]] = [
        lambda: down.create(TENANT, KEY, None),
        lambda: down.get(TENANT, KEY, "conv_" + "0" * 32),
        lambda: down.append(TENANT, KEY, "conv_" + "0" * 32, turn(1, clock)),
        lambda: down.delete(TENANT, KEY, "conv_" + "0" * 32),
        lambda: down.erase_user(TENANT, user_hash(USER)),
        lambda: down.prune(clock()),
    ]
    for call in calls:
        with pytest.raises(ConversationStoreUnavailableError):
            call()
    state = StateStore.open(None, tmp_path / "state.sqlite")
    try:
        eraser = Eraser(ErasureStores(state=state, subjects=SubjectKeys(state), conversations=down))
        with pytest.raises(ErasureIncompleteError, match="run it again"):
            eraser.erase(ErasureSubject(kind="user", tenant=TENANT, identifier=USER))
    finally:
        state.close()


def test_a_store_needs_a_period(tmp_path: Path) -> None:
    state = StateStore.open(None, tmp_path / "state.sqlite")
    try:
        with pytest.raises(ValueError, match="above 0"):
            StateConversations(state, timedelta(0))
    finally:
        state.close()
