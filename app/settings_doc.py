"""The settings reference, generated from ``Settings``: the top-level settings, then one table per group
(``settings.canary``), each setting under the environment variables that set it (its flat name,
``RAGOPS_CANARY_SHARE``), with its type, default and description. ``docs/hooks.py`` puts it into the docs
site on every build; ``python -m app.settings_doc`` prints it.
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
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from app.settings import Settings, setting_groups
from app.settings_groups import ENV_ALIASES

_HEADER = ("setting", "type", "default", "meaning")


def render_reference(settings_cls: type[BaseSettings] = Settings) -> str:
    """Markdown: the top-level settings' table (a bold row where a commented section starts), then a heading,
    the description and a table per group, in declaration order."""
    groups = setting_groups(settings_cls)
    prefix = settings_cls.model_config.get("env_prefix", "")
    top = {name: field for name, field in settings_cls.model_fields.items() if name not in groups}
    parts = [_table(settings_cls, top, prefix, "")]
    for name, group in groups.items():
        doc = inspect.cleandoc(group.__doc__ or "")
        parts.append(f"### `{name}`\n\n{doc}\n\n" + _table(group, group.model_fields, prefix, group.prefix))
    return "\n".join(parts)


def _table(model: type[BaseModel], fields: dict[str, FieldInfo], env_prefix: str, flat_prefix: str) -> str:
    sections = _section_starts(model)
    rows = [_row(_HEADER), _row(("---",) * len(_HEADER))]
    for name, field in fields.items():
        if name in sections:
            rows.append(_row((f"**{sections[name]}**", "", "", "")))
        envs = env_names(flat_prefix + name, env_prefix)
        rows.append(_row((", ".join(f"`{env}`" for env in envs), format_type(field), format_default(field),
                          field.description or "")))  # fmt: skip
    return "\n".join(rows) + "\n"


def env_names(flat_name: str, env_prefix: str = "RAGOPS_") -> list[str]:
    """The environment variables that set a setting: the prefixed flat name, then the vendors' (``ENV_ALIASES``)."""
    return [f"{env_prefix}{flat_name}".upper(), *ENV_ALIASES.get(flat_name, ())]


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


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m app.settings_doc", description="Print the settings reference.").parse_args(
        argv
    )
    sys.stdout.write(render_reference())
    return 0


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


def _section_starts(settings_cls: type[BaseModel]) -> dict[str, str]:
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
