"""``RequestContext``: the pure ASGI middleware every HTTP request passes through, outermost of ragops' own.

It gives the request its id (``X-Request-ID`` if sane, else a new one) for every log line and the response,
refuses bodies over ``max_body_bytes`` (413, unread), answers any exception no handler took in the error shape
(503 for an index that cannot serve, else 500) on a connection that stays open, counts every error status in
``ragops_errors_total``, and logs one line per request: the traceback rides on that line when there is one.

With the audit trail on, every request to a route that is not public gets one audit record, and its response is
released only once that record is durable (``AuditHook``): an ordinary response's start is held until then; an
event stream's ``[DONE]`` is (the record is complete only when the stream is). A record that cannot be written
turns the response into a 503 "audit trail unavailable": never an unaudited success. A request no key admitted
that did not succeed is counted per client address and minute instead (``AuditLog.refused``: anyone can send
those). A chat stream that ends before its answer is settled with what it generated (``Exchange.cut``) before its
record is made.

A pure ASGI middleware rather than ``@app.middleware("http")``: that one sees responses only, so an exception
raised by a route went past it to Starlette's last-resort handler, outside the request id, uncounted, unlogged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import (
    ApiError,
    BodyTooLargeError,
    body_too_large_message,
    error_body,
    error_response,
    unexpected_error,
)
from app.logs import request_id
from safety.pii import redact
from serving.contracts.answer import Answer, CutOutcome
from serving.governance.access import Principal
from serving.governance.audit import AuditAction, AuditLog, AuditRecord, RequestFacts, build_record

log = logging.getLogger("ragops.http")

# Public by design (probes, Prometheus, the page and its docs): no audit record. Nor has a path that matches no
# route (a 404 that reached nothing): recording those would let anyone grow the trail for free.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json"})
PUBLIC_PREFIXES = ("/docs/",)
AUDIT_UNAVAILABLE = "audit trail unavailable"
AUDIT_WAIT_S = 30.0  # the longest a response waits for its record's commit before it becomes a 503
DONE = "data: [DONE]\n\n"  # an event stream's last event (app.api.sse ends every stream with it)


@dataclass(kw_only=True)
class Exchange:
    """One request as the middleware tracks it; a stream that fails after its 200 reports here, and the routes
    note what the audit record needs (who called, what the answer was, what an admin did)."""

    status: int = 0  # the response's status once sent
    error: BaseException | None = None  # the exception that ended the request or its stream
    error_status: int | None = None  # the status that error was (or, mid-stream, would have been) answered with
    principal: Principal | None = None  # who admission let in
    answer: Answer | None = None  # the final answer of a chat request
    action: AuditAction | None = None  # what an admin route did (keys.create, budgets.set, prompts.promote...)
    question: str | None = None  # a chat request's question, as asked (the audit record hashes or redacts it)
    user: str | None = None  # a chat request's ``user``: its audit record keeps a keyed hash of it
    client: str | None = None  # the caller's address as admission saw it (behind trusted proxies, the forwarded one)
    cut: Callable[[CutOutcome], None] | None = None  # settles a chat stream that ends before its answer
    reservation: str | None = None  # the budget reservation of a chat request: its audit record releases it

    @property
    def started(self) -> bool:
        return self.status != 0


current_exchange: ContextVar[Exchange | None] = ContextVar("current_exchange", default=None)


def note_admin_action(action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    """What an admin route did, for the request's audit record."""
    exchange = current_exchange.get()
    if exchange is not None:
        exchange.action = AuditAction(action=action, target=target, detail=detail)


def report_failure(exc: BaseException) -> ApiError:
    """Record that the current request failed with ``exc`` (logged and counted once, when it ends); returns
    what to tell the client."""
    error = unexpected_error(exc, request_id.get())
    exchange = current_exchange.get()
    if exchange is not None:
        exchange.error, exchange.error_status = exc, error.status
    return error


class RequestContext:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(Headers(scope=scope).get("x-request-id", ""))
        id_token, exchange = request_id.set(rid), Exchange()
        exchange_token = current_exchange.set(exchange)
        started = time.perf_counter()
        tracked = _tracking(send, exchange, rid)
        hook = AuditHook.of(scope, receive, exchange, rid, started)
        try:
            await self._serve(scope, receive, tracked if hook is None else hook.holding(tracked), exchange)
        finally:
            if hook is not None:
                hook.finish()
            _count(scope, exchange)
            _log_request(scope, exchange, started)
            current_exchange.reset(exchange_token)
            request_id.reset(id_token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            # Refused before a byte is read; the server discards the body as it arrives.
            await error_response(413, body_too_large_message(self.max_body_bytes))(scope, receive, send)
            return
        try:
            await self.app(scope, _limited(receive, self.max_body_bytes), send)
        except Exception as exc:  # the last place any exception can still get an answer
            error = report_failure(exc)
            if not exchange.started:
                await error_response(error.status, error.message, code=error.code)(scope, receive, send)
            # Else the body was under way: it stays incomplete, so the client sees the failure.


class AuditHook:
    """One request's audit record: written, and waited for without blocking the event loop, before the response
    (or the end of its event stream) is released."""

    def __init__(
        self, audit: AuditLog, scope: Scope, receive: Receive, exchange: Exchange, rid: str, started: float
    ) -> None:
        self._audit, self._scope, self._receive = audit, scope, receive
        self._exchange, self._rid, self._started = exchange, rid, started
        self._recorded = False
        self._refused = False  # the response was replaced by a 503: the rest of the original is dropped
        self._stream = False
        self._status = 0

    @classmethod
    def of(cls, scope: Scope, receive: Receive, exchange: Exchange, rid: str, started: float) -> AuditHook | None:
        """The hook of a request that is audited: not a public route, with the audit trail on."""
        path = str(scope["path"])
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        services = getattr(scope["app"].state, "services", None) if "app" in scope else None
        audit: AuditLog | None = services.audit if services is not None else None
        return (
            None
            if audit is None
            else cls(audit=audit, scope=scope, receive=receive, exchange=exchange, rid=rid, started=started)
        )

    def holding(self, send: Send) -> Send:
        async def audited(message: Message) -> None:
            if self._refused:
                return
            if message["type"] == "http.response.start" and self._scope.get("route") is None:
                self._recorded = True  # no route matched: nothing was reached, nothing to record
            elif message["type"] == "http.response.start":
                self._status = int(message["status"])
                self._stream = _is_event_stream(message)
                if self._unadmitted():
                    self._tally()
                elif not self._stream and not await self._durable():
                    self._refused = True
                    await error_response(503, AUDIT_UNAVAILABLE, code="audit_unavailable")(
                        self._scope, self._receive, send
                    )
                    return
            elif self._stream and not self._recorded and _ends_stream(message) and not await self._durable():
                # The status went out with the first event: the stream ends in the error shape instead.
                await send({"type": "http.response.body", "body": _unavailable_event(), "more_body": True})
            await send(message)

        return audited

    async def _durable(self) -> bool:
        """Write the record and wait for its commit; False (logged, counted as a 503) when it failed."""
        self._recorded = True
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._audit.submit(self._record())), AUDIT_WAIT_S)
        except Exception as exc:  # a failed commit, or a writer that does not answer in time
            self._exchange.error, self._exchange.error_status = exc, 503
            return False
        return True

    def finish(self) -> None:
        """A request that ended before its response was released (its client left): recorded all the same; no
        one waits for it."""
        if not self._recorded and self._scope.get("route") is not None:
            if self._unadmitted():
                self._tally()
                return
            self._recorded = True
            self._audit.submit(self._record()).add_done_callback(_log_lost_record)

    def _unadmitted(self) -> bool:
        """A request no key admitted that did not succeed (401, an address's 429, a body refused before
        admission): counted per address and minute, never one durable record each (anyone can send them)."""
        return self._exchange.principal is None and (self._status == 0 or self._status >= 400)

    def _tally(self) -> None:
        self._recorded = True
        client = self._scope.get("client")
        peer = str(client[0]) if client else "unknown"
        self._audit.refused(self._exchange.client or peer, self._status)

    def _record(self) -> AuditRecord:
        exchange = self._exchange
        if exchange.answer is None and exchange.cut is not None:  # a chat stream that ended before its answer
            draining = getattr(self._scope["app"].state, "draining", False) if "app" in self._scope else False
            exchange.cut("failed" if exchange.error else "cut_by_shutdown" if draining else "client_closed")
        facts = RequestFacts(
            request_id=self._rid,
            method=str(self._scope["method"]),
            route=_route_template(self._scope),
            status=exchange.error_status or self._status or exchange.status,
            latency_ms=(time.perf_counter() - self._started) * 1000,
        )
        return build_record(
            facts=facts,
            principal=exchange.principal,
            answer=exchange.answer,
            question=exchange.question,
            action=exchange.action,
            content=self._audit.content,
            reservation=exchange.reservation,
            user_ref=self._audit.user_ref(exchange.principal, exchange.user),
        )


def _is_event_stream(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in start["headers"]
    )


def _ends_stream(message: Message) -> bool:
    return message["type"] == "http.response.body" and (
        message.get("body") == DONE.encode() or not message.get("more_body", False)
    )


def _unavailable_event() -> bytes:
    body = error_body(503, AUDIT_UNAVAILABLE, code="audit_unavailable").model_dump()
    return f"data: {json.dumps(body)}\n\n".encode()


def _route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/documents/{doc_id}``), else the path with personal data redacted."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else redact(loggable_path(scope))


def _log_lost_record(future: Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("audit record of a request whose client left was not written", exc_info=future.exception())


def _request_id(given: str) -> str:
    return given if given.isascii() and given.isalnum() and len(given) <= 64 else uuid.uuid4().hex


def _tracking(send: Send, exchange: Exchange, rid: str) -> Send:
    """``send`` that notes the status and adds the ``x-request-id`` header."""

    async def tracked(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = int(message["status"])
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
        await send(message)

    return tracked


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that counts body bytes (a chunked body declares no length) and stops past ``limit``."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLargeError(limit)
        return message

    return limited


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _count(scope: Scope, exchange: Exchange) -> None:
    services = getattr(scope["app"].state, "services", None) if "app" in scope else None
    status = exchange.error_status or exchange.status
    if status >= 400 and services is not None:
        services.metrics.errors.labels(str(status)).inc()


def _log_request(scope: Scope, exchange: Exchange, started: float) -> None:
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": _logged_path(scope),
        "status": exchange.status,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if exchange.error_status is not None and exchange.error_status != exchange.status:
        fields["error_status"] = exchange.error_status  # a stream that failed after its 200
    failed = exchange.error is not None or exchange.status >= 500
    log.log(logging.ERROR if failed else logging.INFO, "request", exc_info=exchange.error, extra=fields)


# Routes whose path names a data subject (an erasure's document or user): logged by their template, since a log
# line written while erasing someone must not name them.
SUBJECT_ROUTES = "/v1/admin/subjects/"


def _logged_path(scope: Scope) -> str:
    path = loggable_path(scope)
    if not path.startswith(SUBJECT_ROUTES):
        return path
    template = getattr(scope.get("route"), "path", None)  # no route matched: the subject is cut off all the same
    return template if isinstance(template, str) else SUBJECT_ROUTES + "..."


def loggable_path(scope: Scope) -> str:
    """The path without the query string (whose values are the caller's data), percent-decoded until stable
    so that the log's redaction sees ``alice@example.com`` even when it came as ``alice%2540example.com``."""
    raw: bytes = scope.get("raw_path") or b""
    path = raw.decode("latin-1").partition("?")[0] or str(scope["path"])
    for _ in range(4):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return path
