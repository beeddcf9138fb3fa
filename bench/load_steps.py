"""One load step, shared by ``bench/load.py``'s scenarios (``load_operator.py`` included): a Locust run of an open-loop
plan (``bench/load_users.py``) against running servers, the servers' CPU and memory sampled over it, and its
figures per request type checked against the SLOs."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.corpora import percentile

ROOT = Path(__file__).resolve().parents[1]
LOCUST = ROOT / ".venv" / "bin" / "locust"
USERS_FILE = ROOT / "bench" / "load_users.py"
CHAT, TRICKLE = "chat", "trickle"
SLO_RATE = 40.0
SLO_P95_MS = {"chat_cached": 50.0, "search": 100.0, "chat_unique": 500.0}
USER_PERIOD_S = 2.0  # each Locust user sends one request every 2 s: rate * 2 users
INGEST_EVERY_S = 2.0
SPAWN_LEAD_S = 1.5  # from Locust's test start to the first arrival: all users are spawned by then
RUN_CAP_S = 60.0  # Locust ends a step once every arrival due has been answered; this caps an overloaded one


@dataclass(frozen=True)
class Workload:
    passages_file: Path
    repeated: list[str]
    unique: list[str]  # warm-up questions first, then the steps'
    searches: list[str]
    trickle: list[dict[str, str]]


@dataclass(kw_only=True)
class TypeFigures:
    n: int
    ok: int
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_lag_ms: float
    errors_by_status: dict[str, int]


@dataclass(kw_only=True)
class StepResult:
    rate: float
    duration_s: float
    sent_per_s: float
    by_type: dict[str, TypeFigures]
    server_cpu_cores: float
    server_rss_mb_peak: float
    locust_cpu_cores: float
    slo_failures: list[str] = field(default_factory=list)

    @property
    def slo_met(self) -> bool:
        return not self.slo_failures


def base_env(models_dir: Path) -> dict[str, str]:
    return {**os.environ, "RAGOPS_MODELS_DIR": str(models_dir), "RAGOPS_GENERATOR": "extractive",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def processes_of(pids: list[int]) -> list[psutil.Process]:
    roots = [psutil.Process(pid) for pid in pids]
    return roots + [child for root in roots for child in root.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds
    cpu_s: float  # user + system seconds so far, summed over the processes
    rss_mb: float


def take_sample(processes: list[psutil.Process]) -> Sample:
    rss = 0.0
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            rss += process.memory_info().rss / 2**20
    return Sample(time.time(), cpu_seconds(processes), rss)


@contextmanager
def sampling(processes: list[psutil.Process]) -> Iterator[list[Sample]]:
    """Samples the processes' CPU time and RSS every 0.2 s while the block runs."""
    samples = [take_sample(processes)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(take_sample(processes))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append(take_sample(processes))


def usage_between(samples: list[Sample], start: float, end: float) -> tuple[float, float]:
    """CPU cores used and peak RSS (MB) over [start, end], from the samples nearest inside it."""
    inside = [s for s in samples if start <= s.at <= end] or samples
    first, last = inside[0], inside[-1]
    cores = (last.cpu_s - first.cpu_s) / max(last.at - first.at, 1e-9)
    return round(cores, 2), round(max(s.rss_mb for s in inside), 1)


def write_plan(path: Path, servers: list[Any], workload: Workload, rate: float, step_s: float,
               unique: list[str], seed: int, extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    users = max(1, round(rate * USER_PERIOD_S))
    plan = {"hosts": [s.url for s in servers], "start_at": 0.0, "lead_s": SPAWN_LEAD_S, "duration_s": step_s,
            "rate": rate, "users": users, "repeated": workload.repeated, "unique": unique,
            "searches": workload.searches,
            "chat_collection": CHAT, "ingest_collection": TRICKLE, "ingest_every_s": INGEST_EVERY_S,
            "ingest_documents": workload.trickle[seed * 100:(seed + 1) * 100],
            "records_path": str(path.with_suffix(".records.jsonl")), "seed": seed}  # fmt: skip
    path.write_text(json.dumps(plan | (extra or {})))
    return path


def run_locust(plan_path: Path, users: int, step_s: float, log: Path) -> tuple[dict[str, Any], float]:
    """Runs Locust headless for one step; returns what it wrote (first arrival's time, per-request records) and
    the CPU seconds it used."""
    argv = [str(LOCUST), "-f", str(USERS_FILE), "--headless", "-u", str(users + 1), "-r", str(users + 1),
            "-t", f"{SPAWN_LEAD_S + step_s + RUN_CAP_S:.0f}s", "--only-summary",
            "--loglevel", "WARNING", "--plan", str(plan_path)]  # fmt: skip
    with log.open("w") as out:
        locust = psutil.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        used = 0.0
        while locust.poll() is None:
            used = max(used, cpu_seconds([locust]))
            time.sleep(0.2)
    records_path = plan_path.with_suffix(".records.jsonl")
    if not records_path.exists():
        raise RuntimeError(f"locust wrote no records (exit {locust.returncode}): {log.read_text()[-2000:]}")
    return json.loads(records_path.read_text()), used


def run_step(servers: list[Any], workload: Workload, rate: float, step_s: float, unique: list[str],
             seed: int, work: Path, plan_extra: dict[str, Any] | None = None,
             slo_ms: dict[str, float] | None = None, profile: Path | None = None) -> StepResult:  # fmt: skip
    """One step; ``servers``: ``LiveServer``s, or anything with ``url`` and ``process`` (the peer). ``profile``: a
    py-spy record of the first server's process over the step, written there (raw, collapsed stacks)."""
    plan = write_plan(
        path=work / f"plan-{seed}.json",
        servers=servers,
        workload=workload,
        rate=rate,
        step_s=step_s,
        unique=unique,
        seed=seed,
        extra=plan_extra,
    )
    processes = processes_of([s.process.pid for s in servers])
    started = time.monotonic()
    with sampling(processes) as samples, profiling(servers[0].process.pid, step_s, profile):
        written, locust_cpu = run_locust(plan, max(1, round(rate * USER_PERIOD_S)), step_s, work / f"locust-{seed}.log")
    wall = time.monotonic() - started
    records: list[dict[str, Any]] = written["records"]
    cores, rss_mb = usage_between(samples, written["start_at"], written["start_at"] + step_s)
    result = StepResult(
        rate=rate, duration_s=step_s, sent_per_s=round(sum(r["type"] != "ingest" for r in records) / step_s, 2),
        by_type=figures_by_type(records, step_s),
        server_cpu_cores=cores, server_rss_mb_peak=rss_mb,
        locust_cpu_cores=round(locust_cpu / wall, 2),
    )  # fmt: skip
    result.slo_failures = slo_failures(records, result.by_type, slo_ms or SLO_P95_MS)
    return result


@contextmanager
def profiling(pid: int, step_s: float, out: Path | None) -> Iterator[None]:
    """py-spy sampling the process (100 Hz, without pausing it) over the step's arrivals, when ``out`` is set."""
    if out is None:
        yield
        return
    argv = [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
            "--format", "raw", "--output", str(out), "--duration", f"{SPAWN_LEAD_S + step_s:.0f}"]  # fmt: skip
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.wait(timeout=120)


# --- figures and SLOs -------------------------------------------------------------------------------------


def figures_by_type(records: list[dict[str, Any]], step_s: float) -> dict[str, TypeFigures]:
    """Per request type; latency counted from when the request was due (its lag added)."""
    by_type: dict[str, TypeFigures] = {}
    for kind in sorted({r["type"] for r in records}):
        mine = [r for r in records if r["type"] == kind]
        latencies = [r["latency_ms"] + r["lag_ms"] for r in mine]
        ok = sum(200 <= r["status"] < 300 for r in mine)
        errors = Counter(str(r["status"]) for r in mine if not 200 <= r["status"] < 300)
        by_type[kind] = TypeFigures(
            n=len(mine), ok=ok, throughput_per_s=round(ok / step_s, 2),
            p50_ms=round(percentile(latencies, 50), 1), p95_ms=round(percentile(latencies, 95), 1),
            p99_ms=round(percentile(latencies, 99), 1), max_lag_ms=round(max(r["lag_ms"] for r in mine), 1),
            errors_by_status=dict(errors),
        )  # fmt: skip
    return by_type


def slo_failures(records: list[dict[str, Any]], by_type: dict[str, TypeFigures], slo_ms: dict[str, float]) -> list[str]:
    failures = []
    server_errors = sum(r["status"] >= 500 or r["status"] == 0 for r in records)
    if server_errors:
        failures.append(f"{server_errors} requests with 5xx or no response")
    for kind, limit in slo_ms.items():
        figures = by_type.get(kind)
        if figures is None:
            failures.append(f"{kind}: no requests")
        elif figures.p95_ms > limit:
            failures.append(f"{kind} p95 {figures.p95_ms} ms > {limit:.0f} ms")
    return failures
