"""The docs site: it builds with ``--strict`` (broken links and anchors fail), its references are generated from the
code, its diagrams name the layers import-linter holds, and its command examples run.

Every fenced ``bash``/``sh``/``shell``/``console`` block in ``docs/`` and ``README.md`` is either run here (against a
fresh data dir, offline) or marked just above it with ``<!-- not-run: why -->``; an unmarked block that does not
pass fails. A block marked ``<!-- run-with: kept answers -->`` runs against a data dir that holds the answers a
server would have kept for the ``qa`` suite's questions (its committed results, replayed), as an operator's
commands on a served deployment do. Every ``ragops ...`` command named in any code block (synopses included) must
exist.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from retrieval.embedding import Embedder

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
VENV_BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "console"}
NOT_COMMANDS = {"python", "json", "yaml", "toml", "mermaid"}  # blocks whose `ragops` words are not commands
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S.*?)\s*-->")
WITH_KEPT_ANSWERS = re.compile(r"<!--\s*run-with:\s*kept answers\s*-->")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # `RAGOPS_X=1 ragops ...`: a setting for one command
QA_SUITE = REPO / "evals" / "suites" / "qa.yaml"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    not_run: str | None  # the reason, when marked
    with_kept_answers: bool = False

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def code_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = len(opening["indent"])
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = NOT_RUN.search(before)
        kept = WITH_KEPT_ANSWERS.search(before) is not None
        blocks.append(Block(path, i + 1, opening["lang"].lower(), body, marked[1] if marked else None, kept))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in pages() for block in code_blocks(path)]


def shell_blocks() -> list[Block]:
    return [block for block in all_blocks() if block.lang in SHELL_LANGS]


@cache
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ragops_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_build(site: Path, config: Path = REPO / "mkdocs.yml") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


# The build ----------------------------------------------------------------------------------------------------


def test_site_builds_strict_with_generated_references(tmp_path: Path) -> None:
    built = mkdocs_build(tmp_path / "site")
    assert built.returncode == 0, built.stderr
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    for env in ("RAGOPS_DATA_DIR", "RAGOPS_PREFETCH_LIMIT", "RAGOPS_EMBEDDER"):
        assert env in settings
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for path in hooks().command_paths():
        assert f"usage: {' '.join(('ragops', *path))}" in cli, path
    assert "generated:" not in settings + cli  # the markers were replaced


def test_a_broken_link_or_anchor_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "data.md"
    text = page.read_text(encoding="utf-8")
    page.write_text(text + "\n[gone](no-such-page.md)\n", encoding="utf-8")
    broken_page = mkdocs_build(tmp_path / "a", copy / "mkdocs.yml")
    assert broken_page.returncode != 0 and "no-such-page.md" in broken_page.stderr
    page.write_text(text + "\n[gone](tests.md#no-such-heading)\n", encoding="utf-8")
    broken_anchor = mkdocs_build(tmp_path / "b", copy / "mkdocs.yml")
    assert broken_anchor.returncode != 0 and "no-such-heading" in broken_anchor.stderr


def test_every_page_is_in_the_nav() -> None:
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w/-]+\.md)\s*$", config, re.MULTILINE))
    assert listed == {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}


def mermaid_graph(body: str) -> tuple[set[str], set[tuple[str, str]]]:
    nodes = set(re.findall(r"^\s*(\w+)\[", body, re.MULTILINE))
    edges: set[tuple[str, str]] = set()
    for line in body.splitlines():
        chain = [part.strip() for part in line.split("-->")]
        if len(chain) > 1:
            edges.update(itertools.pairwise(chain))
    return nodes, edges


def expected_graph(layers: list[str]) -> tuple[set[str], set[tuple[str, str]]]:
    levels = [[name.strip() for name in re.split(r"[|:]", layer)] for layer in layers]
    nodes = {name for level in levels for name in level}
    edges = {(upper, lower) for above, below in itertools.pairwise(levels) for upper in above for lower in below}
    return nodes, edges


def test_architecture_diagrams_match_the_import_contracts() -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"][
        "contracts"
    ]
    layered = [c for c in contracts if c.get("type") == "layers"]
    diagrams = [b.body for b in code_blocks(DOCS / "concepts" / "architecture.md") if b.lang == "mermaid"]
    top = next(c for c in layered if not c.get("containers"))
    assert mermaid_graph(diagrams[0]) == expected_graph(top["layers"]), "the layers diagram differs from pyproject"
    wings = next((c for c in layered if c.get("containers") == ["serving"]), None)
    if wings is not None:
        assert mermaid_graph(diagrams[1]) == expected_graph(wings["layers"]), "the wings diagram differs from pyproject"


# The command examples ---------------------------------------------------------------------------------------------


def ragops_commands(body: str) -> list[list[str]]:
    """The words after each ``ragops`` in a block (comments dropped), up to the first option or placeholder."""
    found = []
    for raw in body.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw.lstrip("$ "))
        for match in re.finditer(r"(?:^|[\s;&|(])ragops((?:\s+[a-z][a-z_-]*)*)", line):
            found.append(match[1].split())
    return found


def resolve(words: list[str], paths: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The command path ``words`` names, or None when a word that must be a (sub)command is none."""
    path: tuple[str, ...] = ()
    for word in words:
        if (*path, word) in paths:
            path = (*path, word)
        elif path == () or any(len(p) == len(path) + 1 and p[: len(path)] == path for p in paths):
            return None  # not a command, or not one of this command's subcommands
        else:
            break  # the command takes arguments, not subcommands: the rest are its arguments
    return path


def test_every_ragops_command_in_the_docs_exists() -> None:
    paths = set(hooks().command_paths())
    missing = []
    for block in all_blocks():
        if block.lang in NOT_COMMANDS:
            continue
        for words in ragops_commands(block.body):
            if words and resolve(words, paths) is None:
                missing.append(f"{block.where}: ragops {' '.join(words)}")
    assert missing == []
    # Each command path's --help exits 0 (in process: the parser is what `ragops` runs).
    from app.cli import build_parser

    for path in paths:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*path, "--help"])
        assert done.value.code == 0, path


def test_every_shell_example_is_run_or_marked() -> None:
    blocks = shell_blocks()
    assert blocks, "no shell examples found"
    runnable = [b for b in blocks if b.not_run is None]
    assert runnable, "every example is marked not-run: some must run"
    for block in runnable:  # what test_shell_examples_run will run must be offline and read-only
        for command in block_commands(block):
            program = next(word for word in shlex.split(command) if not ENV_ASSIGNMENT.match(word))
            assert program == "ragops", f"{block.where}: only ragops commands run here: {command}"


def block_commands(block: Block) -> list[str]:
    lines = block.body.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in (re.sub(r"(^|\s)#.*$", "", line).strip() for line in lines) if line]


def keep_suite_answers(data_dir: Path, embedder: Embedder) -> int:
    """Keep, in ``data_dir``'s state store, the answers a server would have kept for the qa suite's questions:
    its committed results replayed, each with its top retrieval score as the serving path computes it."""
    from evals.drift_baseline import suite_reference
    from retrieval.index import Scope
    from safety.groundedness import Groundedness
    from serving.contracts.answer import Answer, AnswerRequest, PromptInfo, new_answer_id
    from serving.contracts.generation import Fallback
    from serving.infra.state_store import StateStore
    from serving.loop.answer_log import AnswerLog

    reference = suite_reference(QA_SUITE, embedder.embed, embedder.model_id, None)
    lineage = reference.lineage
    prompt = PromptInfo(name=lineage.prompt or "rag_answer", version=lineage.version or "v1", hash="0" * 64)
    store = StateStore.open(None, data_dir / "state.sqlite")
    log = AnswerLog(store, retention_days=30)
    for signals in reference.answers:
        answer = Answer(
            id=new_answer_id(), answer=signals.answer, outcome=signals.outcome or "answered", prompt=prompt,
            relevance=signals.top_score,
            fallback=Fallback(from_="vllm", reason="replayed") if signals.fallback else None,
            groundedness=None if signals.groundedness is None else Groundedness(score=signals.groundedness),
        )  # fmt: skip
        log.record(AnswerRequest(question=signals.question, scope=Scope("eval-qa", "default")), answer)
    log.close(10)
    store.close()
    return len(reference.answers)


@pytest.mark.parametrize("block", [b for b in shell_blocks() if b.not_run is None], ids=lambda b: b.where)
def test_shell_examples_run(block: Block, tmp_path: Path, models_dir: Path, embedder: Embedder) -> None:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAGOPS_DATA_DIR": str(tmp_path / "data"),
        "RAGOPS_MODELS_DIR": str(models_dir),  # the session's ONNX export, not one per block
        "COLUMNS": "100",
    }
    if block.with_kept_answers:
        assert keep_suite_answers(tmp_path / "data", embedder) >= 20  # a drift check tests no signal on fewer
    for command in block_commands(block):
        done = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{block.where}: `{command}` exited {done.returncode}: {done.stderr[-2000:]}"
        assert done.stdout.strip() or command.endswith("--json"), f"{block.where}: `{command}` printed nothing"


def test_the_wings_diagram_is_drawn_from_the_imports_and_every_arrow_points_down() -> None:
    diagram = hooks().wing_imports_markdown()
    layer = hooks()._wing_layer
    arrows = re.findall(r"^\s+(\w+) -->\|\d+\| (\w+)$", diagram, re.M)
    assert arrows, diagram
    assert [(a, b) for a, b in arrows if layer(a) >= layer(b) and {a, b} != {"contracts", "infra"}] == []
    assert "contracts -->" not in diagram and "infra -->" not in diagram  # the ground floor imports no wing
