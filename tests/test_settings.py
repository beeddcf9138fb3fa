from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import load_settings


def test_defaults() -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".ragops")
    assert settings.default_mode == "hybrid"
    assert settings.model_cache_dir == Path(".ragops/models")


def test_environment_overrides_file_and_arguments_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ragops.toml"
    config.write_text('data_dir = "/from/file"\ndefault_top_k = 7\nrrf_k = 10\n')
    monkeypatch.setenv("RAGOPS_DEFAULT_TOP_K", "9")
    settings = load_settings(config, rrf_k=20)
    assert (settings.data_dir, settings.default_top_k, settings.rrf_k) == (Path("/from/file"), 9, 20)
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
