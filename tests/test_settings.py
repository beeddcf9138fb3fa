from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import settings_doc
from app.container import ANSWER_SETTINGS
from app.settings import Settings, load_settings
from retrieval.index import FusionParams


def test_defaults() -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".ragops")
    assert settings.default_mode == "hybrid"
    assert settings.model_cache_dir == Path(".ragops/models")


def test_environment_overrides_file_and_arguments_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ragops.toml"
    config.write_text('data_dir = "/from/file"\ndefault_top_k = 7\nprefetch_limit = 10\n')
    monkeypatch.setenv("RAGOPS_DEFAULT_TOP_K", "9")
    settings = load_settings(config, prefetch_limit=20)
    assert (settings.data_dir, settings.default_top_k, settings.prefetch_limit) == (Path("/from/file"), 9, 20)
    monkeypatch.setenv("RAGOPS_CONFIG", str(config))
    assert load_settings().data_dir == Path("/from/file")


def test_api_keys_from_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGOPS_API_KEYS", '{"k1": "acme"}')
    assert load_settings().api_keys == {"k1": "acme"}


@pytest.mark.parametrize(
    "overrides",
    [{"default_top_k": 0}, {"chunk_tokens": 64, "chunk_overlap": 64}, {"default_mode": "fuzzy"}, {"unknown": 1}],
)
def test_invalid_settings_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        load_settings(**overrides)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")


def test_settings_reference_page_is_generated_from_the_settings() -> None:
    """The docs' settings reference holds no pasted table: the docs build renders it from ``Settings``
    (``docs/hooks.py``; ``tests/test_docs.py`` checks the rendered page)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "settings.md").read_text(encoding="utf-8")
    assert "<!-- generated:settings -->" in page
    assert "| `RAGOPS_" not in page, "docs/reference/settings.md must not hold a pasted settings table"


def test_every_setting_is_described() -> None:
    assert [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()] == []


def test_table_shows_env_names_types_and_defaults() -> None:
    table = settings_doc.render_table()
    assert f"| `RAGOPS_PREFETCH_LIMIT` | int, 1 to 1000 | {FusionParams.prefetch_limit} |" in table
    assert "| `RAGOPS_RERANK_WEIGHTS` | tuple[float, float, float, float] | `[0.25, 0.3, 0.2, 0.25]` |" in table
    assert "| `RAGOPS_API_KEYS` | dict[str, str] | `{}` |" in table
    assert "| `RAGOPS_EMBEDDER` | `onnx` or `torch` | `onnx` |" in table
    assert "| `RAGOPS_LANGSMITH_API_KEY`, `LANGSMITH_API_KEY` | str | unset |" in table
    assert "| `RAGOPS_DATA_DIR` | Path | `.ragops` |" in table
    assert "| **Embeddings** |  |  |  |" in table
    assert r"NAME[@VERSION\|@LABEL]" in table  # a pipe would split the cell


def test_write_replaces_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# Settings\n\nBefore.\n\n{settings_doc.START}\n| stale |\n{settings_doc.END}\n\nAfter.\n")
    assert settings_doc.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Settings\n\nBefore.\n\n") and text.endswith(f"{settings_doc.END}\n\nAfter.\n")
    assert settings_doc.table_in(text) == settings_doc.render_table()
    assert settings_doc.main(["--write", str(doc)]) == 0
    assert "already up to date" in capsys.readouterr().out
    doc.write_text("no markers\n")
    assert settings_doc.main(["--write", str(doc)]) == 1
    assert "settings-table:start" in capsys.readouterr().err


def test_the_eval_cache_key_names_real_settings() -> None:
    """A misspelt name would drop out of the key silently (pydantic's include= skips unknown fields)."""
    assert set(ANSWER_SETTINGS) <= set(Settings.model_fields)
