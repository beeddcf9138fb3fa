"""What feedback costs on the state store (SQLite in a temp dir, WAL, synchronous=FULL), with ``--answers`` kept
answers spread over 30 days (90% of them rag_answer@v2, 10% @v9) and ``--rated`` of them rated (20% down):

1. ``rate``: ``FeedbackStore.rate`` as ``POST /v1/feedback`` calls it (upsert, then the version's latest 100
   ratings for its metric, in one fsynced transaction), p50/p95 over 200 ratings.
2. ``down_rates`` / ``answer_ratings``: what the canary analysis reads every ``canary_check_every`` answers,
   for a canary started 1 hour and 7 days ago (p50/p95 over 20 calls each).
3. ``export_cases``: ``FeedbackStore.cases(rating="down")``, the query behind ``ragops feedback export``.
4. ``prune``: deleting the answers (and feedback) older than 7 days (``feedback_retention_days`` = 7).

Run: ``.venv/bin/python bench/feedback.py [--answers 20000] [--rated 2000] [--out FILE]`` (about a minute).
Figures move with the machine's load: re-run when comparing.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit, percentile  # noqa: E402
from retrieval.index import Scope  # noqa: E402
from serving.contracts.answer import (  # noqa: E402
    Answer,
    AnswerRequest,
    Citation,
    PromptInfo,
)
from serving.infra.clock import stamp  # noqa: E402
from serving.infra.state_store import StateStore  # noqa: E402
from serving.loop.answer_log import AnswerLog  # noqa: E402
from serving.loop.feedback import FeedbackStore, answer_ratings, down_rates  # noqa: E402

PASSAGE = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region."


def keep_answers(log: AnswerLog, state: StateStore, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` answers through the answer log, then spread over the last 30 days: (id, version) each."""
    kept: list[tuple[str, str]] = []
    for n in range(count):
        version = "v9" if rng.random() < 0.1 else "v2"
        request = AnswerRequest(
            question=f"Question {n}: who gave their name to Normandy?", scope=Scope("bench", "acme")
        )
        citations = [
            Citation(index=i, doc_id=f"doc-{rng.randrange(500)}", chunk_id=f"c{i}", title=None, source=None,
                     text=PASSAGE, score=0.5, cited=i == 1)
            for i in (1, 2, 3, 4)
        ]  # fmt: skip
        answer = Answer(
            id=request.id, answer="The Normans [1].", outcome="answered", citations=citations,
            prompt=PromptInfo(name="rag_answer", version=version, hash="0" * 64), generator="llamacpp",
        )  # fmt: skip
        log.record(request, answer)
        kept.append((request.id, version))
        if n % 5000 == 4999:  # the log holds at most 10,000 pending answers (a server's answers come slower)
            log.flush(120)
    log.flush(120)
    assert not log.dropped, f"{log.dropped} answers not kept"
    now = datetime.now(UTC)
    moments = [(stamp(now - timedelta(seconds=rng.uniform(0, 30 * 86400))), answer_id) for answer_id, _ in kept]
    with state.transaction(write=True) as cur:
        cur.executemany("UPDATE answers SET ts = ? WHERE id = ?", moments)
    return kept


def timed(call: Callable[[], Any], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(times, 50), 2), "p95_ms": round(percentile(times, 95), 2)}


def measure(state: StateStore, log: AnswerLog, kept: list[tuple[str, str]], rated: int) -> dict[str, Any]:
    rng = random.Random(1)
    store = FeedbackStore(state, window=100)
    chosen = rng.sample(kept, rated)
    records = [log.find(answer_id, "acme") for answer_id, _ in chosen]
    for record in records[:-200]:
        assert record is not None
        store.rate(record, "down" if rng.random() < 0.2 else "up")
    with state.transaction(write=True) as cur:  # rated as they were answered, not all today
        cur.execute("UPDATE feedback SET ts = (SELECT a.ts FROM answers a WHERE a.id = feedback.answer_id)")
    last = iter(records[-200:])
    rate = timed(lambda: store.rate(next(last), "down"), 200)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    figures: dict[str, Any] = {"rate": rate}
    for name, ago in (("1h", timedelta(hours=1)), ("7d", timedelta(days=7))):
        figures |= canary_reads(state, now - ago, name)
    figures["export_cases"] = timed(lambda: store.cases(rating="down"), 3)
    started = time.perf_counter()
    pruned = AnswerLog(state, retention_days=7)
    figures["prune"] = {"answers": pruned.prune(now), "ms": round((time.perf_counter() - started) * 1000, 1)}
    pruned.close()
    return figures


def canary_reads(state: StateStore, since: datetime, name: str) -> dict[str, Any]:
    return {
        f"down_rates_since_{name}": timed(lambda: down_rates(state, "rag_answer", since), 20),
        f"answer_ratings_v9_since_{name}": timed(lambda: answer_ratings(state, "rag_answer", since, "v9"), 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=20_000)
    parser.add_argument("--rated", type=int, default=2_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = StateStore.open(None, Path(tmp) / "state.sqlite")
        log = AnswerLog(state, retention_days=30)
        started = time.perf_counter()
        kept = keep_answers(log, state, args.answers, random.Random(0))
        setup_s = time.perf_counter() - started
        figures = {"answers": args.answers, "rated": args.rated, "setup_s": round(setup_s, 1)}
        figures |= measure(state, log, kept, args.rated)
        log.close()
        state.close()
    emit(figures, args.out)


if __name__ == "__main__":
    main()
