"""How long erasing a user takes (issue goal: a user with 10,000 kept answers erased in at most 10 s).

A SQLite state store in a temp dir (WAL, synchronous=FULL, secure_delete, as the server opens it) holding:

* ``--answers`` kept answers of the user (under a stored key and keyless) among ``--others`` of 50 other users of
  the tenant, interleaved (one in ten rows is the user's: their rows are spread over the file, as months of
  traffic leave them), each with ``--passages`` passages of ``--passage-chars`` characters as ``AnswerLog`` keeps
  them; one answer in nine rated (``feedback``);
* as many audit records of the user among the others' (same interleaving), appended with ``append_records`` in
  batches of 1,000: the user's keyed hash (``user_ref``), question/answer hashes, cited documents;
* an embedding cache (SQLite, as ``CachedEmbedder`` keeps it) with the question vector of each of the user's
  answers and ``--other-vectors`` others, and an in-memory answer cache of 2,048 entries of the tenant.

Then one ``Eraser.erase`` of the user, timed with ``time.perf_counter`` around the call (the figure against the
goal), each step timed by wrapping the eraser's own step methods; then ``verify`` of the chain (timed apart: not
part of an erasure), and the user's marker word looked for in the state store's files (it must be in none).
``--profile`` adds cProfile's top functions by cumulative time of the erase.

Run: ``.venv/bin/python bench/erasure.py [--answers 10000] [--others 90000] [--out FILE]`` (about a minute, most
of it building the data). Figures move with the machine's load and disk: re-run when comparing.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import emit  # noqa: E402
from retrieval.embedding_cache import SqliteEmbeddingStore, text_key  # noqa: E402
from serving.answering.answer_cache import CacheKey, InMemoryAnswerCache  # noqa: E402
from serving.contracts.answer import canary_subject  # noqa: E402
from serving.governance.access import ANONYMOUS_KEY_ID, KeyLimits, Role  # noqa: E402
from serving.governance.audit import AuditRecord, append_records  # noqa: E402
from serving.governance.audit_chain import verify  # noqa: E402
from serving.governance.keys import KeyStore  # noqa: E402
from serving.governance.subjects import SubjectKeys  # noqa: E402
from serving.infra.clock import stamp  # noqa: E402
from serving.infra.state_store import StateStore  # noqa: E402
from serving.loop.answer_log import AnswerRecord, KeptPassage  # noqa: E402
from serving.rights.erasure import Eraser, ErasureReport, ErasureStores, ErasureSubject  # noqa: E402

TENANT, USER = "bench", "user-0042"
MARKER = "Quillonbrae"  # in each of the user's questions and answers: must be in no file of the store afterwards
MODEL_ID = "all-MiniLM-L6-v2"
DIMENSION = 384
BATCH = 1_000  # audit records per append_records transaction; answers per insert transaction: 5x
SPREAD = 10  # one row in SPREAD is the user's
OTHER_USERS = 50
RATED_EVERY = 9  # one answer in 9 has feedback (the user's too: their rows are every SPREAD-th)
STEPS = ("_begin", "_kept_answers", "_suites", "_index", "_answer_cache", "_query_vectors", "_delete_answers",
         "_audit", "_finish")  # fmt: skip
_ANSWER_INSERT = (
    "INSERT INTO answers (id, ts, tenant, collection, user_hash, question, answer, citations, outcome, prompt_name, "
    "prompt_version, prompt_hash, generator, model, fallback, groundedness, relevance, latency_ms, completion_tokens) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
Step = TypeVar("Step", bound=Callable[..., Any])


def owners(mine: int, others: int) -> Iterator[bool]:
    """For each row in order, whether it is the user's: one in ``SPREAD`` until the user's run out."""
    left_mine, left_others = mine, others
    for n in range(mine + others):
        take_mine = left_mine > 0 and (n % SPREAD == 0 or left_others == 0)
        if take_mine:
            left_mine -= 1
        else:
            left_others -= 1
        yield take_mine


def question_of(n: int, mine: bool) -> str:
    who = MARKER if mine else f"someone{n % OTHER_USERS}"
    return f"What does the travel policy say about per diem rates in Lisbon, asks {who} (question {n})?"


def kept_answer(n: int, mine: bool, key_ids: list[str], passages: int, chars: int, when: datetime) -> AnswerRecord:
    user = USER if mine else f"other-{n % OTHER_USERS}"
    key_id = key_ids[n % len(key_ids)]
    text = ("The policy allows a daily allowance for meals and local transport within the stated limits. " * 20)[:chars]
    return AnswerRecord(
        id=f"ans_{n:032x}", ts=when, tenant=TENANT, collection="docs", user_hash=canary_subject(TENANT, key_id, user),
        question=question_of(n, mine), answer=f"Per diem rates follow the table [1]. ({MARKER if mine else 'ok'})",
        passages=tuple(KeptPassage(index=i + 1, doc_id=f"doc-{(n + i) % 5000}", chunk_id=f"doc-{(n + i) % 5000}#{i}",
                                   title="Travel policy", text=text, cited=i == 0) for i in range(passages)),
        outcome="answered", prompt_name="rag_answer", prompt_version="v2", prompt_hash="a" * 64,
        generator="extractive", model=None, fallback=None, groundedness=0.9, relevance=0.7, latency_ms=42.0,
        completion_tokens=60,
    )  # fmt: skip


def audit_record(n: int, user_ref: str, key_id: str, when: datetime) -> AuditRecord:
    return AuditRecord(
        ts=stamp(when), request_id=f"req{n:012d}", key_id=key_id, tenant=TENANT, role="reader", method="POST",
        route="/v1/chat", status=200, outcome="answered", prompt_version="rag_answer@v2", prompt_hash="a" * 64,
        generator="extractive", cited_documents=[f"doc-{n % 5000}", f"doc-{(n + 1) % 5000}"], prompt_tokens=420,
        completion_tokens=60, cost_usd=0.00012, latency_ms=35.2, question_sha256=f"{n:064x}",
        answer_sha256=f"{n + 1:064x}", user_ref=user_ref,
    )  # fmt: skip


def fill_state(store: StateStore, mine: int, others: int, passages: int, chars: int) -> dict[str, Any]:
    """The answers, feedback and audit records; returns how many of each were written and how long it took."""
    started = time.perf_counter()
    key_ids = [KeyStore(store).create(TENANT, Role.reader, "bench", None, KeyLimits()).record.id, ANONYMOUS_KEY_ID]
    refs = SubjectKeys(store)
    user_refs = {name: refs.ref("user", TENANT, name) for name in [USER, *(f"other-{u}" for u in range(OTHER_USERS))]}
    begin = datetime(2026, 1, 1, tzinfo=UTC)
    answers: list[tuple[object, ...]] = []
    rated: list[tuple[object, ...]] = []
    records: list[AuditRecord] = []
    for n, the_users in enumerate(owners(mine, others)):
        when = begin + timedelta(seconds=30 * n)
        kept = kept_answer(n, the_users, key_ids, passages, chars, when)
        answers.append(kept.row())
        if n % RATED_EVERY == 0:
            rated.append((kept.id, TENANT, stamp(when), "down", "wrong rate", None, key_ids[0]))
        user = USER if the_users else f"other-{n % OTHER_USERS}"
        records.append(audit_record(n, user_refs[user], key_ids[n % len(key_ids)], when))
        if len(records) == BATCH:
            _write(store, answers, rated, records)
            answers, rated, records = [], [], []
    _write(store, answers, rated, records)
    with store.transaction() as cur:
        counts = {
            table: int(cur.execute(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])  # our own table names
            for table in ("answers", "feedback", "audit_records")
        }
    return {**counts, "seconds": round(time.perf_counter() - started, 1)}


def _write(
    store: StateStore, answers: list[tuple[object, ...]], rated: list[tuple[object, ...]], records: list[AuditRecord]
) -> None:
    with store.transaction(write=True) as cur:
        cur.executemany(_ANSWER_INSERT, answers)
        cur.executemany(
            "INSERT INTO feedback (answer_id, tenant, ts, rating, comment, correction, key_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rated,
        )
        if records:
            append_records(cur, records)


def fill_embeddings(cache: SqliteEmbeddingStore, mine: int, others: int, other_vectors: int) -> int:
    """The user's question vectors (keyed as the eraser finds them: by the kept question) and others'."""
    vector = np.full(DIMENSION, 0.05, np.float32).tobytes()
    rows = [(text_key(question_of(n, True)), vector) for n, mine_row in enumerate(owners(mine, others)) if mine_row]
    rows += [(text_key(f"another question {n}"), vector) for n in range(other_vectors)]
    for begin in range(0, len(rows), 5 * BATCH):
        cache.put_many(MODEL_ID, rows[begin : begin + 5 * BATCH], kind="query")
    return len(rows)


def fill_answer_cache(entries: int = 2048) -> InMemoryAnswerCache:
    cache = InMemoryAnswerCache(max_entries=entries)
    for n in range(entries):
        key = CacheKey(question=f"q{n}", collection="docs", tenant=TENANT, index_version="v1", prompt="rag@v2",
                       generator="extractive", top_k=4)  # fmt: skip
        cache.put(key, {"answer": n})
    return cache


def timed_steps(eraser: Eraser, store: StateStore) -> dict[str, float]:
    """Wrap the eraser's step methods (and the store's reclaim) on these instances: seconds per step."""
    seconds: dict[str, float] = {}

    def timer(name: str, step: Step) -> Step:
        @functools.wraps(step)
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 3)

        return run  # type: ignore[return-value]

    for name in STEPS:
        setattr(eraser, name, timer(name.lstrip("_"), getattr(eraser, name)))
    setattr(store, "reclaim", timer("reclaim", store.reclaim))  # noqa: B010
    return seconds


def files_holding(paths: list[Path], needle: bytes) -> list[str]:
    return [path.name for path in paths if path.exists() and needle in path.read_bytes()]


def erase(store: StateStore, cache: SqliteEmbeddingStore, profile: bool) -> tuple[ErasureReport, float, dict[str, Any]]:
    stores = ErasureStores(state=store, subjects=SubjectKeys(store), embeddings=cache, forget_queries=lambda: None,
                           answer_cache=fill_answer_cache())  # fmt: skip
    eraser = Eraser(stores)
    steps = timed_steps(eraser, store)
    profiler = cProfile.Profile() if profile else None
    subject = ErasureSubject(kind="user", tenant=TENANT, identifier=USER)
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    report = eraser.erase(subject)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    figures: dict[str, Any] = {"steps_s": steps}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        figures["profile_top25_cumulative"] = text.getvalue().splitlines()
    return report, elapsed, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=10_000, help="the user's kept answers (and audit records)")
    parser.add_argument("--others", type=int, default=90_000, help="other users' kept answers (and audit records)")
    parser.add_argument("--passages", type=int, default=4, help="passages kept with each answer")
    parser.add_argument("--passage-chars", type=int, default=400)
    parser.add_argument("--other-vectors", type=int, default=40_000, help="other question vectors in the cache")
    parser.add_argument("--goal-s", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="add cProfile's top 25 (cumulative) of the erase")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="ragops-bench-erasure-") as tmp:
        work = Path(tmp)
        store = StateStore.open(None, work / "state.sqlite")
        cache = SqliteEmbeddingStore(work / "cache" / "embeddings.sqlite")
        try:
            built = fill_state(store, args.answers, args.others, args.passages, args.passage_chars)
            built["query_vectors"] = fill_embeddings(cache, args.answers, args.others, args.other_vectors)
            built["state_mb"] = round((work / "state.sqlite").stat().st_size / 2**20, 1)
            report, elapsed, figures = erase(store, cache, args.profile)
            started = time.perf_counter()
            verified = verify(store)
            verify_s = time.perf_counter() - started
            with store.transaction() as cur:
                left = int(cur.execute("SELECT COUNT(*) AS n FROM answers")[0]["n"])
            state_files = [work / name for name in ("state.sqlite", "state.sqlite-wal")]
            figures = {
                "built": built,
                "erase_s": round(elapsed, 3),
                "goal_s": args.goal_s,
                "within_goal": elapsed <= args.goal_s,
                **figures,
                "removed": report.removed,
                "reclaimed": report.reclaimed,
                "answers_left": left,
                "verify": {"ok": verified.ok, "records": verified.records, "seconds": round(verify_s, 3)},
                "marker_in_state_files": files_holding(state_files, MARKER.encode()),
            }
        finally:
            cache.close()
            store.close()
    figures["method"] = (
        f"SQLite state store (WAL, synchronous=FULL, secure_delete) in a temp dir: {args.answers} kept answers of one "
        f"user among {args.others} of {OTHER_USERS} others (one row in {SPREAD} the user's), {args.passages} passages "
        f"of {args.passage_chars} chars each, one in {RATED_EVERY} rated; as many audit records, appended with "
        f"append_records in batches of {BATCH}; {args.answers} + {args.other_vectors} question vectors in the "
        "embedding cache; erase_s: time.perf_counter around one Eraser.erase of the user; steps_s: each step "
        "method wrapped"
    )
    emit(figures, args.out)
    return 0 if figures["within_goal"] and figures["verify"]["ok"] and not figures["marker_in_state_files"] else 1


if __name__ == "__main__":
    sys.exit(main())
