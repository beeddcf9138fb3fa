"""The FastAPI application factory (``create_app``); no work happens at import time."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from app.api import chat, documents, health, metrics, openai_api, search, web
from app.api.errors import install_error_handlers
from app.api.openai_protocol import ChatCompletionChunk
from app.api.openapi import install_openapi
from app.api.schemas import ChatStreamEvent
from app.container import Services, build_services
from app.logs import request_id
from app.settings import Settings, load_settings

log = logging.getLogger("ragops.http")


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the app. Given ``services``, it uses (and does not close) them; else it builds its own at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            app.state.services = services
            yield
            return
        owned = build_services(settings or load_settings())
        _ = owned.pipeline  # load the generator now, not on the first question
        app.state.services = owned
        try:
            yield
        finally:
            app.state.services = None
            owned.close()

    app = FastAPI(
        title="ragops",
        version="0.1.0",
        description="Retrieval-augmented chat service: hybrid search over your documents.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openapi(app, [ChatStreamEvent, ChatCompletionChunk])

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Tags the request's log lines with its id, logs it, and counts error responses."""
        given = request.headers.get("x-request-id", "")
        token = request_id.set(given if given.isalnum() and len(given) <= 64 else uuid.uuid4().hex)
        started = time.perf_counter()
        try:
            response = await call_next(request)
            services = getattr(request.app.state, "services", None)
            if response.status_code >= 400 and services is not None:
                services.metrics.errors.labels(str(response.status_code)).inc()
            response.headers["x-request-id"] = request_id.get() or ""
            log.info(
                "request",
                extra={"method": request.method, "path": request.url.path, "status": response.status_code,
                       "ms": round((time.perf_counter() - started) * 1000, 1)},
            )  # fmt: skip
            return response
        finally:
            request_id.reset(token)

    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(documents.router)
    app.include_router(chat.router)
    app.include_router(openai_api.router)
    app.include_router(metrics.router)
    app.include_router(web.router)
    return app
