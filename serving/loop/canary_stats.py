"""The arrays behind the canary analysis (``serving.loop.canary``): evidence clustered by user, replayed answer
by answer. Each answer moves its user's mean; the sums over users of the users' means, of their squares and of
1/answers move by the difference, so every prefix's per-user statistics come from cumulative sums (one pass,
no loop over answers in Python)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def codes(keys: Sequence[Hashable]) -> Ints:
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def running(groups: Ints, x: Floats) -> tuple[Floats, Floats]:
    """At each element: how many elements of its group so far (itself included), and their sum."""
    if not len(groups):
        return np.zeros(0), np.zeros(0)
    order = np.argsort(groups, kind="stable")
    g, xs = groups[order], x[order]
    position = np.arange(len(g))
    starts = np.r_[True, g[1:] != g[:-1]]
    first = np.maximum.accumulate(np.where(starts, position, 0))
    cumulative = np.cumsum(xs)
    count, total = np.empty(len(g)), np.empty(len(g))
    count[order] = position - first + 1
    total[order] = cumulative - (cumulative - xs)[first]
    return count, total


@dataclass(frozen=True)
class ArmTrace:
    """One arm's evidence after each observation (all observations, both arms): distinct users and tenants, the
    mean over users of each user's mean, the variance of a user's mean (raw, ddof 1), and mean(1 / answers) over
    users (what makes a rate's binomial variance that of a user's mean)."""

    users: Floats
    tenants: Floats
    mean: Floats
    var: Floats
    inv_n: Floats


def arm_trace(values: Floats, mine: Bools, cluster: Ints, tenant: Ints) -> ArmTrace:
    """Each answer moves its user's mean from the old to the new one: the sums of means, squared means and
    1/answers over users change by the difference, so every prefix's users' means come from cumulative sums."""
    x = values[mine]
    n, total = running(cluster[mine], x)
    old_n = np.maximum(n - 1, 1.0)
    new_mean, old_mean = total / n, np.where(n > 1, (total - x) / old_n, 0.0)
    first_tenant = running(tenant[mine], np.zeros(len(x)))[0] == 1

    def cumulative(change: Floats) -> Floats:
        full = np.zeros(len(values))
        full[mine] = change
        return np.cumsum(full)

    users = cumulative((n == 1).astype(np.float64))
    sums = cumulative(new_mean - old_mean)
    squares = cumulative(new_mean**2 - old_mean**2)
    inverse = cumulative(1.0 / n - np.where(n > 1, 1.0 / old_n, 0.0))
    some = np.maximum(users, 1.0)
    mean = sums / some
    var = np.maximum(squares - sums * mean, 0.0) / np.maximum(users - 1, 1.0)
    return ArmTrace(users, cumulative(first_tenant.astype(np.float64)), mean, var, inverse / some)


def null_variances(canary: ArmTrace, stable: ArmTrace, margin: float) -> tuple[Floats, Floats]:
    """For a rate, the variances of a user's mean at H0's boundary (as a non-inferiority score test takes them):
    the stable arm's rate (smoothed, so a rate of 0 still has one) and that rate plus the margin for the canary,
    each binomial over a user's answers, times the design effect the arm shows (its users' means vary more than
    binomial: clustering by user; never below 1). The arms' own variances let 25 answers with 3 rare failures
    look like certainty: measured on the qa recordings (100 runs), a rewording was rolled back once with them
    (ungrounded), twice with the pooled variance (uncited: 1 of 40 answers vs 0 of 40), never with these."""
    p_stable = (stable.mean * stable.users + 0.5) / (stable.users + 1.0)
    p_canary = np.clip(p_stable + margin, 0.001, 0.999)

    def variance(arm: ArmTrace, p: Floats) -> Floats:
        binomial = arm.mean * (1 - arm.mean) * arm.inv_n * arm.users / np.maximum(arm.users - 1, 1.0)
        design_effect = np.where(binomial > 1e-12, arm.var / np.maximum(binomial, 1e-12), 1.0)
        return p * (1 - p) * arm.inv_n * np.maximum(design_effect, 1.0)

    return variance(canary, p_canary), variance(stable, p_stable)


def msprt_log_lr(
    canary: ArmTrace, stable: ArmTrace, variances: tuple[Floats, Floats], margin: float, tau: float
) -> Floats:
    """log Λ of the mixture SPRT after each observation, for H0 "canary - stable <= margin" with the mixture
    N(margin, tau²) (``serving.loop.canary`` says when it counts)."""
    var_c, var_s = variances
    s2 = var_c / np.maximum(canary.users, 1.0) + var_s / np.maximum(stable.users, 1.0)
    excess = canary.mean - stable.mean - margin
    t2 = tau * tau
    log_lr: Floats = 0.5 * np.log(s2 / (s2 + t2)) + t2 * excess**2 / (2 * s2 * (s2 + t2))
    return log_lr


def cluster_differences(cluster: Ints, tenant: Ints, canary: Bools, values: Floats) -> dict[int, float]:
    """Per tenant code: the canary's mean over its users' means minus the stable arm's, where both arms have
    users (a cluster is one arm's user in one tenant)."""
    if not len(values):
        return {}
    clusters = int(cluster.max()) + 1
    answers = np.bincount(cluster, minlength=clusters)
    user_mean = np.bincount(cluster, values, clusters) / np.maximum(answers, 1)
    user_tenant, user_canary = np.zeros(clusters, np.int64), np.zeros(clusters, bool)
    user_tenant[cluster], user_canary[cluster] = tenant, canary
    result: dict[int, float] = {}
    for code in np.unique(tenant).tolist():
        mine = (answers > 0) & (user_tenant == code)
        canary_means, stable_means = user_mean[mine & user_canary], user_mean[mine & ~user_canary]
        if len(canary_means) and len(stable_means):
            result[code] = float(canary_means.mean() - stable_means.mean())
    return result
