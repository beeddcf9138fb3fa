"""Rated answers as an eval suite (``ragops feedback export``): a user's complaint becomes a regression case.

Three files under the output root, laid out like the shipped suites so ``ragops eval run|gate`` takes them as
they are: ``evals/datasets/NAME.jsonl`` (one sample per rated answer: the question; the correction, when the
user gave one, as the expected answer; the answer given and the feedback kept beside, for the person reading
it), ``evals/corpora/NAME_corpus.jsonl`` (the passages the answers were shown, one document per document id)
and ``evals/suites/NAME.yaml``. Everything in them was redacted when it was kept.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evals.metrics import normalise
from evals.suite import Suite, load_dataset, load_suite
from serving.loop.feedback import FeedbackCase

SUITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
SUITE_NAME_RULE = "1-48 lower-case letters, digits, '_' or '-', starting with a letter or digit"

# What the gate checks on feedback cases: citations always apply; the answer metrics where a correction gave
# the expected answer; behaviour where the rating says what was expected (an abstention rated up).
FEEDBACK_METRICS: dict[str, dict[str, float]] = {
    "citation_format": {"tolerance": 0.05},
    "citation_accuracy": {"tolerance": 0.05},
    "contains_answer": {"tolerance": 0.05},
    "token_f1": {"tolerance": 0.03},
    "abstained_when_expected": {"tolerance": 0.05},
    "groundedness": {"tolerance": 0.05},
}


class ExportError(Exception):
    """A bad suite name, or files that would be overwritten: one line that says which."""


class NothingToExportError(ExportError):
    """No rated answer matches the filters."""


@dataclass(frozen=True)
class ExportedSuite:
    suite: Suite
    samples: int
    documents: int


def export_suite(
    cases: Sequence[FeedbackCase], name: str, root: Path, generator: str = "llamacpp", overwrite: bool = False
) -> ExportedSuite:
    """Write the suite of ``cases`` under ``root`` and load it back (so what is written is known to run)."""
    if not SUITE_NAME.fullmatch(name):
        raise ExportError(f"suite name must be {SUITE_NAME_RULE}: {name!r}")
    if not cases:
        raise NothingToExportError("no rated answers match: nothing to export")
    cases = one_case_per_answer(cases)
    paths = suite_paths(root, name)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{existing[0]} exists (pass --force to replace it)")
    dataset_path, corpus_path, suite_path = paths
    corpus = corpus_documents(cases)
    _write_lines(dataset_path, [dataset_sample(case) for case in cases])
    _write_lines(corpus_path, corpus)
    suite_path.parent.mkdir(parents=True, exist_ok=True)
    suite_path.write_text(suite_yaml(name, cases, generator), encoding="utf-8")
    suite = load_suite(suite_path, root)
    return ExportedSuite(suite, len(load_dataset(suite.dataset)), len(corpus))


def one_case_per_answer(cases: Sequence[FeedbackCase]) -> list[FeedbackCase]:
    """One sample per answer, however many readers rated it: the latest rating that gave a correction (it says
    what the answer should be), else the latest rating; in the order the answers were given."""
    chosen: dict[str, FeedbackCase] = {}
    for case in sorted(cases, key=lambda c: (c.feedback.correction is not None, c.feedback.ts)):
        chosen[case.answer.id] = case
    return sorted(chosen.values(), key=lambda c: (c.answer.ts, c.answer.id))


def suite_paths(root: Path, name: str) -> tuple[Path, Path, Path]:
    """The dataset, corpus and suite files of suite ``name`` under ``root``, where the shipped ones live."""
    evals = root / "evals"
    dataset, corpus = evals / "datasets" / f"{name}.jsonl", evals / "corpora" / f"{name}_corpus.jsonl"
    return dataset, corpus, evals / "suites" / f"{name}.yaml"


def dataset_sample(case: FeedbackCase) -> dict[str, Any]:
    """One sample in the dataset format ``evals.suite.load_dataset`` reads, with the feedback beside it."""
    answer, feedback = case.answer, case.feedback
    return {
        "id": answer.id,
        "question": answer.question,
        "answers": [feedback.correction] if feedback.correction else [],
        "reference_doc_ids": reference_doc_ids(case),
        "expected": expected_behaviour(case),
        "metadata": origin(case),
        "feedback": {
            "rating": feedback.rating, "comment": feedback.comment, "answer_given": answer.answer,
            "outcome": answer.outcome, "prompt": f"{answer.prompt_name}@{answer.prompt_version}",
            "generator": answer.generator, "answered_at": answer.ts.isoformat(), "rated_at": feedback.ts.isoformat(),
        },
    }  # fmt: skip


def expected_behaviour(case: FeedbackCase) -> str:
    """An abstention or refusal rated up is what should happen again; anything else should be answered."""
    if case.feedback.rating == "up" and case.answer.outcome in ("abstained", "refused"):
        return "abstain" if case.answer.outcome == "abstained" else "refuse"
    return "answer"


def reference_doc_ids(case: FeedbackCase) -> list[str]:
    """The passages that hold the answer, as far as the feedback tells: those holding the correction, else (an
    answer rated up) those it cited; a thumbs-down without a correction names none."""
    passages = case.answer.passages
    if case.feedback.correction:
        expected = normalise(case.feedback.correction)
        held = [p.doc_id for p in passages if expected and expected in normalise(p.text)]
    elif case.feedback.rating == "up":
        held = [p.doc_id for p in passages if p.cited]
    else:
        held = []
    return list(dict.fromkeys(held))


def corpus_documents(cases: Sequence[FeedbackCase]) -> list[dict[str, Any]]:
    """The passages shown, deduplicated, one document per document id (its distinct passages in the order first
    seen), so the eval retrieves among what the user's answer was shown and cites the same document ids."""
    texts: dict[str, list[str]] = {}
    titles: dict[str, str | None] = {}
    origins: dict[str, dict[str, str]] = {}
    for case in cases:
        for passage in case.answer.passages:
            seen = texts.setdefault(passage.doc_id, [])
            if passage.text not in seen:
                seen.append(passage.text)
            titles.setdefault(passage.doc_id, passage.title)
            origins.setdefault(passage.doc_id, origin(case))
    return [
        {"id": doc_id, "text": "\n\n".join(parts), **({"title": titles[doc_id]} if titles[doc_id] else {}),
         "metadata": origins[doc_id]}
        for doc_id, parts in texts.items()
    ]  # fmt: skip


def origin(case: FeedbackCase) -> dict[str, str]:
    """Where a line came from (as ``metadata``): erasure finds a tenant's lines by it, and leaves lines without it
    (suites written by hand) alone."""
    return {"tenant": case.answer.tenant, "collection": case.answer.collection}


def suite_yaml(name: str, cases: Sequence[FeedbackCase], generator: str) -> str:
    prompt = Counter(case.answer.prompt_name for case in cases).most_common(1)[0][0]
    ratings = Counter(case.feedback.rating for case in cases)
    suite = {
        "name": name,
        "description": f"Exported user feedback: {len(cases)} rated answers "
        f"({ratings['down']} thumbs-down, {ratings['up']} thumbs-up), from `ragops feedback export`.",
        "dataset": f"evals/datasets/{name}.jsonl",
        "corpus": f"evals/corpora/{name}_corpus.jsonl",
        "collection": f"feedback-{name}",
        "prompt": f"{prompt}@production",
        "generator": generator,
        "metrics": FEEDBACK_METRICS,
    }
    return yaml.safe_dump(suite, sort_keys=False, allow_unicode=True)


def _write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
