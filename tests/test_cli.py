"""The ``ragops`` CLI as users run it: a separate process, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_sample_records


def ragops(*args: str, models_dir: Path, data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGOPS_MODELS_DIR": str(models_dir), "RAGOPS_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, input=stdin, timeout=300
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "sample.jsonl").write_text("\n".join(json.dumps(r) for r in load_sample_records(15)) + "\n")
    (root / "howto.md").write_text("# Howto\nTo brew tea, steep the leaves for three minutes.")
    return root


def test_ingest_search_and_reingest(corpus: Path, tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    first = ragops("ingest", str(corpus), "--collection", "kb", models_dir=models_dir, data_dir=data)
    assert first.returncode == 0, first.stderr
    assert "16 added, 0 updated, 0 unchanged, 0 removed, 0 failed" in first.stdout

    again = ragops("ingest", str(corpus), "--collection", "kb", "--json", models_dir=models_dir, data_dir=data)
    report = json.loads(again.stdout)
    assert (report["unchanged"], report["added"], report["embeddings_computed"]) == (16, 0, 0)

    text = ragops(
        "search", "how long to steep tea", "--collection", "kb", "-k", "2", models_dir=models_dir, data_dir=data
    )
    assert text.returncode == 0 and text.stdout.startswith("1. [") and "howto.md#0" in text.stdout.splitlines()[0]

    as_json = ragops(
        "search", "steep tea", "--collection", "kb", "--json", "--mode", "sparse", models_dir=models_dir, data_dir=data
    )
    assert json.loads(as_json.stdout)["hits"][0]["doc_id"] == "howto.md"

    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"id": "q1", "query": "steep tea"}\n\n{"id": "q2", "query": "Normans"}\n')
    batch = ragops(
        "search", "--queries", str(queries), "--collection", "kb", "-k", "3", models_dir=models_dir, data_dir=data
    )
    lines = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["q1", "q2"] and all(len(line["hits"]) == 3 for line in lines)

    (corpus / "howto.md").unlink()
    pruned = ragops(
        "ingest", str(corpus), "--collection", "kb", "--prune", "--json", models_dir=models_dir, data_dir=data
    )
    assert json.loads(pruned.stdout)["documents"]["removed"] == ["howto.md"]


def test_partial_failure_exit_code(corpus: Path, tmp_path: Path, models_dir: Path) -> None:
    (corpus / "broken.pdf").write_bytes(b"%PDF garbage")
    result = ragops("ingest", str(corpus), models_dir=models_dir, data_dir=tmp_path / "data")
    assert result.returncode == 3
    assert "skipped" in result.stderr and "broken.pdf" in result.stderr
    assert "16 added" in result.stdout


def test_data_dirs_never_interfere(corpus: Path, tmp_path: Path, models_dir: Path) -> None:
    ragops("ingest", str(corpus / "howto.md"), models_dir=models_dir, data_dir=tmp_path / "one")
    result = ragops("search", "tea", "--json", models_dir=models_dir, data_dir=tmp_path / "two")
    assert json.loads(result.stdout)["hits"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "   "], "must not be blank"),
        (["search"], "give a QUERY or --queries"),
        (["search", "x", "-k", "0"], "-k must be between 1 and 100"),
        (["search", "x", "--collection", "a b"], "collection must be"),
        (["--config", "/nonexistent.toml", "search", "x"], "config file not found"),
        (["search", "--queries", "QUERIES"], "QUERIES:2: invalid JSON"),
        (["snapshot", "restore", "/nonexistent.tar.gz"], "snapshot not found"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, models_dir: Path, args: list[str], message: str) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": 1, "query": "ok"}\n{oops\n')
    args = [str(queries) if a == "QUERIES" else a for a in args]
    message = message.replace("QUERIES", str(queries))
    result = ragops(*args, models_dir=models_dir, data_dir=tmp_path / "data")
    assert result.returncode in (1, 2)
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("ragops: error: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_invalid_setting_from_environment(tmp_path: Path, models_dir: Path) -> None:
    env = {**os.environ, "RAGOPS_DEFAULT_TOP_K": "zero", "RAGOPS_MODELS_DIR": str(models_dir)}
    result = subprocess.run([sys.executable, "-m", "app.cli", "search", "x"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("ragops: error: invalid setting default_top_k")


def test_snapshot_round_trip(corpus: Path, tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    ragops("ingest", str(corpus / "howto.md"), models_dir=models_dir, data_dir=data)
    snap = tmp_path / "snap.tar.gz"
    assert ragops("snapshot", "create", str(snap), models_dir=models_dir, data_dir=data).returncode == 0
    ragops("ingest", str(corpus / "sample.jsonl"), models_dir=models_dir, data_dir=data)
    restored = ragops("snapshot", "restore", str(snap), models_dir=models_dir, data_dir=data)
    assert restored.returncode == 0 and "1 points" in restored.stdout


def test_ask_answers_with_citations(corpus: Path, tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    ragops("ingest", str(corpus), models_dir=models_dir, data_dir=data)
    env_args = ("ask", "How long should tea steep?", "--generator", "extractive")
    text = ragops(*env_args, models_dir=models_dir, data_dir=data)
    assert text.returncode == 0 and "three minutes" in text.stdout and "[1] Howto (howto.md)" in text.stdout
    as_json = json.loads(ragops(*env_args, "--json", models_dir=models_dir, data_dir=data).stdout)
    assert as_json["generator"] == "extractive" and as_json["citations"][0]["doc_id"] == "howto.md"
    blank = ragops("ask", " ", models_dir=models_dir, data_dir=data)
    assert blank.returncode == 2 and "must not be blank" in blank.stderr
