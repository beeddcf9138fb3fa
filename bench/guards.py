"""Guard benchmark: injection/jailbreak detection, false positives, guard latency, groundedness ROC AUC.

Data (``bench/redteam.py`` builds the attacks from the pyrit package's datasets):
- attacks: jailbreak templates filled with AdvBench objectives and prompt-injection seeds; the detector knows
  50% of them (``guardrails/attacks.jsonl``), 20% calibrate its threshold, 30% are held out (reported here);
- benign: Disfl-QA questions (``evals/datasets``), 3000-3999 for calibration and 0-1999 held out;
- groundedness: for Disfl-QA questions (calibration 3000-3999, held out 0-999), three supported answers (the
  sentence of the gold passage that holds the gold answer, a clause of it around the answer, and the terse
  "The answer is GOLD") and three unsupported ones: the sentence with the answer swapped for another
  question's answer (an invented fact), a sentence from another passage (off topic), and the supported
  sentence followed by an invented one. Calibration picks the weights (grid) that
  maximise ROC AUC and the threshold that maximises balanced accuracy.

Detection and false positives are reported per validator (patterns, similarity) and for the whole input guard;
latency is the input guard on benign questions, the output guard on one-sentence answers and on SmolLM2's own
answers (the ``qa`` baseline) whose passages are already embedded (as in serving, where retrieval or context
compression embedded them), and the time guards add to an extractive ``/v1/chat`` answer (paired, guards on
minus off).

Run: ``.venv/bin/python bench/guards.py [--calibrate] [--out FILE]``; ``--calibrate`` prints the settings to put
in ``guardrails/injection.yaml`` and ``RAGOPS_GROUNDEDNESS_THRESHOLD`` defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.container import build_cached_embedder, build_guards  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.retrieval import CORPUS, QUESTIONS, percentile  # noqa: E402
from retrieval.chunking import split_sentences  # noqa: E402
from safety.groundedness import GroundednessScorer, GroundednessWeights  # noqa: E402

REDTEAM = ROOT / "bench" / "data" / "redteam.jsonl"


def roc_auc(positives: list[float], negatives: list[float]) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def load_questions(lo: int, hi: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    return [r for r in rows if lo <= int(r["id"][2:]) < hi]


def groundedness_cases(lo: int, hi: int, seed: int) -> list[tuple[str, list[str], str]]:
    """(answer, contexts, kind) with kind 'supported' or an unsupported kind."""
    passages = {json.loads(line)["id"]: json.loads(line)["text"] for line in CORPUS.read_text().splitlines()}
    rng = random.Random(seed)
    questions = load_questions(lo, hi)
    answers = [q["answers"][0] for q in questions]
    cases = []
    for q in questions:
        passage, gold = passages[q["passage_id"]], q["answers"][0]
        holding = [s for s in split_sentences(passage) if gold in s]
        if not holding or len(holding[0]) > 400:
            continue
        sentence = holding[0]
        contexts = [passage]
        other = rng.choice([a for a in answers if a.lower() not in passage.lower() and a != gold])
        foreign = rng.choice(split_sentences(passages[rng.choice(list(passages))]))
        words = sentence.split()
        at = next((i for i, w in enumerate(words) if gold.split()[0] in w), 0)
        window = " ".join(words[max(0, at - 6) : at + len(gold.split()) + 6])
        cases += [
            (f"{sentence} [1]", contexts, "supported"),  # verbatim
            (f"{window} [1].", contexts, "supported"),  # a clause around the answer
            (f"The answer is {gold} [1].", contexts, "supported"),  # terse
            (sentence.replace(gold, other, 1) + " [1]", contexts, "swapped_fact"),
            (foreign, contexts, "off_topic"),
            (f"{sentence} [1] {foreign}", contexts, "invented_addition"),
        ]
    return cases


def groundedness_scores(scorer: GroundednessScorer, cases: list[tuple[str, list[str], str]]) -> list[float]:
    return [scorer.score(answer, contexts).score or 0.0 for answer, contexts, _ in cases]


def calibrate_groundedness(embed: Any, cases: list[tuple[str, list[str], str]]) -> tuple[GroundednessWeights, float]:
    best: tuple[float, GroundednessWeights] | None = None
    for dense, lexical in itertools.product([0.2, 0.35, 0.5, 0.65, 0.8], [0.0, 0.1, 0.2, 0.3, 0.4]):
        if dense + lexical > 1:
            continue
        weights = GroundednessWeights(dense, lexical, round(1 - dense - lexical, 2))
        scores = groundedness_scores(GroundednessScorer(embed, 0.5, weights), cases)
        pos = [s for s, c in zip(scores, cases, strict=True) if c[2] == "supported"]
        neg = [s for s, c in zip(scores, cases, strict=True) if c[2] != "supported"]
        auc = roc_auc(pos, neg)
        if best is None or auc > best[0]:
            best = (auc, weights)
    assert best is not None
    weights = best[1]
    scores = groundedness_scores(GroundednessScorer(embed, 0.5, weights), cases)
    labels = [c[2] == "supported" for c in cases]

    def balanced_accuracy(t: float) -> float:
        tpr = sum(s >= t for s, y in zip(scores, labels, strict=True) if y) / sum(labels)
        tnr = sum(s < t for s, y in zip(scores, labels, strict=True) if not y) / (len(labels) - sum(labels))
        return (tpr + tnr) / 2

    threshold = max((t / 100 for t in range(20, 95)), key=balanced_accuracy)
    return weights, threshold


def added_latency(settings: Settings, embedder: Any, questions: list[dict[str, Any]]) -> dict[str, float]:
    """Paired per question: the extractive pipeline's total with guards minus without (answer cache off;
    embeddings warmed first, so both runs see the same caches, as a running server does)."""
    from app.container import build_pipeline, build_services
    from retrieval.index import Scope
    from serving.pipeline import AnswerRequest

    services = build_services(settings.model_copy(update={"generator": "extractive", "answer_cache_size": 0}))
    scope = Scope("bench", "default")
    records = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    from retrieval.documents import Document, Section

    services.ingestor.ingest_documents([Document(r["id"], (Section(r["text"]),)) for r in records], scope)
    guarded = build_pipeline(services)
    services.settings = services.settings.model_copy(update={"guards": False})
    plain = build_pipeline(services)
    for q in questions:
        guarded.answer(AnswerRequest(q["question"], scope))
    added = []
    for q in questions:
        with_guards = guarded.answer(AnswerRequest(q["question"], scope)).timings_ms["total"]
        without = plain.answer(AnswerRequest(q["question"], scope)).timings_ms["total"]
        added.append(with_guards - without)
    services.close()
    return {"p50": round(percentile(added, 50), 2), "p95": round(percentile(added, 95), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), models_dir=ROOT / ".ragops" / "models")
        embedder = build_cached_embedder(settings)
        guards = build_guards(settings, embedder)
        assert guards is not None and guards.input is not None and guards.output is not None
        records = [json.loads(line) for line in REDTEAM.read_text().splitlines()][1:]
        attacks = {split: [r for r in records if r["split"] == split] for split in ("calibration", "test")}
        benign = {"calibration": load_questions(3000, 4000), "test": load_questions(0, 2000)}
        step = next(s for s in guards.input.steps if s.name == "prompt_injection")
        detector = step.validator.detector

        def similarities(texts: list[str]) -> list[float]:
            return [detector.similarity(text)[0] for text in texts]

        report: dict[str, Any] = {}
        if args.calibrate:
            attack_sims = similarities([r["text"] for r in attacks["calibration"]])
            benign_sims = sorted(similarities([q["question"] for q in benign["calibration"]]))
            threshold = round(benign_sims[int(0.99 * len(benign_sims))] + 0.005, 3)  # <= 1% false positives
            report["calibrated_similarity_threshold"] = threshold
            report["calibration_detection"] = round(sum(s >= threshold for s in attack_sims) / len(attack_sims), 3)
            detector.threshold = threshold
        # Held out: per validator and for the whole input guard.
        attack_texts = [r["text"] for r in attacks["test"]]
        benign_texts = [q["question"] for q in benign["test"]]
        pattern_hits = [detector.patterns.first_match(t) is not None for t in attack_texts]
        similarity_hits = [s >= detector.threshold for s in similarities(attack_texts)]
        verdicts = [guards.input.check(t) for t in attack_texts]
        benign_verdicts = [guards.input.check(t) for t in benign_texts]
        injection_fp = [any(f.validator == "prompt_injection" for f in v.fired) for v in benign_verdicts]

        def share(flags: list[bool]) -> float:
            return round(sum(flags) / len(flags), 4)

        by_kind = {
            kind: share([not v.passed for v, r in zip(verdicts, attacks["test"], strict=True) if r["kind"] == kind])
            for kind in ("jailbreak", "injection")
        }
        fired_by: dict[str, int] = {}
        for verdict in verdicts:
            for fired in verdict.fired:
                fired_by[fired.validator] = fired_by.get(fired.validator, 0) + 1
        report["detection_held_out"] = {
            "attacks": len(attack_texts),
            "patterns": share(pattern_hits),
            "similarity": share(similarity_hits),
            "injection_validator": share([p or s for p, s in zip(pattern_hits, similarity_hits, strict=True)]),
            "input_guard_blocked": share([not v.passed for v in verdicts]),
            "input_guard_by_kind": by_kind,
            "validators_fired": fired_by,
        }
        report["false_positives_benign"] = {
            "questions": len(benign_texts),
            "injection_validator": share(injection_fp),
            "input_guard_blocked": share([not v.passed for v in benign_verdicts]),
            "input_guard_redacted": share([v.action == "redact" for v in benign_verdicts]),
        }
        # Latency: warm (the question's embedding and the passages' sentences are cached, as in serving).
        latencies_in = []
        for text in benign_texts[:500]:
            started = time.perf_counter()
            guards.input.check(text)
            latencies_in.append((time.perf_counter() - started) * 1000)
        cases = groundedness_cases(0, 1000, seed=1)
        supported = [c for c in cases if c[2] == "supported"][:300]
        embedder.embed([s for _, contexts, _ in supported for c in contexts for s in split_sentences(c)])
        latencies_out = []
        for answer, contexts, _ in supported:
            started = time.perf_counter()
            guards.output.check(answer, {"contexts": contexts, "passages": len(contexts)})
            latencies_out.append((time.perf_counter() - started) * 1000)
        report["latency_ms"] = {
            "input_guard": {
                "p50": round(percentile(latencies_in, 50), 2),
                "p95": round(percentile(latencies_in, 95), 2),
            },
            "output_guard": {
                "p50": round(percentile(latencies_out, 50), 2),
                "p95": round(percentile(latencies_out, 95), 2),
            },
            "both_p95": round(percentile([a + b for a, b in zip(latencies_in, latencies_out, strict=False)], 95), 2),
        }
        # SmolLM2's own answers (the qa baseline, with the passages it saw), as served by llama.cpp.
        rows = json.loads((ROOT / "evals" / "baselines" / "qa.json").read_text())["samples"]
        embedder.embed([s for row in rows for c in row["citations"] for s in split_sentences(c["text"])])
        llm = []
        for row in rows * 5:
            contexts = [c["text"] for c in row["citations"]]
            started = time.perf_counter()
            guards.output.check(row["answer"], {"contexts": contexts, "passages": len(contexts)})
            llm.append((time.perf_counter() - started) * 1000)
        report["latency_ms"]["output_guard_llm_answers"] = {
            "p50": round(percentile(llm, 50), 2),
            "p95": round(percentile(llm, 95), 2),
        }
        report["latency_ms"]["both_p95_llm_answers"] = round(
            percentile([a + b for a, b in zip(latencies_in, llm, strict=False)], 95), 2
        )
        report["latency_ms"]["added_to_request"] = added_latency(settings, embedder, benign["test"][:300])
        # Groundedness.
        scorer = next(s for s in guards.output.steps if s.name == "groundedness").validator.scorer
        if args.calibrate:
            weights, threshold = calibrate_groundedness(embedder.embed, groundedness_cases(3000, 4000, seed=2))
            report["calibrated_groundedness"] = {"weights": weights.__dict__, "threshold": threshold}
            scorer.weights, scorer.threshold = weights, threshold
        scores = groundedness_scores(scorer, cases)
        positives = [s for s, c in zip(scores, cases, strict=True) if c[2] == "supported"]
        report["groundedness_held_out"] = {
            "answers": len(cases),
            "roc_auc": round(
                roc_auc(positives, [s for s, c in zip(scores, cases, strict=True) if c[2] != "supported"]), 4
            ),
            "roc_auc_by_kind": {
                kind: round(roc_auc(positives, [s for s, c in zip(scores, cases, strict=True) if c[2] == kind]), 4)
                for kind in ("swapped_fact", "off_topic", "invented_addition")
            },
            "threshold": scorer.threshold,
            "supported_above_threshold": share([s >= scorer.threshold for s in positives]),
        }
        embedder.store.close()
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
