"""The data that flows through ingestion and search: documents, sections, chunks and hits."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path, as a loader found it (e.g. a Markdown section, a PDF page)."""

    text: str
    headings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """A source document. ``id`` is the id users see; ``content_hash`` versions it."""

    id: str
    sections: tuple[Section, ...]
    title: str | None = None
    source: str | None = None
    metadata: JsonDict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(section.text for section in self.sections)

    @property
    def content_hash(self) -> str:
        """Changes whenever anything that ends up in the index changes (text, structure, title, metadata)."""
        canonical = json.dumps(
            {
                "sections": [[list(s.headings), s.text] for s in self.sections],
                "title": self.title,
                "source": self.source,
                "metadata": self.metadata,
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def embedding_text(headings: tuple[str, ...], text: str) -> str:
    """What the embedder sees for a chunk: the heading path gives a short chunk its context."""
    return " > ".join(headings) + "\n" + text if headings else text


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """A piece of a document small enough to embed; it knows its document, position and heading path."""

    doc_id: str
    index: int
    text: str
    headings: tuple[str, ...]
    start_char: int
    end_char: int

    @property
    def embedding_text(self) -> str:
        return embedding_text(self.headings, self.text)


@dataclass(frozen=True, kw_only=True)
class Hit:
    doc_id: str
    chunk_id: str
    score: float
    text: str
    title: str | None
    source: str | None
    metadata: JsonDict
    headings: tuple[str, ...] = ()
    chunk_index: int = 0

    @property
    def embedding_text(self) -> str:
        return embedding_text(self.headings, self.text)

    def to_dict(self) -> JsonDict:
        return {
            "doc_id": self.doc_id,
            "chunk_id": self.chunk_id,
            "score": self.score,
            "text": self.text,
            "title": self.title,
            "source": self.source,
            "metadata": self.metadata,
            "headings": list(self.headings),
            "chunk_index": self.chunk_index,
        }
