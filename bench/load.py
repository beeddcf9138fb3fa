"""Load test: real ``ragops serve`` processes under an open-loop mixed workload driven by Locust, checked against
the SLOs, and the highest arrival rate at which they hold.

Served: the extractive generator over the first 300 Disfl-QA passages (``evals/corpora``' copy, ingested once with
``ragops ingest`` and copied into each server's data dir) in collection ``chat``. Arrivals, at a fixed rate
(``bench/load_users.py`` says how open-loop that is: a request's latency is counted from when it was due, so
a late start shows): 50% repeated questions (20 questions, answered once before the step: cache hits), 30%
unique extractive chats (Disfl-QA questions about the ingested passages, each asked once in the run), 15%
searches, 5% streamed answers (unique questions); plus an ingest trickle, one document every 2 s (replicas in
turn) into collection ``trickle`` (its own: the chat collection's cached answers stay valid). Each step lasts a
fixed time; Locust runs headless in its own process (it monkey-patches on import), on the same 2 cores as the
servers.

Configurations: 1 API process (embedded index, in-process answer cache, SQLite state) and 2 API processes (each
its own copy of the index, sharing one real Redis for limits and the answer cache and one Postgres for the
state store; users split round-robin between them), each with rerank off and on. For each, the SLO rate (40/s)
is run first, then the ladder upwards while the SLOs hold, or downwards until they do.

SLOs: zero 5xx (and no request without a response), cached chat p95 <= 50 ms, search p95 <= 100 ms, unique
extractive chat p95 <= 500 ms.

Run: ``.venv/bin/python bench/load.py [--step-s 8] [--processes 1 2] [--rerank off on] [--rates 10 20 ...]
[--out FILE]`` (about 3 to 3.5 minutes with the defaults on 2 cores; ``--processes``, ``--rerank`` and
``--rates`` run a subset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import DISFL_QA, emit, percentile  # noqa: E402
from tests.backing_services import PostgresServer, RedisServer, postgres_bin_dir, redis_binary  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

LOCUST = ROOT / ".venv" / "bin" / "locust"
USERS_FILE = ROOT / "bench" / "load_users.py"
CHAT, TRICKLE = "chat", "trickle"
SLO_RATE = 40.0
SLO_P95_MS = {"chat_cached": 50.0, "search": 100.0, "chat_unique": 500.0}
USER_PERIOD_S = 2.0  # each Locust user sends one request every 2 s: rate * 2 users
REPEATED_QUESTIONS = 20
SEARCH_QUERIES = 200
WARM_QUESTIONS = 10
INGEST_EVERY_S = 2.0
SPAWN_LEAD_S = 1.5  # from Locust's test start to the first arrival: all users are spawned by then
RUN_CAP_S = 60.0  # Locust ends a step once every arrival due has been answered; this caps an overloaded one


@dataclass(frozen=True)
class Config:
    processes: int
    rerank: bool

    @property
    def name(self) -> str:
        return f"{self.processes}proc_rerank_{'on' if self.rerank else 'off'}"


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


# --- the workload -----------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_workload(work: Path, passages: int) -> Workload:
    records = read_jsonl(DISFL_QA.passages)
    served = records[:passages]
    passages_file = work / "passages.jsonl"
    passages_file.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in served))
    ids = {r["id"] for r in served}
    questions = [q["question"] for q in read_jsonl(DISFL_QA.questions) if q["passage_id"] in ids]
    repeated, rest = questions[:REPEATED_QUESTIONS], questions[REPEATED_QUESTIONS:]
    unique, searches = rest[:-SEARCH_QUERIES], rest[-SEARCH_QUERIES:]
    trickle = [{"id": f"trickle-{r['id']}", "text": r["text"]} for r in records[passages:]]
    return Workload(passages_file, repeated, unique, searches, trickle)


def seed_index(workload: Workload, work: Path, models_dir: Path) -> Path:
    """One data dir with the passages ingested, copied for every server: each holds the same documents."""
    seed = work / "seed"
    argv = [str(ROOT / ".venv" / "bin" / "ragops"), "--data-dir", str(seed), "ingest",
            str(workload.passages_file), "--collection", CHAT]  # fmt: skip
    env = {**base_env(models_dir), "RAGOPS_DATA_DIR": str(seed)}
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=600)
    return seed


def base_env(models_dir: Path) -> dict[str, str]:
    return {**os.environ, "RAGOPS_MODELS_DIR": str(models_dir), "RAGOPS_GENERATOR": "extractive",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


# --- servers ----------------------------------------------------------------------------------------------


@dataclass
class Backing:
    redis: RedisServer
    postgres: PostgresServer

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()


def server_env(config: Config, data_dir: Path, backing: Backing | None, database_url: str | None) -> dict[str, str]:
    env = {"RAGOPS_DATA_DIR": str(data_dir), "RAGOPS_RERANK": str(config.rerank).lower()}
    if config.processes > 1:
        assert backing is not None and database_url is not None
        env |= {"RAGOPS_REDIS_URL": backing.redis.url, "RAGOPS_ANSWER_CACHE_BACKEND": "redis",
                "RAGOPS_DATABASE_URL": database_url}  # fmt: skip
    return env


def start_servers(
    config: Config, seed: Path, work: Path, backing: Backing | None, models_dir: Path
) -> list[LiveServer]:
    database_url = None
    if backing is not None and config.processes > 1:
        backing.redis.flush()
        database_url = backing.postgres.new_database()

    def start(replica: int) -> LiveServer:
        data_dir = work / f"{config.name}-{replica}"
        shutil.copytree(seed, data_dir)
        env = {**base_env(models_dir), **server_env(config, data_dir, backing, database_url)}
        return LiveServer(env, work / f"{config.name}-{replica}.log")

    with ThreadPoolExecutor(config.processes) as pool:
        return list(pool.map(start, range(config.processes)))


def warm_up(servers: list[LiveServer], workload: Workload) -> None:
    """Answer the repeated questions once (the cache hits to come), and exercise chat and search on every
    replica (first-request costs are not the load test's subject)."""
    with httpx.Client(timeout=120) as client:
        for question in workload.repeated:
            for server in servers:  # per replica: memory caches are per process; Redis answers the second
                post(client, f"{server.url}/v1/chat", {"question": question, "collection": CHAT})
        for server in servers:
            for question in workload.unique[:WARM_QUESTIONS]:
                post(client, f"{server.url}/v1/chat", {"question": question, "collection": CHAT})
                post(client, f"{server.url}/v1/search", {"query": question, "collection": CHAT})


def post(client: httpx.Client, url: str, body: dict[str, Any]) -> None:
    client.post(url, json=body).raise_for_status()


def repeated_are_cached(servers: list[LiveServer], workload: Workload) -> bool:
    """Whether every replica answers every repeated question from the cache (after the warm-up; and after the
    steps, which shows the ingest trickle left the chat collection's cache valid)."""
    with httpx.Client(timeout=60) as client:
        return all(
            client.post(f"{server.url}/v1/chat", json={"question": question, "collection": CHAT}).json()["cached"]
            for server in servers
            for question in workload.repeated
        )


# --- one step ---------------------------------------------------------------------------------------------


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


# --- the ramp ---------------------------------------------------------------------------------------------


def ramp_order(rates: list[float]) -> tuple[list[float], list[float]]:
    """The SLO rate first, then up the ladder; the rates below it (highest first) for when it fails."""
    above = sorted(r for r in rates if r > SLO_RATE)
    below = sorted((r for r in rates if r < SLO_RATE), reverse=True)
    return [SLO_RATE, *above], below


def run_config(config: Config, servers: list[LiveServer], workload: Workload, rates: list[float], step_s: float,
               work: Path) -> dict[str, Any]:  # fmt: skip
    up, down = ramp_order(rates)
    questions = iter(workload.unique[WARM_QUESTIONS:])
    steps: list[StepResult] = []

    def step(rate: float) -> StepResult:
        steps.append(
            measure_step(
                servers=servers,
                workload=workload,
                rate=rate,
                step_s=step_s,
                questions=questions,
                index=len(steps),
                work=work,
            )
        )
        print(f"{config.name} {rate:g}/s: {steps[-1].slo_failures or 'SLOs met'}", file=sys.stderr)
        return steps[-1]

    passed_going_up = list(takewhile(lambda rate: step(rate).slo_met, up))  # measures the first failure too
    highest = passed_going_up[-1] if passed_going_up else next((r for r in down if step(r).slo_met), None)
    return {"slo_at_40_per_s": steps[0].slo_met, "highest_rate_meeting_slos": highest,
            "steps": [asdict(s) | {"slo_met": s.slo_met} for s in steps]}  # fmt: skip


def measure_step(servers: list[LiveServer], workload: Workload, rate: float, step_s: float,
                 questions: Iterator[str], index: int, work: Path) -> StepResult:  # fmt: skip
    # More unique questions than the step can use (35% of arrivals are unique chats or streams), none reused.
    unique = [q for _, q in zip(range(int(rate * step_s * 0.6) + 20), questions, strict=False)]
    step_work = work / f"step-{index}"
    step_work.mkdir()
    return run_step(
        servers=servers, workload=workload, rate=rate, step_s=step_s, unique=unique, seed=index, work=step_work
    )


# --- main -------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds of arrivals per step")
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 20, 30, 40, 60, 80])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--rerank", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--passages", type=int, default=300)
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".ragops" / "models")
    parser.add_argument(
        "--scenario",
        choices=["mixed", "operator"],
        default="mixed",
        help="operator: each step right after an ingest of unseen documents (bench/load_operator.py)",
    )
    parser.add_argument("--peer", action="store_true", help="operator: the LangChain POC too (make peer)")
    parser.add_argument("--peer-start", type=float, default=5.0, help="operator: the peer's first rate")
    parser.add_argument("--profile", type=Path, help="operator: py-spy's raw stacks of the first step, written here")
    parser.add_argument("--baseline", metavar="COMMIT", help="operator: that commit's ragops too, in the same run")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def start_backing(work: Path, processes: list[int]) -> Backing | None:
    if max(processes) < 2:
        return None
    if redis_binary() is None or postgres_bin_dir() is None:
        raise SystemExit("2 processes need redis-server and postgresql (make system); run with --processes 1")
    return Backing(RedisServer(work / "redis"), PostgresServer())


def main() -> int:
    args = parse_args()
    if args.scenario == "operator":
        return operator_main(args)
    configs = [Config(p, r == "on") for p in args.processes for r in args.rerank]
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ragops-bench-load-") as tmp:
        work = Path(tmp)
        workload = build_workload(work, args.passages)
        seed = seed_index(workload, work, args.models_dir)
        backing = start_backing(work, args.processes)
        try:
            for config in configs:
                results[config.name] = measure_config(
                    config=config, seed=seed, work=work, backing=backing, workload=workload, args=args
                )
        finally:
            if backing is not None:
                backing.stop()
    results["method"] = method(args, time.monotonic() - started)
    emit(results, args.out)
    return 0


def operator_main(args: argparse.Namespace) -> int:
    from bench import load_operator

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-operator-") as tmp:
        try:
            results = load_operator.measure(args, Path(tmp), base_env(args.models_dir))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False, timeout=60)
    results["method"] = (
        f"{load_operator.__doc__}\nopen loop, {args.step_s:g} s a step, rates {sorted(args.rates)} (ragops from "
        f"{SLO_RATE:g}/s, the peer from {args.peer_start:g}/s, up while the SLOs hold, else down); "
        f"whole run {time.monotonic() - started:.0f} s"
    )
    emit(results, args.out)
    return 0


def measure_config(config: Config, seed: Path, work: Path, backing: Backing | None, workload: Workload,
                   args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    servers = start_servers(config, seed, work, backing, args.models_dir)
    try:
        warm_up(servers, workload)
        if not repeated_are_cached(servers, workload):
            raise RuntimeError(f"{config.name}: the repeated questions are not answered from the cache")
        config_work = work / config.name
        config_work.mkdir()
        figures = run_config(
            config=config, servers=servers, workload=workload, rates=args.rates, step_s=args.step_s, work=config_work
        )
        figures["repeated_still_cached_after_steps"] = repeated_are_cached(servers, workload)
        return figures
    finally:
        for server in servers:
            server.stop()


def method(args: argparse.Namespace, elapsed_s: float) -> str:
    return (
        f"open loop at fixed arrival rates, {args.step_s:g} s a step, {USER_PERIOD_S:g} s between one Locust "
        f"user's arrivals (rate x {USER_PERIOD_S:g} users); latency from when each request was due (start lag "
        f"added); mix 50% cached chat / 30% unique extractive chat / 15% search / 5% streamed chat, plus one "
        f"ingest every {INGEST_EVERY_S:g} s into its own collection; {args.passages} Disfl-QA passages; server "
        f"CPU in cores used (user+system seconds over the arrivals' window), peak RSS summed over replicas; "
        f"Locust on the same machine; "
        f"whole run {elapsed_s:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
