"""``ragops doctor``: whether ``ragops serve`` would start and answer with these settings on this machine, one line
per check, and for each failure what to do.

The checks look at what fails far from its cause: a llama.cpp build that the CPU cannot run dies of SIGILL inside
the worker, a missing GGUF or an unreachable Redis shows up as extractive answers or 503s long after start. Each
check is a small function returning a ``Check``; none raises (``_guarded`` turns an exception into its FAIL), so
one broken dependency never hides the others. ``run_checks`` is what ``serve`` can run before it starts
(``quick``: without loading the models, which ``serve`` loads itself).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict

from app.cli.common import EXIT_FAILURE, EXIT_OK, CliError, settings_from

if TYPE_CHECKING:
    from app.cli.common import Commands
    from app.settings import Settings

CheckStatus = Literal["ok", "warn", "fail"]

CPUINFO = Path("/proc/cpuinfo")
REPORTED_CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "amx_tile")
# What the portable llama.cpp build (serving/deploy/llama-wheel.sh) is compiled for beyond x86-64.
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")
GENERATOR_WAIT_S = 60.0
FALLBACK_NOTE = "answers will be extractive (the fallback) until this is fixed"
MODEL_FIX = "set RAGOPS_LLAMACPP_MODEL_PATH to a GGUF file, or run make setup"
SIGILL_FIX = (
    "the llama.cpp build uses instructions this CPU or its OS does not enable: rebuild with make setup "
    "(serving/deploy/llama-wheel.sh builds the portable variant)"
)
MIB = 1024 * 1024


class Check(BaseModel):
    """One check's result. ``fix`` is what to do about a failure; it is None where ``detail`` already says it
    (the messages of checks shared with ``serve``, such as the data dir's and the keys', carry their advice, so
    both commands say the same words)."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    @property
    def line(self) -> str:
        label = {"ok": "ok", "warn": "warn", "fail": "FAIL"}[self.status]
        return f"{label:<4} {self.name}: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


def _ok(name: str, detail: str) -> Check:
    return Check(name=name, status="ok", detail=detail)


def _warn(name: str, detail: str) -> Check:
    return Check(name=name, status="warn", detail=detail)


def _fail(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name=name, status="fail", detail=detail, fix=fix)


def add_parser(commands: Commands) -> None:
    doctor = commands.add_parser("doctor", help="check that serve would start and answer here (exit 1: a check failed)")
    doctor.add_argument("--host", default="127.0.0.1", help="address serve would listen on")
    doctor.add_argument("--port", type=int, default=8000, help="port serve would listen on")
    doctor.add_argument("--quick", action="store_true", help="skip the checks that load models (generator, embedder)")
    doctor.add_argument("--json", action="store_true", help="a JSON list of the checks on stdout")
    doctor.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CliError("--port must be between 1 and 65535")
    settings = settings_from(args)
    # Lines as each check ends: the model checks take seconds, and a hung one should show where it hangs.
    checks = run_checks(settings, args.host, args.port, args.quick, report=None if args.json else _print_line)
    if args.json:
        print(json.dumps([check.model_dump() for check in checks], indent=2))
    return EXIT_FAILURE if any(check.status == "fail" for check in checks) else EXIT_OK


def run_checks(
    settings: Settings, host: str, port: int, quick: bool, report: Callable[[Check], None] | None = None
) -> list[Check]:
    """Every check in order (``quick``: not the generator and embedder, which load models); ``report`` hears
    each as it ends."""
    probes: list[tuple[str, Callable[[], Check]]] = [
        ("cpu", lambda: check_cpu(settings)),
        ("model files", lambda: check_model_files(settings)),
    ]
    if not quick:
        probes += [("generator", lambda: check_generator(settings)), ("embedder", lambda: check_embedder(settings))]
    probes += [
        ("data dir", lambda: check_data_dir(settings)),
        ("port", lambda: check_port(host, port)),
        ("redis", lambda: check_redis(settings)),
        ("postgres", lambda: check_postgres(settings)),
        ("otlp", lambda: check_otlp(settings)),
        ("keys", lambda: check_keys(settings, host)),
    ]
    checks = []
    for name, probe in probes:
        check = _guarded(name, probe)
        if report is not None:
            report(check)
        checks.append(check)
    return checks


def _guarded(name: str, probe: Callable[[], Check]) -> Check:
    """The probe's result, or its exception as a FAIL: a check that cannot run is a finding, not a crash."""
    try:
        return probe()
    except Exception as exc:
        return _fail(name, f"{type(exc).__name__}: {_reason(exc)}")


def _print_line(check: Check) -> None:
    print(check.line, flush=True)


def check_cpu(settings: Settings, cpuinfo: Path = CPUINFO) -> Check:
    """The instruction sets the portable llama.cpp build needs; only the llamacpp generator fails without them
    (ONNX embeddings run, slower, on any x86-64)."""
    if not cpuinfo.is_file():
        return _warn("cpu", f"no {cpuinfo} (not Linux): instruction sets not checked")
    flags = _cpu_flags(cpuinfo.read_text(errors="replace"))
    if flags is None:
        return _warn("cpu", f"no x86 flags line in {cpuinfo}: instruction sets not checked")
    present = [flag for flag in REPORTED_CPU_FLAGS if flag in flags]
    absent = [flag for flag in REPORTED_CPU_FLAGS if flag not in flags]
    found = " ".join(present) + (f"; no {' '.join(absent)}" if absent else "")
    missing = [flag for flag in REQUIRED_CPU_FLAGS if flag not in flags]
    if not missing:
        return _ok("cpu", found)
    return Check(
        name="cpu",
        status="fail" if settings.generator == "llamacpp" else "warn",
        detail=f"missing {' '.join(missing)} ({found})",
        fix="the portable llama.cpp build needs AVX2/FMA/F16C: set RAGOPS_GENERATOR=extractive or rebuild with "
        "other CMAKE_ARGS in serving/deploy/llama-wheel.sh",
    )


def _cpu_flags(cpuinfo: str) -> set[str] | None:
    """The first processor's ``flags`` (every core of one machine reports the same), or None off x86."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def check_model_files(settings: Settings) -> Check:
    """The GGUF the llamacpp generator loads (or, by default, the bundled one its Q8_0 is made from) exists and
    reads as GGUF (the worker would fail later, and answers would fall back without a word at start). Nothing is
    made here: ``serve`` runs this check beside its own start, which makes the Q8_0."""
    from serving.answering.llamacpp.model_file import bundled_model_path

    if settings.generator != "llamacpp":
        return _ok("model files", f"not used (generator: {settings.generator})")
    try:
        path = settings.llamacpp.model_path or bundled_model_path()
    except FileNotFoundError as exc:
        return _fail("model files", f"no bundled GGUF: {exc}", fix=MODEL_FIX)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        return _fail("model files", f"{path} {what}", fix=MODEL_FIX)
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        return _fail("model files", f"cannot read {path}: {exc.strerror}", fix=MODEL_FIX)
    if magic != b"GGUF":
        return _fail("model files", f"{path} is not a GGUF file", fix=MODEL_FIX)
    return _ok("model files", f"{path} ({path.stat().st_size // MIB} MiB)")


def check_generator(settings: Settings) -> Check:
    if settings.generator == "llamacpp":
        return _check_llamacpp(settings)
    if settings.generator == "vllm":
        return _check_vllm(settings)
    return _ok("generator", "extractive (no model)")


def _check_llamacpp(settings: Settings) -> Check:
    """The worker started as the server starts it, in its own process: a build the CPU cannot run dies there of
    SIGILL, and the status says so."""
    from app.parts import llamacpp_worker_config
    from serving.answering.llamacpp.supervisor import WorkerSupervisor

    try:
        config = llamacpp_worker_config(settings)
    except OSError as exc:
        return _fail("generator", f"llama.cpp unavailable: {exc}; {FALLBACK_NOTE}", fix=MODEL_FIX)
    supervisor = WorkerSupervisor(config)
    try:
        # The supervisor's "restarting" log lines would contradict the FAIL line: doctor closes it at once.
        with _quiet("ragops"):
            status = supervisor.start(wait_s=GENERATOR_WAIT_S)
    finally:
        supervisor.close()  # it retries in the background otherwise
    if status.up and status.ready is not None:
        ready = status.ready
        return _ok(
            "generator",
            f"llama.cpp {ready.model} on {ready.build.label}, decoding {ready.decode_tokens_per_s:.0f} tokens/s",
        )
    why = status.last_exit or f"was not ready within {GENERATOR_WAIT_S:.0f} s"
    fix = SIGILL_FIX if "SIGILL" in why else MODEL_FIX if "model file" in why else None
    return _fail("generator", f"llama.cpp worker {why}; {FALLBACK_NOTE}", fix=fix)


def _check_vllm(settings: Settings) -> Check:
    import httpx

    if not settings.vllm.base_url:
        return _fail(
            "generator",
            f"vllm: RAGOPS_VLLM_BASE_URL is not set; {FALLBACK_NOTE}",
            fix="set RAGOPS_VLLM_BASE_URL to the server's OpenAI-compatible URL (http://host:8001/v1)",
        )
    url = f"{settings.vllm.base_url.rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {settings.vllm.api_key}"} if settings.vllm.api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        return _fail(
            "generator",
            f"cannot reach {url}: {_reason(exc)}; {FALLBACK_NOTE}",
            fix="start the vLLM server or fix RAGOPS_VLLM_BASE_URL",
        )
    if response.status_code != 200:
        return _fail(
            "generator",
            f"{url} answered HTTP {response.status_code}; {FALLBACK_NOTE}",
            fix="check RAGOPS_VLLM_API_KEY and RAGOPS_VLLM_BASE_URL",
        )
    served = [str(model.get("id")) for model in response.json().get("data", []) if isinstance(model, dict)]
    if settings.vllm.model not in served:
        return _fail(
            "generator",
            f"{url} serves {', '.join(served) or 'no model'}, not {settings.vllm.model}; {FALLBACK_NOTE}",
            fix="set RAGOPS_VLLM_MODEL to a served model",
        )
    return _ok("generator", f"vllm {settings.vllm.model} at {settings.vllm.base_url}")


def check_embedder(settings: Settings) -> Check:
    """The embedding model loads and embeds (the ONNX export is made on first use, into the models dir)."""
    from retrieval.embedding import build_embedder
    from retrieval.offline import apply_offline_environment

    apply_offline_environment()  # as the server does: no model-hub calls
    embedder = build_embedder(
        settings.embedding.embedder,
        settings.embedding.embedding_model,
        settings.model_cache_dir,
        settings.embedding.embedding_batch_size,
    )
    vectors = embedder.embed(["hello"])
    return _ok("embedder", f"{embedder.model_id}, {vectors.shape[1]} dimensions")


def check_data_dir(settings: Settings) -> Check:
    """The server's own start-up check (it creates the data dir's folders, as the server would)."""
    import shutil

    from app.parts import check_storage
    from retrieval.index import StorageFullError, StorageReadOnlyError

    try:
        check_storage(settings)
    except (StorageFullError, StorageReadOnlyError) as exc:
        return _fail("data dir", str(exc))
    free_mib = shutil.disk_usage(settings.data_dir).free // MIB
    return _ok(
        "data dir",
        f"{settings.data_dir} writable, {free_mib} MiB free (RAGOPS_MIN_FREE_DISK_MB={settings.min_free_disk_mb})",
    )


def check_port(host: str, port: int) -> Check:
    """Bound as uvicorn binds it (address family from the host, SO_REUSEADDR), then released."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail("port", f"port {port} on {host} is in use", fix="stop what holds it or pass --port")
        fix = "use a port of 1024 or more" if exc.errno == errno.EACCES else "pass a --host this machine has"
        return _fail("port", f"cannot bind {where}: {exc.strerror or _reason(exc)}", fix=fix)
    return _ok("port", f"{where} is free")


def check_redis(settings: Settings) -> Check:
    if settings.redis_url is None:
        return _ok("redis", "not configured (limits and caches in-process)")
    import redis

    url = _without_password(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        meanwhile = (
            "requests are served with in-process limits"
            if settings.access.rate_limit_fail == "open"
            else "requests are refused with 503 (RAGOPS_RATE_LIMIT_FAIL=closed)"
        )
        return _fail(
            "redis", f"cannot reach {url}: {_reason(exc)}; {meanwhile}", fix="start Redis or fix RAGOPS_REDIS_URL"
        )
    finally:
        client.close()
    return _ok("redis", f"{url} answers PING")


def check_postgres(settings: Settings) -> Check:
    if settings.database_url is None:
        return _ok("postgres", f"not configured (SQLite at {settings.state_path})")
    import psycopg

    url = _without_password(settings.database_url)
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
            version = connection.info.server_version
    except psycopg.Error as exc:
        return _fail(
            "postgres",
            f"cannot use {url}: {_reason(exc)}",
            fix="start Postgres or fix RAGOPS_DATABASE_URL: serve cannot start without its state store",
        )
    return _ok("postgres", f"{url} answers (server {version // 10000}.{version % 10000})")


def check_otlp(settings: Settings) -> Check:
    """Any HTTP answer from the collector counts: only a connection that fails loses spans."""
    if settings.traces.otlp_endpoint is None:
        return _ok("otlp", "not configured")
    import httpx

    try:
        response = httpx.get(settings.traces.otlp_endpoint, timeout=3.0)
    except httpx.HTTPError as exc:
        return _fail(
            "otlp",
            f"cannot reach {settings.traces.otlp_endpoint}: {_reason(exc)}; spans are dropped meanwhile",
            fix="start the collector or fix RAGOPS_OTLP_ENDPOINT",
        )
    return _ok("otlp", f"{settings.traces.otlp_endpoint} answers (HTTP {response.status_code})")


def check_keys(settings: Settings, host: str) -> Check:
    """What ``serve`` decides at start: a non-loopback address without keys is refused unless allow_open."""
    from app.api.hosts import is_loopback
    from app.cli.exposure import check_exposure, store_has_keys

    try:
        in_store = store_has_keys(settings)
    except CliError as exc:
        return _fail("keys", f"cannot read the state store's keys: {_reason(exc)}")
    try:
        check_exposure(host, settings, bool(settings.access.api_keys) or in_store)
    except CliError as exc:
        return _fail("keys", str(exc))
    sources = [f"{len(settings.access.api_keys)} in RAGOPS_API_KEYS"] if settings.access.api_keys else []
    sources += ["made with ragops keys create"] if in_store else []
    if sources:
        return _ok("keys", f"API keys configured ({', '.join(sources)})")
    if is_loopback(host):
        reach = f"only this machine can connect to {host}"
    else:
        reach = f"open to anyone who reaches {host} (RAGOPS_ALLOW_OPEN=true)"
    return _ok("keys", f"no API keys: {reach}")


def _without_password(url: str) -> str:
    """The URL as it may be printed: a password in it becomes ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _reason(exc: BaseException) -> str:
    """An exception's first line, for the middle of a sentence (psycopg's run on with hints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only critical records from ``logger_name`` while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
