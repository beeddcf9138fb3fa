from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from app.api.deps import Reader, ServicesDep, require_text
from app.api.errors import error_responses
from app.api.schemas import HitBody, SearchFilterBody, SearchRequest, SearchResponse, invalid_field
from retrieval.documents import Hit
from retrieval.index import Scope, SearchFilter
from retrieval.validation import DocumentLimits, InvalidFieldError, check_filter

router = APIRouter(tags=["search"], responses=error_responses(400, 401, 403, 429, 503))


@router.post("/v1/search")
def search(body: SearchRequest, services: ServicesDep, caller: Reader) -> SearchResponse:
    settings = services.settings
    query = require_text(body.query, services, "query")
    collection = body.collection or settings.defaults.collection
    mode = body.mode or settings.defaults.mode
    search_filter = _search_filter(body.filter, services.limits)
    result = services.searcher.search(
        query, Scope(collection, caller.tenant), body.top_k or settings.defaults.top_k, mode, search_filter
    )
    return SearchResponse(
        hits=[
            _hit_body(hit, services.passage_redaction if settings.safety.redact_retrieved else None)
            for hit in result.hits
        ],
        collection=collection,
        mode=mode,
        timings_ms=result.timings_ms,
    )


def _search_filter(body: SearchFilterBody | None, limits: DocumentLimits) -> SearchFilter:
    """The filter held to the same key and value rules as document metadata (400 naming the field)."""
    if body is None:
        return SearchFilter()
    try:
        check_filter(body.doc_ids, body.metadata, limits)
    except InvalidFieldError as exc:
        raise invalid_field("filter", exc) from exc
    return SearchFilter(tuple(body.doc_ids), dict(body.metadata))


def _hit_body(hit: Hit, redact: Callable[[str], str] | None) -> HitBody:
    """A hit as clients see it: with ``redact`` (``redact_retrieved`` on), PII and secrets in the retrieved text
    are masked, as they are in answers (the index keeps the original, which the prompt's guards see)."""
    body = HitBody.model_validate(hit.to_dict())
    if redact is None:
        return body
    return body.model_copy(
        update={
            "text": redact(body.text),
            "title": redact(body.title) if body.title is not None else None,
            "headings": [redact(heading) for heading in body.headings],
        }
    )
