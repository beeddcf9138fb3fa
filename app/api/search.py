from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep, require_text
from app.api.schemas import HitBody, SearchRequest, SearchResponse
from retrieval.index import Scope, SearchFilter

router = APIRouter(tags=["search"])


@router.post("/v1/search")
def search(body: SearchRequest, services: ServicesDep, tenant: TenantDep) -> SearchResponse:
    settings = services.settings
    query = require_text(body.query, services, "query")
    collection = body.collection or settings.default_collection
    mode = body.mode or settings.default_mode
    search_filter = (
        SearchFilter(tuple(body.filter.doc_ids), dict(body.filter.metadata)) if body.filter else SearchFilter()
    )
    result = services.searcher.search(
        query, Scope(collection, tenant), body.top_k or settings.default_top_k, mode, search_filter
    )
    return SearchResponse(
        hits=[HitBody.model_validate(hit.to_dict()) for hit in result.hits],
        collection=collection,
        mode=mode,
        timings_ms=result.timings_ms,
    )
