"""The small chat page at ``/``: one static file, no build step; it streams from ``/v1/chat``."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["web"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(resources.files("app").joinpath("static/index.html").read_text(encoding="utf-8"))
