"""Eval suites (YAML) and datasets (JSONL).

A suite names its dataset, the corpus to ingest and the collection to put it in, the prompt and generator to
answer with, and its metrics with thresholds (the least a mean may be) and tolerances (how much worse than
the baseline a change may be before the gate calls it a regression).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from evals.metrics import METRICS, Sample
from evals.ragas_metrics import JUDGE_METRICS, RAGAS_METRICS
from prompts.messages import ChatMessage

METRIC_NAMES = (*METRICS, *RAGAS_METRICS, *JUDGE_METRICS)

EXPECTED_BEHAVIOURS = ("answer", "abstain", "refuse")


class SuiteError(Exception):
    """A suite or dataset that cannot run: the gate's exit code 2, never a regression verdict."""


@dataclass(frozen=True)
class MetricSpec:
    threshold: float | None = None
    tolerance: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str
    path: Path
    dataset: Path
    corpus: tuple[Path, ...]
    collection: str
    prompt: str
    generator: str
    metrics: dict[str, MetricSpec]
    samples: int | None = None
    top_k: int = 4
    description: str = ""
    # Each corpus path in its own collection, ``<collection>-<path name>``, as users keep a handful of documents
    # apart; a sample's id then starts with its corpus' path name and a slash ("vantrel/founder").
    collection_per_corpus: bool = False

    def scope_collection(self, sample_id: str) -> str:
        """The collection a sample is asked in."""
        if not self.collection_per_corpus:
            return self.collection
        return f"{self.collection}-{sample_id.split('/', 1)[0]}"


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def load_suite(path: Path, root: Path | None = None) -> Suite:
    """Paths in the suite are relative to ``root`` (default: the project root, two levels above the file)."""
    if not path.is_file():
        raise SuiteError(f"suite not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping")
    known = {
        "name",
        "description",
        "dataset",
        "corpus",
        "collection",
        "prompt",
        "generator",
        "metrics",
        "samples",
        "top_k",
        "collection_per_corpus",
    }
    if set(data) - known:
        raise SuiteError(f"{path}: unknown key(s): {', '.join(sorted(set(data) - known))}")
    for key in ("name", "dataset", "corpus", "collection", "metrics"):
        if key not in data:
            raise SuiteError(f"{path}: missing '{key}'")
    base = root or path.resolve().parents[2]
    corpus = data["corpus"] if isinstance(data["corpus"], list) else [data["corpus"]]
    metrics: dict[str, MetricSpec] = {}
    if not isinstance(data["metrics"], dict) or not data["metrics"]:
        raise SuiteError(f"{path}: 'metrics' must map metric names to {{threshold, tolerance}}")
    for name, spec in data["metrics"].items():
        if name not in METRIC_NAMES:
            raise SuiteError(f"{path}: unknown metric {name!r} (known: {', '.join(sorted(METRIC_NAMES))})")
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"threshold", "tolerance"}:
            raise SuiteError(f"{path}: metric {name!r} takes threshold and tolerance")
        metrics[name] = MetricSpec(spec.get("threshold"), float(spec.get("tolerance", 0.0)))
    suite = Suite(
        name=str(data["name"]),
        path=path,
        dataset=_resolve(base, str(data["dataset"])),
        corpus=tuple(_resolve(base, str(c)) for c in corpus),
        collection=str(data["collection"]),
        prompt=str(data.get("prompt", "rag_answer@production")),
        generator=str(data.get("generator", "llamacpp")),
        metrics=metrics,
        samples=data.get("samples"),
        top_k=int(data.get("top_k", 4)),
        description=str(data.get("description", "")),
        collection_per_corpus=bool(data.get("collection_per_corpus", False)),
    )
    for corpus_path in (suite.dataset, *suite.corpus):
        if not corpus_path.exists():
            raise SuiteError(f"{path}: {corpus_path} does not exist")
    return suite


def load_dataset(path: Path, limit: int | None = None) -> list[Sample]:
    samples: list[Sample] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            expected = record.get("expected", "answer")
            if expected not in EXPECTED_BEHAVIOURS:
                raise ValueError(f"expected must be one of {', '.join(EXPECTED_BEHAVIOURS)}")
            samples.append(
                Sample(
                    id=str(record["id"]),
                    question=str(record["question"]),
                    answers=tuple(record.get("answers", ())),
                    reference_doc_ids=tuple(record.get("reference_doc_ids", ())),
                    expected=expected,
                    history=tuple(ChatMessage.model_validate(turn) for turn in record.get("history", ())),
                    turn=int(record.get("turn", 1)),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, ValidationError) as exc:
            raise SuiteError(f"{path}:{number}: bad sample: {exc}") from exc
        if limit is not None and len(samples) == limit:
            break
    if not samples:
        raise SuiteError(f"{path}: no samples")
    return samples


def dataset_hash(samples: list[Sample]) -> str:
    """The dataset's own content (reference contexts come from the corpus, which has its own hash)."""
    canonical = json.dumps(
        [[s.id, s.question, s.answers, s.reference_doc_ids, s.expected, *_conversation(s)] for s in samples],
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _conversation(sample: Sample) -> list[object]:
    """A multi-turn sample's history and turn (nothing for a single-turn one: their hashes stay as they were)."""
    if not sample.history:
        return []
    return [[turn.as_dict() for turn in sample.history], sample.turn]
