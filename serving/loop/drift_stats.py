"""Drift's statistics: what is compared (``AnswerSignals`` of each answer, gathered into a ``DriftSample``) and
how (``compare``), after Evidently's data drift methods, on scikit-learn and scipy:

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
testing several signals with Holm's step-down method: drift when some adjusted p-value is at most ``alpha``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from serving.contracts.answer import Outcome

if TYPE_CHECKING:
    from serving.loop.answer_log import AnswerRecord


SignalName = Literal["query_embedding", "top_score", "abstention", "fallback", "groundedness", "answer_length"]
TestName = Literal["domain_classifier", "ks", "fisher_exact", "skipped"]
Embed = Callable[[Sequence[str]], NDArray[np.float32]]

MIN_SAMPLES = 20  # per side: fewer values and a signal is skipped rather than tested
MAX_REFERENCE = 2000  # questions a check compares with at most (a seeded subsample): bounds the check's time


@dataclass(frozen=True, kw_only=True)
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
        return cls(
            question=record.question,
            outcome=record.outcome,
            top_score=record.relevance,
            fallback=record.fallback is not None,
            groundedness=record.groundedness,
            answer=record.answer,
        )


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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
    return SignalResult(
        signal=name,
        test="skipped",
        statistic=None,
        p_value=None,
        adjusted_p=None,
        drifted=False,
        reference=reference,
        current=current,
    )


def _embedding_result(reference: DriftSample, current: DriftSample, seed: int) -> SignalResult:
    ref, cur = reference.embeddings, current.embeddings
    if min(len(ref), len(cur)) < MIN_SAMPLES:
        return _untested("query_embedding", len(ref), len(cur))
    if len(ref) > MAX_REFERENCE:
        ref = ref[np.random.default_rng(seed).choice(len(ref), MAX_REFERENCE, replace=False)]
    auc, p = domain_classifier(ref, cur, seed)
    return SignalResult(
        signal="query_embedding",
        test="domain_classifier",
        statistic=auc,
        p_value=p,
        adjusted_p=None,
        drifted=False,
        reference=len(ref),
        current=len(cur),
    )


def _answer_result(signal: _Signal, reference: DriftSample, current: DriftSample) -> SignalResult:
    ref, cur = signal.values(reference), signal.values(current)
    if min(len(ref), len(cur)) < MIN_SAMPLES:
        return _untested(signal.name, len(ref), len(cur))
    test = _rates_test if signal.test == "fisher_exact" else _numbers_test
    statistic, p = test(ref, cur)
    return SignalResult(
        signal=signal.name,
        test=signal.test,
        statistic=statistic,
        p_value=p,
        adjusted_p=None,
        drifted=False,
        reference=len(ref),
        current=len(cur),
        reference_mean=float(np.mean(ref)),
        current_mean=float(np.mean(cur)),
    )


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
