"""The package structure stays as the README's Layout section describes it: no import cycles anywhere (the
layer order itself is import-linter's contract in pyproject.toml, run by `make test`)."""

from __future__ import annotations

import grimp

PACKAGES = ("app", "evals", "serving", "safety", "retrieval", "prompts")


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))
