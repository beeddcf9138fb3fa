"""``POST /v1/files``: documents from uploaded files (multipart/form-data), read by ``ragops ingest``'s own parsers
(``retrieval.loaders.load_bytes``) and held to the same limits. A file's name, without any path, is its document id
and source: uploading it again updates it, and an unchanged file costs nothing. Every file is read before any is
written: one that cannot be is refused by name (415 not a format read here, or content that is not what its name
says; 413 past a limit; 400 unreadable or empty), and nothing is written."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from app.api.deps import Editor, ServicesDep
from app.api.documents import raise_for_failed_indexing
from app.api.errors import ApiError, error_responses
from app.api.middleware import note_admin_action
from app.api.schemas import COLLECTION_PATTERN
from app.container import Services
from retrieval.documents import Document
from retrieval.index import Scope
from retrieval.ingest import IngestReport
from retrieval.loaders import FILE_PARSERS, FileTooLargeError, LoaderError, UnsupportedFileError, load_bytes
from retrieval.validation import InvalidFieldError, check_doc_id

UPLOAD_ACTION = "files.upload"  # the audit record's admin.action
router = APIRouter(tags=["documents"], responses=error_responses(400, 401, 403, 413, 415, 429, 503))


class UploadedDocument(BaseModel):
    id: str = Field(description="The file's name, without any path: the document's id and source.")
    title: str | None = Field(description="The file's own title (PDF or DOCX properties, HTML <title>), else its "
                              "first heading, else its name without the suffix.")  # fmt: skip
    source: str | None
    chunks: int = Field(description="Chunks the document has in the index now.")
    status: Literal["added", "updated", "unchanged"]


class FilesReport(BaseModel):
    """The uploaded files as documents, and the ingest report's counts (as ``POST /v1/documents`` gives them)."""

    collection: str
    documents: list[UploadedDocument] = Field(description="One a file, in the order sent.")
    added: int
    updated: int
    unchanged: int
    removed: int
    failed: int
    chunks: int = Field(description="Chunks written by this request (none for an unchanged file).")
    embeddings_computed: int
    embeddings_cached: int
    seconds: float
    errors: list[dict[str, str]]
    prune_skipped: str | None
    flagged_instructions: list[str] = Field(description="Documents with chunks that carry instructions.")


FILE_DESCRIPTION = f"One or more files ({' '.join(FILE_PARSERS)}), each a part named `file`."


@router.post("/v1/files")
def upload_files(
    file: Annotated[list[UploadFile], File(description=FILE_DESCRIPTION)],
    services: ServicesDep,
    caller: Editor,
    collection: Annotated[str | None, Form(pattern=COLLECTION_PATTERN)] = None,
) -> FilesReport:
    """Add or update documents from files (by name; unchanged ones cost nothing). All are read before any is
    written; the first that cannot be is the error, naming it."""
    limit = services.settings.limits.max_documents_per_request
    if len(file) > limit:
        raise ApiError(400, f"at most {limit} files a request (max_documents_per_request)", param="file")
    documents = _read_files(file, services)
    scope = Scope(collection or services.settings.defaults.collection, caller.tenant)
    _note_upload(services, scope, documents, sum(upload.size or 0 for upload in file))
    report = services.ingestor.ingest_documents(documents, scope)
    raise_for_failed_indexing(report)
    return FilesReport(
        collection=scope.collection,
        documents=[_uploaded(services, scope, document, report) for document in documents],
        added=len(report.added),
        updated=len(report.updated),
        unchanged=len(report.unchanged),
        removed=len(report.removed),
        failed=len(report.errors),
        chunks=report.chunks,
        embeddings_computed=report.embeddings_computed,
        embeddings_cached=report.embeddings_cached,
        seconds=round(report.seconds, 3),
        errors=report.errors,
        prune_skipped=report.prune_skipped,
        flagged_instructions=report.flagged,
    )


def file_document_id(filename: str | None) -> str:
    """An uploaded file's document id: its name without any path (``../../x.pdf`` is ``x.pdf``; either separator,
    since a Windows client may send ``C:\\docs\\x.pdf``), held to the document id rule."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        raise ApiError(400, f"file name {filename!r} names no file", param="file")
    try:
        return check_doc_id(name)
    except InvalidFieldError as exc:
        raise ApiError(400, f"file name {name!r} {exc.reason}", param="file", code="invalid_value") from exc


_LOADER_STATUS: tuple[tuple[type[LoaderError], int], ...] = ((UnsupportedFileError, 415), (FileTooLargeError, 413))


def _read_files(uploads: list[UploadFile], services: Services) -> list[Document]:
    """Every file as a document, or the error naming the first that cannot be one."""
    documents: list[Document] = []
    for upload in uploads:
        name = file_document_id(upload.filename)
        if any(document.id == name for document in documents):
            raise ApiError(400, f"{name}: sent twice (a file's name is its document id)", param="file")
        try:
            documents.append(load_bytes(upload.file.read(), name, doc_id=name, source=name, limits=services.limits))
        except LoaderError as exc:
            status = next((status for kind, status in _LOADER_STATUS if isinstance(exc, kind)), 400)
            raise ApiError(status, f"{name}: {exc}", param="file") from exc
    return documents


def _note_upload(services: Services, scope: Scope, documents: list[Document], size: int) -> None:
    """The upload in the request's audit record: its collection, and each document by the keyed hash that an erasure
    of it names too (``serving.governance.subjects``). Not the names themselves: the record's body is hashed into
    the chain and can never be erased, and a file's name can name a person."""
    audit = services.audit
    refs = [audit.subjects.ref("document", scope.tenant, d.id, scope.collection) for d in documents] if audit else []
    note_admin_action(UPLOAD_ACTION, scope.collection, {"files": len(documents), "bytes": size, "document_refs": refs})


def _uploaded(services: Services, scope: Scope, document: Document, report: IngestReport) -> UploadedDocument:
    status: Literal["added", "updated", "unchanged"] = (
        "added" if document.id in report.added else "updated" if document.id in report.updated else "unchanged"
    )
    return UploadedDocument(
        id=document.id,
        title=document.title,
        source=document.source,
        chunks=len(services.index.document_chunks(scope, document.id)),
        status=status,
    )
