"""A real vLLM engine (CPU build in .venv-vllm, ``make vllm``) on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

from tests.live_server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_MODEL = ROOT / ".ragops" / "vllm-model" / "smollm2-135m"
SERVED_NAME = "smollm2"


def available() -> bool:
    return VLLM_PYTHON.is_file() and (VLLM_MODEL / "config.json").is_file()


class VllmServer(ServerProcess):
    def __init__(self, log_path: Path, timeout: float = 300.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = {
            **os.environ,
            "VLLM_NO_USAGE_STATS": "1",  # no telemetry leaves the machine
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: a 135M model needs little
        }
        argv = [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(VLLM_MODEL), "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--enforce-eager", "--gpu-memory-utilization", "0.15", "--max-model-len", "4096",
        ]  # fmt: skip
        # The engine runs in child processes: ServerProcess stops the whole process group.
        super().__init__(argv, env, log_path, f"{self.base_url}/models", timeout)
