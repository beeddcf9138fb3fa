"""File loaders: one parser a format, each turning a file's bytes into sections with their heading structure.

Every way in reads files through ``load_bytes`` (whole-file formats) or ``load_jsonl`` (records): ``ragops ingest``
from disk, and ``POST /v1/files`` from an upload. One table, ``FILE_PARSERS``, says which suffix a parser reads;
each parser checks that the content is what the suffix says (a ``.pdf`` starts with ``%PDF-``, a ``.docx`` is a
ZIP package, text is UTF-8 without NUL bytes) before it parses.

A loader raises ``LoaderError`` for a file it cannot read; ingestion reports the file by name and goes on. Its
subclasses say why, for the API's status: ``UnsupportedFileError`` (the name or the content is not a format read
here), ``FileTooLargeError`` (past a limit).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TypeAlias

from retrieval.documents import Document, Section
from retrieval.validation import (
    DEFAULT_LIMITS,
    MAX_SOURCE_CHARS,
    MAX_TITLE_CHARS,
    DocumentLimits,
    InvalidFieldError,
    check_doc_id,
    check_metadata,
    check_optional_text,
    check_text,
)

if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
    from docx.table import Table
    from docx.text.paragraph import Paragraph

RECORDS_SUFFIX = ".jsonl"  # one document a line (``document_from_record``), not one a file
# A DOCX package is unpacked in memory to be parsed: a ZIP bomb is refused by its declared sizes first (the text
# itself is held to max_document_chars; the rest is markup and images).
MAX_DOCX_UNPACKED_BYTES = 64 * 1024 * 1024
Parsed: TypeAlias = tuple[str | None, list[Section]]  # the title the file gives itself (if any), its sections


class LoaderError(Exception):
    """A file (or a line of it) that cannot become a document."""


class UnsupportedFileError(LoaderError):
    """A file whose suffix is not one read here, or whose content is not what its suffix says."""


class FileTooLargeError(LoaderError):
    """A file past a size limit (its text past max_document_chars, a package that unpacks too large)."""


def _decode_text(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsupportedFileError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if "\x00" in text:
        raise UnsupportedFileError("binary content (NUL bytes)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _paragraph_sections(text: str) -> list[Section]:
    return [Section(text.strip())] if text.strip() else []


# --- Markdown -------------------------------------------------------------------------------------------
_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^(```|~~~)")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-{3,})[ \t]*$")


class _SectionBuilder:
    """Collects lines under a stack of headings; a new heading closes the section before it."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self._stack: list[tuple[int, str]] = []
        self._lines: list[str] = []

    @property
    def at_block_start(self) -> bool:
        return not self._lines or not self._lines[-1].strip()

    def add(self, line: str) -> None:
        self._lines.append(line)

    def heading(self, level: int, title: str) -> None:
        self._flush()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title.strip()))

    def finish(self) -> list[Section]:
        self._flush()
        return self.sections

    def _flush(self) -> None:
        body = "\n".join(self._lines).strip()
        if body:
            self.sections.append(Section(body, tuple(title for _, title in self._stack)))
        self._lines.clear()


def parse_markdown(text: str) -> list[Section]:
    """Split on ATX and setext headings (not inside code fences); each section keeps its heading path."""
    builder = _SectionBuilder()
    in_fence = False
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        elif not in_fence:
            atx = _ATX_HEADING.match(line)
            if atx:
                builder.heading(len(atx.group(1)), atx.group(2))
                i += 1
                continue
            underline = lines[i + 1] if i + 1 < len(lines) else ""
            if line.strip() and builder.at_block_start and _SETEXT_UNDERLINE.match(underline):
                builder.heading(1 if underline.lstrip().startswith("=") else 2, line)
                i += 2
                continue
        builder.add(line)
        i += 1
    return builder.finish()


# --- reStructuredText -----------------------------------------------------------------------------------
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")


def parse_rst(text: str) -> list[Section]:
    """Headings are a title line with an underline (and optional overline); levels follow first appearance."""
    lines = text.split("\n")
    styles: list[str] = []
    builder = _SectionBuilder()
    i = 0
    while i < len(lines):
        line = lines[i]
        overline = _RST_ADORNMENT.match(line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if overline and i + 2 < len(lines) and following.strip() and lines[i + 2].strip() == line.strip():
            title, style, consumed = following.strip(), "over" + overline.group(1), 3
        elif (
            line.strip()
            and not overline
            and _RST_ADORNMENT.match(following)
            and len(following.strip()) >= len(line.strip())
        ):
            title, style, consumed = line.strip(), following.strip()[0], 2
        else:
            builder.add(line)
            i += 1
            continue
        if style not in styles:
            styles.append(style)
        builder.heading(styles.index(style), title)
        i += consumed
    return builder.finish()


# --- HTML -----------------------------------------------------------------------------------------------
_HTML_BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dd", "dt", "figcaption")
_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def parse_html(text: str) -> tuple[str | None, list[Section]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template", "svg"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    body = soup.body or soup
    builder = _SectionBuilder()
    for element in body.find_all([*_HTML_HEADINGS, *_HTML_BLOCKS]):
        if element.find_parent(_HTML_BLOCKS):
            continue  # its text is part of the enclosing block
        content = element.get_text(" ", strip=True)
        if not content:
            continue
        if element.name in _HTML_HEADINGS:
            builder.heading(int(element.name[1]), content)
        else:
            builder.add(content + "\n")
    sections = builder.finish()
    if not sections:  # no block markup at all: take the visible text
        sections = _paragraph_sections(body.get_text("\n", strip=True))
    return title, sections


# --- PDF ------------------------------------------------------------------------------------------------
# PDF and DOCX parsers read hostile bytes with third-party code whose failures are many kinds of exception (pypdf's
# own, IndexError, RecursionError...): any of them means the file is unreadable, never a crash of the caller.


def parse_pdf(data: bytes, max_chars: int) -> Parsed:
    """One section a page with text (``Page N``); extraction stops once the text is past ``max_chars``."""
    from pypdf import PdfReader

    if b"%PDF-" not in data[:1024]:  # where readers look for the header
        raise UnsupportedFileError("not a PDF (no %PDF- header)")
    pages: list[str] = []
    chars = 0
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            chars += len(pages[-1])
            if chars > max_chars:
                raise FileTooLargeError(_too_long(max_chars))
        meta_title = reader.metadata.title if reader.metadata else None
    except LoaderError:
        raise
    except Exception as exc:
        raise LoaderError(f"unreadable PDF: {exc}") from exc
    sections = [Section(page.strip(), (f"Page {n}",)) for n, page in enumerate(pages, 1) if page.strip()]
    return (str(meta_title) if meta_title else None), sections


# --- DOCX -----------------------------------------------------------------------------------------------
_DOCX_HEADING = re.compile(r"Heading ([1-9])|Title")  # the "Title" style heads everything below it: level 0


def parse_docx(data: bytes, max_chars: int) -> Parsed:
    """Sections by the heading styles ("Title", "Heading 1".."Heading 9"); a table's rows as lines of cells joined
    by `` | ``; the title from the core properties."""
    import zipfile

    import docx

    if not data.startswith(b"PK\x03\x04"):
        raise UnsupportedFileError("not a DOCX file (not a ZIP package)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            unpacked = sum(entry.file_size for entry in package.infolist())
        if unpacked > MAX_DOCX_UNPACKED_BYTES:
            raise FileTooLargeError(f"unpacks to {unpacked} bytes, more than {MAX_DOCX_UNPACKED_BYTES}")
        document = docx.Document(io.BytesIO(data))
    except LoaderError:
        raise
    except ValueError as exc:  # python-docx's word for a package of another kind (a spreadsheet, a presentation)
        raise UnsupportedFileError(f"not a Word document ({exc})") from exc
    except Exception as exc:
        raise LoaderError(f"unreadable DOCX: {exc}") from exc
    try:
        return document.core_properties.title or None, _docx_sections(document, max_chars)
    except LoaderError:
        raise
    except Exception as exc:  # python-docx parses lazily: broken XML shows here
        raise LoaderError(f"unreadable DOCX: {exc}") from exc


def _docx_sections(document: DocxDocument, max_chars: int) -> list[Section]:
    from docx.table import Table

    builder = _SectionBuilder()
    chars = 0
    for block in document.iter_inner_content():
        level = None if isinstance(block, Table) else _heading_level(block)
        text = _table_text(block) if isinstance(block, Table) else block.text.strip()
        chars += len(text)
        if text and level is not None:
            builder.heading(level, text)
        elif text:
            builder.add(text + "\n")  # a blank line between paragraphs, as Markdown has
        if chars > max_chars:
            raise FileTooLargeError(_too_long(max_chars))
    return builder.finish()


def _heading_level(paragraph: Paragraph) -> int | None:
    match = _DOCX_HEADING.fullmatch(paragraph.style.name or "") if paragraph.style is not None else None
    return None if match is None else int(match.group(1) or 0)


def _table_text(table: Table) -> str:
    rows = (" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)
    return "\n".join(row for row in rows if row.strip(" |"))


# --- JSONL ----------------------------------------------------------------------------------------------
_RECORD_FIELDS = {"id", "text", "title", "metadata", "source"}


def document_from_record(record: Any, source: str | None = None, limits: DocumentLimits = DEFAULT_LIMITS) -> Document:
    """A JSON object ``{"id", "text", "title"?, "source"?, "metadata"?}`` as a document (also the API's input
    shape), held to ``retrieval.validation``'s rules; a broken rule raises ``InvalidFieldError`` naming the field."""
    if not isinstance(record, dict):
        raise InvalidFieldError("record", "must be a JSON object")
    unknown = set(record) - _RECORD_FIELDS
    if unknown:
        raise InvalidFieldError(min(unknown), f"is an unknown field (unknown field(s): {', '.join(sorted(unknown))})")
    doc_id = check_doc_id(record.get("id"))
    text = check_text(record.get("text"), "text", limits.max_document_chars)
    return Document(
        id=doc_id,
        sections=tuple(_paragraph_sections(text)),
        title=check_optional_text(record.get("title"), "title", MAX_TITLE_CHARS),
        source=check_optional_text(record.get("source", source), "source", MAX_SOURCE_CHARS),
        metadata=check_metadata(record.get("metadata"), limits),
    )


def load_jsonl(path: Path, source: str, limits: DocumentLimits = DEFAULT_LIMITS) -> list[Document]:
    documents: list[Document] = []
    seen: set[str] = set()
    for number, line in enumerate(_decode_text(path.read_bytes()).split("\n"), 1):
        if not line.strip():
            continue
        try:
            document = document_from_record(json.loads(line), source=source, limits=limits)
        except json.JSONDecodeError as exc:
            raise LoaderError(f"line {number}: invalid JSON ({exc.msg})") from exc
        except RecursionError as exc:  # json's own nesting limit, far past the metadata depth limit
            raise LoaderError(f"line {number}: JSON nested too deeply") from exc
        except (LoaderError, InvalidFieldError) as exc:
            raise LoaderError(f"line {number}: {exc}") from exc
        if document.id in seen:
            raise LoaderError(f"line {number}: duplicate id {document.id!r}")
        seen.add(document.id)
        documents.append(document)
    return documents


# --- dispatch -------------------------------------------------------------------------------------------
def _text(parse: Callable[[str], list[Section]]) -> Callable[[bytes, int], Parsed]:
    return lambda data, _: (None, parse(_decode_text(data)))


def _html(data: bytes, _: int) -> Parsed:
    return parse_html(_decode_text(data))


# The one table of which suffix is read by which parser (``data``, ``max_chars``); .jsonl is RECORDS_SUFFIX.
FILE_PARSERS: dict[str, Callable[[bytes, int], Parsed]] = {
    ".md": _text(parse_markdown),
    ".markdown": _text(parse_markdown),
    ".txt": _text(_paragraph_sections),
    ".rst": _text(parse_rst),
    ".html": _html,
    ".htm": _html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
}
SUPPORTED_SUFFIXES = (*FILE_PARSERS, RECORDS_SUFFIX)


def load_bytes(data: bytes, name: str, doc_id: str, source: str, limits: DocumentLimits = DEFAULT_LIMITS) -> Document:
    """A whole file (any suffix of ``FILE_PARSERS``; ``name`` gives it) as one document, its text held to
    ``limits.max_document_chars``. Titled by the file's own title, else its first heading, else its stem."""
    suffix, parse = _parser(name)
    if not data.strip():
        raise LoaderError("empty file")
    title, sections = parse(data, limits.max_document_chars)
    if not sections:
        raise LoaderError("no text found")
    if sum(len(section.text) for section in sections) > limits.max_document_chars:
        raise FileTooLargeError(_too_long(limits.max_document_chars))
    first_heading = next((s.headings[0] for s in sections if s.headings), None)
    return Document(
        id=doc_id,
        sections=tuple(sections),
        title=title or first_heading or PurePath(name).stem,
        source=source,
        metadata={"format": suffix.lstrip(".")},
    )


def unsupported_type(name: str) -> str | None:
    """Why a file of this name cannot be read as one document (its suffix has no parser), or None."""
    suffix = PurePath(name).suffix.lower()
    return None if suffix in FILE_PARSERS else f"unsupported file type {suffix or '(none)'}"


def _parser(name: str) -> tuple[str, Callable[[bytes, int], Parsed]]:
    if (problem := unsupported_type(name)) is not None:
        raise UnsupportedFileError(problem)
    suffix = PurePath(name).suffix.lower()
    return suffix, FILE_PARSERS[suffix]


def _too_long(max_chars: int) -> str:
    return f"text longer than {max_chars} characters (max_document_chars)"


def load_file(path: Path, doc_id: str, limits: DocumentLimits = DEFAULT_LIMITS) -> list[Document]:
    """Load one file. Whole-file formats give one document with id ``doc_id``; JSONL gives one per line."""
    if path.suffix.lower() == RECORDS_SUFFIX:
        return load_jsonl(path, str(path), limits)
    _parser(path.name)  # an unsupported file is refused before a byte is read
    return [load_bytes(path.read_bytes(), path.name, doc_id, str(path), limits)]


def load_paths(
    paths: list[Path], limits: DocumentLimits = DEFAULT_LIMITS
) -> tuple[list[Document], list[dict[str, str]]]:
    """Every document under ``paths``, and an error record for each path or file that could not be read."""
    documents: list[Document] = []
    errors = [{"source": str(path), "error": "no such file or directory"} for path in paths if not path.exists()]
    for path, doc_id in discover([p for p in paths if p.exists()]):
        try:
            documents.extend(load_file(path, doc_id, limits))
        except LoaderError as exc:
            errors.append({"source": str(path), "error": str(exc)})
        except OSError as exc:
            errors.append({"source": str(path), "error": exc.strerror or str(exc)})
    return documents, errors


def discover(paths: list[Path]) -> Iterator[tuple[Path, str]]:
    """Files under ``paths`` with their document ids: the path relative to a directory argument, or the name."""
    for root in paths:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES and not _hidden(path, root):
                    yield path, path.relative_to(root).as_posix()
        else:
            yield root, root.name


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
