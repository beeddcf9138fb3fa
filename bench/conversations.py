"""Conversations benchmark: follow-up retrieval with and without the query rewriters, the self-contained
questions the rules must leave alone, and what the rewrite step costs.

What it measures, and how:
1. Follow-up retrieval, on both parts of the multi-turn suite (``bench/build_conversations.py``): the tuning part
   ``conversations`` (SQuADShifts new_wiki: the rules' word lists and ``GENERIC_MAX_WORDS`` were written and
   checked against it) and the held-out part ``conversations_heldout`` (SQuADShifts nyt and amazon: never looked at
   while writing the rules). Each part's corpus is ingested into its own collection; every follow-up turn (turn
   2-4) is searched with the service's hybrid search and rerank (top 5 passages, as ``chat_top_k`` 5), four ways:
   ``standalone`` (the annotator's original question, which names its subject: the ceiling), ``no_rewrite`` (the
   follow-up as asked: the behaviour before rewriting), ``rules`` (``RuleRewriter``), and with ``--model``,
   ``model`` (``ModelRewriter``: llama.cpp with SmolLM2-135M-Instruct, the shipped ``query_rewrite`` prompt, its
   budget).
   recall@5 and nDCG@5 of the reference passage; "ratio" is recall@5 over the standalone questions'.
2. Self-contained questions: every question of the single-turn suites ``retrieval`` and ``qa`` (Disfl-QA), each
   asked after the previous question of its file and that question's gold answer (a topic switch): the share the
   rules leave unchanged. The goal: at least 98%.
3. Cost: the rewrite step as the pipeline runs it (``RewriteQuery``: the rules, then the input guard over a
   rewritten query), timed in process over every follow-up and self-contained question above, five passes; p50
   and p95 per call. The goal: p95 at most 5 ms added to an answer.

Run: ``.venv/bin/python bench/conversations.py --out bench/results/conversations.json`` (about 3 minutes on 2
cores; ``--model --out bench/results/conversations_model.json`` adds the llama.cpp rewriter: who decided each
rewrite, why the rules stood in, and its latency; about 6 minutes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.container import build_services  # noqa: E402
from app.conversation_parts import build_rewriter  # noqa: E402
from app.parts import build_generator, build_guards  # noqa: E402
from app.settings import load_settings  # noqa: E402
from bench.corpora import emit, percentile  # noqa: E402
from prompts.messages import ChatMessage  # noqa: E402
from prompts.registry import PromptRegistry  # noqa: E402
from retrieval.index import Scope  # noqa: E402
from retrieval.loaders import load_paths  # noqa: E402
from serving.answering.rewrite import QueryRewriter, RuleRewriter  # noqa: E402
from serving.answering.stages import RewriteQuery, Turn  # noqa: E402
from serving.contracts.answer import AnswerRequest  # noqa: E402

PARTS = {"conversations": "tuning (new_wiki)", "conversations_heldout": "held-out (nyt, amazon)"}
SINGLE_TURN = ("retrieval_200", "qa")
TOP_K = 5


@dataclass(frozen=True)
class FollowUp:
    id: str
    question: str
    standalone: str
    history: list[ChatMessage]
    reference: str
    form: str


def follow_ups(part: str) -> list[FollowUp]:
    rows = [json.loads(line) for line in (ROOT / "evals" / "datasets" / f"{part}.jsonl").open()]
    return [
        FollowUp(r["id"], r["question"], r["standalone"], [ChatMessage.model_validate(t) for t in r["history"]],
                 r["reference_doc_ids"][0], r["form"])
        for r in rows if r["turn"] > 1
    ]  # fmt: skip


def scores(ranked: list[str], reference: str) -> tuple[float, float]:
    """recall@5 and nDCG@5 of one reference document in a ranked list of document ids."""
    if reference not in ranked[:TOP_K]:
        return 0.0, 0.0
    return 1.0, 1 / math.log2(ranked.index(reference) + 2)


def measure_part(part: str, search: Callable[[str], list[str]], rewriters: dict[str, QueryRewriter]) -> dict[str, Any]:
    cases = follow_ups(part)
    rewrites = {name: [r.rewrite(c.question, c.history) for c in cases] for name, r in rewriters.items()}
    queries: dict[str, list[str]] = {
        "standalone": [c.standalone for c in cases],
        "no_rewrite": [c.question for c in cases],
        **{name: [r.query for r in done] for name, done in rewrites.items()},
    }
    figures: dict[str, Any] = {"follow_ups": len(cases), "forms": _count(c.form for c in cases)}
    for name, asked in queries.items():
        results = [scores(search(query), case.reference) for query, case in zip(asked, cases, strict=True)]
        figures[name] = {
            "recall@5": round(sum(r for r, _ in results) / len(results), 4),
            "ndcg@5": round(sum(n for _, n in results) / len(results), 4),
        }
    for name, done in rewrites.items():  # who decided, why the rules stood in, and what a rewrite took
        ms = [r.ms for r in done]
        figures[name] |= {"decided_by": _count(r.rewriter for r in done),
                          "fallbacks": _count(_why(r.reason) for r in done if r.rewriter != name),
                          "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2)}  # fmt: skip
    ceiling = figures["standalone"]["recall@5"]
    for name in ("no_rewrite", *rewriters):
        figures[name]["ratio_to_standalone"] = round(figures[name]["recall@5"] / ceiling, 4)
    rules = RuleRewriter()
    figures["rewritten_by_rules"] = sum(rules.rewrite(c.question, c.history).rewritten for c in cases)
    return figures


def self_contained() -> tuple[dict[str, Any], list[tuple[str, list[ChatMessage]]]]:
    """Each single-turn question after the previous one of its file: the share the rules leave alone."""
    rules, figures, asked = RuleRewriter(), {}, []
    for name in SINGLE_TURN:
        rows = [json.loads(line) for line in (ROOT / "evals" / "datasets" / f"{name}.jsonl").open()]
        changed = []
        for previous, row in itertools.pairwise(rows):
            history = [ChatMessage(role="user", content=previous["question"]),
                       ChatMessage(role="assistant", content=(previous.get("answers") or ["-"])[0])]  # fmt: skip
            asked.append((row["question"], history))
            result = rules.rewrite(row["question"], history)
            if result.rewritten:
                changed.append({"question": row["question"], "query": result.query})
        figures[name] = {"questions": len(rows) - 1, "unchanged": round(1 - len(changed) / (len(rows) - 1), 4),
                         "changed_examples": changed[:8]}  # fmt: skip
    return figures, asked


def stage_cost(stage: RewriteQuery, asked: list[tuple[str, list[ChatMessage]]], passes: int = 5) -> dict[str, float]:
    """The rewrite step as the pipeline runs it (rules, then the input guard over a rewrite), per call."""
    prompt, timings = PromptRegistry(None).resolve("rag_answer@production"), []
    for _ in range(passes):
        for question, history in asked:
            request = AnswerRequest(question=question, scope=Scope("bench", "default"), history=history)
            turn = Turn.start(request, prompt)
            started = time.perf_counter()
            stage.run(turn)
            timings.append((time.perf_counter() - started) * 1000)
    return {"calls": len(timings), "p50_ms": round(percentile(timings, 50), 3),
            "p95_ms": round(percentile(timings, 95), 3), "max_ms": round(max(timings), 3)}  # fmt: skip


def _why(reason: str) -> str:
    """A fallback's kind, from the rewrite's reason: the budget, a failure, a rejected output."""
    for kind in ("took over", "model failed", "rejected: drops", "rejected: adds", "rejected"):
        if kind in reason:
            return kind
    return "self-contained or no referent"


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", action="store_true", help="also measure the llama.cpp model rewriter")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-conversations-") as work:
        settings = load_settings(data_dir=Path(work) / "data", generator="llamacpp" if args.model else "extractive",
                                 rewriter="model" if args.model else "rules")  # fmt: skip
        services = build_services(settings)
        try:
            rewriters: dict[str, QueryRewriter] = {"rules": RuleRewriter()}
            if args.model:
                rewriters["model"] = build_rewriter(settings, build_generator(settings, services.embedder,
                                                                              services.metrics))  # fmt: skip
            figures: dict[str, Any] = {"top_k": TOP_K, "parts": {}}
            for part, label in PARTS.items():
                scope = Scope(f"bench-{part.replace('_', '-')}", settings.defaults.tenant)
                documents, _ = load_paths([ROOT / "evals" / "corpora" / _corpus(part)])
                services.ingestor.ingest_documents(documents, scope)

                def search(query: str, scope: Scope = scope) -> list[str]:
                    hits = services.searcher.search(query, scope, top_k=TOP_K).hits
                    return list(dict.fromkeys(hit.doc_id for hit in hits))

                figures["parts"][part] = {"label": label, **measure_part(part, search, rewriters)}
            figures["self_contained"], asked = self_contained()
            guards = build_guards(settings, services.embedder)
            stage = RewriteQuery(RuleRewriter(), guards.input if guards else None)
            asked += [(c.question, c.history) for part in PARTS for c in follow_ups(part)]
            figures["rewrite_step"] = stage_cost(stage, asked)
        finally:
            for rewriter in rewriters.values():
                rewriter.close()
            services.close()
    emit(figures, args.out)


def _corpus(part: str) -> str:
    return "conversations_new_wiki.jsonl" if part == "conversations" else "conversations_heldout.jsonl"


if __name__ == "__main__":
    main()
