from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import settings_doc
from app.settings import Settings, flat_fields, load_settings, setting_groups
from retrieval.index import FusionParams
from serving.governance.access import Role


def test_defaults() -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".ragops")
    assert settings.defaults.mode == "hybrid"
    assert settings.model_cache_dir == Path(".ragops/models")


def test_environment_overrides_file_and_arguments_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ragops.toml"
    config.write_text('data_dir = "/from/file"\ndefault_top_k = 7\nprefetch_limit = 10\n')
    monkeypatch.setenv("RAGOPS_DEFAULT_TOP_K", "9")
    settings = load_settings(config, prefetch_limit=20)
    assert (settings.data_dir, settings.defaults.top_k, settings.retrieval.prefetch_limit) == (
        Path("/from/file"),
        9,
        20,
    )
    monkeypatch.setenv("RAGOPS_CONFIG", str(config))
    assert load_settings().data_dir == Path("/from/file")


def test_api_keys_from_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGOPS_API_KEYS", '{"k1": "acme"}')
    assert load_settings().access.api_keys == {"k1": "acme"}


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
    assert [name for name, field in flat_fields().items() if not (field.description or "").strip()] == []


def test_groups_are_set_by_their_flat_names_from_arguments_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ragops.toml"
    config.write_text('canary_tolerance = 0.07\njudge_model = "judge-from-file"\n[drift]\nwindow = 300\n')
    monkeypatch.setenv("RAGOPS_CANARY_SHARE", "0.25")
    monkeypatch.setenv("RAGOPS_ROLE_LIMITS", '{"reader": {"requests_per_minute": 7, "tokens_per_day": 100}}')
    monkeypatch.setenv("LANGSMITH_PROJECT", "vendor-name")
    settings = load_settings(config, max_body_bytes=4096, chunk_tokens=100)
    assert (settings.canary.share, settings.canary.tolerance, settings.judge.model) == (0.25, 0.07, "judge-from-file")
    assert settings.drift.window == 300  # a TOML table may give a group nested
    assert settings.access.role_limits[Role.reader].requests_per_minute == 7  # JSON, as before groups
    assert (settings.limits.max_body_bytes, settings.chunking.tokens) == (4096, 100)
    assert settings.traces.langsmith_project == "vendor-name"


def test_flat_names_are_unique_and_each_group_names_its_concern() -> None:
    groups = setting_groups()
    assert {"canary", "judge", "alerts", "limits", "access", "drift", "traces"} <= set(groups)
    flat = [name for group in groups.values() for name in group.flat_names()]
    top = [name for name in Settings.model_fields if name not in groups]
    assert len(flat) + len(top) == len(set(flat) | set(top)) == len(flat_fields())
    assert len(top) <= 15, "a setting belongs in a group"


def test_an_unknown_flat_name_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="canary_sharee"):
        load_settings(canary_sharee=0.5)


def test_reference_shows_env_names_types_and_defaults_per_group() -> None:
    table = settings_doc.render_reference()
    assert f"| `RAGOPS_PREFETCH_LIMIT` | int, 1 to 1000 | {FusionParams.prefetch_limit} |" in table
    assert "| `RAGOPS_RERANK_WEIGHTS` | tuple[float, float, float, float] | `[0.25, 0.3, 0.2, 0.25]` |" in table
    assert "| `RAGOPS_API_KEYS` | dict[str, str] | `{}` |" in table
    assert "| `RAGOPS_EMBEDDER` | `onnx` or `torch` | `onnx` |" in table
    assert "| `RAGOPS_LANGSMITH_API_KEY`, `LANGSMITH_API_KEY` | str | unset |" in table
    assert "| `RAGOPS_DATA_DIR` | Path | `.ragops` |" in table
    assert "| `RAGOPS_CANARY_SHARE` | float, 0 to 1 | 0.0 |" in table
    assert "### `canary`" in table and "### `judge`" in table
    assert r"NAME[@VERSION\|@LABEL]" in table  # a pipe would split the cell


def test_the_eval_cache_key_moves_with_settings_that_change_answers_only() -> None:
    base = load_settings().answer_fingerprint()
    assert load_settings(chat_top_k=3).answer_fingerprint() != base
    assert load_settings(groundedness_threshold=0.4).answer_fingerprint() != base
    assert load_settings(generation_timeout_s=5).answer_fingerprint() == base
    assert load_settings(canary_share=0.5).answer_fingerprint() == base


def test_a_source_wins_over_the_ones_after_it_whether_flat_or_nested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ragops.toml"
    config.write_text("[canary]\nshare = 0.1\ntolerance = 0.09\n")
    monkeypatch.setenv("RAGOPS_CANARY_SHARE", "0.2")
    assert load_settings(config, canary={"share": 0.5}).canary.share == 0.5  # keyword, nested, over environment
    settings = load_settings(config)
    assert (settings.canary.share, settings.canary.tolerance) == (0.2, 0.09)  # environment over file, per setting


def test_a_role_left_out_of_role_limits_keeps_its_defaults() -> None:
    """Limits for readers only must not leave editors and admins without any (every request of theirs failed)."""
    settings = load_settings(role_limits={"reader": {"requests_per_minute": 5, "tokens_per_day": 10}})
    limits = settings.access.role_limits
    assert limits[Role.reader].requests_per_minute == 5
    assert limits[Role.editor] == Settings().access.role_limits[Role.editor]
    assert set(limits) == set(Role)
