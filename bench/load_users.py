"""Locust users for ``bench/load.py``: run only by the ``locust`` CLI in its own process (Locust monkey-patches
the standard library with gevent on import, so nothing else imports this file).

The parent writes a plan (``--plan FILE``, JSON: hosts, duration, the arrival schedule, the question pools) and
reads back ``records_path`` (JSON: the first arrival's time and one record per request).

How open-loop: arrivals follow a fixed schedule, not the users' pace. User ``u`` of ``N`` sends its ``k``-th
request at ``start + (u + k * N) / rate`` seconds, so the users together send ``rate`` requests a second, evenly
spaced, whatever the latency, as long as no request takes longer than a user's period (``N / rate``, 2 s here).
A slower request delays that user's next ones (at most ``N`` requests are ever in flight); each records how late
it started, and the parent adds that lag to its latency (the coordinated-omission correction), so an overloaded
server shows as the latency an on-time client would have seen, not as a lower load. Every arrival due inside the
step is sent, late or not.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import User, events, task
from locust.contrib.fasthttp import FastHttpUser

# The mix of request types, by share of arrivals (the plan may give its own).
MIX = {"chat_cached": 50, "chat_unique": 30, "search": 15, "chat_stream": 5}
IDLE_S = 3600.0  # a finished user's wait: the run ends before it does


@dataclass(kw_only=True)
class Plan:
    hosts: list[str]
    start_at: float  # epoch seconds of the first arrival: set when Locust starts the test
    lead_s: float  # from the test's start to the first arrival: every user is spawned by then
    duration_s: float
    rate: float  # arrivals a second, all users together
    users: int
    repeated: list[str]  # questions already answered once: cache hits
    unique: list[str]  # questions asked once each in this step
    searches: list[str]
    chat_collection: str
    ingest_collection: str
    ingest_every_s: float
    ingest_documents: list[dict[str, str]]
    records_path: str
    seed: int
    mix: dict[str, int] = field(default_factory=lambda: dict(MIX))
    api: str = "ragops"  # or "peer": bench/peer_poc.py's /chat and /search
    api_key: str | None = None  # sent as a bearer key (ragops)
    records: list[dict[str, Any]] = field(default_factory=list)
    finished: int = 0  # users past the step's last arrival

    def past_end(self, due: float) -> bool:
        return due >= self.start_at + self.duration_s

    user_numbers: Iterator[int] = field(default_factory=itertools.count)
    unique_left: Iterator[str] = field(default_factory=lambda: iter(()))


def add_plan_argument(parser: Any) -> None:
    parser.add_argument("--plan", type=str, default="", help="bench/load.py's plan (JSON)")


@cache
def load_plan(path: str) -> Plan:
    plan = Plan(**json.loads(Path(path).read_text()))
    plan.unique_left = iter(plan.unique)
    return plan


def finish(user: User, plan: Plan) -> None:
    """Counts a user past its last arrival; the last one ends the run (every arrival due has been answered)."""
    plan.finished += 1
    runner = user.environment.runner
    if plan.finished == plan.users + 1 and runner is not None:  # the scheduled users and the ingest trickle
        gevent.spawn(runner.quit)


def current_plan(user: User) -> Plan:
    options = user.environment.parsed_options
    assert options is not None
    return load_plan(str(options.plan))


def schedule_start(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "plan", "")
    if path:
        plan = load_plan(path)
        plan.start_at = time.time() + plan.lead_s


def record(name: str, response_time: float, response: Any, exception: Any, context: dict[str, Any], **_: Any) -> None:
    """One line per request: its type, status (0: no response), latency, and how late it started."""
    if "plan" not in context:
        return
    status = int(getattr(response, "status_code", 0) or 0)
    if name == "chat_cached" and status == 200 and not answered_from_cache(response):
        name = "chat_unique"  # a repeated question's first ask (no warm-up): it is answered, not looked up
    context["plan"].records.append({
        "type": name, "status": status, "latency_ms": response_time, "lag_ms": context["lag_ms"],
        "error": None if exception is None else type(exception).__name__,
    })  # fmt: skip


def answered_from_cache(response: Any) -> bool:
    """ragops says so in the answer; the peer has no cache (its answers say nothing, and count as not cached)."""
    try:
        return bool(response.json().get("cached"))
    except (ValueError, AttributeError):
        return False


def write_records(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "plan", "")
    if path:
        plan = load_plan(path)
        Path(plan.records_path).write_text(json.dumps({"start_at": plan.start_at, "records": plan.records}))


class ScheduledUser(FastHttpUser):
    """Sends the plan's mix on the plan's schedule, to one of the plan's hosts (users spread round-robin)."""

    host = "http://127.0.0.1"  # unused: every request names its replica's absolute URL
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.plan = current_plan(self)
        self.number = next(self.plan.user_numbers)
        self.base = self.plan.hosts[self.number % len(self.plan.hosts)]
        self.random = random.Random(self.plan.seed * 100_003 + self.number)
        self.arrivals = 0
        self.done = False
        time.sleep(max(0.0, self.next_arrival() - time.time()))

    def next_arrival(self) -> float:
        return self.plan.start_at + (self.number + self.arrivals * self.plan.users) / self.plan.rate

    def wait_time(self) -> float:
        if self.done:
            return IDLE_S
        due = self.next_arrival()
        return 0.0 if self.plan.past_end(due) else max(0.0, due - time.time())

    @task
    def arrive(self) -> None:
        due = self.next_arrival()
        self.arrivals += 1
        if self.plan.past_end(due):
            self.done = True
            finish(self, self.plan)
            return
        kind = self.random.choices(list(self.plan.mix), weights=list(self.plan.mix.values()))[0]
        context = {"plan": self.plan, "lag_ms": max(0.0, (time.time() - due) * 1000)}
        path, body = self.request_for(kind) if self.plan.api == "ragops" else self.peer_request_for(kind)
        headers = {"Authorization": f"Bearer {self.plan.api_key}"} if self.plan.api_key else {}
        self.client.post(f"{self.base}{path}", json=body, name=kind, context=context, headers=headers)

    def peer_request_for(self, kind: str) -> tuple[str, dict[str, Any]]:
        """The peer POC's routes: no collections, no cache (a repeated question is answered again)."""
        if kind == "search":
            return "/search", {"query": self.random.choice(self.plan.searches), "top_k": 4}
        if kind == "chat_cached":
            return "/chat", {"question": self.random.choice(self.plan.repeated)}
        return "/chat", {"question": next(self.plan.unique_left)}

    def request_for(self, kind: str) -> tuple[str, dict[str, Any]]:
        collection = self.plan.chat_collection
        if kind == "chat_cached":
            return "/v1/chat", {"question": self.random.choice(self.plan.repeated), "collection": collection}
        if kind == "search":
            return "/v1/search", {"query": self.random.choice(self.plan.searches), "collection": collection}
        question = next(self.plan.unique_left)  # the parent gives each step more than it can use
        return "/v1/chat", {"question": question, "collection": collection, "stream": kind == "chat_stream"}


class IngestTrickle(FastHttpUser):
    """One document every ``ingest_every_s`` into its own collection (the chat collection's cache stays valid)."""

    fixed_count = 1
    host = "http://127.0.0.1"
    network_timeout = 60.0

    def on_start(self) -> None:
        self.plan = current_plan(self)
        self.documents = iter(self.plan.ingest_documents)
        self.sent = 0
        self.done = False
        time.sleep(max(0.0, self.plan.start_at - time.time()))

    def wait_time(self) -> float:
        if self.done:
            return IDLE_S
        due = self.plan.start_at + self.sent * self.plan.ingest_every_s
        return 0.0 if self.plan.past_end(due) else max(0.0, due - time.time())

    @task
    def ingest(self) -> None:
        due = self.plan.start_at + self.sent * self.plan.ingest_every_s
        self.sent += 1
        document = next(self.documents, None)
        if self.plan.past_end(due):
            self.done = True
            finish(self, self.plan)
            return
        if document is None:
            return
        base = self.plan.hosts[self.sent % len(self.plan.hosts)]
        body = {"documents": [document], "collection": self.plan.ingest_collection}
        context = {"plan": self.plan, "lag_ms": max(0.0, (time.time() - due) * 1000)}
        self.client.post(f"{base}/v1/documents", json=body, name="ingest", context=context)


# Locust finds its listeners at import: the one thing this file does on import (only Locust imports it).
events.init_command_line_parser.add_listener(add_plan_argument)  # type: ignore[no-untyped-call]
events.test_start.add_listener(schedule_start)  # type: ignore[no-untyped-call]
events.request.add_listener(record)  # type: ignore[no-untyped-call]
events.quitting.add_listener(write_records)  # type: ignore[no-untyped-call]
