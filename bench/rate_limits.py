"""What the rate limiter and the answer cache's index digest cost, in process (the HTTP figures, paired with
governance off, are ``bench/governance.py``'s).

- Limiter: one chat request's limiter work as admission does it (``check_address``, ``admit``: requests per
  minute and the token quota; the token reservation, then its settlement), timed per request, with the limits in
  process and in a real Redis (``redis-server`` on 127.0.0.1; five round trips a request, one per call).
- Index digest: the sample corpus (1,204 Disfl-QA passages) ingested into a temp data dir (embeddings from the
  main data dir's cache when it holds them); the digest of its scope from the memo (what nearly every request
  pays), recomputed (what one request in ``MAX_AGE_S`` pays, or the first after an ingest), and a cached
  ``RagPipeline.answer`` for scale.

Run: ``.venv/bin/python bench/rate_limits.py [--out FILE]`` (about a minute with the embeddings cached).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.container import build_services  # noqa: E402
from app.settings import load_settings  # noqa: E402
from bench.corpora import emit, percentile  # noqa: E402
from retrieval.documents import Document, Section  # noqa: E402
from retrieval.index import Scope  # noqa: E402
from serving.answering.answer_cache import IndexDigest  # noqa: E402
from serving.contracts.answer import AnswerRequest  # noqa: E402
from serving.governance.access import KeyLimits, Principal, Role, default_role_limits  # noqa: E402
from serving.governance.rate_limits import RateLimits  # noqa: E402
from serving.observe.metrics import ServiceMetrics  # noqa: E402
from tests.backing_services import RedisServer, redis_binary  # noqa: E402
from tests.conftest import load_sample_records  # noqa: E402

QUESTION = "When were the Normans in Normandy?"


def timed(action: Callable[[], object], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1e6)
    return {"p50_us": round(percentile(times, 50), 1), "p95_us": round(percentile(times, 95), 1), "n": repeats}


def limiter_cost(redis_url: str | None, repeats: int) -> dict[str, float]:
    limits = RateLimits(redis_url, "open", default_role_limits(), 20, ServiceMetrics(0.5))
    key = Principal("bench-key", "bench", Role.reader, KeyLimits(10**9, 10**12))

    def one_request() -> None:
        limits.check_address("192.0.2.1")
        limits.admit(key)
        limits.reserve_tokens(key, 2048)
        limits.adjust_tokens(key, 25 - 2048)

    timed(one_request, 100)  # connections, scripts loaded
    return timed(one_request, repeats)


def copy_embeddings(data_dir: Path) -> None:
    """The main data dir's embedding cache, copied consistently (it may be open elsewhere), so ingest is quick."""
    source = ROOT / ".ragops" / "cache" / "embeddings.sqlite"
    if source.exists():
        (data_dir / "cache").mkdir(parents=True)
        with sqlite3.connect(source) as src, sqlite3.connect(data_dir / "cache" / "embeddings.sqlite") as dst:
            src.backup(dst)


def digest_cost(models_dir: Path, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ragops-bench-limits-") as tmp:
        copy_embeddings(Path(tmp))
        settings = load_settings(data_dir=Path(tmp), models_dir=models_dir, generator="extractive", audit=False)
        services = build_services(settings)
        try:
            scope = Scope("sample", "bench")
            records = load_sample_records(2000)
            documents = [Document(r["id"], (Section(r["text"]),), source="sample") for r in records]
            services.ingestor.ingest_documents(documents, scope)
            digest = IndexDigest(services.index, lambda: services.ingestor.version)
            fresh = IndexDigest(services.index, lambda: services.ingestor.version, max_age_s=0)
            request = AnswerRequest(question=QUESTION, scope=scope)
            services.pipeline.answer(request)  # fills the answer cache
            return {
                "documents": len(documents),
                "memo_hit": timed(lambda: digest(scope), repeats),
                "recompute": timed(lambda: fresh(scope), 50),
                "cached_answer": timed(lambda: services.pipeline.answer(request), 300),
            }
        finally:
            services.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".ragops" / "models")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures: dict[str, Any] = {"limiter_in_process": limiter_cost(None, args.repeats)}
    if redis_binary() is not None:
        with tempfile.TemporaryDirectory(prefix="ragops-bench-redis-") as tmp:
            redis = RedisServer(Path(tmp))
            try:
                figures["limiter_redis"] = limiter_cost(redis.url, args.repeats)
            finally:
                redis.stop()
    figures["index_digest"] = digest_cost(args.models_dir, args.repeats)
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
