"""The OpenAPI document and ``/docs``.

The document is FastAPI's, plus the schemas of the streamed events (which no route returns as JSON, so FastAPI
does not list them), without the 422 responses FastAPI adds by default (ragops answers invalid requests with
400 in the OpenAI error shape, documented on each route), and with the errors any operation can answer: 500,
and for a body 400 (malformed JSON) and 413 (larger than max_body_bytes).

``/docs`` is Swagger UI from assets served here (the fastapi-offline package ships Swagger UI 5, which reads
OpenAPI 3.1), not from a CDN: the service works, docs included, on a machine that reaches nothing outside.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.errors import error_responses

DOCS_URL = "/docs"
_ASSETS_URL = "/docs/assets"


def install_openapi(app: FastAPI, event_models: list[type[BaseModel]]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _add_event_schemas(schema, event_models)
            _drop_422(schema)
            _add_common_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_event_schemas(schema: dict[str, Any], models: list[type[BaseModel]]) -> None:
    _, definitions = models_json_schema(
        [(model, "serialization") for model in models], ref_template="#/components/schemas/{model}"
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in definitions.get("$defs", {}).items():
        components.setdefault(name, definition)


def _drop_422(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _add_common_errors(schema: dict[str, Any]) -> None:
    """The errors no route raises itself: the middleware's 413 and 500, FastAPI's 400 for malformed JSON."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            statuses = (400, 413, 500) if "requestBody" in operation else (500,)
            responses = operation.setdefault("responses", {})
            for status in statuses:
                responses.setdefault(str(status), _error_entry(status))


def _error_entry(status: int) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    description = error_responses(status)[status]["description"]
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def install_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs``, its script, style sheet and icon served from the installed package."""
    app.mount(_ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_ASSETS_URL}/favicon.png",
            # Swagger UI would otherwise send the document to validator.swagger.io for its badge.
            swagger_ui_parameters={"validatorUrl": None},
        )
