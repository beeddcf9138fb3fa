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

Detection and false positives are reported per validator (patterns, similarity) and for the whole input guard,
on the held-out attacks as they are and obfuscated three ways (``obfuscated_held_out``): an invisible character
inside every word (zero-width space and joiners, word joiner, BOM, soft hyphen), half of the letters that have one
replaced by a Cyrillic or Greek look-alike, and half of the longer words split by a space or a newline (a third
of the spaces becoming newlines); each obfuscation is also applied to the benign questions (false positives);
latency is the input guard on benign questions, the output guard on one-sentence answers and on SmolLM2's own
answers (the ``qa`` baseline) whose passages are already embedded (as in serving, where retrieval or context
compression embedded them), and the time guards add to an extractive ``/v1/chat`` answer (paired, guards on
minus off).

Run: ``.venv/bin/python bench/guards.py [--calibrate] [--detection-only] [--obfuscated-benign N] [--out FILE]``;
``--calibrate`` prints the settings to put in ``guardrails/injection.yaml`` and ``RAGOPS_GROUNDEDNESS_THRESHOLD``
defaults; ``--detection-only`` skips latency and groundedness (about 5 minutes instead of 15 on two cores);
``--obfuscated-benign`` sets how many benign questions are obfuscated (default 2000, all the held-out ones).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
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


# Obfuscations of known attacks: how they are written to slip past a filter that reads characters, not text.
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")
# Cyrillic and Greek letters that look like Latin ones (written out here, independently of the detector's table).
HOMOGLYPHS = {
    "a": "аα", "c": "с", "e": "е", "i": "іι", "j": "ј", "o": "оο", "p": "рρ", "s": "ѕ", "x": "х", "y": "у",
    "A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ", "K": "КΚ", "M": "МΜ", "N": "Ν", "O": "ОΟ",
    "P": "РΡ", "T": "ТΤ", "X": "ХΧ", "Y": "ΥҮ", "Z": "Ζ",
}  # fmt: skip


def zero_width(text: str, rng: random.Random) -> str:
    """An invisible character inside every word of two letters or more."""
    return re.sub(r"\w{2,}", lambda m: _insert(m.group(), rng.choice(ZERO_WIDTH), rng), text)


def homoglyph(text: str, rng: random.Random) -> str:
    """Half of the letters that have a Cyrillic or Greek look-alike replaced by one."""
    return "".join(rng.choice(HOMOGLYPHS[c]) if c in HOMOGLYPHS and rng.random() < 0.5 else c for c in text)


def split_words(text: str, rng: random.Random) -> str:
    """Half of the words of four letters or more split by a space or a newline; a third of the spaces between
    words become newlines."""

    def split(match: re.Match[str]) -> str:
        word = match.group()
        return _insert(word, rng.choice(" \n"), rng) if rng.random() < 0.5 else word

    text = re.sub(r"[^\W\d_]{4,}", split, text)
    return re.sub(r"(?<=\S) (?=\S)", lambda _: "\n" if rng.random() < 1 / 3 else " ", text)


def _insert(word: str, inserted: str, rng: random.Random) -> str:
    at = rng.randrange(1, len(word))
    return word[:at] + inserted + word[at:]


OBFUSCATIONS = {"zero_width": zero_width, "homoglyph": homoglyph, "split_words": split_words}


def share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def calibrate_threshold(attack_sims: list[float], benign_sims: list[float]) -> float:
    """Halfway between the lowest threshold with at most 1% false positives on the calibration questions and the
    weakest calibration attack it catches: the same attacks are caught, with a margin on both sides (a text's
    cosine moves by about 0.01 with the embedding's int8 rounding)."""
    benign = sorted(benign_sims)
    lowest = benign[int(0.99 * len(benign))] + 0.005  # <= 1% false positives
    caught = [s for s in attack_sims if s >= lowest]
    return round((lowest + min(caught)) / 2, 3) if caught else round(lowest, 3)


def detection(guards: Any, detector: Any, texts: list[str]) -> dict[str, Any]:
    """Per validator (patterns, similarity) and for the whole input guard."""
    pattern_hits = [detector.patterns.first_match(t) is not None for t in texts]
    similarity_hits = [detector.similarity(t)[0] >= detector.threshold for t in texts]
    verdicts = [guards.input.check(t) for t in texts]
    fired_by: dict[str, int] = {}
    for verdict in verdicts:
        for fired in verdict.fired:
            fired_by[fired.validator] = fired_by.get(fired.validator, 0) + 1
    return {
        "attacks": len(texts),
        "patterns": share(pattern_hits),
        "similarity": share(similarity_hits),
        "injection_validator": share([p or s for p, s in zip(pattern_hits, similarity_hits, strict=True)]),
        "input_guard_blocked": share([not v.passed for v in verdicts]),
        "validators_fired": fired_by,
    }


def false_positives(guards: Any, texts: list[str]) -> dict[str, Any]:
    verdicts = [guards.input.check(t) for t in texts]
    return {
        "questions": len(texts),
        "injection_validator": share([any(f.validator == "prompt_injection" for f in v.fired) for v in verdicts]),
        "input_guard_blocked": share([not v.passed for v in verdicts]),
        "input_guard_redacted": share([v.action == "redact" for v in verdicts]),
    }


def obfuscated(guards: Any, detector: Any, attacks: list[str], benign: list[str], seed: int) -> dict[str, Any]:
    """Each obfuscation applied to the held-out attacks (detection) and to benign questions (false positives:
    the split-tolerant patterns must not find attacks in broken-up benign text)."""
    report: dict[str, Any] = {}
    for name, obfuscate in OBFUSCATIONS.items():
        rng = random.Random(seed)
        variants = [obfuscate(t, rng) for t in attacks]
        report[name] = {
            **detection(guards, detector, variants),
            "false_positives_benign": false_positives(guards, [obfuscate(t, rng) for t in benign]),
        }
    flagged = [report[name]["injection_validator"] * report[name]["attacks"] for name in OBFUSCATIONS]
    report["injection_validator_all"] = round(sum(flagged) / (len(attacks) * len(OBFUSCATIONS)), 4)
    return report


def detection_report(guards: Any, calibrate: bool, obfuscated_benign: int) -> dict[str, Any]:
    records = [json.loads(line) for line in REDTEAM.read_text().splitlines()][1:]
    attacks = {split: [r for r in records if r["split"] == split] for split in ("calibration", "test")}
    benign = {"calibration": load_questions(3000, 4000), "test": load_questions(0, 2000)}
    detector = next(s for s in guards.input.steps if s.name == "prompt_injection").validator.detector
    report: dict[str, Any] = {}
    if calibrate:
        attack_sims = [detector.similarity(r["text"])[0] for r in attacks["calibration"]]
        benign_sims = [detector.similarity(q["question"])[0] for q in benign["calibration"]]
        detector.threshold = calibrate_threshold(attack_sims, benign_sims)
        report["calibrated_similarity_threshold"] = detector.threshold
        report["calibration_detection"] = share([s >= detector.threshold for s in attack_sims])
        report["calibration_false_positives"] = share([s >= detector.threshold for s in benign_sims])
    attack_texts = [r["text"] for r in attacks["test"]]
    benign_texts = [q["question"] for q in benign["test"]]
    held_out = detection(guards, detector, attack_texts)
    verdicts = [guards.input.check(t) for t in attack_texts]
    held_out["input_guard_by_kind"] = {
        kind: share([not v.passed for v, r in zip(verdicts, attacks["test"], strict=True) if r["kind"] == kind])
        for kind in ("jailbreak", "injection")
    }
    report["detection_held_out"] = held_out
    report["false_positives_benign"] = false_positives(guards, benign_texts)
    report["obfuscated_held_out"] = obfuscated(guards, detector, attack_texts, benign_texts[:obfuscated_benign], 3)
    return report


def latency_report(settings: Settings, embedder: Any, guards: Any) -> dict[str, Any]:
    """Warm (the question's embedding and the passages' sentences are cached, as in serving)."""
    benign_texts = [q["question"] for q in load_questions(0, 500)]
    latencies_in = []
    for text in benign_texts:
        started = time.perf_counter()
        guards.input.check(text)
        latencies_in.append((time.perf_counter() - started) * 1000)
    supported = [c for c in groundedness_cases(0, 1000, seed=1) if c[2] == "supported"][:300]
    embedder.embed([s for _, contexts, _ in supported for c in contexts for s in split_sentences(c)])
    latencies_out = []
    for answer, contexts, _ in supported:
        started = time.perf_counter()
        guards.output.check(answer, {"contexts": contexts, "passages": len(contexts)})
        latencies_out.append((time.perf_counter() - started) * 1000)
    # SmolLM2's own answers (the qa baseline, with the passages it saw), as served by llama.cpp.
    rows = json.loads((ROOT / "evals" / "baselines" / "qa.json").read_text())["samples"]
    embedder.embed([s for row in rows for c in row["citations"] for s in split_sentences(c["text"])])
    llm = []
    for row in rows * 5:
        contexts = [c["text"] for c in row["citations"]]
        started = time.perf_counter()
        guards.output.check(row["answer"], {"contexts": contexts, "passages": len(contexts)})
        llm.append((time.perf_counter() - started) * 1000)
    return {
        "input_guard": _p50_p95(latencies_in),
        "output_guard": _p50_p95(latencies_out),
        "both_p95": round(percentile([a + b for a, b in zip(latencies_in, latencies_out, strict=False)], 95), 2),
        "output_guard_llm_answers": _p50_p95(llm),
        "both_p95_llm_answers": round(percentile([a + b for a, b in zip(latencies_in, llm, strict=False)], 95), 2),
        "added_to_request": added_latency(settings, embedder, load_questions(0, 300)),
    }


def _p50_p95(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 2), "p95": round(percentile(values, 95), 2)}


def groundedness_report(embedder: Any, guards: Any, calibrate: bool) -> dict[str, Any]:
    scorer = next(s for s in guards.output.steps if s.name == "groundedness").validator.scorer
    report: dict[str, Any] = {}
    if calibrate:
        weights, threshold = calibrate_groundedness(embedder.embed, groundedness_cases(3000, 4000, seed=2))
        report["calibrated_groundedness"] = {"weights": weights.__dict__, "threshold": threshold}
        scorer.weights, scorer.threshold = weights, threshold
    cases = groundedness_cases(0, 1000, seed=1)
    scores = groundedness_scores(scorer, cases)
    positives = [s for s, c in zip(scores, cases, strict=True) if c[2] == "supported"]

    def auc_against(kinds: tuple[str, ...]) -> float:
        return round(roc_auc(positives, [s for s, c in zip(scores, cases, strict=True) if c[2] in kinds]), 4)

    unsupported = ("swapped_fact", "off_topic", "invented_addition")
    report["groundedness_held_out"] = {
        "answers": len(cases),
        "roc_auc": auc_against(unsupported),
        "roc_auc_by_kind": {kind: auc_against((kind,)) for kind in unsupported},
        "threshold": scorer.threshold,
        "supported_above_threshold": share([s >= scorer.threshold for s in positives]),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--detection-only", action="store_true", help="skip latency and groundedness (minutes)")
    parser.add_argument("--obfuscated-benign", type=int, default=2000, help="benign questions obfuscated (FP)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), models_dir=ROOT / ".ragops" / "models")
        embedder = build_cached_embedder(settings)
        guards = build_guards(settings, embedder)
        assert guards is not None and guards.input is not None and guards.output is not None
        report = detection_report(guards, args.calibrate, args.obfuscated_benign)
        if not args.detection_only:
            report["latency_ms"] = latency_report(settings, embedder, guards)
            report.update(groundedness_report(embedder, guards, args.calibrate))
        embedder.store.close()
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
