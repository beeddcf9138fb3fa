"""``ragops doctor`` as users run it: a separate process, one result per check, exit 1 when one fails. Only the
first test loads the models; the others pass --quick, since the models are not what they check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli.doctor import check_cpu
from app.settings import Settings
from tests import live_server

ALL_CHECKS = ["cpu", "model files", "generator", "embedder", "data dir", "port", "redis", "postgres", "otlp", "keys"]
QUICK_CHECKS = [name for name in ALL_CHECKS if name not in ("generator", "embedder")]


def doctor(*args: str, models_dir: Path, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RAGOPS_MODELS_DIR": str(models_dir), "RAGOPS_DATA_DIR": str(data_dir), **env}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", *args], env=environment, capture_output=True, text=True, timeout=300
    )


def by_name(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    checks: list[dict[str, Any]] = json.loads(result.stdout)
    return {check["name"]: check for check in checks}


@pytest.fixture(name="free_port")
def a_free_port() -> int:
    return live_server.free_port()  # not 8000: a server of another test (or of the developer) may hold it


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_defaults_pass_with_the_portable_build(tmp_path: Path, models_dir: Path, free_port: int) -> None:
    result = doctor("--json", "--port", str(free_port), models_dir=models_dir, data_dir=tmp_path / "data")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = by_name(result)
    assert list(checks) == ALL_CHECKS
    assert all(check["status"] in ("ok", "warn") for check in checks.values()), checks
    generator = checks["generator"]
    assert generator["status"] == "ok" and "portable" in generator["detail"] and "tokens/s" in generator["detail"]
    assert "384 dimensions" in checks["embedder"]["detail"]


def test_missing_model_fails_and_says_answers_fall_back(tmp_path: Path, models_dir: Path, free_port: int) -> None:
    missing = "/nonexistent/model.gguf"
    result = doctor(
        "--json", "--port", str(free_port), models_dir=models_dir, data_dir=tmp_path / "data",
        RAGOPS_LLAMACPP_MODEL_PATH=missing,
    )  # fmt: skip
    assert result.returncode == 1
    checks = by_name(result)
    model_files, generator = checks["model files"], checks["generator"]
    assert model_files["status"] == "fail" and missing in model_files["detail"]
    assert "RAGOPS_LLAMACPP_MODEL_PATH" in model_files["fix"]
    assert generator["status"] == "fail" and "answers will be extractive" in generator["detail"]
    assert missing in generator["detail"]  # the worker's own reason


def test_busy_port_fails(tmp_path: Path, models_dir: Path, busy_port: int) -> None:
    result = doctor("--json", "--quick", "--port", str(busy_port), models_dir=models_dir, data_dir=tmp_path / "data")
    assert result.returncode == 1
    checks = by_name(result)
    assert list(checks) == QUICK_CHECKS
    assert checks["port"]["status"] == "fail"
    assert f"port {busy_port} on 127.0.0.1 is in use" in checks["port"]["detail"]
    assert [name for name, check in checks.items() if check["status"] == "fail"] == ["port"]


def test_unreachable_redis_fails_in_one_line(tmp_path: Path, models_dir: Path, free_port: int) -> None:
    result = doctor(
        "--quick", "--port", str(free_port), models_dir=models_dir, data_dir=tmp_path / "data",
        RAGOPS_REDIS_URL="redis://:secret@127.0.0.1:1/0",
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(QUICK_CHECKS) and all(line.split()[0] in ("ok", "warn", "FAIL") for line in lines)
    (redis,) = [line for line in lines if line.startswith("FAIL")]
    assert redis.startswith("FAIL redis: cannot reach redis://:***@127.0.0.1:1/0") and "fix: start Redis" in redis
    assert "secret" not in result.stdout


def test_open_address_without_keys_fails(tmp_path: Path, models_dir: Path, free_port: int) -> None:
    args = ("--json", "--quick", "--host", "0.0.0.0", "--port", str(free_port))
    refused = doctor(*args, models_dir=models_dir, data_dir=tmp_path / "data")
    assert refused.returncode == 1
    keys = by_name(refused)["keys"]
    assert keys["status"] == "fail" and "RAGOPS_ALLOW_OPEN=true" in keys["detail"]

    meant = doctor(*args, models_dir=models_dir, data_dir=tmp_path / "data", RAGOPS_ALLOW_OPEN="true")
    assert meant.returncode == 0 and by_name(meant)["keys"]["status"] == "ok"


@pytest.mark.parametrize(("generator", "status"), [("llamacpp", "fail"), ("extractive", "warn")])
def test_cpu_without_avx2(tmp_path: Path, make_settings: Callable[..., Settings], generator: str, status: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma f16c\n")
    check = check_cpu(make_settings(generator=generator), cpuinfo)
    assert check.status == status and check.detail.startswith("missing avx2")
    assert check.fix is not None and "serving/deploy/llama-wheel.sh" in check.fix
    assert check_cpu(make_settings(), tmp_path / "absent").status == "warn"
