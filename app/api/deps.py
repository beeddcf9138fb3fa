"""Request dependencies: the wired services, the caller's tenant, and the pipeline request built from them."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.errors import ApiError
from app.container import Services
from retrieval.index import SCOPE_NAME_PATTERN, SCOPE_NAME_RULE, Scope, is_scope_name
from serving.stages import AnswerRequest


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "the service is starting; try again shortly")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# Documented with its pattern, checked in get_tenant (with API keys configured the key decides and the header is
# ignored, so FastAPI must not reject it first).
_TENANT_HEADER = Header(
    description=f"Tenant whose documents the request reads and writes ({SCOPE_NAME_RULE}); without API keys "
    "only, else the key decides. Default: the default_tenant setting.",
    json_schema_extra={"pattern": SCOPE_NAME_PATTERN},
)


def get_tenant(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_tenant: Annotated[str | None, _TENANT_HEADER] = None,
) -> str:
    """With API keys configured, the key decides the tenant; without, ``X-Tenant`` or the default does."""
    keys = services.settings.api_keys
    if keys:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        for key, tenant in keys.items():
            if secrets.compare_digest(token.encode(), key.encode()):
                return tenant
        raise ApiError(401, "invalid API key", code="invalid_api_key")
    if x_tenant is None:
        return services.settings.default_tenant
    if not is_scope_name(x_tenant):
        raise ApiError(400, f"X-Tenant must be {SCOPE_NAME_RULE}", param="X-Tenant")
    return x_tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def answer_request(
    services: Services,
    tenant: str,
    question: str,
    collection: str | None,
    top_k: int | None,
    history: list[dict[str, str]],
    user: str | None = None,
) -> AnswerRequest:
    """The pipeline's request for a question in the caller's tenant; a collection without documents is a 404."""
    settings = services.settings
    question = require_text(question, services, "question")
    scope = Scope(collection or settings.default_collection, tenant)
    if services.index.count(scope) == 0:
        raise ApiError(404, f"collection {scope.collection!r} has no documents", param="collection")
    return AnswerRequest(question, scope, top_k or settings.chat_top_k, history, user)


def require_text(text: str, services: Services, param: str) -> str:
    """A query or question: stripped, not blank, within the configured length."""
    text = text.strip()
    limit = services.settings.max_query_chars
    if not text:
        raise ApiError(400, f"{param} must not be blank", param=param)
    if len(text) > limit:
        raise ApiError(400, f"{param} is longer than {limit} characters", param=param)
    return text
