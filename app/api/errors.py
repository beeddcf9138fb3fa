"""OpenAI-style errors: ``{"error": {"type", "message", "param", "code"}}`` with the matching HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ragops.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
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
        404: "Not found: an unknown model, document, or a collection without documents.",
        503: "Not ready, or the index failed; nothing was written.",
    }
    return {status: {"model": ErrorResponse, "description": meaning[status]} for status in statuses}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    detail = ErrorDetail(type=_TYPES.get(status, "server_error"), message=message, param=param, code=code)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status)


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
    return error_response(exc.status_code, str(exc.detail))


def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.param, exc.code)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: logged with its traceback; the client still gets the documented error shape.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(Exception, _unexpected)
