"""Request dependencies: the wired services, the caller (``Reader``, ``Editor``, ``Admin``: each route declares its
role by the one it takes), and the pipeline request built from them."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Request
from pydantic import IPvAnyNetwork

from app.api.errors import ApiError
from app.api.middleware import current_exchange
from app.api.openai_protocol import collection_model_id
from app.container import Services
from retrieval.index import SCOPE_NAME_PATTERN, SCOPE_NAME_RULE, Scope, is_scope_name
from serving.contracts.answer import AnswerRequest, ChatMessage, canary_subject, new_answer_id
from serving.governance.access import Principal, Role
from serving.infra.clock import parse_moment


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "the service is starting; try again shortly")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# Documented with its pattern, checked in open_tenant (with keys the key decides and the header is ignored, so
# FastAPI must not reject it first).
_TENANT_HEADER = Header(
    description=f"Tenant whose documents the request reads and writes ({SCOPE_NAME_RULE}); on a server without "
    "API keys only, else the key decides. Default: the default_tenant setting.",
    json_schema_extra={"pattern": SCOPE_NAME_PATTERN},
)


def open_tenant(services: Services, x_tenant: str | None) -> str:
    """The tenant of a server without keys: ``X-Tenant``, or the default."""
    if x_tenant is None:
        return services.settings.defaults.tenant
    if not is_scope_name(x_tenant):
        raise ApiError(400, f"X-Tenant must be {SCOPE_NAME_RULE}", param="X-Tenant")
    return x_tenant


def _caller(needed: Role) -> Callable[..., Principal]:
    """The dependency that admits a caller to a route needing ``needed`` (``Admission.admit``): the route's
    role is declared by which of ``Reader``, ``Editor`` and ``Admin`` it takes."""

    def admitted(
        request: Request,
        services: ServicesDep,
        authorization: Annotated[str | None, Header()] = None,
        x_tenant: Annotated[str | None, _TENANT_HEADER] = None,
    ) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        address = client_address(request, services.settings.access.trusted_proxies)
        exchange = current_exchange.get()
        if exchange is not None:
            exchange.client = address
        principal = services.admission.identify(bearer or None, address, lambda: open_tenant(services, x_tenant))
        if exchange is not None:
            exchange.principal = principal  # a 403 or 429 that follows is recorded with who was refused
        services.admission.authorize(principal, needed)
        return principal

    admitted.required_role = needed  # type: ignore[attr-defined]  # read by the route x role test
    return admitted


Reader = Annotated[Principal, Depends(_caller(Role.reader))]
Editor = Annotated[Principal, Depends(_caller(Role.editor))]
Admin = Annotated[Principal, Depends(_caller(Role.admin))]


def client_address(request: Request, trusted_proxies: list[IPvAnyNetwork]) -> str:
    """The caller's address: the peer's, unless the peer is a trusted proxy; then the last address in
    ``X-Forwarded-For`` that is not itself a trusted proxy (the ones before it are the client's to forge). Every
    line of the header counts, in order: a proxy may append a line of its own rather than extend the client's,
    and the first line alone is then the client's forgery."""
    peer = request.client.host if request.client else "unknown"
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    lines = request.headers.getlist("x-forwarded-for")
    forwarded = [part.strip() for line in lines for part in line.split(",") if part.strip()]
    for address in reversed(forwarded):
        if not _is_trusted(address, trusted_proxies):
            return address
    return peer


def _is_trusted(address: str, trusted_proxies: list[IPvAnyNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted_proxies)


def moment_param(text: str | None, param: str) -> datetime | None:
    """A ``since``/``until`` query value (``serving.infra.clock.parse_moment``), or the 400 that names it."""
    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from exc


def answered_scope(services: Services, tenant: str, collection: str | None) -> Scope:
    """The collection asked for, else the default one. With none named and the default empty, the tenant's only
    collection that holds documents (the sample, after ``make run``): a chat client that picks the plain
    ``ragops`` model is answered. A collection without documents is a 404 naming the ones that have some."""
    scope = Scope(collection or services.settings.defaults.collection, tenant)
    if services.index.has_points(scope):
        return scope
    filled = services.index.collections(tenant)
    if collection is None and len(filled) == 1:
        return Scope(filled[0], tenant)
    working = ", ".join(f"{c!r} (model {collection_model_id(c)!r})" for c in filled) or "none: ingest documents first"
    message = f"collection {scope.collection!r} has no documents; collections that have some: {working}"
    raise ApiError(404, message, param="collection")


def answer_request(
    services: Services,
    caller: Principal,
    question: str,
    collection: str | None,
    top_k: int | None,
    history: list[ChatMessage],
    user: str | None = None,
    id_prefix: str = "ans_",
) -> AnswerRequest:
    """The pipeline's request for a question in the caller's tenant; a collection without documents is a 404.
    The canary's subject is the server's, from the caller's key and ``user``: never the client's to choose."""
    settings = services.settings
    question = require_text(question, services, "question")
    exchange = current_exchange.get()
    if exchange is not None:
        exchange.question, exchange.user = question, user  # for the audit record
    scope = answered_scope(services, caller.tenant, collection)
    return AnswerRequest(
        question=question,
        scope=scope,
        top_k=top_k or settings.answering.chat_top_k,
        history=history,
        user=user,
        canary_subject=canary_subject(caller.tenant, caller.key_id, user),
        id=new_answer_id(id_prefix),
    )


def require_text(text: str, services: Services, param: str) -> str:
    """A query or question: stripped, not blank, within the configured length."""
    text = text.strip()
    limit = services.settings.limits.max_query_chars
    if not text:
        raise ApiError(400, f"{param} must not be blank", param=param)
    if "\x00" in text:  # no meaning in a question, and Postgres text (audit, kept answers) cannot hold it
        raise ApiError(400, f"{param} must not contain NUL characters", param=param)
    if len(text) > limit:
        raise ApiError(400, f"{param} is longer than {limit} characters", param=param)
    return text
