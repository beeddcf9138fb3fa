from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Ready to answer: the models are loaded and the index answers."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        points = services.index.count()
    except Exception as exc:  # any index failure means not ready, never a 500
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    return {"status": "ready", "points": points, "embedding_model": services.embedder.model_id}
