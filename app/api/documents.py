from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import Editor, Reader, ServicesDep
from app.api.errors import ApiError, error_responses
from app.api.schemas import COLLECTION_PATTERN, DocumentBody, IngestRequest, invalid_field
from retrieval.documents import Document
from retrieval.index import Scope
from retrieval.ingest import IngestReport
from retrieval.loaders import document_from_record
from retrieval.validation import DocumentLimits, InvalidFieldError

router = APIRouter(tags=["documents"], responses=error_responses(400, 401, 403, 429, 503))
CollectionQuery = Annotated[str | None, Query(pattern=COLLECTION_PATTERN)]


@router.post("/v1/documents")
def ingest_documents(body: IngestRequest, services: ServicesDep, caller: Editor) -> dict[str, Any]:
    """Add or update documents (by id; unchanged ones cost nothing). All are validated before any is written."""
    settings = services.settings
    if len(body.documents) > settings.limits.max_documents_per_request:
        raise ApiError(
            400, f"at most {settings.limits.max_documents_per_request} documents a request", param="documents"
        )
    documents = _valid_documents(body.documents, services.limits)
    scope = Scope(body.collection or settings.defaults.collection, caller.tenant)
    report = services.ingestor.ingest_documents(documents, scope)
    raise_for_failed_indexing(report)
    return {"collection": scope.collection, **report.to_dict()}


def raise_for_failed_indexing(report: IngestReport) -> None:
    """A failed batch is rolled back: a 503 that says which documents did not make it (and that the others did)."""
    if report.errors:
        failed = ", ".join(error["source"] for error in report.errors[:5])
        raise ApiError(
            503,
            f"indexing failed for {len(report.errors)} document(s) ({failed}): "
            f"{report.errors[0]['error']}; the others were written",
        )


def _valid_documents(items: list[DocumentBody], limits: DocumentLimits) -> list[Document]:
    """Every document held to retrieval.validation's rules; the first one broken is a 400 naming its field."""
    documents: list[Document] = []
    seen: set[str] = set()
    for position, item in enumerate(items):
        if item.id in seen:
            raise ApiError(400, f"duplicate document id {item.id!r}", param=f"documents.{position}.id")
        seen.add(item.id)
        try:
            documents.append(document_from_record(item.model_dump(exclude_none=True), limits=limits))
        except InvalidFieldError as exc:
            raise invalid_field(f"documents.{position}", exc) from exc
    return documents


@router.get("/v1/documents")
def list_documents(services: ServicesDep, caller: Reader, collection: CollectionQuery = None) -> dict[str, Any]:
    scope = Scope(collection or services.settings.defaults.collection, caller.tenant)
    hashes = services.index.document_hashes(scope)
    return {
        "collection": scope.collection,
        "documents": [{"id": doc_id, "content_hash": sorted(h)[0]} for doc_id, h in sorted(hashes.items())],
    }


@router.delete("/v1/documents/{doc_id:path}", responses=error_responses(404))
def delete_document(
    doc_id: str, services: ServicesDep, caller: Editor, collection: CollectionQuery = None
) -> dict[str, Any]:
    scope = Scope(collection or services.settings.defaults.collection, caller.tenant)
    if not services.ingestor.delete(scope, doc_id):
        raise ApiError(404, f"no document {doc_id!r} in collection {scope.collection!r}", param="doc_id")
    return {"id": doc_id, "collection": scope.collection, "deleted": True}
