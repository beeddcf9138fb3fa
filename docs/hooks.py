"""MkDocs hooks: the reference pages' generated parts, rendered from the code on every build, never kept in git.

``docs/reference/settings.md`` holds ``<!-- generated:settings -->`` where the settings tables go (from
``app.settings.Settings``: every field, nested group models under a heading each) and ``docs/reference/cli.md``
holds ``<!-- generated:cli -->`` where every command's ``--help`` goes (from ``app.cli.build_parser``);
``docs/guides/retention.md`` holds ``<!-- generated:retention -->`` where the retention table goes (from
``serving.rights.retention_rules.RETENTION_RULES``). A page that should hold a marker and does not fails the
build. ``tests/test_docs.py`` imports this file by path.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

SETTINGS_MARKER = "<!-- generated:settings -->"
CLI_MARKER = "<!-- generated:cli -->"
WINGS_MARKER = "<!-- generated:wing-imports -->"
RETENTION_MARKER = "<!-- generated:retention -->"
MARKERS = {
    "reference/settings.md": SETTINGS_MARKER,
    "reference/cli.md": CLI_MARKER,
    "concepts/architecture.md": WINGS_MARKER,
    "guides/retention.md": RETENTION_MARKER,
}
HELP_COLUMNS = "100"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """MkDocs' hook: replace each page's marker with what the code renders now."""
    marker = MARKERS.get(page.file.src_uri)
    if marker is None:
        return markdown
    if markdown.count(marker) != 1:
        raise ValueError(f"docs/{page.file.src_uri} must hold {marker} once: the generated reference goes there")
    render = {SETTINGS_MARKER: settings_markdown, CLI_MARKER: cli_markdown, WINGS_MARKER: wing_imports_markdown,
              RETENTION_MARKER: retention_markdown}  # fmt: skip
    return markdown.replace(marker, render[marker]())


# Wings ------------------------------------------------------------------------------------------------------------


def wing_imports_markdown() -> str:
    """A Mermaid graph of serving's wings drawn from the imports as they are (grimp, type-only imports counted):
    each wing with its module count, each arrow with the number of module-to-module imports it stands for."""
    import grimp

    graph = grimp.build_graph("serving", exclude_type_checking_imports=False)
    wings = sorted(child.split(".")[1] for child in graph.find_children("serving") if graph.find_children(child))
    wings.sort(key=_wing_layer)  # top floor first, as import-linter's contract lists them
    modules: Counter[str] = Counter()
    arrows: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        parts = importer.split(".")
        if len(parts) < 3:
            continue
        modules[parts[1]] += 0 if graph.find_children(importer) else 1  # a package is its modules
        for imported in graph.find_modules_directly_imported_by(importer):
            target = imported.split(".")
            if len(target) >= 3 and target[1] != parts[1]:
                arrows[(parts[1], target[1])] += 1
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {wing}["{wing}: {modules[wing]} modules"]' for wing in wings]
    lines += [f"    {a} -->|{n}| {b}" for (a, b), n in sorted(arrows.items())]
    return "\n".join([*lines, "```"]) + "\n"


def _wing_layer(wing: str) -> int:
    """The floor of a wing in import-linter's contract on ``serving`` (0: the top); unknown wings go last."""
    layers = _serving_layers()
    return next((floor for floor, names in enumerate(layers) if wing in names), len(layers))


@cache
def _serving_layers() -> list[set[str]]:
    import tomllib

    import serving

    # The pyproject.toml of the code the diagram is drawn from (a copy of docs/ elsewhere still finds it).
    pyproject = Path(serving.__file__).resolve().parents[1] / "pyproject.toml"
    contracts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    wings = next(contract["layers"] for contract in contracts if contract.get("containers") == ["serving"])
    return [{name.strip() for name in layer.split("|")} for layer in wings]


# Settings ---------------------------------------------------------------------------------------------------------


def settings_markdown() -> str:
    """Every setting, grouped as ``app.settings.Settings`` groups them (``app.settings_doc``, the one renderer)."""
    from app import settings_doc

    return settings_doc.render_reference()


# Retention --------------------------------------------------------------------------------------------------------


def retention_markdown() -> str:
    """The retention table: a row per store of ``RETENTION_RULES`` with its default period and the setting that
    changes it, then what each way of applying a period means."""
    from serving.rights.retention_rules import ENFORCEMENT_MEANING, RETENTION_RULES

    rows = ["| store | holds | default period (setting) | applied | legal note |", "| --- | --- | --- | --- | --- |"]
    for rule in RETENTION_RULES:
        period = "-"
        if rule.setting is not None and rule.default_days is not None:
            shown = f"{rule.default_days:g} day{'' if rule.default_days == 1 else 's'}"
            default = rule.default_days * (86_400 if rule.unit == "seconds" else 1)
            period = f"{shown} (`{rule.setting}` = {default:g})"
        rows.append(f"| `{rule.store}` | {rule.holds} | {period} | {rule.enforced} | {rule.legal_note} |")
    meanings = [f"- **{name}**: {meaning}." for name, meaning in ENFORCEMENT_MEANING.items()]
    return "\n".join(rows) + "\n\n" + "\n".join(meanings) + "\n"


# CLI --------------------------------------------------------------------------------------------------------------


def cli_markdown() -> str:
    """``ragops --help``, then each command's and subcommand's ``--help``, as argparse prints them."""
    from app.cli import build_parser

    with _columns(HELP_COLUMNS):
        parser = build_parser()
        return "\n".join(_help_blocks(parser, level=3))


def command_paths() -> list[tuple[str, ...]]:
    """Every command path the parser accepts: ``()``, ``("ingest",)``, ``("prompts", "list")``..."""
    from app.cli import build_parser

    return [path for path, _ in _walk(build_parser(), ())]


def _help_blocks(parser: argparse.ArgumentParser, level: int) -> Iterator[str]:
    for path, sub in _walk(parser, ()):
        depth = min(level + len(path), 6)
        title = " ".join(("ragops", *path))
        yield f"{'#' * depth} {title}\n\n```text\n{sub.format_help().rstrip()}\n```\n"


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias of a command already listed
                    continue
                seen.add(id(sub))
                yield from _walk(sub, (*path, name))


@contextmanager
def _columns(width: str) -> Iterator[None]:
    """argparse wraps help at $COLUMNS: a fixed width makes the page the same on every terminal."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
