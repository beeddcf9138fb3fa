"""The README's settings table, generated from ``Settings``: names, types, defaults and descriptions.

``python -m app.settings_doc`` prints the table; ``python -m app.settings_doc --write README.md`` replaces the
table between the ``settings-table`` markers in place. ``tests/test_settings.py`` fails when the README's table
differs from what this renders.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from app.settings import Settings

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
REGENERATE = "python -m app.settings_doc --write README.md"

_HEADER = ("setting", "type", "default", "meaning")


def render_table(settings_cls: type[BaseSettings] = Settings) -> str:
    """A Markdown table of every field in declaration order, with a bold row where a commented section starts."""
    sections = _section_starts(settings_cls)
    rows = [_row(_HEADER), _row(("---",) * len(_HEADER))]
    for name, field in settings_cls.model_fields.items():
        if name in sections:
            rows.append(_row((f"**{sections[name]}**", "", "", "")))
        cells = (
            ", ".join(f"`{env}`" for env in env_names(settings_cls, name, field)),
            format_type(field),
            format_default(field),
            field.description or "",
        )
        rows.append(_row(cells))
    return "\n".join(rows) + "\n"


def env_names(settings_cls: type[BaseSettings], name: str, field: FieldInfo) -> list[str]:
    """The environment variables that set a field: its validation aliases, else the prefixed field name."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        names = [alias]
    else:
        names = []
    prefix = settings_cls.model_config.get("env_prefix", "")
    return [env.upper() for env in names or [f"{prefix}{name}"]]


def format_type(field: FieldInfo) -> str:
    """The annotation without ``None`` (the default column says unset), Literal choices listed, then bounds."""
    kind = _type_name(field.annotation)
    lower: list[tuple[str, Any]] = []
    upper: list[tuple[str, Any]] = []
    pattern: str | None = None
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            lower.append((">=", meta.ge))
        elif isinstance(meta, annotated_types.Gt):
            lower.append((">", meta.gt))
        elif isinstance(meta, annotated_types.Le):
            upper.append(("<=", meta.le))
        elif isinstance(meta, annotated_types.Lt):
            upper.append(("<", meta.lt))
        elif getattr(meta, "pattern", None):
            pattern = meta.pattern
    if [op for op, _ in lower + upper] == [">=", "<="]:
        bounds = f"{lower[0][1]} to {upper[0][1]}"
    else:
        bounds = ", ".join(f"{op} {value}" for op, value in lower + upper)
    if bounds:
        kind = f"{kind}, {bounds}"
    if pattern:
        kind = f"{kind} matching `{pattern}`"
    return kind


def format_default(field: FieldInfo) -> str:
    """None as unset, booleans as true/false, scalars as written, containers as the JSON an env var takes."""
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        return f"`{value}`" if str(value) else '`""`'
    try:
        return f"`{json.dumps(value)}`"
    except TypeError:
        return f"`{value!r}`"


def table_in(text: str) -> str:
    """The table between the markers of ``text``, as :func:`render_table` writes it."""
    start, end = _marker_span(text)
    return text[start + len(START) : end].strip("\n") + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` with whatever is between the markers replaced by ``table`` (blank lines around it)."""
    start, end = _marker_span(text)
    return f"{text[: start + len(START)]}\n\n{table.strip(chr(10))}\n\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.settings_doc", description="Print the settings table, or write it into a Markdown file."
    )
    parser.add_argument(
        "--write", metavar="FILE", type=Path, help=f"replace the table between {START} and {END} in FILE"
    )
    args = parser.parse_args(argv)
    table = render_table()
    if args.write is None:
        sys.stdout.write(table)
        return 0
    path: Path = args.write
    text = path.read_text(encoding="utf-8")
    try:
        updated = replace_table(text, table)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    if updated == text:
        print(f"{path}: settings table already up to date")
    else:
        path.write_text(updated, encoding="utf-8")
        print(f"{path}: settings table updated")
    return 0


def _marker_span(text: str) -> tuple[int, int]:
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"expected {START} and {END} once each")
    start, end = text.index(START), text.index(END)
    if end < start:
        raise ValueError(f"{END} comes before {START}")
    return start, end


def _row(cells: Sequence[str]) -> str:
    escaped = (cell.replace("\n", " ").replace("|", r"\|") for cell in cells)
    return "| " + " | ".join(escaped) + " |"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        choices = [f"`{choice}`" for choice in get_args(annotation)]
        return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
    if origin is Union or origin is types.UnionType:
        return " or ".join(_type_name(arg) for arg in get_args(annotation) if arg is not type(None))
    if origin is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _section_starts(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Field name -> title of the section it opens: a comment after a blank line in the class body (its text up
    to a colon), as in ``# Embeddings``. Without the source, no sections."""
    try:
        lines = inspect.getsource(settings_cls).splitlines()[1:]
    except (OSError, TypeError):
        return {}
    body = [line for line in lines if line.strip()]
    indent = len(body[0]) - len(body[0].lstrip()) if body else 0
    starts: dict[str, str] = {}
    title, after_blank = None, True
    for line in lines:
        if not line.strip():
            after_blank = True
            continue
        at_body_level = len(line) - len(line.lstrip()) == indent
        text = line.strip()
        if at_body_level and text.startswith("#") and after_blank:
            title = text.lstrip("#").strip().split(":")[0]
        elif at_body_level and title and (field := re.match(r"(\w+)\s*:", text)):
            starts[field[1]] = title
            title = None
        after_blank = False
    return {name: title for name, title in starts.items() if name in settings_cls.model_fields}


if __name__ == "__main__":
    raise SystemExit(main())
