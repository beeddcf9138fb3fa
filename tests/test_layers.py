"""The package structure stays as docs/concepts/architecture.md draws it: no import cycles anywhere, type-only
imports counted (a reader still has to follow them); no folder of serving/ with more than 15 modules; no
production module over 450 lines. The layer order itself is import-linter's two contracts in pyproject.toml
(the outer layers, and serving's wings), run by `make test`."""

from __future__ import annotations

from pathlib import Path

import grimp

PACKAGES = ("app", "evals", "serving", "safety", "retrieval", "prompts")
ROOT = Path(__file__).resolve().parent.parent
MAX_MODULES_PER_FOLDER = 15
MAX_MODULE_LINES = 450


def test_no_import_cycles_type_only_imports_included() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_serving_is_a_few_rooms_of_at_most_15_modules() -> None:
    folders = {p.parent for p in (ROOT / "serving").rglob("*.py")}
    crowded = {
        str(f.relative_to(ROOT)): n
        for f in folders
        if (n := sum(1 for p in f.glob("*.py") if p.name != "__init__.py")) > MAX_MODULES_PER_FOLDER
    }
    assert not crowded, crowded
    assert not [p for p in (ROOT / "serving").glob("*.py") if p.name != "__init__.py"], "serving/ holds wings only"


def test_no_production_module_over_450_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
