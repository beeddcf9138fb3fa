"""File loaders: one function a format, each turning a file into documents with their heading structure.

A loader raises ``LoaderError`` for a file it cannot read; ingestion reports the file by name and goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".rst", ".html", ".htm", ".pdf", ".jsonl")


class LoaderError(Exception):
    """A file (or a line of it) that cannot become a document."""


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LoaderError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if "\x00" in text:
        raise LoaderError("binary content (NUL bytes)")
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
def load_pdf(path: Path) -> tuple[str | None, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path, strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise LoaderError(f"unreadable PDF: {exc}") from exc
    sections = [Section(page.strip(), (f"Page {n}",)) for n, page in enumerate(pages, 1) if page.strip()]
    return (str(meta_title) if meta_title else None), sections


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
    for number, line in enumerate(_read_text(path).split("\n"), 1):
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
def _single(parse: Callable[[str], list[Section]]) -> Callable[[Path], tuple[str | None, list[Section]]]:
    return lambda path: (None, parse(_read_text(path)))


_FILE_PARSERS: dict[str, Callable[[Path], tuple[str | None, list[Section]]]] = {
    ".md": _single(parse_markdown),
    ".markdown": _single(parse_markdown),
    ".txt": _single(_paragraph_sections),
    ".rst": _single(parse_rst),
    ".html": lambda path: parse_html(_read_text(path)),
    ".htm": lambda path: parse_html(_read_text(path)),
    ".pdf": load_pdf,
}


def load_file(path: Path, doc_id: str, limits: DocumentLimits = DEFAULT_LIMITS) -> list[Document]:
    """Load one file. Whole-file formats give one document with id ``doc_id``; JSONL gives one per line."""
    suffix = path.suffix.lower()
    source = str(path)
    if suffix == ".jsonl":
        return load_jsonl(path, source, limits)
    parser = _FILE_PARSERS.get(suffix)
    if parser is None:
        raise LoaderError(f"unsupported file type {suffix or '(none)'}")
    title, sections = parser(path)
    if not sections:
        raise LoaderError("no text found")
    first_heading = next((s.headings[0] for s in sections if s.headings), None)
    return [
        Document(
            id=doc_id,
            sections=tuple(sections),
            title=title or first_heading or path.stem,
            source=source,
            metadata={"format": suffix.lstrip(".")},
        )
    ]


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
