"""Server-sent events: one ``data:`` line of JSON per event, ``data: [DONE]`` at the end (OpenAI's convention,
which ragops' own stream follows too)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse_event(event: BaseModel) -> str:
    # json.dumps' spacing, as the stream has always had: clients that match text keep working.
    return f"data: {json.dumps(event.model_dump(mode='json', by_alias=True), ensure_ascii=False)}\n\n"


def sse_response(events: Iterator[str]) -> StreamingResponse:
    """The events, then ``[DONE]``."""

    def with_done() -> Iterator[str]:
        yield from events
        yield DONE

    return StreamingResponse(with_done(), media_type="text/event-stream", headers=SSE_HEADERS)


def sse_responses(event_schema: str, description: str) -> dict[int | str, dict[str, object]]:
    """The OpenAPI entry of a 200 that is JSON, or with ``stream`` an event stream of ``event_schema`` events."""
    schema = {"$ref": f"#/components/schemas/{event_schema}"}
    return {200: {"description": description, "content": {"text/event-stream": {"schema": schema}}}}
