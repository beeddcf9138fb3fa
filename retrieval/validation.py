"""The rules a document and a search filter must meet before anything reaches the index.

One definition, used by every way in: the HTTP API (``app/api/documents.py``, ``app/api/search.py``) and the
``.jsonl`` loader (``retrieval.loaders.document_from_record``). A rule broken raises ``InvalidFieldError`` naming
the field (``metadata.owner.name``, ``doc_ids.3``) so a caller can say exactly what to fix.

Why these rules:
- Metadata is copied into the payload of every chunk and filtered by Qdrant JSON paths (``metadata.<key>``).
  Deep nesting crashes the engine's payload storage (past ~100 levels, leaving an index that no longer opens),
  large metadata multiplies the index and every search response, and a key outside ``METADATA_KEY_RULE``
  either breaks the path parser ("invalid JSON path") or means something else to it (``a.b`` is a nested
  field, ``a[0]`` an array element). The key rule is letters and digits (Unicode, Python's ``\\w``), ``_``
  and ``-``: every such key parses as one plain path segment (checked over all of Unicode against qdrant-edge).
- Qdrant's integers are signed 64-bit, and JSON has no NaN or Infinity (Python's ``json`` accepts them anyway).
- Control characters in ids break URLs, logs and the delete route; in text they are binary junk echoed back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_DOC_ID_CHARS = 512
MAX_TITLE_CHARS = 1024
MAX_SOURCE_CHARS = 4096
MAX_KEY_CHARS = 64
MAX_FILTER_VALUES = 1000  # doc ids of a filter, and accepted values of one metadata field
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

METADATA_KEY_PATTERN = re.compile(rf"[\w-]{{1,{MAX_KEY_CHARS}}}")
METADATA_KEY_RULE = f"1-{MAX_KEY_CHARS} letters, digits, '_' or '-' (no '.', '[', ']', spaces or other punctuation)"
# Ids: no C0, DEL or C1 control characters (a newline included). Text: C0 ones other than \t \n \r refused.
# Both: no lone surrogates (JSON's "\ud800" decodes to one; the engine cannot store it).
_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


class InvalidFieldError(ValueError):
    """A rule broken by ``field`` (a dotted path inside the record or filter)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"'{field}' {reason}")
        self.field = field
        self.reason = reason


class LimitSettings(Protocol):
    """The settings the limits come from (``app.settings.Settings``; retrieval does not import app)."""

    @property
    def max_document_chars(self) -> int: ...

    @property
    def max_metadata_bytes(self) -> int: ...

    @property
    def max_metadata_depth(self) -> int: ...

    @property
    def max_metadata_keys(self) -> int: ...


@dataclass(frozen=True)
class DocumentLimits:
    """The configurable limits; the defaults here are the settings' defaults."""

    max_document_chars: int = 1_000_000
    max_metadata_bytes: int = 16_384
    max_metadata_depth: int = 4  # the top-level object is level 1; each nested object or list adds one
    max_metadata_keys: int = 64  # keys of all levels together

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> DocumentLimits:
        return cls(
            max_document_chars=settings.max_document_chars,
            max_metadata_bytes=settings.max_metadata_bytes,
            max_metadata_depth=settings.max_metadata_depth,
            max_metadata_keys=settings.max_metadata_keys,
        )


DEFAULT_LIMITS = DocumentLimits()


def _describe(char: str) -> str:
    return f"U+{ord(char):04X}"


def check_doc_id(value: Any, field: str = "id") -> str:
    """A document id: a non-blank string of 1-512 characters without control characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_DOC_ID_CHARS:
        raise InvalidFieldError(field, f"must be a non-blank string of at most {MAX_DOC_ID_CHARS} characters")
    bad = _ID_FORBIDDEN.search(value)
    if bad:
        raise InvalidFieldError(field, f"contains the control character {_describe(bad.group())} at {bad.start()}")
    return value


def check_text(value: Any, field: str, max_chars: int) -> str:
    """Free text that must be there (a document's text): non-blank, bounded, no binary control characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidFieldError(field, "must be a non-blank string")
    return _bounded(value, field, max_chars)


def check_optional_text(value: Any, field: str, max_chars: int) -> str | None:
    """Free text that may be absent (a title, a source): the same rules as ``check_text``, blank allowed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidFieldError(field, "must be a string")
    return _bounded(value, field, max_chars)


def _bounded(value: str, field: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise InvalidFieldError(field, f"is longer than {max_chars} characters ({len(value)})")
    _check_chars(value, field)
    return value


def _check_chars(value: str, field: str) -> None:
    bad = _TEXT_FORBIDDEN.search(value)
    if bad:
        kind = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "the control character"
        raise InvalidFieldError(field, f"contains {kind} {_describe(bad.group())} at {bad.start()}")


def check_key(key: Any, field: str) -> None:
    if not isinstance(key, str) or not METADATA_KEY_PATTERN.fullmatch(key):
        raise InvalidFieldError(field, f"is not a valid metadata key ({METADATA_KEY_RULE})")


def _check_int(value: int, field: str) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidFieldError(field, "is outside the signed 64-bit integer range")


def _check_scalar(value: Any, field: str) -> None:
    """A metadata leaf: null, a boolean, a 64-bit integer, a finite number or a string."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        _check_int(value, field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidFieldError(field, "must be a finite number (not NaN or Infinity)")
    elif isinstance(value, str):
        _check_chars(value, field)
    else:
        raise InvalidFieldError(field, "must be a string, number, boolean, null, list or object")


def check_metadata(value: Any, limits: DocumentLimits, field: str = "metadata") -> dict[str, Any]:
    """A document's metadata: a JSON object within the depth, key and size limits, every key and leaf valid."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidFieldError(field, "must be a JSON object")
    _walk_metadata(value, limits, field)
    # Sized only after the walk: it bounds the nesting json.dumps recurses through and refuses NaN first.
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_metadata_bytes:
        raise InvalidFieldError(field, f"is {size} bytes as JSON; at most {limits.max_metadata_bytes} are allowed")
    return value


def _walk_metadata(root: dict[str, Any], limits: DocumentLimits, field: str) -> None:
    """Every node once, iteratively (no recursion however deep the input), stopping at the first fault."""
    keys = 0
    stack: list[tuple[str, dict[str, Any] | list[Any], int]] = [(field, root, 1)]
    while stack:
        path, node, depth = stack.pop()
        if depth > limits.max_metadata_depth:
            raise InvalidFieldError(path, f"nests deeper than {limits.max_metadata_depth} levels (objects and lists)")
        if isinstance(node, dict):
            keys += len(node)
            if keys > limits.max_metadata_keys:
                raise InvalidFieldError(field, f"has more than {limits.max_metadata_keys} keys (all levels counted)")
            for key in node:
                check_key(key, f"{path}.{key}")
        children = list(node.items() if isinstance(node, dict) else enumerate(node))
        for name, child in children:
            if not isinstance(child, dict | list):
                _check_scalar(child, f"{path}.{name}")
        nested = [(f"{path}.{name}", child, depth + 1) for name, child in children if isinstance(child, dict | list)]
        stack.extend(reversed(nested))  # reversed: the first nested value is checked next


def _check_filter_value(value: Any, field: str) -> None:
    if isinstance(value, str):
        _check_chars(value, field)
    elif isinstance(value, int):  # bool included
        _check_int(value, field)
    else:
        raise InvalidFieldError(field, "must be a string, an integer or a boolean, or a list of them")


def check_filter(doc_ids: Sequence[Any], metadata: Mapping[Any, Any], limits: DocumentLimits) -> None:
    """A search filter: bounded document ids that could exist, and metadata fields matched by valid values."""
    if len(doc_ids) > MAX_FILTER_VALUES:
        raise InvalidFieldError("doc_ids", f"lists more than {MAX_FILTER_VALUES} ids")
    for position, doc_id in enumerate(doc_ids):
        check_doc_id(doc_id, f"doc_ids.{position}")
    if len(metadata) > limits.max_metadata_keys:
        raise InvalidFieldError("metadata", f"has more than {limits.max_metadata_keys} fields")
    for key, value in metadata.items():
        path = f"metadata.{key}"
        check_key(key, path)
        if not isinstance(value, list):
            _check_filter_value(value, path)
            continue
        if not 1 <= len(value) <= MAX_FILTER_VALUES:
            raise InvalidFieldError(path, f"must list 1-{MAX_FILTER_VALUES} accepted values")
        for position, item in enumerate(value):
            _check_filter_value(item, f"{path}.{position}")
