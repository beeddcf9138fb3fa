"""Three steps of a request timed in one process: two of them both ways, old and new, interleaved (the machine's
speed drifts too much between runs for a whole-request A/B to show a millisecond): how a chat's citations are
redacted, how the rerank counts its IDF pool; and the stream's sentence splitter on a long sentence.

- ``citations``: ``resolve_citations`` for 300 Disfl-QA questions' top 5 hits (the sample corpus, hybrid search),
  each passage redacted again in every answer (``redact``) or once through the service's ``RedactionMemo``;
- ``rerank_idf``: ``pool_idf`` over the top 20 candidates of the same questions, each candidate's held terms
  unioned from its sentences' terms in every query, or kept with its split (``SplitPassage.held``);
- ``splitter``: this tree's ``SentenceSplitter`` fed one sentence of 20,000 characters without a full stop, 4
  characters at a time (a hostile or runaway answer), and a 2,000-character answer of ordinary sentences (the
  splitter before issue 27's last stop re-read the sentence from its start at each space: 347 ms for the first).

Prints ms per item, the least of ``--rounds`` rounds each. Run: ``.venv/bin/python bench/hot_path_steps.py
[--out FILE]`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
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
from bench.corpora import emit  # noqa: E402
from bench.guards import CORPUS, load_questions  # noqa: E402
from retrieval.documents import Document, Section  # noqa: E402
from retrieval.index import Scope  # noqa: E402
from retrieval.rerank import SplitPassage, pool_idf  # noqa: E402
from retrieval.sparse import Bm25Encoder  # noqa: E402
from safety.pii import RedactionMemo, redact  # noqa: E402
from serving.answering.streaming_guard import SentenceSplitter  # noqa: E402
from serving.contracts.answer import resolve_citations  # noqa: E402


def least_ms(step: Callable[[], object], items: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000 / items, 4)


def split_fed(text: str) -> None:
    splitter = SentenceSplitter()
    for at in range(0, len(text), 4):
        splitter.feed(text[at : at + 4])
    splitter.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-steps-") as tmp:
        services = build_services(load_settings(data_dir=Path(tmp), generator="extractive"))
        try:
            scope = Scope("bench", "default")
            records = [json.loads(line) for line in CORPUS.read_text().splitlines()]
            services.ingestor.ingest_documents([Document(r["id"], (Section(r["text"]),)) for r in records], scope)
            questions = [q["question"] for q in load_questions(0, 300)]
            hits = [services.searcher.search(q, scope, top_k=20).hits for q in questions]
        finally:
            services.close()
    sparse = Bm25Encoder()
    pools = [
        (frozenset(sparse.encode_query(question).indices), [SplitPassage.read(hit.text, sparse) for hit in found])
        for question, found in zip(questions, hits, strict=True)
    ]
    memo = RedactionMemo()
    shown = [found[:5] for found in hits]
    figures: dict[str, Any] = {"method": __doc__.split("\n\n")[1], "rounds": args.rounds}
    rounds = args.rounds
    figures["citations_ms_an_answer"] = {
        "redacted_each_time": least_ms(lambda: [resolve_citations("A [1].", h, redact) for h in shown], 300, rounds),
        "redaction_memo": least_ms(lambda: [resolve_citations("A [1].", h, memo) for h in shown], 300, rounds),
    }
    figures["rerank_idf_ms_a_search"] = {
        "unioned_each_query": least_ms(
            lambda: [pool_idf(q, [frozenset().union(*s.terms) for s in splits]) for q, splits in pools], 300, rounds
        ),
        "held_with_split": least_ms(
            lambda: [pool_idf(q, [s.held for s in splits]) for q, splits in pools], 300, rounds
        ),
    }
    runaway, ordinary = "word and more words " * 1000, "The answer is here, and it goes on for a while. " * 40
    figures["splitter_ms_an_answer"] = {
        "one_20000_char_sentence": least_ms(lambda: split_fed(runaway), 1, rounds),
        "ordinary_2000_char_answer": least_ms(lambda: split_fed(ordinary), 1, rounds),
    }
    emit(figures, args.out)


if __name__ == "__main__":
    main()
