"""The output guard of this checkout against another commit's, interleaved in one process (issue 27).

Why interleaved: this machine's speed drifts by a third from one minute to the next (the same code's output guard
measured 4.5 and 7.8 ms a mean answer in runs minutes apart), more than the change under test; two runs one after
the other cannot tell the versions apart. Here both versions are loaded side by side (each its own import of the
packages, its own embedder, guards and caches) and each answer is checked by one and then the other, the order
alternating, so a slow minute slows both. An A/A run (ca810bc on both sides, by a probe script not kept) gave
means 2% apart.

Method: this checkout's extractive pipeline answers Disfl-QA questions 0-299 over the Disfl-QA passages with the
guards on (answer cache off), and what its output guard was fed is recorded: the passages shown, the question and
the streamed deltas. Each pass then replays every answer through each version's ``SentenceGuard`` (the streaming
output guard a request runs), their groundedness caches emptied first, so each pass meets the passages cold as a
server meets new questions over a corpus larger than its caches. The first pass warms what lives as long as the
process (the word caches, the embedder's) and is not counted: a running server has them warm too, and they are
part of what is measured (a word is read once per process). Reported per version: an answer's check, mean, p50
and p95 in ms; and how many answers' verdicts differ (text, actions, findings, and every sentence's support and
signals, floats compared to 10 decimals).

Run: ``.venv/bin/python bench/output_guard_ab.py --baseline COMMIT [--passes 4] [--out FILE]`` (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import DISFL_QA, emit, percentile  # noqa: E402
from safety.guards import GuardAction  # noqa: E402

PACKAGES = ("app", "bench", "evals", "prompts", "retrieval", "safety", "serving")
QUESTIONS = 300


@dataclass(frozen=True)
class Fed:
    """What one answer's output guard was given."""

    contexts: list[str]
    stop_on: tuple[GuardAction, ...]
    generator: str
    question: str
    deltas: list[str]


@dataclass
class Version:
    """One checkout's output guard, loaded beside the other's."""

    name: str
    empty_caches: Callable[[], None]
    check: Callable[[Fed], tuple[float, str]]  # (ms, the verdict as compared)


def record() -> list[Fed]:
    """This checkout's extractive answers, as their output guard was fed them."""
    import serving.answering.output_stage as output_stage
    import serving.answering.streaming_guard as streaming
    from app.container import build_pipeline, build_services
    from app.settings import load_settings
    from bench.guards import load_questions
    from retrieval.documents import Document, Section
    from retrieval.index import Scope
    from serving.contracts.answer import AnswerRequest

    fed: list[Fed] = []

    class Recording(streaming.SentenceGuard):
        def __init__(self, guard: Any, contexts: list[str], stop_on: Any = (), generator: str = "",
                     question: str = "") -> None:  # fmt: skip
            super().__init__(guard, contexts, stop_on, generator, question)
            self.fed = Fed(list(contexts), tuple(stop_on), generator, question, [])
            fed.append(self.fed)

        def feed(self, delta: str) -> list[str]:
            self.fed.deltas.append(delta)
            return super().feed(delta)

    settings = load_settings()
    answer_cache = settings.answer_cache.model_copy(update={"size": 0})
    services = build_services(settings.model_copy(update={"generator": "extractive", "answer_cache": answer_cache}))
    scope = Scope("bench", "default")
    rows = [json.loads(line) for line in DISFL_QA.passages.read_text().splitlines()]
    services.ingestor.ingest_documents([Document(r["id"], (Section(r["text"]),)) for r in rows], scope)
    pipeline = build_pipeline(services)
    output_stage.SentenceGuard = Recording  # type: ignore[attr-defined]  # (it is what output_stage imported)
    try:
        for question in load_questions(0, QUESTIONS):
            pipeline.answer(AnswerRequest(question=question["question"], scope=scope))
    finally:
        output_stage.SentenceGuard = streaming.SentenceGuard  # type: ignore[attr-defined]
        services.close()
    if not fed:
        raise SystemExit("no answer reached the output guard: is it on?")
    return fed


def load(name: str, root: Path) -> Version:
    """``root``'s packages imported afresh (the other version's stay referenced by its objects)."""
    for module in [m for m in sys.modules if m.split(".")[0] in PACKAGES and m != "bench"]:
        del sys.modules[module]
    sys.path.insert(0, str(root))
    try:
        import safety.groundedness as groundedness
        import serving.answering.streaming_guard as streaming
        from app.parts import build_cached_embedder, build_guards
        from app.settings import load_settings
        from retrieval.lru import Lru

        if not Path(groundedness.__file__ or "").is_relative_to(root):  # never the same code on both sides
            raise SystemExit(f"{name}: safety.groundedness came from {groundedness.__file__}, not {root}")
        settings = load_settings()
        guards = build_guards(settings, build_cached_embedder(settings))
        assert guards is not None and guards.output is not None
        split = streaming.SplitGuard.of(guards.output)
    finally:
        sys.path.remove(str(root))
    scorer = split.backend

    if not (hasattr(scorer, "_passage_sets") and hasattr(scorer, "_readings")):
        raise SystemExit(f"{name}: the groundedness scorer's caches are not where this script empties them")

    def empty_caches() -> None:  # the scorer's private caches: no API empties them, and serving never needs to
        scorer._passage_sets = Lru(groundedness._PASSAGE_SET_CACHE)  # type: ignore[union-attr]
        scorer._readings = Lru(groundedness._PASSAGE_CACHE)  # type: ignore[union-attr]

    def check(fed: Fed) -> tuple[float, str]:
        started = time.perf_counter()
        guard = streaming.SentenceGuard(split, fed.contexts, fed.stop_on, fed.generator, fed.question)
        for delta in fed.deltas:
            guard.feed(delta)
        guard.finish()
        elapsed = (time.perf_counter() - started) * 1000
        verdict = guard.verdict
        assert verdict is not None
        sentences = verdict.groundedness.sentences if verdict.groundedness is not None else []
        seen = repr((guard.text, verdict.model_dump(exclude={"latency_ms"}), sentences))
        return elapsed, re.sub(r"\d+\.\d{11,}", lambda m: f"{float(m.group()):.10f}", seen)

    return Version(name, empty_caches, check)


def compare(fed: list[Fed], versions: list[Version], passes: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {v.name: [] for v in versions}
    differing = set()
    for number in range(passes + 1):
        for version in versions:
            version.empty_caches()
        for i, answer in enumerate(fed):
            order = versions if (i + number) % 2 else versions[::-1]
            seen = {}
            for version in order:
                elapsed, seen[version.name] = version.check(answer)
                if number:
                    times[version.name].append(elapsed)
            if len(set(seen.values())) > 1:
                differing.add(i)
    figures: dict[str, Any] = {
        name: {"mean": round(statistics.mean(t), 3), "p50": round(percentile(t, 50), 3),
               "p95": round(percentile(t, 95), 3)}
        for name, t in times.items()
    }  # fmt: skip
    return {"answers": len(fed), "passes": passes, "ms_an_answer": figures, "verdicts_differing": len(differing)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, metavar="COMMIT")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from app.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="ragops-bench-guard-ab-") as tmp:
        # Both versions and the recording run on a data dir of their own (the index, the embedding cache).
        models = load_settings().model_cache_dir.resolve()
        os.environ.update(RAGOPS_MODELS_DIR=str(models), RAGOPS_DATA_DIR=f"{tmp}/data")
        fed = record()
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        try:
            versions = [load("this_checkout", ROOT), load(f"baseline_{args.baseline}", tree)]
            results = compare(fed, versions, args.passes)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                           timeout=60)  # fmt: skip
    results["method"] = __doc__
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
