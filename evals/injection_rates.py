"""How well the passage screen (``safety.injection.PatternDetector``) catches instructions planted in documents,
and how often it flags benign passages: the measurement ``bench/injection.py`` reports in full and the compliance
report (``ragops compliance report``) runs on the held-out split.

Data: ``evals/datasets/injection`` (hand-written; its README says how the splits were made). A document counts
as flagged when ``flag_sentences`` names at least one of its sentences (what ingestion and the query-time screen
run); it names the attack when a flagged sentence overlaps the injected text. A benign passage is a false positive
when any of its sentences is flagged.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from retrieval.chunking import split_sentences
from safety.injection import PatternDetector

EVALS_DIR = Path(__file__).resolve().parent
INJECTION_DATA = EVALS_DIR / "datasets" / "injection"
# SQuADShifts (new_wiki, nyt, amazon): in a checkout beside the packages, not in an installed wheel (9 MB).
SQUAD_SHIFTS_DIR = EVALS_DIR.parent / "data" / "squad_shifts"
SQUAD_SHIFTS = ("new_wiki", "nyt", "amazon")
# Passages of evals/corpora nobody tuned the patterns on (new_wiki paragraphs; qa_corpus is sample passages).
HELD_OUT_EVAL_CORPORA = ("near_miss_corpus", "counterfactual_corpus")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def names_the_attack(text: str, attack: str, flagged: set[int]) -> bool:
    """A flagged sentence overlaps the injected text (found by its place in the document)."""
    start = text.index(attack)
    end, position = start + len(attack), 0
    for index, sentence in enumerate(split_sentences(text)):
        at = text.index(sentence, position)
        position = at + len(sentence)
        if index in flagged and at < end and position > start:
            return True
    return False


class AttackDetection(BaseModel):
    """One split of planted attacks, as ``bench/injection.py`` reports it (the field order is its JSON's)."""

    documents: int
    flagged: float = Field(description="Share of the documents with a flagged sentence.")
    flagged_count: int
    names_the_injected_sentence: float
    by_family: dict[str, str] = Field(description="family -> flagged/documents")
    by_language: dict[str, str] = Field(description="language -> flagged/documents")


def attack_detection(detector: PatternDetector, split: str) -> AttackDetection:
    """The documents of ``doc_attacks_<split>.jsonl`` (``tune`` or ``heldout``) the detector flags."""
    records = load_jsonl(INJECTION_DATA / f"doc_attacks_{split}.jsonl")
    by_family: dict[str, list[bool]] = collections.defaultdict(list)
    by_language: dict[str, list[bool]] = collections.defaultdict(list)
    named = []
    for record in records:
        flags = {f.index for f in detector.flag_sentences(record["text"])}
        by_family[record["family"]].append(bool(flags))
        by_language[record["lang"]].append(bool(flags))
        named.append(names_the_attack(record["text"], record["attack"], flags))
    flagged = [f for family in by_family.values() for f in family]
    return AttackDetection(
        documents=len(records),
        flagged=share(flagged),
        flagged_count=sum(flagged),
        names_the_injected_sentence=share(named),
        by_family={k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_family.items())},
        by_language={k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_language.items())},
    )


def count_flagged(detector: PatternDetector, texts: Iterable[str]) -> int:
    """Passages with at least one flagged sentence."""
    return sum(bool(detector.flag_sentences(text)) for text in texts)


class BenignSet(BaseModel):
    name: str
    passages: int
    flagged: int


class FalsePositives(BaseModel):
    """Benign passages the detector flagged, per source and in all."""

    sets: list[BenignSet]

    @property
    def passages(self) -> int:
        return sum(s.passages for s in self.sets)

    @property
    def flagged(self) -> int:
        return sum(s.flagged for s in self.sets)

    @property
    def rate(self) -> float:
        return self.flagged / self.passages if self.passages else 0.0


def held_out_benign_sources() -> list[tuple[str, Path]]:
    """The benign passages nobody tuned the patterns on, that this install has: the held-out hard negatives,
    the new_wiki paragraphs of ``evals/corpora``, and SQuADShifts when the checkout has ``data/squad_shifts``."""
    sources = [("hard negatives (held out)", INJECTION_DATA / "benign_passages_heldout.jsonl")]
    sources += [(f"evals/{name}", EVALS_DIR / "corpora" / f"{name}.jsonl") for name in HELD_OUT_EVAL_CORPORA]
    sources += [(f"squad_shifts/{name}", SQUAD_SHIFTS_DIR / f"{name}_passages.jsonl") for name in SQUAD_SHIFTS]
    return [(name, path) for name, path in sources if path.is_file()]


def held_out_false_positives(detector: PatternDetector) -> FalsePositives:
    """``held_out_benign_sources`` through the detector, each passage once (by text) over all sources."""
    seen: set[str] = set()
    sets = []
    for name, path in held_out_benign_sources():
        texts = [text for text in dict.fromkeys(r["text"] for r in load_jsonl(path)) if text not in seen]
        seen.update(texts)
        sets.append(BenignSet(name=name, passages=len(texts), flagged=count_flagged(detector, texts)))
    return FalsePositives(sets=sets)
