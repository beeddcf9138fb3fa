"""Server-sent events: one ``data:`` line of JSON per event, ``data: [DONE]`` at the end (OpenAI's convention,
which ragops' own stream follows too)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app.api.errors import error_body
from app.api.middleware import DONE, report_failure

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(event: BaseModel) -> str:
    # json.dumps' spacing, as the stream has always had: clients that match text keep working.
    return f"data: {json.dumps(event.model_dump(mode='json', by_alias=True), ensure_ascii=False)}\n\n"


def sse_response(events: Iterator[str]) -> StreamingResponse:
    """The events, then ``[DONE]``. A failure after the 200 went out can no longer change the status: the
    stream ends with one event in the error shape (as OpenAI's streams do), then ``[DONE]``; the request's log
    line carries the traceback and the error is counted under the status it would have had."""

    def with_done() -> Iterator[str]:
        try:
            yield from events
        except Exception as exc:  # any failure ends the stream in the documented way
            error = report_failure(exc)
            yield sse_event(error_body(error.status, error.message, code=error.code))
        yield DONE

    return StreamingResponse(with_done(), media_type="text/event-stream", headers=SSE_HEADERS)


def sse_responses(event_schema: str, description: str) -> dict[int | str, dict[str, object]]:
    """The OpenAPI entry of a 200 that is JSON, or with ``stream`` an event stream. Its schema is that of one
    event (as OpenAPI 3.2's ``itemSchema`` and schemathesis read it): a ``data`` field holding ``[DONE]`` or
    JSON, an ``event_schema`` or, after a failure, an ``ErrorResponse``."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{name}"} for name in (event_schema, "ErrorResponse")]}
    data = {
        "anyOf": [
            {"const": DONE.removeprefix("data: ").strip(), "description": "The end of the stream."},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
        ]
    }
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}
