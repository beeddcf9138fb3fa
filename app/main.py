"""The FastAPI application factory (``create_app``); no work happens at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import (
    admin_audit,
    admin_keys,
    admin_prompts,
    admin_subjects,
    admin_usage,
    chat,
    conversations,
    documents,
    feedback,
    files,
    health,
    metrics,
    openai_api,
    search,
    web,
)
from app.api.errors import ErrorResponse, install_error_handlers
from app.api.hosts import AllowedHosts, HostCheck
from app.api.middleware import RequestContext
from app.api.openai_protocol import ChatCompletionChunk
from app.api.openapi import install_docs, install_openapi
from app.api.schemas import ChatStreamEvent
from app.container import Services, build_services
from app.parts import finish_erasures
from app.settings import Settings, load_settings

# Public first (probes, metrics, the page), then the API, then the admin routes.
_ROUTERS = (
    health, metrics, web, search, documents, files, chat, conversations, openai_api, feedback,
    admin_keys, admin_prompts, admin_audit, admin_usage, admin_subjects,
)  # fmt: skip


def create_app(
    settings: Settings | None = None, services: Services | None = None, bind_host: str | None = None
) -> FastAPI:
    """Build the app. Given ``services``, it uses (and does not close) them; else it builds its own at startup.
    ``bind_host``: the address ``serve`` listens on, which decides the ``Host`` names answered when the
    allowed_hosts setting does not (``app.api.hosts``)."""
    resolved = services.settings if services is not None else settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            app.state.services = services
            yield
            return
        owned = build_services(resolved)
        _ = owned.pipeline  # load the generator now, not on the first question
        _ = owned.admission, owned.audit  # open the state store now, not on the event loop during a request
        _ = owned.retention  # apply every store's retention now and daily
        finish_erasures(owned.eraser)
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
        docs_url=None,  # install_docs serves it without a CDN
        redoc_url=None,  # ReDoc has no local assets here; /docs is the one documentation page
    )
    install_error_handlers(app)
    install_openapi(app, [ChatStreamEvent, ChatCompletionChunk, ErrorResponse])  # a failed stream's last event
    install_docs(app)
    # Added before RequestContext, so it runs inside it: a refused Host is logged and counted like any error.
    app.add_middleware(HostCheck, allowed=AllowedHosts.of(resolved.access.allowed_hosts, bind_host))
    app.add_middleware(RequestContext, max_body_bytes=resolved.limits.max_body_bytes)

    for module in _ROUTERS:
        app.include_router(module.router)
    return app
