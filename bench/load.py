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
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import load_operator  # noqa: E402
from bench.corpora import DISFL_QA, emit  # noqa: E402
from bench.load_steps import (  # noqa: E402
    CHAT,
    INGEST_EVERY_S,
    SLO_RATE,
    USER_PERIOD_S,
    StepResult,
    Workload,
    base_env,
    run_step,
)
from tests.backing_services import PostgresServer, RedisServer, postgres_bin_dir, redis_binary  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

REPEATED_QUESTIONS = 20
SEARCH_QUERIES = 200
WARM_QUESTIONS = 10


@dataclass(frozen=True)
class Config:
    processes: int
    rerank: bool

    @property
    def name(self) -> str:
        return f"{self.processes}proc_rerank_{'on' if self.rerank else 'off'}"


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
