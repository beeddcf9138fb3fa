"""The FastAPI application factory (``create_app``); no work happens at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import chat, documents, health, openai_api, search, web
from app.api.errors import install_error_handlers
from app.container import Services, build_services
from app.settings import Settings, load_settings


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
    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(documents.router)
    app.include_router(chat.router)
    app.include_router(openai_api.router)
    app.include_router(web.router)
    return app
