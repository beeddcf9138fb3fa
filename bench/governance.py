"""What governance adds to a cached ``POST /v1/chat`` answer, measured paired through real ``ragops serve``
processes on 127.0.0.1 (extractive generator, 60 Disfl-QA passages, one question asked once so every timed
request is a cache hit).

Configurations, one server each, all holding the same documents:
- ``open``: no keys, audit off (the baseline);
- ``auth``: an API key (settings), role check, in-process rate limit and token quota, audit off;
- ``auth_redis``: the same with the limits in a real Redis (``redis-server`` on 127.0.0.1);
- ``auth_audit``: ``auth`` plus the durable audit record (group commit, SQLite WAL, synchronous=FULL) the
  response waits for;
- ``auth_audit_budget``: ``auth_audit`` for a tenant with a budget and a priced model: every chat request reserves
  what an answer can cost at most (one write transaction, fsynced) before it is answered, and the audit commit
  releases it.
Each round sends one request to every server in a shuffled order (sequential, one client), so drift on the
machine hits all configurations alike. Reported: client wall time p50/p95 per configuration, and each one's
p95 minus the configuration it adds to (auth and auth_redis over open, auth_audit over auth, auth_audit_budget
over auth_audit). Goals: auth +
role + limit <= 2 ms p95; the audit write <= 5 ms p95 more.

Run: ``.venv/bin/python bench/governance.py [--rounds 400] [--out FILE]`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit, percentile  # noqa: E402
from tests.backing_services import RedisServer, redis_binary  # noqa: E402
from tests.conftest import load_sample_records  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

KEY = "bench-reader-key"
ADMIN_KEY = "bench-admin-key"  # sets the budget of auth_audit_budget
METRICS_TOKEN = "bench-scrape-token"  # with keys on, /metrics needs one
QUESTION = "When were the Normans in Normandy?"
PRICES = json.dumps({"extractive": {"completion_per_1k": 0.001}})
UNLIMITED = json.dumps({role: {"requests_per_minute": 10**9, "tokens_per_day": 10**12}
                        for role in ("reader", "editor", "admin")})  # fmt: skip


def configurations(redis_url: str | None) -> dict[str, dict[str, str]]:
    keyed = {"RAGOPS_API_KEYS": json.dumps({KEY: "bench:editor"}), "RAGOPS_ROLE_LIMITS": UNLIMITED,
             "RAGOPS_METRICS_TOKEN": METRICS_TOKEN}  # fmt: skip
    configs = {
        "open": {"RAGOPS_AUDIT": "false"},
        "auth": {**keyed, "RAGOPS_AUDIT": "false"},
        "auth_audit": {**keyed, "RAGOPS_AUDIT": "true"},
        "auth_audit_budget": {**keyed, "RAGOPS_AUDIT": "true", "RAGOPS_PRICES": PRICES,
                              "RAGOPS_API_KEYS": json.dumps({KEY: "bench:editor", ADMIN_KEY: "bench:admin"})},
    }  # fmt: skip
    if redis_url is not None:
        configs["auth_redis"] = {**keyed, "RAGOPS_AUDIT": "false", "RAGOPS_REDIS_URL": redis_url}
    return configs


def start(name: str, extra: dict[str, str], work: Path, models_dir: Path) -> LiveServer:
    env = {"RAGOPS_DATA_DIR": str(work / name), "RAGOPS_MODELS_DIR": str(models_dir),
           "RAGOPS_GENERATOR": "extractive", "RAGOPS_DEFAULT_TENANT": "bench", **extra}  # fmt: skip
    server = LiveServer(env, work / f"{name}.log")
    with httpx.Client(base_url=server.url, timeout=300, headers=headers(extra)) as client:
        if "RAGOPS_PRICES" in extra:
            budget = {"monthly_usd": 10**9}
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            client.put("/v1/admin/budgets/bench", json=budget, headers=admin).raise_for_status()
        documents = [{"id": r["id"], "text": r["text"]} for r in load_sample_records()]
        client.post("/v1/documents", json={"documents": documents}).raise_for_status()
        client.post("/v1/chat", json={"question": QUESTION}).raise_for_status()  # fills the answer cache
    return server


def headers(extra: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"} if "RAGOPS_API_KEYS" in extra else {}


def measure(servers: dict[str, tuple[LiveServer, dict[str, str]]], rounds: int) -> dict[str, list[float]]:
    clients = {name: httpx.Client(base_url=s.url, timeout=30, headers=headers(e)) for name, (s, e) in servers.items()}
    times: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(20):  # warm connections and code paths
            for client in clients.values():
                client.post("/v1/chat", json={"question": QUESTION})
        for _ in range(rounds):
            order = list(clients)
            random.shuffle(order)
            for name in order:
                started = time.perf_counter()
                response = clients[name].post("/v1/chat", json={"question": QUESTION})
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200 or not response.json()["cached"]:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
                times[name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
    return times


def commit_mean_ms(server: LiveServer) -> float:
    """The server's own mean time to commit a batch of audit records (``ragops_audit_commit_seconds``)."""
    from prometheus_client.parser import text_string_to_metric_families

    scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    exposition = httpx.get(f"{server.url}/metrics", headers=scrape, timeout=30).raise_for_status().text
    samples = {s.name: s.value for f in text_string_to_metric_families(exposition) for s in f.samples}
    count = samples.get("ragops_audit_commit_seconds_count") or 1.0
    return round(samples.get("ragops_audit_commit_seconds_sum", 0.0) / count * 1000, 3)


def summary(times: dict[str, list[float]]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        name: {"p50_ms": round(percentile(t, 50), 3), "p95_ms": round(percentile(t, 95), 3), "n": len(t)}
        for name, t in times.items()
    }
    over = {"auth": "open", "auth_redis": "open", "auth_audit": "auth", "auth_audit_budget": "auth_audit"}
    figures["added_p95_ms"] = {
        f"{name} over {base}": round(figures[name]["p95_ms"] - figures[base]["p95_ms"], 3)
        for name, base in over.items()
        if name in figures
    }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".ragops" / "models")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-gov-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis") if redis_binary() else None
        servers: dict[str, tuple[LiveServer, dict[str, str]]] = {}
        try:
            for name, extra in configurations(redis.url if redis else None).items():
                servers[name] = (start(name, extra, work, args.models_dir), extra)
            figures = summary(measure(servers, args.rounds))
            figures["auth_audit"]["server_commit_mean_ms"] = commit_mean_ms(servers["auth_audit"][0])
        finally:
            for server, _ in servers.values():
                server.stop()
            if redis is not None:
                redis.stop()
    figures["method"] = (
        f"{args.rounds} rounds, one cached POST /v1/chat per configuration per round in shuffled order, "
        "sequential, client wall time over HTTP/1.1 keep-alive on 127.0.0.1; extractive generator"
    )
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
