"""``GET /v1/admin/audit`` (the audit trail, a page at a time) and ``GET /v1/admin/audit/verify`` (the chain
re-hashed from its start to its head). Admin only: an admin is service-wide, so any tenant's records."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import Admin, ServicesDep, moment_param
from app.api.errors import error_responses
from app.api.middleware import note_admin_action
from retrieval.index import SCOPE_NAME_PATTERN
from serving.governance.audit_chain import VerifyResult, verify
from serving.governance.audit_export import read_page

router = APIRouter(tags=["admin"], responses=error_responses(400, 401, 403, 429, 503))


class AuditPage(BaseModel):
    records: list[dict[str, Any]] = Field(
        description="Records oldest first: each its body's fields plus prev_hash and hash (re-hash to verify)."
    )
    next_cursor: int | None = Field(description="Pass as cursor for the next page; null on the last one.")


@router.get("/v1/admin/audit", response_model=AuditPage)
def audit_records(
    services: ServicesDep,
    caller: Admin,
    since: Annotated[str | None, Query(description="2026-11-27, an ISO time, or ago: 24h, 30d.")] = None,
    tenant: Annotated[str | None, Query(pattern=SCOPE_NAME_PATTERN)] = None,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1, description="The seq to continue after (next_cursor).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    moment = moment_param(since, "since")
    note_admin_action("audit.read", tenant or "*", {"since": since, "cursor": cursor, "limit": limit})
    records = read_page(services.state, moment, tenant, cursor, limit)
    return AuditPage(records=records, next_cursor=int(records[-1]["seq"]) if len(records) == limit else None)


@router.get("/v1/admin/audit/verify", response_model=VerifyResult)
def audit_verify(services: ServicesDep, caller: Admin) -> VerifyResult:
    """Whether the chain is intact; else the first bad record and why. Anchor ``head_seq``/``head_hash``
    elsewhere: a later verify that still finds them proves nothing before them was rewritten."""
    note_admin_action("audit.verify", "*")
    return verify(services.state)
