"""OpenAI-style errors: ``{"error": {"type", "message", "param", "code"}}`` with the matching HTTP status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.index import IndexUnavailableError
from serving.governance.access import AccessDeniedError, LimitExceededError, UnauthenticatedError
from serving.infra.state_store import StateStoreUnavailableError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class ErrorDetail(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, ...")
    message: str
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="A machine-readable reason, e.g. greater_than_equal, invalid_api_key.")


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation can answer, all in the one error shape."""
    meaning = {
        400: "Bad request: invalid JSON, a field out of range, a blank question.",
        401: "Missing or invalid API key.",
        403: "The key's role is below the one this route needs; the message names it.",
        404: "Not found: an unknown model, document, or a collection without documents.",
        413: "The request body is larger than max_body_bytes; it was not read.",
        415: "A file is not a format read here, or its content is not what its name says; the message names it.",
        429: "A rate limit, token quota or budget is used up: param names it, Retry-After says when to retry.",
        500: "A bug: the server log has the traceback under the same request id.",
        503: "Not ready, or the index or its storage failed; the message says what was and was not written.",
    }
    return {status: {"model": ErrorResponse, "description": meaning[status]} for status in statuses}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class BodyTooLargeError(StarletteHTTPException):
    """Raised while a body is being read, once it grows past the limit: an HTTPException, so FastAPI's body
    parsing lets it through (it turns other exceptions into a 400) and the handler below answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, body_too_large_message(limit))


def body_too_large_message(limit: int) -> str:
    return f"request body is larger than {limit} bytes (max_body_bytes)"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorDetail(type=_TYPES.get(status, "server_error"), message=message, param=param, code=code)
    )


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code).model_dump(), status_code=status, headers=headers)


def unexpected_error(exc: BaseException, request_id: str | None) -> ApiError:
    """What the client is told about an exception no handler took: the index's own message when the index
    cannot serve (503, retry later), else a 500 naming the request id, whose log line has the traceback."""
    if isinstance(exc, IndexUnavailableError):
        return ApiError(503, str(exc), code="index_unavailable")
    if isinstance(exc, StateStoreUnavailableError):
        return ApiError(503, str(exc), code="state_store_unavailable")
    return ApiError(500, f"internal error; see the server log for request id {request_id}", code="internal_error")


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())]
    location = loc[1:] if loc[:1] in (["body"], ["query"], ["path"], ["header"]) else loc
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        message, param = "request body is not valid JSON", None
    elif tuple(first.get("loc", ())) == ("body",):
        message = "request body must be a JSON object (send Content-Type: application/json)"
    elif param:
        message = f"{param}: {message}"
    return error_response(400, message, param, code=str(first.get("type")) if first.get("type") else None)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # Starlette's own headers matter to clients: Allow on a 405, WWW-Authenticate on a 401.
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.param, exc.code)


def _access_denied(_: Request, exc: Exception) -> JSONResponse:
    """admission's refusals: 401, 403 naming the role needed, 429 naming the limit with Retry-After."""
    assert isinstance(exc, AccessDeniedError)
    if isinstance(exc, LimitExceededError):
        retry = {"Retry-After": str(exc.retry_after_s)}
        return error_response(exc.status, exc.message, exc.limit, exc.code, headers=retry)
    challenge = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthenticatedError) else None
    return error_response(exc.status, exc.message, code=exc.code, headers=challenge)


def install_error_handlers(app: FastAPI) -> None:
    """The errors a request can cause. Exceptions no handler takes (bugs, an index that fails) are answered,
    logged and counted by ``app.api.middleware.RequestContext``, around these handlers: Starlette's handler for
    ``Exception`` would run outside every middleware, without the request id, and drop the connection."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AccessDeniedError, _access_denied)
