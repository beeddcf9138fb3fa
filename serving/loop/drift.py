"""Drift: has what users ask, or how the service answers them, moved away from a reference?

Evidently's data drift methods, on scikit-learn and scipy (Evidently itself does not import beside our pandas):

- **Questions**: a domain classifier (Evidently's default ``model`` method for embeddings). A logistic regression
  learns to tell reference query embeddings from the window's on one stratified half; its ROC AUC on the other
  half is the score (0.5: indistinguishable). The p-value is the one-sided Mann-Whitney U test of the held-out
  scores (AUC = U / (n_window * n_reference)): exact, since the held-out half took no part in the fit. (Pooling
  out-of-fold scores of a k-fold fit instead gave 12-20% false alarms at a nominal 5%: the folds' scores are not
  independent.)
- **Answer signals**, per signal (Evidently's per-column tests for small data): Kolmogorov-Smirnov for the
  numbers (top retrieval score, groundedness, answer length in words), Fisher's exact test for the rates
  (abstention, fallback).

A signal with fewer than ``MIN_SAMPLES`` values on either side is skipped, not tested. The verdict corrects for
testing several signals with Holm's step-down method: drift when some adjusted p-value is at most ``alpha``.

Reference profiles live in the state store's ``drift_profiles`` (the newest of a name is the reference); each is
recorded as a ``drift_baseline`` lineage event with what it was built from. ``DriftMonitor`` runs the check
every ``drift_every`` answers in a background thread: the request path only counts.
"""

from __future__ import annotations

import base64
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from serving.contracts.answer import Outcome
from serving.infra.background import BackgroundWorker
from serving.infra.clock import parse_stamp, stamp, utc_now
from serving.loop.lineage import append_event

if TYPE_CHECKING:
    from serving.contracts.answer import Answer
    from serving.infra.state_store import StateStore
    from serving.loop.answer_log import AnswerLog, AnswerRecord
    from serving.loop.lineage import Lineage

log = logging.getLogger("ragops.drift")

SignalName = Literal["query_embedding", "top_score", "abstention", "fallback", "groundedness", "answer_length"]
TestName = Literal["domain_classifier", "ks", "fisher_exact", "skipped"]
Embed = Callable[[Sequence[str]], NDArray[np.float32]]

MIN_SAMPLES = 20  # per side: fewer values and a signal is skipped rather than tested
MAX_REFERENCE = 2000  # questions a check compares with at most (a seeded subsample): bounds the check's time
DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class AnswerSignals:
    """What drift reads of one answer, wherever it comes from (served traffic, an eval run). ``outcome`` None:
    only the question is known (a dataset without results)."""

    question: str
    outcome: Outcome | None = None
    top_score: float | None = None  # best cosine between the question and a retrieved passage
    fallback: bool = False
    groundedness: float | None = None
    answer: str = ""

    @classmethod
    def of_record(cls, record: AnswerRecord) -> AnswerSignals:
        return cls(record.question, record.outcome, record.relevance, record.fallback is not None,
                   record.groundedness, record.answer)  # fmt: skip


@dataclass(frozen=True)
class DriftSample:
    """The compared values of a reference or a window. Answer signals leave out cached answers (their outcome
    hides how they were made) and refusals (nothing was retrieved or generated); every question counts."""

    embeddings: NDArray[np.float32]  # (questions, dimension)
    top_score: tuple[float, ...] = ()
    abstention: tuple[bool, ...] = ()  # over answered and abstained
    fallback: tuple[bool, ...] = ()  # over answers a generator was asked for: answered, abstained, failed
    groundedness: tuple[float, ...] = ()
    answer_length: tuple[int, ...] = ()  # words of answered answers

    @classmethod
    def of(cls, answers: Sequence[AnswerSignals], embed: Embed) -> DriftSample:
        questions = [a.question for a in answers]
        embedded = embed(questions) if questions else np.zeros((0, 0), dtype=np.float32)
        generated = [a for a in answers if a.outcome in ("answered", "abstained", "failed")]
        return cls(
            embeddings=np.asarray(embedded, dtype=np.float32),
            # Answered only: an abstention's score is served (relevance) but not in an eval's results (no passage
            # shown), so counting it would make a suite reference differ from traffic by construction.
            top_score=tuple(a.top_score for a in generated if a.outcome == "answered" and a.top_score is not None),
            abstention=tuple(a.outcome == "abstained" for a in generated if a.outcome != "failed"),
            fallback=tuple(a.fallback for a in generated),
            groundedness=tuple(a.groundedness for a in generated if a.groundedness is not None),
            answer_length=tuple(len(a.answer.split()) for a in generated if a.outcome == "answered"),
        )

    @property
    def questions(self) -> int:
        return len(self.embeddings)


@dataclass(frozen=True)
class SignalResult:
    signal: SignalName
    test: TestName
    statistic: float | None  # ROC AUC; KS statistic; window rate minus reference rate
    p_value: float | None
    adjusted_p: float | None  # Holm over the tested signals
    drifted: bool
    reference: int  # values compared on each side
    current: int
    reference_mean: float | None = None
    current_mean: float | None = None


@dataclass(frozen=True)
class DriftReport:
    profile_id: str
    profile_name: str
    checked_at: str
    answers: int  # questions in the window
    alpha: float
    signals: tuple[SignalResult, ...]
    drifted: bool
    took_ms: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (not in scipy; statsmodels' ``multipletests(method="holm")``)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    # The i-th smallest (from 0) is multiplied by the m - i hypotheses left; a running maximum keeps the
    # adjusted values in the order of the raw ones (a larger p never gets a smaller adjusted value).
    stepped = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return [float(x) for x in adjusted]


def domain_classifier(
    reference: NDArray[np.float32], current: NDArray[np.float32], seed: int = 0
) -> tuple[float, float]:
    """(ROC AUC, p-value) of a classifier telling ``current`` rows from ``reference`` rows on held-out data."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    rows = np.vstack([reference, current])
    labels = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    fit_x, held_x, fit_y, held_y = train_test_split(rows, labels, test_size=0.5, stratify=labels, random_state=seed)
    scores = LogisticRegression(max_iter=1000).fit(fit_x, fit_y).decision_function(held_x)
    auc = float(roc_auc_score(held_y, scores))
    test = mannwhitneyu(scores[held_y == 1], scores[held_y == 0], alternative="greater")
    return auc, float(test.pvalue)


def _numbers_test(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    result = ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def _rates_test(reference: Sequence[bool], current: Sequence[bool]) -> tuple[float, float]:
    from scipy.stats import fisher_exact

    ref_yes, cur_yes = sum(reference), sum(current)
    table = [[cur_yes, len(current) - cur_yes], [ref_yes, len(reference) - ref_yes]]
    difference = cur_yes / len(current) - ref_yes / len(reference)
    return difference, float(fisher_exact(table).pvalue)


@dataclass(frozen=True)
class _Signal:
    """One compared signal: how to read its values from a sample and which test compares them."""

    name: SignalName
    test: TestName
    values: Callable[[DriftSample], Sequence[Any]]


_ANSWER_SIGNALS = (
    _Signal("top_score", "ks", lambda s: s.top_score),
    _Signal("abstention", "fisher_exact", lambda s: s.abstention),
    _Signal("fallback", "fisher_exact", lambda s: s.fallback),
    _Signal("groundedness", "ks", lambda s: s.groundedness),
    _Signal("answer_length", "ks", lambda s: s.answer_length),
)


def _untested(name: SignalName, reference: int, current: int) -> SignalResult:
    return SignalResult(name, "skipped", None, None, None, False, reference, current)


def _embedding_result(reference: DriftSample, current: DriftSample, seed: int) -> SignalResult:
    ref, cur = reference.embeddings, current.embeddings
    if min(len(ref), len(cur)) < MIN_SAMPLES:
        return _untested("query_embedding", len(ref), len(cur))
    if len(ref) > MAX_REFERENCE:
        ref = ref[np.random.default_rng(seed).choice(len(ref), MAX_REFERENCE, replace=False)]
    auc, p = domain_classifier(ref, cur, seed)
    return SignalResult("query_embedding", "domain_classifier", auc, p, None, False, len(ref), len(cur))


def _answer_result(signal: _Signal, reference: DriftSample, current: DriftSample) -> SignalResult:
    ref, cur = signal.values(reference), signal.values(current)
    if min(len(ref), len(cur)) < MIN_SAMPLES:
        return _untested(signal.name, len(ref), len(cur))
    test = _rates_test if signal.test == "fisher_exact" else _numbers_test
    statistic, p = test(ref, cur)
    return SignalResult(signal.name, signal.test, statistic, p, None, False, len(ref), len(cur),
                        float(np.mean(ref)), float(np.mean(cur)))  # fmt: skip


def compare(reference: DriftSample, current: DriftSample, alpha: float, seed: int = 0) -> list[SignalResult]:
    """Every signal's test, with Holm-adjusted p-values and per-signal verdicts at ``alpha``."""
    results = [_embedding_result(reference, current, seed)]
    results += [_answer_result(signal, reference, current) for signal in _ANSWER_SIGNALS]
    tested = [r for r in results if r.p_value is not None]
    adjusted = dict(zip((r.signal for r in tested), holm([r.p_value or 0.0 for r in tested]), strict=True))
    return [
        replace(r, adjusted_p=adjusted[r.signal], drifted=adjusted[r.signal] <= alpha) if r.signal in adjusted else r
        for r in results
    ]


# --- reference profiles --------------------------------------------------------------------------------------


class ProfileLineage(BaseModel):
    """What a profile was built from: enough to rebuild it, or to tell that its inputs changed."""

    source: Literal["suite", "traffic"]
    embedder: str
    suite: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    corpus_hash: str | None = None
    results: str | None = None  # the eval results the answer signals came from
    results_timestamp: str | None = None
    since: str | None = None  # traffic: the first and last answer's time
    until: str | None = None
    prompt: str | None = None
    version: str | None = None
    prompt_hash: str | None = None
    questions: int = 0


class _ProfileBody(BaseModel):
    """The stored JSON of a profile; embeddings as base64 float16 (a quarter of the JSON list's size)."""

    lineage: ProfileLineage
    dimension: int
    embeddings: str
    top_score: list[float]
    abstention: list[bool]
    fallback: list[bool]
    groundedness: list[float]
    answer_length: list[int]

    @classmethod
    def of(cls, sample: DriftSample, lineage: ProfileLineage) -> _ProfileBody:
        packed = base64.b64encode(sample.embeddings.astype("<f2").tobytes()).decode()
        dimension = sample.embeddings.shape[1] if sample.questions else 0
        return cls(lineage=lineage, dimension=dimension, embeddings=packed, top_score=list(sample.top_score),
                   abstention=list(sample.abstention), fallback=list(sample.fallback),
                   groundedness=list(sample.groundedness), answer_length=list(sample.answer_length))  # fmt: skip

    def sample(self) -> DriftSample:
        flat = np.frombuffer(base64.b64decode(self.embeddings), dtype="<f2").astype(np.float32)
        embeddings = flat.reshape(-1, self.dimension) if self.dimension else flat.reshape(0, 0)
        return DriftSample(embeddings, tuple(self.top_score), tuple(self.abstention), tuple(self.fallback),
                           tuple(self.groundedness), tuple(self.answer_length))  # fmt: skip


@dataclass(frozen=True)
class DriftProfile:
    id: str
    name: str
    created_at: datetime
    sample: DriftSample
    lineage: ProfileLineage


class DriftProfiles:
    """The ``drift_profiles`` table: profiles saved with their lineage event, the newest of a name read back."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def save(self, name: str, sample: DriftSample, lineage: ProfileLineage) -> DriftProfile:
        profile = DriftProfile(f"dp_{uuid.uuid4().hex[:16]}", name, parse_stamp(utc_now()), sample, lineage)
        body = _ProfileBody.of(sample, lineage).model_dump_json()
        with self._state.transaction(write=True) as cur:
            cur.execute(
                "INSERT INTO drift_profiles (id, name, created_at, source, body) VALUES (?, ?, ?, ?, ?)",
                (profile.id, name, stamp(profile.created_at), lineage.source, body),
            )
            event = {"profile": profile.id, "name": name, **lineage.model_dump(exclude_none=True)}
            append_event(cur, "drift_baseline", lineage.prompt, lineage.version, event)
        return profile

    def latest(self, name: str = DEFAULT_PROFILE) -> DriftProfile | None:
        sql = "SELECT id, name, created_at, body FROM drift_profiles WHERE name = ? ORDER BY created_at DESC LIMIT 1"
        with self._state.transaction() as cur:
            rows = cur.execute(sql, [name])
        if not rows:
            return None
        body = _ProfileBody.model_validate_json(rows[0][3])
        return DriftProfile(rows[0][0], rows[0][1], parse_stamp(rows[0][2]), body.sample(), body.lineage)


class DriftError(Exception):
    """A check that cannot be made (a profile of another embedding model): never a verdict."""


def check(
    profile: DriftProfile, window: Sequence[AnswerSignals], embed: Embed, embedder_id: str, alpha: float
) -> DriftReport:
    """Compare the window's answers with the profile: every signal, Holm-corrected, timed."""
    if profile.lineage.embedder != embedder_id:  # another model's vectors: any classifier tells them apart
        raise DriftError(f"profile {profile.id} was made with the embedder {profile.lineage.embedder}, this service "
                         f"embeds with {embedder_id}: make a new baseline")  # fmt: skip
    started = time.perf_counter()
    current = DriftSample.of(window, embed)
    results = compare(profile.sample, current, alpha)
    took = (time.perf_counter() - started) * 1000
    return DriftReport(profile.id, profile.name, utc_now(), current.questions, alpha, tuple(results),
                       any(r.drifted for r in results), round(took, 1))  # fmt: skip


def record_check(lineage: Lineage, profile: DriftProfile, report: DriftReport) -> None:
    """A ``drift_check`` lineage event on the profile's prompt version (the verdict and each signal's p)."""
    signals = {r.signal: {"statistic": r.statistic, "adjusted_p": r.adjusted_p} for r in report.signals}
    body = {"profile": report.profile_id, "answers": report.answers, "drifted": report.drifted, "signals": signals}
    lineage.record("drift_check", profile.lineage.prompt, profile.lineage.version, body)


# --- the server's periodic check ---------------------------------------------------------------------------------


class DriftMonitor:
    """Every ``every`` answers, check the last ``window`` kept answers against the newest profile named
    ``profile_name``, in a background thread. ``observe`` (the request path) only counts; a check due while the
    previous one still runs is dropped (the next one comes ``every`` answers later)."""

    def __init__(
        self,
        every: int,
        window: int,
        alpha: float,
        answers: AnswerLog,
        profiles: DriftProfiles,
        embed: Embed,
        embedder_id: str,
        on_report: Callable[[DriftReport], None],
        lineage: Lineage | None = None,
        profile_name: str = DEFAULT_PROFILE,
    ) -> None:
        self.every, self.window, self.alpha = every, window, alpha
        self._answers, self._profiles, self._embed, self._embedder_id = answers, profiles, embed, embedder_id
        self._on_report, self._lineage, self.profile_name = on_report, lineage, profile_name
        self._count = itertools.count(1)
        self._last_verdict: bool | None = None
        self._lock = threading.Lock()
        self._worker: BackgroundWorker[int] = BackgroundWorker("ragops-drift", self._run, max_pending=1)

    def observe(self, answer: Answer) -> None:
        # next() on itertools.count is one C call: atomic under the GIL, so no lock on the request path.
        if next(self._count) % self.every == 0:
            self._worker.put(0)

    def check_now(self) -> DriftReport | None:
        """One check now (None without a profile or answers); what the background thread runs."""
        with self._lock:
            self._answers.flush()
            profile = self._profiles.latest(self.profile_name)
            records = self._answers.window(limit=self.window)
            if profile is None or not records:
                return None
            signals = [AnswerSignals.of_record(r) for r in records]
            report = check(profile, signals, self._embed, self._embedder_id, self.alpha)
            self._on_report(report)
            if self._lineage is not None and report.drifted != self._last_verdict:  # a change, not every check
                record_check(self._lineage, profile, report)
            self._last_verdict = report.drifted
            return report

    def flush(self, wait_s: float = 30.0) -> bool:
        return self._worker.flush(wait_s)

    def close(self, wait_s: float = 1.0) -> None:
        self._worker.close(wait_s)

    def _run(self, _: list[int]) -> None:
        try:
            self.check_now()
        except Exception as exc:  # a store outage or a broken profile skips a check, never the service
            log.warning("drift check failed", extra={"error": str(exc)[:200]})
