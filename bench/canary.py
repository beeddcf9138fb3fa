"""Canary analysis on replayed traffic: how many canary answers a bad canary serves before it is rolled back, and
how often a neutral canary is rolled back by mistake.

Traffic is simulated from recorded answers (``bench/data/canary_answers.jsonl``, made by ``bench/canary_record.py``
from eval runs of SmolLM2 in llama.cpp): each simulated request picks a question of the suites at random and a
user (a new one per request, or with ``--users N`` one of N, so each asks several questions) of one of
``--tenants`` tenants; a share of users gets the canary version, the others the stable one (v2), and the answer
is the one that version gave to that question. The analysis (``serving.loop.canary.analyse``, as the server runs
it) looks every ``check_every`` answers. Bad: v94 (drops citations); neutral: v91 (a rewording) and v2 against
itself (the same answers, so any rollback is a false one).

Latency: the versions were recorded one after another on a shared 2-core machine, under whatever load the others
put on it (v91's median was 7.3 s against v2's 1.0 s on the same questions, with 17% more tokens), so recorded
latencies compare machine loads, not versions. In a real canary both arms run side by side under the same load;
the replay keeps what a version changes, its answer's length: latency = completion tokens x 43.5 ms (SmolLM2's
decode time per token here, docs/guides/prompt-engineer.md "v2"), plus the fixed prompt time, the same
for both.

Tuning (``--tune``, the mixture's τ) uses the ``qa`` suite's questions only (Disfl-QA); the figures reported are
on the other suites' (near_miss, counterfactual: SQuADShifts new_wiki).

Also measured: what the live labels and the monitor add to a request (choosing the prompt from the snapshot,
counting the answer), and one analysis' time over 4,000 answers (off the request path).

Run: ``.venv/bin/python -m bench.canary [--runs 200] [--out bench/results/canary.json] [--tune]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings_operations import CanarySettings
from bench.corpora import emit, percentile
from serving.loop.canary import Arm, CanaryAnalysis, Observation, Quorum, Tolerance, analyse

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "bench" / "data" / "canary_answers.jsonl"
THRESHOLD = 0.55  # groundedness_threshold's default: an answer under it is ungrounded
MS_PER_TOKEN, PROMPT_MS = 43.5, 500.0  # the replayed latency (see above)
TUNING_SUITES = ("qa",)
REPORT_SUITES = ("near_miss", "counterfactual")
QUORUM = Quorum(  # the settings' defaults
    min_users=CanarySettings.model_fields["min_users"].default,
    min_tenants=CanarySettings.model_fields["min_tenants"].default,
)


@dataclass(frozen=True, kw_only=True)
class Recorded:
    """One recorded answer's live signals."""

    suite: str
    version: str
    id: str
    outcome: str
    fallback: str | None
    groundedness: float | None
    cited: bool
    latency_ms: float  # as measured while recording (machine load included)
    completion_tokens: int

    @property
    def replayed_latency_ms(self) -> float:
        return PROMPT_MS + self.completion_tokens * MS_PER_TOKEN

    def observe(self, arm: Arm, user: str, tenant: str, threshold: float = THRESHOLD) -> Observation:
        return Observation.of(
            arm=arm, user=user, tenant=tenant, outcome=self.outcome, groundedness=self.groundedness, cited=self.cited,
            fallback=self.fallback, latency_ms=self.replayed_latency_ms, down_share=None, threshold=threshold,
        )  # fmt: skip


def load_recorded(path: Path = RECORDED) -> dict[str, dict[str, Recorded]]:
    """version -> question id -> its recorded answer."""
    by_version: dict[str, dict[str, Recorded]] = {}
    for line in path.read_text().splitlines():
        record = Recorded(**json.loads(line))
        by_version.setdefault(record.version, {})[f"{record.suite}/{record.id}"] = record
    return by_version


@dataclass(frozen=True, kw_only=True)
class Asker:
    """A simulated user: its name, tenant and arm (sticky, as the server's split is)."""

    user: str
    tenant: str
    arm: Arm


@dataclass(frozen=True)
class Traffic:
    """Simulated requests: which recorded answer each got, and who asked (user, tenant, arm)."""

    answers: tuple[Recorded, ...]
    askers: tuple[Asker, ...]

    def observations(self) -> list[Observation]:
        return [a.observe(who.arm, who.user, who.tenant) for a, who in zip(self.answers, self.askers, strict=True)]


def traffic(
    stable: dict[str, Recorded], canary: dict[str, Recorded], suites: Sequence[str], share: float, n: int, seed: int,
    tenants: int = 4, users: int | None = None,
) -> Traffic:  # fmt: skip
    """``n`` requests over the questions of ``suites`` both versions answered, from ``tenants`` tenants; a new
    user per request, or one of ``users``; each user's arm by the share."""
    rng = random.Random(seed)
    questions = sorted(q for q in stable.keys() & canary.keys() if q.split("/")[0] in suites)

    def new_asker(i: int) -> Asker:
        arm: Arm = "canary" if rng.random() < share else "stable"
        return Asker(user=f"user-{i}", tenant=f"tenant-{rng.randrange(tenants)}", arm=arm)

    pool = [new_asker(i) for i in range(users or 0)]
    answers, askers = [], []
    for i in range(n):
        question = rng.choice(questions)
        asker = rng.choice(pool) if pool else new_asker(i)
        answers.append((canary if asker.arm == "canary" else stable)[question])
        askers.append(asker)
    return Traffic(tuple(answers), tuple(askers))


@dataclass(frozen=True)
class RunResult:
    rolled_back: bool
    canary_answers: int  # at the rollback, or in the whole run
    worse: tuple[str, ...]  # the signals that decided


def replay(run: Traffic, check_every: int, tolerance: Tolerance, alpha: float, quorum: Quorum = QUORUM) -> RunResult:
    """The analysis every ``check_every`` answers, as the server runs it, until it rolls back or traffic ends.
    A rollback, once due, stays due (each answer's statistic uses the answers before it only), so the first
    check that rolls back is found by bisection over the checks."""
    seen = run.observations()

    def at(check: int) -> CanaryAnalysis:
        return analyse(seen[: check * check_every], tolerance, alpha, 10**9, autopromote=False, quorum=quorum)

    low, high = 1, len(seen) // check_every
    last = at(high)
    if last.decision != "rollback":
        return RunResult(False, last.canary_answers, ())
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if at(middle).decision == "rollback" else (middle + 1, high)
    first = at(low)
    return RunResult(True, first.canary_answers, tuple(t.signal for t in first.worse))


def scenario(
    recorded: dict[str, dict[str, Recorded]], canary: str, suites: Sequence[str], runs: int, args: argparse.Namespace
) -> dict[str, Any]:
    simulated = [
        traffic(
            stable=recorded["v2"],
            canary=recorded[canary],
            suites=suites,
            share=args.share,
            n=args.requests,
            seed=s,
            tenants=args.tenants,
            users=args.users,
        )
        for s in range(runs)
    ]
    tolerance = Tolerance(args.tolerance, args.latency_tolerance)
    results = [replay(run, args.check_every, tolerance, args.alpha) for run in simulated]
    to_rollback = [r.canary_answers for r in results if r.rolled_back]
    return {
        "canary": canary, "suites": list(suites), "runs": runs, "rolled_back": len(to_rollback),
        "rollback_rate": len(to_rollback) / runs,
        "canary_answers_to_rollback": None if not to_rollback else {
            "median": statistics.median(to_rollback), "p95": percentile([float(x) for x in to_rollback], 95),
            "max": max(to_rollback), "min": min(to_rollback)},
        "deciding_signals": sorted({s for r in results for s in r.worse}),
    }  # fmt: skip


def request_path_cost(calls: int = 100_000) -> dict[str, float]:
    """Microseconds a request spends in the live selector (snapshot lookup) and the monitor's count, and the
    milliseconds of one analysis over 4,000 answers (in the background)."""
    import tempfile
    import time

    from prompts.registry import PromptRegistry
    from serving.infra.state_store import StateStore
    from serving.loop.canary_control import CanaryBook
    from serving.loop.labels import StoreLabels
    from serving.loop.live_prompts import LivePrompts

    with tempfile.TemporaryDirectory() as tmp:
        state = StateStore.open(None, Path(tmp) / "state.sqlite")
        labels, registry = StoreLabels(state), PromptRegistry()
        labels.adopt_declared(registry)
        labels.move("rag_answer", "canary", "v1", "bench", "canary")
        prompts = LivePrompts(registry.with_labels(labels), "rag_answer@production", "rag_answer@canary",
                              CanaryBook(state, 0.1), 2.0)  # fmt: skip
        started = time.perf_counter()
        for i in range(calls):
            prompts(f"user-{i}")
        choose_us = (time.perf_counter() - started) / calls * 1e6
        prompts.close()
        state.close()
    run = traffic(*(load_recorded()["v2"],) * 2, REPORT_SUITES, 0.1, 4000, 0)
    seen = run.observations()
    started = time.perf_counter()
    analyse(seen, Tolerance(0.05, 0.2), 0.05, 200, False, QUORUM)
    return {
        "choose_prompt_us": round(choose_us, 2),
        "analysis_4000_answers_ms": round((time.perf_counter() - started) * 1e3, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="seeded runs per scenario")
    parser.add_argument("--share", type=float, default=0.1, help="canary share of users")
    parser.add_argument("--requests", type=int, default=4000, help="requests per run (both arms)")
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.05, help="canary_tolerance (rates, absolute)")
    parser.add_argument("--latency-tolerance", type=float, default=0.2, help="canary_latency_tolerance (relative)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--tenants", type=int, default=4, help="tenants the users belong to")
    parser.add_argument("--users", type=int, help="users that ask (default: a new user per request)")
    parser.add_argument("--tune", action="store_true", help="on the tuning suites (qa) instead of the others")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    recorded = load_recorded()
    suites = TUNING_SUITES if args.tune else REPORT_SUITES
    figures = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "bad": scenario(recorded, "v94", suites, args.runs, args),
        "neutral_rewording": scenario(recorded, "v91", suites, args.runs, args),
        "neutral_same_answers": scenario(recorded, "v2", suites, args.runs, args),
        "cost": request_path_cost(),
    }
    emit(figures, args.out)


if __name__ == "__main__":
    main()
