"""Lineage: eval runs, gates and releases of a prompt version with the hashes of what they ran, read back in
order by ``ragops lineage``; model file hashes computed once per file version; old results files still read."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import serving.infra.file_hashes
from app.cli import main
from app.container import Services
from app.main import create_app
from evals.results import read_results
from prompts.loader import PROMPTS_DIR
from serving.infra.file_hashes import FileHashes
from serving.infra.state_store import StateStore
from serving.loop.lineage import (
    EvalRunRecord,
    GateRecord,
    LabelMoveRecord,
    Lineage,
    ModelHashes,
    ReleaseDraft,
    ReleaseRecord,
    RunLineage,
)
from tests.test_evals import ragops_eval

ROOT = Path(__file__).resolve().parents[1]


def ragops(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in process (these commands load no model): exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_file_hashes_are_computed_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"w" * 1000)
    hashed: list[Path] = []
    real = serving.infra.file_hashes.sha256_of

    def counted(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(serving.infra.file_hashes, "sha256_of", counted)
    hashes = FileHashes(tmp_path / "cache" / "file-hashes.sqlite")
    first = hashes.sha256(weights)
    assert hashes.sha256(weights) == first and len(hashed) == 1
    hashes.close()
    again = FileHashes(tmp_path / "cache" / "file-hashes.sqlite")  # another process: still cached
    assert again.sha256(weights) == first and len(hashed) == 1
    weights.write_bytes(b"v" * 1001)
    assert again.sha256(weights) != first and len(hashed) == 2
    again.close()


def test_results_made_before_lineage_still_read() -> None:
    assert read_results(ROOT / "evals" / "baselines" / "retrieval.json").lineage is None  # extractive, not re-run


def test_eval_run_gate_and_release_are_a_versions_lineage_in_order(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts_dir = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, prompts_dir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    suite = tmp_path / "qa.yaml"
    suite.write_text((ROOT / "evals/suites/qa.yaml").read_text().replace("evals/", f"{ROOT}/evals/") + "samples: 2\n")
    common: dict[str, Any] = {"data_dir": tmp_path / "d", "models_dir": models_dir, "prompts_dir": prompts_dir}
    run = ragops_eval("run", str(suite), "--prompt", "rag_answer@v2", "--out", str(tmp_path / "v2"), **common)
    assert run.returncode == 0, run.stderr
    gate = ragops_eval("gate", str(suite), "--baseline", str(tmp_path / "v2" / "results.json"),
                       "--candidate", "rag_answer@v2", **common)  # fmt: skip
    assert gate.returncode == 0, gate.stdout + gate.stderr
    monkeypatch.setenv("RAGOPS_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RAGOPS_PROMPTS_DIR", str(prompts_dir))
    assert ragops(capsys, "prompts", "promote", "rag_answer", "v2", "--label", "staging")[0] == 0

    results = read_results(tmp_path / "v2" / "results.json")
    assert results.lineage is not None and results.lineage.prompt == "rag_answer@v2"
    models = results.lineage.models
    assert models.generator == "llamacpp" and models.generator_sha256 and len(models.generator_sha256) == 64
    assert models.embedder == results.embedder and all(len(h) == 64 for h in models.embedder_files.values())
    assert results.lineage.dataset == results.dataset.hash and results.lineage.corpus == results.corpus_hash

    code, out, err = ragops(capsys, "lineage", "rag_answer@staging", "--json")
    assert code == 0, err
    listing = json.loads(out)
    events = listing["events"]
    kinds = [e["kind"] for e in events]
    # promote first takes the labels registry.yaml declares into the store (production -> v2), then moves staging
    assert listing["version"] == "v2" and kinds == ["eval_run", "gate", "label_move", "label_move", "release"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    moves = [LabelMoveRecord.model_validate(e["body"]) for e in events[2:4]]
    assert [(m.label, m.to_version, m.reason) for m in moves] == [("production", "v2", "declared"),
                                                                  ("staging", "v2", "promote")]  # fmt: skip
    run_event = EvalRunRecord.model_validate(events[0]["body"])
    assert run_event.lineage == results.lineage and run_event.results == str(tmp_path / "v2" / "results.json")
    gate_event = GateRecord.model_validate(events[1]["body"])
    assert gate_event.passed and gate_event.baseline == "rag_answer@v2" and gate_event.lineage == results.lineage
    release = ReleaseRecord.model_validate(events[4]["body"])
    assert release.label == "staging" and release.evidence == [events[0]["seq"], events[1]["seq"]]
    assert release.prompt_hash == results.prompt.hash

    text = ragops(capsys, "lineage", "rag_answer@v2")[1]
    assert "eval_run v2: suite qa" in text and "gate v2: suite qa against rag_answer@v2: pass" in text
    assert "label_move v2: label staging: unset -> v2 (promote, by cli)" in text
    assert f"generator {models.generator_model} {models.generator_sha256[:12]}" in text
    code, _, err = ragops(capsys, "lineage", "rag_answer@")
    assert code == 2 and err.startswith("ragops: error: expected PROMPT")
    for unknown in ("nosuch", "rag_answer@nosuch"):  # an unknown prompt, a label that is not one
        assert ragops(capsys, "lineage", unknown)[0] == 2


def test_a_release_through_the_admin_api_is_in_the_lineage(
    tmp_path: Path, make_services: Callable[..., Services]
) -> None:
    prompts_dir = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, prompts_dir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    services = make_services(prompts_dir=prompts_dir, generator="extractive")
    with TestClient(create_app(services=services)) as http:
        moved = http.post("/v1/admin/prompts/rag_answer/labels/staging", json={"version": "v1"})
        assert moved.status_code == 200, moved.text
        assert http.post("/v1/admin/prompts/rag_answer/labels/staging", json={"version": "v2"}).status_code == 200
        assert http.post("/v1/admin/prompts/rag_answer/labels/staging/rollback").status_code == 200
    v1 = services.lineage.history("rag_answer", "v1")
    (release,) = [e for e in v1 if e.kind == "release"]
    record = ReleaseRecord.model_validate(release.body)
    assert (record.label, record.previous, record.prompt_hash) == ("staging", None, moved.json()["hash"])
    # the rollback is in the lineage of both versions: the one the label left and the one it returned to
    v2_kinds = [e.kind for e in services.lineage.history("rag_answer", "v2") if e.body.get("label") == "staging"]
    assert v2_kinds == ["label_move", "release", "rollback"] and v1[-1].kind == "rollback"


def test_a_release_names_the_evals_of_exactly_its_content(database_url: str | None, tmp_path: Path) -> None:
    """On SQLite and Postgres: a release's evidence is the eval runs and gates of the same version whose prompt
    hash is the released one (an edited file under the same version name is not evidence)."""
    models = ModelHashes(embedder="e:onnx-int8:1", generator="llamacpp", generator_model="m.gguf")
    runs = {h: RunLineage(dataset="d", corpus="c", prompt="p@v9", prompt_hash=h, models=models) for h in "ab"}
    store = StateStore.open(database_url, tmp_path / "state.sqlite")
    try:
        lineage = Lineage(store)
        seqs = [
            lineage.record("eval_run", "p", "v9", EvalRunRecord(suite="qa", means={}, lineage=runs[h]).model_dump())
            for h in "ab"
        ]
        gate = GateRecord(suite="qa", passed=True, regressions=[], baseline="p@v1", lineage=runs["a"])
        gated = lineage.record("gate", "p", "v9", gate.model_dump())
        lineage.record("eval_run", "p", "v8", EvalRunRecord(suite="qa", means={}, lineage=runs["a"]).model_dump())
        released = lineage.release("p", "v9", ReleaseDraft("production", "v1", "a", "cli"))
        assert ReleaseRecord.model_validate(released.body).evidence == [seqs[0].seq, gated.seq]
        assert [e.kind for e in lineage.history("p", "v9")] == ["eval_run", "eval_run", "gate", "release"]
        assert [e.version for e in lineage.history("p")] == ["v9", "v9", "v9", "v8", "v9"]
    finally:
        store.close()


def test_the_gate_compares_runs_of_one_llama_build_only() -> None:
    """Two llama.cpp builds decode differently: a baseline of another build is a broken comparison (exit 2), a run
    that does not record its build is compared with a warning."""
    from evals.gate import GateError, build_unknown, check_comparable

    shipped = read_results(ROOT / "evals" / "baselines" / "qa.json")

    def built(build: str | None) -> Any:
        models = ModelHashes(embedder="e", generator="llamacpp", generator_build=build)
        lineage = RunLineage(dataset="d", corpus="c", prompt="rag_answer@v2", prompt_hash="h", models=models)
        return shipped.model_copy(update={"lineage": lineage})

    portable, native = built("llama-cpp-python 0.3.36 portable (AVX2)"), built("llama-cpp-python 0.3.36 native:AVX512")
    check_comparable(portable, portable)
    with pytest.raises(GateError, match=r"another llama\.cpp build"):
        check_comparable(portable, native)
    check_comparable(built(None), portable)
    warning = build_unknown(built(None), portable)
    assert warning is not None and "baseline does not record its llama.cpp build" in warning
    assert build_unknown(portable, portable) is None


def test_eval_answers_of_another_gguf_are_never_read_back(make_settings: Callable[..., Any]) -> None:
    """The eval answer store's key holds the GGUF's sha256: the default GGUF changed (Q4_1 to Q8_0) under settings
    that did not, and an answer of one model must not be scored as the other's."""
    from app.container import eval_answer_settings

    settings = make_settings()
    q4_1 = ModelHashes(embedder="e", generator="llamacpp", generator_build="b", generator_sha256="b179c952")
    q8_0 = q4_1.model_copy(update={"generator_sha256": "7b46609d"})
    assert eval_answer_settings(settings, q4_1) == eval_answer_settings(settings, q4_1.model_copy())
    assert eval_answer_settings(settings, q4_1) != eval_answer_settings(settings, q8_0)
