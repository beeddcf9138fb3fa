"""The default GGUF: the bundled SmolLM2 requantized to Q8_0 in the models dir, once; a source that cannot be
requantized fails with a clear error and leaves nothing behind (the child process's native failure, not ours)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.answering.llamacpp.model_file import DEFAULT_GGUF, bundled_model_path, default_model_path, requantize_q8_0

Q8_0_FILE_TYPE = "7"  # llama_ftype LLAMA_FTYPE_MOSTLY_Q8_0, as general.file_type records it


def test_the_default_gguf_is_the_bundled_model_in_q8_0_made_once(tmp_path: Path) -> None:
    from llama_cpp import Llama

    made = default_model_path(tmp_path)
    assert made == tmp_path / DEFAULT_GGUF and made.read_bytes()[:4] == b"GGUF"
    assert Llama(model_path=str(made), vocab_only=True, verbose=False).metadata["general.file_type"] == Q8_0_FILE_TYPE
    stamp = made.stat().st_mtime_ns
    assert default_model_path(tmp_path) == made and made.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_GGUF]  # no staging directory left


def test_a_models_dir_it_cannot_write_leaves_the_bundled_model(tmp_path: Path) -> None:
    """Where the Q8_0 cannot be made (here the models dir's parent is a file), llama.cpp loads the bundled Q4_1."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    assert default_model_path(blocker / "models") == bundled_model_path()


def test_a_source_that_is_not_a_gguf_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "broken.gguf"
    source.write_bytes(b"not a model" * 100)
    models = tmp_path / "models"
    with pytest.raises(OSError, match=r"could not requantize broken\.gguf to Q8_0"):
        requantize_q8_0(source, models / DEFAULT_GGUF)
    assert list(models.iterdir()) == []
