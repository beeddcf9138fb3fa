"""The audit trail's writer: how many records a second the group commit makes durable on SQLite, and how long
one durable write takes (what waiting for it adds to a cached ``POST /v1/chat`` is ``bench/governance.py``'s).

1. ``writer``: ``AuditLog`` on a SQLite state store in a temp dir (WAL, synchronous=FULL: every commit fsynced).
   Closed loop: C concurrent callers (threads, as requests are) each submit a record and wait until it is
   committed, then submit the next, for ``--seconds``; C = 1 (every record its own transaction: the fsync's
   price) and C = 32. Reported: records/s, submit-to-durable p50/p95, mean records per commit. Then the
   firehose: ``--burst`` records submitted at once, records/s until the last is durable. Goal >= 1,000/s.
2. ``fsync``: p50/p95 of write + fsync of 200 bytes to a file in the same temp dir, for scale.

Run: ``.venv/bin/python bench/audit.py [--seconds 5] [--burst 20000] [--out FILE]`` (about 30 seconds). Figures
move with the machine's load: re-run when comparing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit, percentile  # noqa: E402
from serving.governance.audit import AuditLog, AuditRecord  # noqa: E402
from serving.infra.clock import utc_now  # noqa: E402
from serving.infra.state_store import StateStore  # noqa: E402
from serving.observe.metrics import ServiceMetrics  # noqa: E402

QUESTION = "When were the Normans in Normandy?"


def sample_record(n: int) -> AuditRecord:
    """A chat request's record as the middleware makes it (hashes, cited documents, a guard, usage)."""
    return AuditRecord(
        ts=utc_now(), request_id=f"bench{n}", key_id="env-1a2b3c4d", tenant="bench", role="reader", method="POST",
        route="/v1/chat", status=200, outcome="answered", prompt_version="rag_answer@v2", prompt_hash="a" * 64,
        generator="extractive", cited_documents=["doc-1", "doc-2"], prompt_tokens=420, completion_tokens=60,
        cost_usd=0.00012, latency_ms=35.2, question_sha256="b" * 64, answer_sha256="c" * 64,
    )  # fmt: skip


def closed_loop(log: AuditLog, callers: int, seconds: float) -> dict[str, Any]:
    latencies: list[list[float]] = [[] for _ in range(callers)]
    deadline = time.perf_counter() + seconds

    def caller(mine: list[float]) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            log.submit(sample_record(len(mine))).result()
            mine.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=caller, args=(mine,)) for mine in latencies]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = [ms for mine in latencies for ms in mine]
    return {
        "callers": callers,
        "records": len(every),
        "records_per_s": round(len(every) / elapsed),
        "durable_p50_ms": round(percentile(every, 50), 3),
        "durable_p95_ms": round(percentile(every, 95), 3),
    }


def burst(log: AuditLog, records: int) -> dict[str, Any]:
    began = time.perf_counter()
    futures = [log.submit(sample_record(n)) for n in range(records)]
    wait(futures)
    elapsed = time.perf_counter() - began
    return {"records": records, "records_per_s": round(records / elapsed)}


def batch_mean(metrics: ServiceMetrics) -> float:
    count = metrics.registry.get_sample_value("ragops_audit_batch_records_count") or 1.0
    return round((metrics.registry.get_sample_value("ragops_audit_batch_records_sum") or 0.0) / count, 1)


def writer(work: Path, seconds: float, records: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for callers in (1, 32):
        store = StateStore.open(None, work / f"writer-{callers}.sqlite")
        metrics = ServiceMetrics(0.5)
        log = AuditLog(store, "hash", metrics)
        try:
            figures[f"closed_loop_{callers}"] = {
                **closed_loop(log, callers, seconds),
                "mean_batch": batch_mean(metrics),
            }
        finally:
            log.close()
            store.close()
    store = StateStore.open(None, work / "writer-burst.sqlite")
    metrics = ServiceMetrics(0.5)
    log = AuditLog(store, "hash", metrics)
    try:
        figures["burst"] = {**burst(log, records), "mean_batch": batch_mean(metrics)}
    finally:
        log.close()
        store.close()
    return figures


def fsync_latency(work: Path, times: int = 200) -> dict[str, float]:
    path, samples = work / "fsync-probe", []
    with path.open("ab") as probe:
        for _ in range(times):
            started = time.perf_counter()
            probe.write(b"x" * 200)
            probe.flush()
            os.fsync(probe.fileno())
            samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(samples, 50), 3), "p95_ms": round(percentile(samples, 95), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each closed-loop run")
    parser.add_argument("--burst", type=int, default=20_000, help="records of the firehose run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-audit-") as tmp:
        work = Path(tmp)
        figures: dict[str, Any] = {"fsync": fsync_latency(work), "writer": writer(work, args.seconds, args.burst)}
    figures["method"] = (
        f"writer: AuditLog on SQLite (WAL, synchronous=FULL), closed loops of {args.seconds:g} s with 1 and 32 "
        f"callers each waiting for its record to commit, then {args.burst} records submitted at once"
    )
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
