"""Erasure routes (GDPR art. 17), admin only: ``DELETE /v1/admin/subjects/documents/{doc_id}`` and
``DELETE /v1/admin/subjects/users/{user}``. Each erases its subject from every store (``serving.rights.erasure``)
and answers with what each store removed; the tombstone it leaves in the audit trail names the subject by a keyed
hash only, and the request's log line shows the route's template, never the subject. Erasing what is not there
answers 200 with zero counts: erasure is idempotent. A store that fails on the way is a 503; the same request
again finishes the erasure."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import Admin, ServicesDep
from app.api.errors import ApiError, error_responses
from retrieval.index import SCOPE_NAME_PATTERN, Scope
from serving.governance.audit import AuditAction
from serving.rights.erasure import (
    IDENTIFIER_MAX_CHARS,
    ErasureIncompleteError,
    ErasureReport,
    ErasureSubject,
    identifier_problem,
)

router = APIRouter(tags=["admin"], responses=error_responses(400, 401, 403, 429, 503))

TenantQuery = Annotated[
    str | None, Query(pattern=SCOPE_NAME_PATTERN, description="The subject's tenant (default: the caller's).")
]
SuitesQuery = Annotated[
    bool, Query(description="Rewrite the eval-suite files that hold the subject (default: list them only).")
]


@router.delete("/v1/admin/subjects/documents/{doc_id:path}", response_model=ErasureReport)
def erase_document(
    doc_id: Annotated[str, Path(max_length=IDENTIFIER_MAX_CHARS["document"])],
    services: ServicesDep,
    caller: Admin,
    collection: Annotated[str | None, Query(pattern=SCOPE_NAME_PATTERN)] = None,
    tenant: TenantQuery = None,
    rewrite_suites: SuitesQuery = False,
) -> ErasureReport:
    scope = Scope(collection or services.settings.defaults.collection, tenant or caller.tenant)
    subject = ErasureSubject(kind="document", tenant=scope.tenant, identifier=doc_id, collection=scope.collection)
    return _erase(services, subject, rewrite_suites, caller.key_id)


@router.delete("/v1/admin/subjects/users/{user}", response_model=ErasureReport)
def erase_user(
    user: Annotated[str, Path(max_length=IDENTIFIER_MAX_CHARS["user"])],
    services: ServicesDep,
    caller: Admin,
    tenant: TenantQuery = None,
    rewrite_suites: SuitesQuery = False,
) -> ErasureReport:
    subject = ErasureSubject(kind="user", tenant=tenant or caller.tenant, identifier=user)
    return _erase(services, subject, rewrite_suites, caller.key_id)


def _erase(services: ServicesDep, subject: ErasureSubject, rewrite_suites: bool, key_id: str) -> ErasureReport:
    problem = identifier_problem(subject.kind, subject.identifier)
    if problem is not None:
        raise ApiError(400, problem, param="doc_id" if subject.kind == "document" else "user")
    try:
        return services.eraser.erase(subject, rewrite_suites, AuditAction(action="api", target=key_id))
    except ErasureIncompleteError as exc:
        raise ApiError(503, str(exc), code="erasure_incomplete") from exc
