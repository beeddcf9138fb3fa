"""Canary analysis: is the canary prompt version worse than the stable one, with evidence that survives looking
every few answers, and that no single user or tenant can make up?

Each kept answer of either version since the canary started is an ``Observation`` of a few live signals, each
"higher is worse": ungrounded (groundedness under the threshold), uncited (an answer that cites no passage),
fallback, abstained, thumbs-down (rated answers only: the share of its ratings that are down) and latency (its
logarithm, so "5% slower" is one margin whatever the scale). Cached answers repeat an earlier answer and are left
out; refusals (the input guard's blocks, the output guard's) are left out of every signal: a jailbreak attempt
says who asks, not how well a version answers (they are counted, per tenant, in the breakdown).

Evidence is clustered by user (the server's canary subject: tenant, key and the request's ``user``): each arm's
mean is the mean over its users of each user's mean, so one user's 30 answers weigh as one user, and the
variance is that of the users' means. Per signal, a one-sided mixture sequential probability ratio test (mSPRT;
Johari, Pekelis and Walsh, "Always valid inference", 2017) of H0 "canary - stable <= margin" (margin:
``canary_tolerance`` for rates, log(1 + ``canary_latency_tolerance``) for latency) on the difference of the arms'
means, with the normal approximation Δ ~ N(θ, s²), s² = var_c/users_c + var_s/users_s, and a normal mixture
N(margin, τ²) over θ:

    Λ = sqrt(s² / (s² + τ²)) · exp(τ² (Δ - margin)² / (2 s² (s² + τ²)))   (counted only when Δ > margin)

Λ is a martingale under H0, so by Ville's inequality P(Λ ever reaches 1/a) <= a: the test may be evaluated after
every answer, forever, and a false rollback stays as rare as asked. The analysis replays the whole sequence at
each check (the always-valid p-value is min over answers of 1/Λ), so checking every N answers loses nothing. α
(``canary_alpha``) is split evenly over the signals (Bonferroni: any one signal rolls back). Argo Rollouts and
Flagger decide on thresholds over fixed intervals (``failureLimit`` of bad measurements); that needs a per-metric
threshold and has no error rate: the sequential test is what makes "with enough evidence" a number.

No single party decides: Λ counts only once each arm has ``canary_min_users`` users from ``canary_min_tenants``
tenants, and a rollback also needs a signal worse with any one tenant's answers left out (with one tenant fewer
required); otherwise the tenant it hangs on is named and the canary keeps running.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from serving.loop.canary_stats import (
    ArmTrace,
    Bools,
    Floats,
    Ints,
    arm_trace,
    cluster_differences,
    codes,
    msprt_log_lr,
    null_variances,
)

Arm = Literal["canary", "stable"]
ARMS: tuple[Arm, ...] = ("canary", "stable")
Verdict = Literal["worse", "not worse", "too few"]
Decision = Literal["rollback", "promote", "continue"]

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
class Quorum:
    """How many distinct users (each arm; the normal approximation needs some: bench/canary.py) and tenants (each
    arm) a signal's test needs before its evidence counts (settings canary_min_users, canary_min_tenants)."""

    min_users: int
    min_tenants: int


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One answer, as the analysis sees it; None: the signal does not apply to this answer."""

    arm: Arm
    user: str  # the canary subject: the cluster this answer's evidence belongs to
    tenant: str
    refused: bool  # left out of every signal
    ungrounded: bool | None
    uncited: bool | None
    fallback: bool | None
    abstained: bool | None
    thumbs_down: float | None  # the share of its ratings that are down; None: not rated
    log_latency: float | None

    @classmethod
    def of(
        cls, *, arm: Arm, user: str, tenant: str, outcome: str, groundedness: float | None, cited: bool,
        fallback: str | None, latency_ms: float | None, down_share: float | None, threshold: float,
    ) -> Observation:  # fmt: skip
        answered, counted = outcome == "answered", outcome != "refused"
        return cls(
            arm=arm, user=user, tenant=tenant, refused=not counted,
            ungrounded=None if not answered or groundedness is None else groundedness < threshold,
            uncited=not cited if answered else None,
            fallback=fallback is not None if counted else None,
            abstained=outcome == "abstained" if counted else None,
            thumbs_down=down_share if counted else None,
            log_latency=None if latency_ms is None or not counted else math.log(max(latency_ms, 1.0)),
        )  # fmt: skip


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
    SignalSpec("fallback", lambda o: _flag(o.fallback), True),
    SignalSpec("abstained", lambda o: _flag(o.abstained), True),
    SignalSpec("thumbs_down", lambda o: o.thumbs_down, True),
    SignalSpec("latency", lambda o: o.log_latency, False),
)


@dataclass(frozen=True, kw_only=True)
class SignalTest:
    """One signal's comparison now: the arms' answers and users, their means (of the users' means: rates, or mean
    log latency), the difference, the margin, the mSPRT statistic (log Λ now), the always-valid p-value
    (smallest 1/Λ so far) and the verdict."""

    signal: str
    canary_n: int
    stable_n: int
    canary_users: int = 0
    stable_users: int = 0
    canary_mean: float | None
    stable_mean: float | None
    difference: float | None
    margin: float
    log_lr: float | None  # None while the signal does not count (too little evidence, or not past the margin)
    p_value: float
    alpha: float  # the p-value it is held to: canary_alpha over the signals
    verdict: Verdict


@dataclass(frozen=True, kw_only=True)
class TenantEvidence:
    """One tenant's part in the evidence: its answers and users per arm (refusals apart), its refusals (left out
    of every signal), and per signal the canary's mean minus the stable one's over its own users (None: an arm
    has none of its answers to that signal)."""

    tenant: str
    canary_answers: int
    stable_answers: int
    canary_users: int
    stable_users: int
    refused: int
    differences: dict[str, float | None]

    def users(self, arm: Arm) -> int:
        return self.canary_users if arm == "canary" else self.stable_users


@dataclass(frozen=True, kw_only=True)
class CanaryAnalysis:
    canary_answers: int
    stable_answers: int
    canary_users: int = 0
    stable_users: int = 0
    alpha: float
    tolerance: Tolerance
    tests: tuple[SignalTest, ...]
    decision: Decision
    tenants: tuple[TenantEvidence, ...] = ()
    hangs_on_tenant: str | None = None  # a rollback held back: without this tenant's answers no signal is worse

    @property
    def worse(self) -> tuple[SignalTest, ...]:
        return tuple(t for t in self.tests if t.verdict == "worse")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Columns:
    """The observations as arrays: arm, cluster (arm, tenant, user), tenant, and per signal its values (NaN where
    it does not apply), in the order the answers were given."""

    canary: Bools
    cluster: Ints
    tenant: Ints
    values: dict[str, Floats]
    tenant_names: tuple[str, ...]

    @classmethod
    def of(cls, observations: Sequence[Observation]) -> _Columns:
        tenants: dict[str, int] = {}
        tenant = np.array([tenants.setdefault(o.tenant, len(tenants)) for o in observations], dtype=np.int64)
        values = {
            spec.name: np.array([math.nan if (v := spec.read(o)) is None else v for o in observations], np.float64)
            for spec in SIGNALS
        }
        return cls(
            canary=np.array([o.arm == "canary" for o in observations], dtype=bool),
            cluster=codes([(o.arm, o.tenant, o.user) for o in observations]),
            tenant=tenant, values=values, tenant_names=tuple(tenants),
        )  # fmt: skip

    def without(self, tenant: int) -> _Columns:
        kept = self.tenant != tenant
        return _Columns(
            self.canary[kept], self.cluster[kept], self.tenant[kept],
            {name: v[kept] for name, v in self.values.items()}, self.tenant_names,
        )  # fmt: skip


def _enough(arm: ArmTrace, quorum: Quorum) -> Bools:
    return (arm.users >= quorum.min_users) & (arm.tenants >= quorum.min_tenants)


def _log_lr(canary: ArmTrace, stable: ArmTrace, variances: tuple[Floats, Floats], margin: float,
            quorum: Quorum) -> Floats:  # fmt: skip
    """log Λ after each observation; -inf where it does not count (too little evidence, or not past the margin)."""
    log_lr = msprt_log_lr(canary, stable, variances, margin, TAU)
    counts = _enough(canary, quorum) & _enough(stable, quorum) & (canary.mean - stable.mean > margin)
    return np.where(counts, log_lr, -np.inf)


def _compare(spec: SignalSpec, columns: _Columns, tolerance: Tolerance, alpha: float, quorum: Quorum) -> SignalTest:
    """The signal's mSPRT over the observations in the order they were answered."""
    values = columns.values[spec.name]
    kept = ~np.isnan(values)
    margin = spec.margin(tolerance)
    if not kept.any():
        return SignalTest(
            signal=spec.name, canary_n=0, stable_n=0, canary_mean=None, stable_mean=None, difference=None,
            margin=margin, log_lr=None, p_value=1.0, alpha=alpha, verdict="too few",
        )  # fmt: skip
    x, is_canary, cluster, tenant = values[kept], columns.canary[kept], columns.cluster[kept], columns.tenant[kept]
    canary, stable = arm_trace(x, is_canary, cluster, tenant), arm_trace(x, ~is_canary, cluster, tenant)
    floor = np.full(len(x), 1e-4)
    variances = null_variances(canary, stable, margin) if spec.binary else (np.maximum(canary.var, floor),
                                                                     np.maximum(stable.var, floor))  # fmt: skip
    log_lr = _log_lr(canary, stable, variances, margin, quorum)
    p_value = float(min(1.0, math.exp(-float(np.max(log_lr)))))
    enough = bool(_enough(canary, quorum)[-1] and _enough(stable, quorum)[-1])
    verdict: Verdict = "worse" if p_value <= alpha else "not worse" if enough else "too few"
    n_c, n_s = int(is_canary.sum()), int((~is_canary).sum())
    mean_c = float(canary.mean[-1]) if n_c else None
    mean_s = float(stable.mean[-1]) if n_s else None
    now = float(log_lr[-1])
    return SignalTest(
        signal=spec.name, canary_n=n_c, stable_n=n_s, canary_users=int(canary.users[-1]),
        stable_users=int(stable.users[-1]), canary_mean=mean_c, stable_mean=mean_s,
        difference=None if mean_c is None or mean_s is None else mean_c - mean_s, margin=margin,
        log_lr=now if math.isfinite(now) else None, p_value=p_value, alpha=alpha, verdict=verdict,
    )  # fmt: skip


def _tests(columns: _Columns, tolerance: Tolerance, alpha: float, quorum: Quorum) -> tuple[SignalTest, ...]:
    return tuple(_compare(spec, columns, tolerance, alpha, quorum) for spec in SIGNALS)


def _tenant_differences(columns: _Columns, values: Floats) -> dict[str, float | None]:
    """Per tenant: the canary's mean over its users' means minus the stable arm's (None: an arm has none)."""
    kept = ~np.isnan(values)
    by_code = cluster_differences(columns.cluster[kept], columns.tenant[kept], columns.canary[kept], values[kept])
    return {name: by_code.get(code) for code, name in enumerate(columns.tenant_names)}


def _hangs_on(columns: _Columns, tolerance: Tolerance, alpha: float, quorum: Quorum) -> str | None:
    """The tenant without whose answers no signal is worse (each tenant left out in turn, one tenant fewer
    required), or None: the rollback holds whoever is left out. With canary_min_tenants 1, one tenant may
    decide, as the operator said."""
    if quorum.min_tenants < 2:
        return None
    fewer = replace(quorum, min_tenants=quorum.min_tenants - 1)
    by_weight = Counter(columns.tenant[np.unique(columns.cluster, return_index=True)[1]].tolist())
    for tenant, _ in by_weight.most_common():  # the tenants with the most users first: the likeliest to decide
        if not any(t.verdict == "worse" for t in _tests(columns.without(tenant), tolerance, alpha, fewer)):
            return columns.tenant_names[tenant]
    return None


def _breakdown(observations: Sequence[Observation], columns: _Columns) -> tuple[TenantEvidence, ...]:
    """Per tenant (most answers first): answers, users and refusals per arm, and each signal's difference."""
    counted = [o for o in observations if not o.refused]
    answers = Counter((o.tenant, o.arm) for o in counted)
    users = Counter((o.tenant, o.arm) for o in {(o.tenant, o.arm, o.user): o for o in counted}.values())
    refused = Counter(o.tenant for o in observations if o.refused)
    differences = {spec.name: _tenant_differences(columns, columns.values[spec.name]) for spec in SIGNALS}
    order = Counter(o.tenant for o in observations)
    return tuple(
        TenantEvidence(
            tenant=name,
            canary_answers=answers[name, "canary"],
            stable_answers=answers[name, "stable"],
            canary_users=users[name, "canary"],
            stable_users=users[name, "stable"],
            refused=refused[name],
            differences={signal: by_tenant.get(name) for signal, by_tenant in differences.items()},
        )
        for name, _ in order.most_common()
    )


def analyse(
    observations: Sequence[Observation],
    tolerance: Tolerance,
    alpha: float,
    min_answers: int,
    autopromote: bool,
    quorum: Quorum,
) -> CanaryAnalysis:
    """Every signal's test and the decision: roll back when one is worse, whichever tenant is left out; promote
    (when asked to) once both arms have ``min_answers`` answers, the quorum of users and tenants, and none is
    worse."""
    per_signal = alpha / len(SIGNALS)
    columns = _Columns.of(observations)
    tests = _tests(columns, tolerance, per_signal, quorum)
    counted = [o for o in observations if not o.refused]
    canary_n = sum(o.arm == "canary" for o in counted)
    stable_n = len(counted) - canary_n
    tenants = _breakdown(observations, columns)
    canary_users, stable_users = (sum(t.users(arm) for t in tenants) for arm in ARMS)
    decision: Decision = "continue"
    hangs_on = None
    if any(t.verdict == "worse" for t in tests):
        hangs_on = _hangs_on(columns, tolerance, per_signal, quorum)
        decision = "rollback" if hangs_on is None else "continue"
    elif autopromote and min(canary_n, stable_n) >= min_answers and _quorum_met(tenants, quorum):
        decision = "promote"
    return CanaryAnalysis(
        canary_answers=canary_n, stable_answers=stable_n, canary_users=canary_users, stable_users=stable_users,
        alpha=alpha, tolerance=tolerance, tests=tests, decision=decision, tenants=tenants, hangs_on_tenant=hangs_on,
    )  # fmt: skip


def _quorum_met(tenants: Sequence[TenantEvidence], quorum: Quorum) -> bool:
    """Both arms have the quorum's users and tenants (refusals apart)."""
    for arm in ARMS:
        users = [t.users(arm) for t in tenants]
        if sum(users) < quorum.min_users or sum(u > 0 for u in users) < quorum.min_tenants:
            return False
    return True
