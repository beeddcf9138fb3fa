from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.container import Services
from prompts.loader import PROMPTS_DIR, PromptError
from prompts.registry import PromptRegistry, PromptSelector
from retrieval.index import Scope
from serving.contracts.answer import AnswerRequest
from tests.conftest import sample_documents


@pytest.fixture
def registry(tmp_path: Path) -> PromptRegistry:
    """A registry where only v1 is released and in production, and v2 (a rewording of it) is not released yet."""
    root = tmp_path / "prompts"
    (root / "rag_answer").mkdir(parents=True)
    v1 = (PROMPTS_DIR / "rag_answer" / "v1.yaml").read_text()
    (root / "rag_answer" / "v1.yaml").write_text(v1)
    (root / "rag_answer" / "v2.yaml").write_text(v1.replace("version: v1", "version: v2").replace("short", "brief"))
    v1_hash = PromptRegistry().released("rag_answer")["v1"]
    (root / "registry.yaml").write_text(
        "prompts:\n  rag_answer:\n    history: {}\n    labels:\n      production: v1\n"
        f"    released:\n      v1: {v1_hash}\n"
    )
    return PromptRegistry(root)


def test_shipped_registry_serves_v2_in_production() -> None:
    registry = PromptRegistry()
    assert registry.labels("rag_answer")["production"] == "v2"
    assert registry.resolve("rag_answer").version == registry.resolve("rag_answer@production").version == "v2"
    assert registry.history("rag_answer", "production") == ["v1"]


def test_promote_and_rollback_keep_history(registry: PromptRegistry) -> None:
    assert registry.promote("rag_answer", "v2", "production").version == "v2"
    assert registry.resolve("rag_answer@production").version == "v2"
    assert registry.history("rag_answer", "production") == ["v1"]
    assert set(registry.released("rag_answer")) == {"v1", "v2"}
    assert registry.rollback("rag_answer", "production") == "v1"
    assert registry.resolve("rag_answer").version == "v1"
    with pytest.raises(PromptError, match="no earlier version"):
        registry.rollback("rag_answer", "production")
    registry.promote("rag_answer", "v2", "canary")
    assert registry.labels("rag_answer") == {"production": "v1", "canary": "v2"}
    for bad in ("Bad Label", "v2"):  # a label shaped like a version would make NAME@v2 ambiguous
        with pytest.raises(PromptError, match="bad label"):
            registry.promote("rag_answer", "v1", bad)
    with pytest.raises(PromptError, match="no label 'staging'"):
        registry.resolve("rag_answer@staging")


def test_editing_a_released_version_is_refused(registry: PromptRegistry) -> None:
    path = registry.root / "rag_answer" / "v1.yaml"
    path.write_text(path.read_text().replace("one short sentence", "as many words as you like"))
    with pytest.raises(PromptError, match="immutable"):
        registry.resolve("rag_answer@v1")
    with pytest.raises(PromptError, match="immutable"):
        registry.promote("rag_answer", "v1", "staging")
    registry.resolve("rag_answer@v2")  # unreleased versions may still change


def test_diff(registry: PromptRegistry) -> None:
    diff = registry.diff("rag_answer", "production", "v2")
    assert diff.startswith("--- rag_answer@v1\n+++ rag_answer@v2\n") and "+version: v2" in diff


def test_canary_share_is_sticky_and_close_to_its_share(registry: PromptRegistry) -> None:
    selector = PromptSelector(registry.resolve("rag_answer@v1"), registry.resolve("rag_answer@v2"), 0.2)
    picks = [selector(f"user-{i}").version for i in range(2000)]
    assert 0.17 < picks.count("v2") / len(picks) < 0.23
    assert all(selector(f"user-{i}").version == picks[i] for i in range(200))  # sticky
    assert selector(None).version == "v1"  # anonymous: the stable prompt
    assert PromptSelector(selector.stable, selector.canary, 0.0)("user-1").version == "v1"


def test_answers_name_the_canary_version(make_services: Callable[..., Services]) -> None:
    services = make_services(generator="extractive", canary_prompt="rag_answer@v1", canary_share=1.0)
    services.ingestor.ingest_documents(sample_documents(10), Scope("s", "default"))
    answer = services.pipeline.answer(
        AnswerRequest(question="Who were the Normans?", scope=Scope("s", "default"), user="u1", canary_subject="u1")
    )
    assert answer.prompt.version == "v1" and answer.prompt.hash


def test_prompts_cli(registry: PromptRegistry, tmp_path: Path) -> None:
    def ragops(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RAGOPS_PROMPTS_DIR": str(registry.root), "RAGOPS_DATA_DIR": str(tmp_path / "d")}
        return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, env=env)

    listing = json.loads(ragops("prompts", "list", "--json").stdout)
    assert listing == [
        {"name": "rag_answer", "versions": ["v1", "v2"], "labels": {"production": "v1"}, "released": ["v1"]}
    ]
    assert ragops("prompts", "promote", "rag_answer", "v2", "--label", "production").stdout.strip() == (
        f"rag_answer@production -> v2 (hash {registry.resolve('rag_answer@v2').content_hash})"
    )
    assert "+version: v2" in ragops("prompts", "diff", "rag_answer", "v1", "production").stdout
    assert ragops("prompts", "show", "rag_answer").stdout.startswith("# rag_answer@v2")
    assert ragops("prompts", "rollback", "rag_answer", "--label", "production").stdout.strip() == (
        "rag_answer@production -> v1"
    )
    failed = ragops("prompts", "rollback", "rag_answer", "--label", "production")
    assert failed.returncode == 2 and failed.stderr.startswith("ragops: error: label 'production'")
