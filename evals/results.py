"""The results of an eval run (``results.json``): one typed model that the runner writes and the report, the
gate and the LangSmith upload read. Baselines committed under ``evals/baselines/`` are such files."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from serving.contracts.answer import Outcome
from serving.contracts.generation import Fallback
from serving.loop.lineage import RunLineage


class ResultsError(Exception):
    """A file that is not a readable results.json."""


class CitationRow(BaseModel):
    index: int
    doc_id: str
    cited: bool
    score: float
    text: str


class SampleResult(BaseModel):
    """One sample: what was asked and expected, what the service answered, and its scores."""

    id: str
    question: str
    expected: str
    answers: list[str]
    reference_doc_ids: list[str]
    answer: str
    outcome: Outcome | None = None  # None in runs made before answers had an outcome
    generator: str | None
    model: str | None
    fallback: Fallback | None
    abstained: bool
    citations: list[CitationRow]
    latency_ms: float | None
    tokens: int
    metrics: dict[str, float | None]  # None: not applicable, or failed (then in ``failures``)
    failures: dict[str, str]
    turn: int = 1  # the turn of its conversation (multi-turn suites)
    retrieval_query: str | None = None  # what retrieval searched with, when the sample came with earlier turns


class MetricSummary(BaseModel):
    mean: float | None
    n: int
    failed: int
    not_applicable: int


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None


class TokenTotals(BaseModel):
    mean: float | None
    total: int


class Performance(BaseModel):
    latency_ms: Percentiles
    completion_tokens: TokenTotals
    fallbacks: int


class PromptRef(BaseModel):
    ref: str
    name: str
    version: str
    hash: str


class DatasetInfo(BaseModel):
    path: str
    hash: str
    samples: int


class Limits(BaseModel):
    threshold: float | None
    tolerance: float


class EvalResults(BaseModel):
    suite: str
    prompt: PromptRef
    generator: str
    rewriter: str | None = None  # how follow-ups were made standalone (None: a run made before rewriters)
    model: str | list[str]
    embedder: str
    judge: str | None
    dataset: DatasetInfo
    corpus_hash: str
    timestamp: str
    thresholds: dict[str, Limits]
    aggregate: dict[str, MetricSummary]
    by_turn: dict[int, dict[str, MetricSummary]] | None = Field(
        None, exclude_if=lambda value: value is None, description="A multi-turn suite's metrics per turn."
    )
    performance: Performance
    samples: list[SampleResult]
    lineage: RunLineage | None = None  # None in runs made before lineage was recorded

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json", exclude_none=False), indent=1), encoding="utf-8")


def read_results(path: Path) -> EvalResults:
    try:
        return EvalResults.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        raise ResultsError(f"{path} is not a results.json ({where}: {first['msg']})") from exc
