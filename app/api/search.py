from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep
from app.api.errors import ApiError
from app.api.schemas import HitBody, SearchRequest, SearchResponse
from retrieval.index import Scope, SearchFilter

router = APIRouter(tags=["search"])


@router.post("/v1/search")
def search(body: SearchRequest, services: ServicesDep, tenant: TenantDep) -> SearchResponse:
    settings = services.settings
    query = body.query.strip()
    if not query:
        raise ApiError(400, "query must not be blank", param="query")
    if len(query) > settings.max_query_chars:
        raise ApiError(400, f"query is longer than {settings.max_query_chars} characters", param="query")
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
