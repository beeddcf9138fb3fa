from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    """``/readyz``'s body: probes read the status code; people read the rest."""

    status: Literal["ready", "degraded", "starting", "draining", "unavailable"]
    points: int | None = Field(None, description="Points in the index (ready and degraded).")
    embedding_model: str | None = Field(None, description="The embedding model's identity (ready and degraded).")
    reason: str | None = Field(
        None,
        description="Why the index does not answer (unavailable), or why answers come from the fallback "
        "generator now (degraded: the first generator is down or restarting; still 200, answers are served).",
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {"model": Readiness, "description": "Ready."},
        503: {"model": Readiness, "description": "Starting, shutting down, or the index does not answer."},
    },
)
def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Ready to answer: the models are loaded and the index answers. ``degraded`` (still 200: answers are served,
    by the fallback generator) while the first generator is down, e.g. its worker restarting after a crash."""
    if getattr(request.app.state, "draining", False):  # set by serve on SIGTERM: load balancers stop sending
        return JSONResponse({"status": "draining"}, status_code=503)
    services = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        points = services.index.count()
    except Exception as exc:  # any index failure means not ready, never a 500
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    ready = {"status": "ready", "points": points, "embedding_model": services.embedder.model_id}
    down = services.generator_down()
    return ready if down is None else {**ready, "status": "degraded", "reason": down}
