"""``ragops ingest``: index files and directories into a collection: into the data dir, or with ``--url`` through a
running server's API (files to ``POST /v1/files``, ``.jsonl`` records to ``POST /v1/documents``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from app.cli.common import (
    API_KEY_ENV,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    CliError,
    open_services,
    scope_from,
    settings_from,
)
from app.cli.progress import progress_bar

if TYPE_CHECKING:
    import httpx

    from app.cli.common import Commands
    from app.settings import Settings
    from retrieval.documents import Document
    from retrieval.ingest import IngestReport

T = TypeVar("T")
Reply = TypeVar("Reply", bound=BaseModel)
INGEST_OVER_HTTP = f"`ragops ingest --url http://HOST:PORT PATH...` (an editor's key in ${API_KEY_ENV})"
RETRIES_429 = 3  # a rate-limited batch waits for Retry-After (at most MAX_WAIT_S) this many times, then fails
MAX_WAIT_S = 30.0
MULTIPART_OVERHEAD = 64 * 1024  # a batch's headers and boundaries, kept under max_body_bytes with its files


def add_parser(commands: Commands) -> None:
    ingest = commands.add_parser(
        "ingest", help="index files: .md .txt .rst .html .pdf .docx .jsonl, or directories (--url: through a server)"
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ingest.add_argument("--collection", help="collection name (default: the default_collection setting)")
    ingest.add_argument("--tenant", help="tenant (default: the default_tenant setting; with --url, the key decides)")
    ingest.add_argument("--prune", action="store_true", help="remove documents of the collection not seen now")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.add_argument(
        "--url",
        help="upload to a running `ragops serve` (http://HOST:PORT) instead of writing the data dir: a file's name "
        "is its document id there; batches follow this config's max_documents_per_request and max_body_bytes",
    )
    ingest.add_argument("--api-key", help=f"with --url: an editor's key (default: ${API_KEY_ENV})")
    ingest.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    if args.url is not None:
        return run_remote_ingest(args)
    settings = settings_from(args)
    scope = scope_from(args, settings)
    services = open_services(settings, busy_hint=f"to add files while it runs: {INGEST_OVER_HTTP}")
    try:

        def progress(total: int) -> Any:
            return progress_bar(total, unit="chunk", desc="indexing", quiet=args.json)

        report = services.ingestor.ingest_paths(args.paths, scope, prune=args.prune, progress=progress)
    finally:
        services.close()
    return _print_report(report, scope.collection, scope.tenant, args.json)


def _print_report(report: IngestReport, collection: str, tenant: str | None, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"collection": collection, "tenant": tenant, **report.to_dict()}))
    else:
        for error in report.errors:
            print(f"skipped {error['source']}: {error['error']}", file=sys.stderr)
        print(report.summary())
    return EXIT_PARTIAL if report.errors else EXIT_OK


# --- --url ----------------------------------------------------------------------------------------------------
class _RecordsReply(BaseModel):
    """What ``POST /v1/documents`` answers, as far as the report needs it."""

    class Changed(BaseModel):
        added: list[str]
        updated: list[str]

    collection: str
    chunks: int
    embeddings_computed: int
    embeddings_cached: int
    flagged_instructions: list[str]
    documents: Changed


class _RefusedError(Exception):
    """A request the server refused for its content (4xx, 5xx): the files or records it carried failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def run_remote_ingest(args: argparse.Namespace) -> int:
    from retrieval.ingest import IngestReport
    from retrieval.loaders import RECORDS_SUFFIX, discover, unsupported_type

    if args.prune:
        raise CliError("--prune removes documents from the data dir; it does not work with --url")
    settings = settings_from(args)  # the batch limits: the server's own, where it shares this config
    scope_from(args, settings)  # a bad --collection or --tenant is one line here, not an error a file
    headers = {"Authorization": f"Bearer {key}"} if (key := args.api_key or os.environ.get(API_KEY_ENV)) else {}
    if args.tenant:
        headers["X-Tenant"] = args.tenant  # a server without keys takes it; with keys, the key decides
    started = time.perf_counter()
    report = IngestReport(errors=[{"source": str(p), "error": "no such file or directory"} for p in args.paths
                                  if not p.exists()])  # fmt: skip
    files: dict[str, Path] = {}  # by document id: the file's name
    records: list[Path] = []
    for path, _ in discover([p for p in args.paths if p.exists()]):
        if path.suffix.lower() == RECORDS_SUFFIX:
            records.append(path)
        elif (problem := unsupported_type(path.name)) is not None:
            report.errors.append({"source": str(path), "error": problem})
        elif path.name in files:
            error = f"same name as {files[path.name]} (over --url, a file's name is its document id)"
            report.errors.append({"source": str(path), "error": error})
        else:
            files[path.name] = path
    import httpx

    try:
        with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=600) as http:
            upload = _Uploader(http, args.collection, settings, report)
            upload.files(list(files.values()))
            for path in records:
                upload.records(path)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {args.url}: {exc or type(exc).__name__}", EXIT_FAILURE) from exc
    report.seconds = time.perf_counter() - started
    collection = upload.collection or args.collection or settings.defaults.collection
    return _print_report(report, collection, args.tenant, args.json)


class _Uploader:
    """Sends files and records in batches, and adds what the server answers to ``report``."""

    def __init__(self, http: httpx.Client, collection: str | None, settings: Settings, report: IngestReport) -> None:
        self._http, self._report = http, report
        self._form = {"collection": collection} if collection else {}
        self._max_count = settings.limits.max_documents_per_request
        self._max_bytes = max(settings.limits.max_body_bytes - MULTIPART_OVERHEAD, 1)
        self._limits = settings.limits
        self.collection: str | None = None  # as the server names it, once it answered

    def files(self, paths: list[Path]) -> None:
        sized: list[tuple[Path, int]] = []
        for path in paths:
            try:
                sized.append((path, path.stat().st_size))
            except OSError as exc:
                self._report.errors.append({"source": str(path), "error": exc.strerror or str(exc)})
        for batch in _batches(sized, self._max_count, self._max_bytes, lambda file: file[1]):
            self._send([path for path, _ in batch])

    def _send(self, batch: list[Path]) -> None:
        """Upload ``batch``; when one file spoils it, each alone, to name the ones at fault (the others go in)."""
        from app.api.files import FilesReport

        try:
            parts = [("file", (path.name, path.read_bytes())) for path in batch]  # one batch in memory at a time
            reply = self._post("/v1/files", FilesReport, data=self._form, files=parts)
        except (_RefusedError, OSError) as exc:
            if len(batch) > 1:
                for path in batch:
                    self._send([path])
                return
            message = exc.message if isinstance(exc, _RefusedError) else exc.strerror or str(exc)
            self._report.errors.append({"source": str(batch[0]), "error": message})
            return
        self._count(reply.collection, reply.chunks, reply.embeddings_computed, reply.embeddings_cached)
        self._report.flagged.extend(reply.flagged_instructions)
        by_status = {"added": self._report.added, "updated": self._report.updated, "unchanged": self._report.unchanged}
        for document in reply.documents:
            by_status[document.status].append(document.id)

    def records(self, path: Path) -> None:
        """A ``.jsonl`` file, read and checked here first (line numbers in its errors), then sent in batches."""
        from retrieval.loaders import LoaderError, load_jsonl
        from retrieval.validation import DocumentLimits

        try:
            documents = load_jsonl(path, str(path), DocumentLimits.from_settings(self._limits))
        except (LoaderError, OSError) as exc:
            self._report.errors.append({"source": str(path), "error": str(exc)})
            return
        sent = 0
        for batch in _batches(documents, self._max_count, self._max_bytes, _record_size):
            try:
                body = {"documents": [_record(document) for document in batch], **self._form}
                reply = self._post("/v1/documents", _RecordsReply, json=body)
            except _RefusedError as refused:
                written = f" (records 1-{sent} were sent)" if sent else ""
                self._report.errors.append({"source": str(path), "error": refused.message + written})
                return
            sent += len(batch)
            self._count(reply.collection, reply.chunks, reply.embeddings_computed, reply.embeddings_cached)
            self._report.flagged.extend(reply.flagged_instructions)
            changed = {*reply.documents.added, *reply.documents.updated}
            self._report.added.extend(reply.documents.added)
            self._report.updated.extend(reply.documents.updated)
            self._report.unchanged.extend(d.id for d in batch if d.id not in changed)

    def _count(self, collection: str, chunks: int, computed: int, cached: int) -> None:
        self.collection = collection
        self._report.chunks += chunks
        self._report.embeddings_computed += computed
        self._report.embeddings_cached += cached

    def _post(self, url: str, reply: type[Reply], **request: Any) -> Reply:
        """The answer; a refused key, a server without the route or an answer not ragops' stops the command (one
        line, exit 1); any other refusal is ``_RefusedError`` (what was sent failed)."""
        for attempt in range(RETRIES_429 + 1):
            response = self._http.post(url, **request)
            if response.status_code != 429 or attempt == RETRIES_429:
                break
            time.sleep(_retry_after(response))
        where = f"{self._http.base_url}{url}"
        if response.is_success:
            try:
                return reply.model_validate_json(response.content)
            except ValueError as exc:  # pydantic's ValidationError is one
                raise CliError(
                    f"{where}: not a ragops server's answer ({response.text[:100]!r})", EXIT_FAILURE
                ) from exc
        message = _error_message(response)
        if response.status_code in (401, 403):
            raise CliError(f"{self._http.base_url} refused the key: {message}", EXIT_FAILURE)
        if response.status_code in (404, 405):
            raise CliError(f"{where}: {message} (is it a ragops server of this version?)", EXIT_FAILURE)
        raise _RefusedError(f"{response.status_code}: {message}")


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), MAX_WAIT_S)
    except ValueError:  # an HTTP date: ragops sends seconds, a proxy may not
        return 1.0


def _record(document: Document) -> dict[str, Any]:
    """A record as ``POST /v1/documents`` takes it (``load_jsonl`` made its text one paragraph section)."""
    return {
        "id": document.id,
        "text": document.text,
        "title": document.title,
        "source": document.source,
        "metadata": document.metadata,
    }


def _record_size(document: Document) -> int:
    return len(json.dumps(_record(document)).encode())


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _batches(items: list[T], max_count: int, max_bytes: int, size: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive items, at most ``max_count`` and about ``max_bytes`` a batch (an item larger goes alone)."""
    batch: list[T] = []
    total = 0
    for item in items:
        item_size = size(item)
        if batch and (len(batch) >= max_count or total + item_size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += item_size
    if batch:
        yield batch
