"""Request dependencies: the wired services and the caller's tenant."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.errors import ApiError
from app.container import Services

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "the service is starting; try again shortly")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_tenant(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_tenant: Annotated[str | None, Header()] = None,
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
    if not _TENANT.match(x_tenant):
        raise ApiError(400, "X-Tenant must be 1-64 letters, digits, '.', '_' or '-'", param="X-Tenant")
    return x_tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def require_text(text: str, services: Services, param: str) -> str:
    """A query or question: stripped, not blank, within the configured length."""
    text = text.strip()
    limit = services.settings.max_query_chars
    if not text:
        raise ApiError(400, f"{param} must not be blank", param=param)
    if len(text) > limit:
        raise ApiError(400, f"{param} is longer than {limit} characters", param=param)
    return text
