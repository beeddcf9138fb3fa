"""Canary analysis: is the canary prompt version worse than the stable one, with evidence that survives looking
every few answers?

Each kept answer of either version since the canary started is an ``Observation`` of a few live signals, each
"higher is worse": ungrounded (groundedness under the threshold), uncited (an answer that cites no passage),
fallback, abstained, refused, thumbs-down (rated answers only) and latency (its logarithm, so "5% slower" is one
margin whatever the scale). Cached answers repeat an earlier answer and are left out.

Per signal, a one-sided mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh, "Always
valid inference", 2017) of H0 "canary - stable <= margin" (margin: ``canary_tolerance`` for rates,
log(1 + ``canary_latency_tolerance``) for latency) on the difference of the arms' means, with the normal approximation
Δ ~ N(θ, s²), s² = var_c/n_c + var_s/n_s (for rates, the variances at H0's boundary, as a non-inferiority score
test takes them), and a normal mixture N(margin, τ²) over θ:

    Λ = sqrt(s² / (s² + τ²)) · exp(τ² (Δ - margin)² / (2 s² (s² + τ²)))   (counted only when Δ > margin)

Λ is a martingale under H0, so by Ville's inequality P(Λ ever reaches 1/a) <= a: the test may be evaluated after
every answer, forever, and a false rollback stays as rare as asked. The analysis replays the whole sequence at
each check (the always-valid p-value is min over answers of 1/Λ), so checking every N answers loses nothing. α
(``canary_alpha``) is split evenly over the signals (Bonferroni: any one signal rolls back). Argo Rollouts and
Flagger decide on thresholds over fixed intervals (``failureLimit`` of bad measurements); that needs a per-metric
threshold and has no error rate: the sequential test is what makes "with enough evidence" a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Arm = Literal["canary", "stable"]
Verdict = Literal["worse", "not worse", "too few"]
Decision = Literal["rollback", "promote", "continue"]
Floats = npt.NDArray[np.float64]

# Neither arm's signal is tested before it has this many answers: the normal approximation needs some (measured:
# bench/canary.py; fewer gave early false rollbacks on latency's heavy tail).
MIN_PER_ARM = 20
# The mixture's spread around the margin (rates: absolute; latency: log units). bench/canary.py --tune on the qa
# suite's recordings: 0.05, 0.1 and 0.2 all roll the bad canary back after 20-22 answers and never the neutral
# ones (100 runs each); 0.1, in the middle, is kept.
TAU = 0.1


@dataclass(frozen=True)
class Tolerance:
    """How much worse the canary may be before evidence counts against it: ``rate`` in absolute points of a rate
    (0.05: 5 points more fallbacks), ``latency`` relative (0.2: 20% slower)."""

    rate: float
    latency: float


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One answer, as the analysis sees it; None: the signal does not apply to this answer."""

    arm: Arm
    ungrounded: bool | None
    uncited: bool | None
    fallback: bool
    abstained: bool
    refused: bool
    thumbs_down: bool | None
    log_latency: float | None

    @classmethod
    def of(
        cls,
        arm: Arm,
        outcome: str,
        groundedness: float | None,
        cited: bool,
        fallback: str | None,
        latency_ms: float | None,
        rating: str | None,
        threshold: float,
    ) -> Observation:
        answered = outcome == "answered"
        return cls(
            arm=arm,
            ungrounded=None if not answered or groundedness is None else groundedness < threshold,
            uncited=not cited if answered else None,
            fallback=fallback is not None,
            abstained=outcome == "abstained",
            refused=outcome == "refused",
            thumbs_down=None if rating is None else rating == "down",
            log_latency=None if latency_ms is None else math.log(max(latency_ms, 1.0)),
        )


@dataclass(frozen=True)
class SignalSpec:
    name: str
    read: Callable[[Observation], float | None]
    binary: bool  # a rate (absolute margin) or log latency (relative margin)

    def margin(self, tolerance: Tolerance) -> float:
        return tolerance.rate if self.binary else math.log1p(tolerance.latency)


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


SIGNALS = (
    SignalSpec("ungrounded", lambda o: _flag(o.ungrounded), True),
    SignalSpec("uncited", lambda o: _flag(o.uncited), True),
    SignalSpec("fallback", lambda o: float(o.fallback), True),
    SignalSpec("abstained", lambda o: float(o.abstained), True),
    SignalSpec("refused", lambda o: float(o.refused), True),
    SignalSpec("thumbs_down", lambda o: _flag(o.thumbs_down), True),
    SignalSpec("latency", lambda o: o.log_latency, False),
)


@dataclass(frozen=True, kw_only=True)
class SignalTest:
    """One signal's comparison now: the arms' means (rates, or mean log latency), the difference, the margin,
    the mSPRT statistic (log Λ now), the always-valid p-value (smallest 1/Λ so far) and the verdict."""

    signal: str
    canary_n: int
    stable_n: int
    canary_mean: float | None
    stable_mean: float | None
    difference: float | None
    margin: float
    log_lr: float | None  # None while the signal does not count (too few answers, or not past the margin)
    p_value: float
    alpha: float  # the p-value it is held to: canary_alpha over the signals
    verdict: Verdict


@dataclass(frozen=True, kw_only=True)
class CanaryAnalysis:
    canary_answers: int
    stable_answers: int
    alpha: float
    tolerance: Tolerance
    tests: tuple[SignalTest, ...]
    decision: Decision

    @property
    def worse(self) -> tuple[SignalTest, ...]:
        return tuple(t for t in self.tests if t.verdict == "worse")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _ArmTrace:
    """One arm's running count, mean and variance after each observation (all observations, both arms)."""

    n: Floats
    mean: Floats
    var: Floats


def _trace(values: Floats, mine: npt.NDArray[np.bool_]) -> _ArmTrace:
    x = np.where(mine, values, 0.0)
    n = np.cumsum(mine).astype(np.float64)
    total, squares = np.cumsum(x), np.cumsum(x * x)
    mean = total / np.maximum(n, 1.0)
    var = np.maximum((squares - total * mean) / np.maximum(n - 1, 1.0), 1e-4)
    return _ArmTrace(n, mean, var)


def _at_null(canary: _ArmTrace, stable: _ArmTrace, margin: float) -> tuple[_ArmTrace, _ArmTrace]:
    """For a rate, the variances H0's boundary gives (as a non-inferiority score test takes them): the stable
    arm's rate (smoothed, so a rate of 0 still has one) and that rate plus the margin for the canary. The arms'
    own variances let 25 answers with 3 rare failures look like certainty: measured on the qa recordings (100 runs),
    a rewording was rolled back once with them (ungrounded), twice with the pooled variance (uncited: 1 of 40
    answers vs 0 of 40), never with these."""
    p_stable = (stable.mean * stable.n + 0.5) / (stable.n + 1.0)
    p_canary = np.clip(p_stable + margin, 0.001, 0.999)
    return (_ArmTrace(canary.n, canary.mean, p_canary * (1 - p_canary)),
            _ArmTrace(stable.n, stable.mean, p_stable * (1 - p_stable)))  # fmt: skip


def _log_lr(canary: _ArmTrace, stable: _ArmTrace, margin: float) -> Floats:
    """log Λ after each observation; -inf where it does not count (too few answers, or not past the margin)."""
    s2 = canary.var / np.maximum(canary.n, 1.0) + stable.var / np.maximum(stable.n, 1.0)
    excess = canary.mean - stable.mean - margin
    t2 = TAU * TAU
    log_lr = 0.5 * np.log(s2 / (s2 + t2)) + t2 * excess**2 / (2 * s2 * (s2 + t2))
    counts = (canary.n >= MIN_PER_ARM) & (stable.n >= MIN_PER_ARM) & (excess > 0)
    return np.where(counts, log_lr, -np.inf)


def compare_signal(
    spec: SignalSpec, observations: Sequence[Observation], tolerance: Tolerance, alpha: float
) -> SignalTest:
    """The signal's mSPRT over the observations in the order they were answered."""
    read = [(o.arm == "canary", spec.read(o)) for o in observations]
    kept = [(c, v) for c, v in read if v is not None]
    is_canary = np.array([c for c, _ in kept], dtype=bool)
    values = np.array([v for _, v in kept], dtype=np.float64)
    margin = spec.margin(tolerance)
    if not kept:
        return SignalTest(
            signal=spec.name,
            canary_n=0,
            stable_n=0,
            canary_mean=None,
            stable_mean=None,
            difference=None,
            margin=margin,
            log_lr=None,
            p_value=1.0,
            alpha=alpha,
            verdict="too few",
        )
    canary, stable = _trace(values, is_canary), _trace(values, ~is_canary)
    if spec.binary:
        canary, stable = _at_null(canary, stable, margin)
    log_lr = _log_lr(canary, stable, margin)
    n_c, n_s = int(canary.n[-1]), int(stable.n[-1])
    p_value = float(min(1.0, math.exp(-float(np.max(log_lr)))))
    verdict: Verdict = "worse" if p_value <= alpha else "not worse" if min(n_c, n_s) >= MIN_PER_ARM else "too few"
    mean_c = float(canary.mean[-1]) if n_c else None
    mean_s = float(stable.mean[-1]) if n_s else None
    difference = None if mean_c is None or mean_s is None else mean_c - mean_s
    now = float(log_lr[-1])
    return SignalTest(
        signal=spec.name,
        canary_n=n_c,
        stable_n=n_s,
        canary_mean=mean_c,
        stable_mean=mean_s,
        difference=difference,
        margin=margin,
        log_lr=now if math.isfinite(now) else None,
        p_value=p_value,
        alpha=alpha,
        verdict=verdict,
    )


def analyse(
    observations: Sequence[Observation],
    tolerance: Tolerance,
    alpha: float,
    min_answers: int,
    autopromote: bool,
) -> CanaryAnalysis:
    """Every signal's test and the decision: roll back when one is worse; promote (when asked to) once both arms
    have ``min_answers`` answers and none is."""
    per_signal = alpha / len(SIGNALS)
    tests = tuple(compare_signal(spec, observations, tolerance, per_signal) for spec in SIGNALS)
    canary_n = sum(o.arm == "canary" for o in observations)
    stable_n = len(observations) - canary_n
    decision: Decision = "continue"
    if any(t.verdict == "worse" for t in tests):
        decision = "rollback"
    elif autopromote and min(canary_n, stable_n) >= min_answers:
        decision = "promote"
    return CanaryAnalysis(
        canary_answers=canary_n,
        stable_answers=stable_n,
        alpha=alpha,
        tolerance=tolerance,
        tests=tests,
        decision=decision,
    )
