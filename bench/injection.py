"""Injection benchmark: instructions planted in documents (tuning and held-out splits), false positives on the
shipped corpora's passages, and the input guard's similarity rule on benign questions that share topic words with
known attacks.

Data (``evals/datasets/injection``, hand-written; see its README):
- ``doc_attacks_tune.jsonl`` / ``doc_attacks_heldout.jsonl``: a benign sentence or two with an injected instruction
  (paraphrases of "disregard previous guidance", "system message" framing, fake role and passage delimiters,
  French, German, Spanish, Italian, Portuguese, leetspeak and digits, spaced and hyphenated letters, words
  addressed to the assistant). The patterns (``guardrails/injection.yaml``) were written on the tuning split; the
  held-out split was written before them and is reported, not tuned on.
- ``benign_passages_*.jsonl``: hard negatives (benign sentences with the attacks' words: "disregard my previous
  email", "SYSTEM REQUIREMENTS:", "From now on, the library opens at 9", French/German/Spanish look-alikes).
- ``benign_questions_*.jsonl``: questions that share topic words with the attack set ("what did the safety audit
  find?", "What does the privacy policy say?").
- The shipped corpora: Disfl-QA's passages (``evals/corpora/disfl_qa_passages.jsonl``, what ragops is tuned on)
  are the tuning benign set; SQuADShifts new_wiki, nyt and amazon (``data/squad_shifts``) and the eval suites'
  corpora in ``evals/corpora`` (passages not in the sample) are the held-out benign set.
- ``bench/data/redteam.jsonl``: the input guard's calibration (130) and held-out (207) attacks, and Disfl-QA
  questions 0-499 (``--questions``), held out as ``bench/guards.py`` splits them.

Measured: a document is flagged when ``PatternDetector.flag_sentences`` names at least one of its sentences (what
ingestion and the query-time screen run); "names the injected sentence" when a flagged sentence overlaps the
injected text. A benign passage is a false positive when any of its sentences is flagged. Questions go through
the input guard as served (patterns, then similarity to ``guardrails/attacks.jsonl`` corroborated by a
``similarity_cue``); "similarity alone" is what the guard refused before the cues (cosine >= the threshold).
Screening cost: ``PatternDetector.scan`` (``flag_sentences`` without its cache) per passage of the sample corpus,
best of three.

Run: ``.venv/bin/python bench/injection.py [--documents-only] [--out FILE]`` (about a minute on two cores; the
question half embeds some 3,300 texts through a temporary embedding cache).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import DISFL_QA, SQUAD_SHIFTS, emit  # noqa: E402
from evals.injection_rates import INJECTION_DATA as DATA  # noqa: E402
from evals.injection_rates import attack_detection, count_flagged, share  # noqa: E402
from evals.injection_rates import load_jsonl as load  # noqa: E402
from safety.guards import POLICIES_DIR, load_injection_settings  # noqa: E402
from safety.injection import PatternDetector  # noqa: E402

REDTEAM = ROOT / "bench" / "data" / "redteam.jsonl"
SPLITS = ("tune", "heldout")


def document_attacks(detector: PatternDetector, split: str) -> dict[str, Any]:
    """The planted attacks of one split (``evals.injection_rates``, which the compliance report runs too)."""
    return attack_detection(detector, split).model_dump()


def benign_passages(detector: PatternDetector) -> dict[str, Any]:
    """The hard negatives of each split, and the shipped corpora (passages deduplicated by text)."""
    report: dict[str, Any] = {}
    for split in SPLITS:
        rows = load(DATA / f"benign_passages_{split}.jsonl")
        report[f"hard_negatives_{split}"] = {
            "passages": len(rows),
            "flagged": count_flagged(detector, (r["text"] for r in rows)),
        }
    seen: set[str] = set()
    corpora: dict[str, list[str]] = {}
    sources = [("disfl_qa (tuning)", DISFL_QA.passages)]
    sources += [(f"{c.name} (held out)", c.passages) for c in SQUAD_SHIFTS]
    eval_corpora = sorted(p for p in (ROOT / "evals" / "corpora").glob("*.jsonl") if p != DISFL_QA.passages)
    sources += [(f"evals/{p.stem} (held out)", p) for p in eval_corpora]
    for name, path in sources:
        texts = [r["text"] for r in load(path) if r["text"] not in seen]
        seen.update(texts)
        corpora[name] = texts
    per_corpus = {}
    held_out = [0, 0]
    for name, texts in corpora.items():
        flagged = count_flagged(detector, texts)
        per_corpus[name] = {
            "passages": len(texts),
            "flagged": flagged,
            "rate": share([True] * flagged + [False] * (len(texts) - flagged)),
        }
        if "held out" in name:
            held_out[0] += flagged
            held_out[1] += len(texts)
    total_flagged = sum(c["flagged"] for c in per_corpus.values())
    total = sum(c["passages"] for c in per_corpus.values())
    report["corpora"] = per_corpus
    report["corpora_all"] = {"passages": total, "flagged": total_flagged, "rate": round(total_flagged / total, 5)}
    report["corpora_held_out"] = {
        "passages": held_out[1],
        "flagged": held_out[0],
        "rate": round(held_out[0] / held_out[1], 5),
    }
    return report


def screening_cost(detector: PatternDetector) -> dict[str, float]:
    """``PatternDetector.scan`` (``flag_sentences`` without its cache) over the sample corpus, best of three."""
    texts = [r["text"] for r in load(DISFL_QA.passages)]
    best = []
    for _ in range(3):
        started = time.perf_counter()
        for text in texts:
            detector.scan(text)
        best.append(time.perf_counter() - started)
    return {"passages": len(texts), "ms_per_passage": round(min(best) / len(texts) * 1000, 3)}


def question_report(questions: int) -> dict[str, Any]:
    """The input guard on attacks and benign questions, with what similarity alone would have refused."""
    from app.parts import build_cached_embedder, build_guards
    from app.settings import load_settings

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), models_dir=ROOT / ".ragops" / "models")
        guards = build_guards(settings, build_cached_embedder(settings))
        assert guards is not None and guards.input is not None
        detector = next(s for s in guards.input.steps if s.name == "prompt_injection").validator.detector
        redteam = load(REDTEAM)[1:]
        disfl = {int(r["id"][2:]): r["question"] for r in load(DISFL_QA.questions)}
        sets = {
            "attacks_calibration": [r["text"] for r in redteam if r["split"] == "calibration"],
            "attacks_held_out": [r["text"] for r in redteam if r["split"] == "test"],
            "topic_questions_tune": [r["question"] for r in load(DATA / "benign_questions_tune.jsonl")],
            "topic_questions_heldout": [r["question"] for r in load(DATA / "benign_questions_heldout.jsonl")],
            "disfl_qa_held_out": [disfl[i] for i in range(questions)],
        }
        for name, texts in sets.items():
            verdicts = [detector.check(t) for t in texts]
            report[name] = {
                "texts": len(texts),
                "refused": share([v.detected for v in verdicts]),
                "by_pattern": share([v.pattern is not None for v in verdicts]),
                "similarity_alone_would_refuse": share(
                    [v.pattern is not None or (v.similarity or 0) >= detector.threshold for v in verdicts]
                ),
                "similar_but_not_corroborated": sum(
                    1
                    for v in verdicts
                    if v.pattern is None and (v.similarity or 0) >= detector.threshold and not v.detected
                ),
            }
        report["safety_audit_questions"] = {
            q: guards.input.check(q).action
            for q in ("what did the safety audit find?", "when was the last safety audit", "who runs the safety audits")
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents-only", action="store_true", help="skip the questions (no embedding model)")
    parser.add_argument("--questions", type=int, default=500, help="Disfl-QA questions 0..N-1 (held out)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    detector = PatternDetector(load_injection_settings(POLICIES_DIR).passage_patterns)
    figures: dict[str, Any] = {
        "documents_tune": document_attacks(detector, "tune"),
        "documents_held_out": document_attacks(detector, "heldout"),
        "benign_passages": benign_passages(detector),
        "screening_cost": screening_cost(detector),
    }
    if not args.documents_only:
        figures["documents_seconds"] = round(time.perf_counter() - started, 1)
        figures["questions"] = question_report(args.questions)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    emit(figures, args.out)


if __name__ == "__main__":
    main()
