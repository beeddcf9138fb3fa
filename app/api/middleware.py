"""``RequestContext``: the pure ASGI middleware every HTTP request passes through, outermost of ragops' own.

It gives the request its id (``X-Request-ID`` if sane, else a new one) for every log line and the response,
refuses bodies over ``max_body_bytes`` (413, unread), answers any exception no handler took in the error shape
(503 for an index that cannot serve, else 500) on a connection that stays open, counts every error status in
``ragops_errors_total``, and logs one line per request: the traceback rides on that line when there is one.

A pure ASGI middleware rather than ``@app.middleware("http")``: that one sees responses only, so an exception
raised by a route went past it to Starlette's last-resort handler, outside the request id, uncounted, unlogged.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ApiError, BodyTooLargeError, body_too_large_message, error_response, unexpected_error
from app.logs import request_id

log = logging.getLogger("ragops.http")


@dataclass
class Exchange:
    """One request as the middleware tracks it; a stream that fails after its 200 reports here."""

    status: int = 0  # the response's status once sent
    error: BaseException | None = None  # the exception that ended the request or its stream
    error_status: int | None = None  # the status that error was (or, mid-stream, would have been) answered with

    @property
    def started(self) -> bool:
        return self.status != 0


current_exchange: ContextVar[Exchange | None] = ContextVar("current_exchange", default=None)


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
        try:
            await self._serve(scope, receive, _tracking(send, exchange, rid), exchange)
        finally:
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
        "path": loggable_path(scope),
        "status": exchange.status,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if exchange.error_status is not None and exchange.error_status != exchange.status:
        fields["error_status"] = exchange.error_status  # a stream that failed after its 200
    failed = exchange.error is not None or exchange.status >= 500
    log.log(logging.ERROR if failed else logging.INFO, "request", exc_info=exchange.error, extra=fields)


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
