"""Drift: has what users ask, or how the service answers them, moved away from a reference? The statistics are
in ``drift_stats``; here, the reference profiles, one check against the newest, and the monitor.

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
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from serving.infra.background import BackgroundWorker
from serving.infra.clock import parse_stamp, stamp, utc_now
from serving.loop.drift_stats import MIN_SAMPLES, AnswerSignals, DriftSample, Embed, SignalResult, compare
from serving.loop.lineage import append_event

if TYPE_CHECKING:
    from serving.contracts.answer import Answer
    from serving.infra.state_store import StateStore
    from serving.loop.answer_log import AnswerLog
    from serving.loop.lineage import Lineage

log = logging.getLogger("ragops.drift")


DEFAULT_PROFILE = "default"


@dataclass(frozen=True, kw_only=True)
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

    @property
    def tested(self) -> bool:
        """Whether some signal was tested: with every one skipped (too few values) there is no verdict."""
        return any(result.p_value is not None for result in self.signals)

    def why_untested(self) -> str:
        """Which signals were skipped and why: each needs ``MIN_SAMPLES`` values in the profile and the window."""
        counts = ", ".join(f"{r.signal} {r.reference}/{r.current}" for r in self.signals if r.p_value is None)
        return (f"every signal was skipped, each needs at least {MIN_SAMPLES} values in both the profile and the "
                f"window (values in profile/window: {counts})")  # fmt: skip


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
        return DriftSample(
            embeddings=embeddings,
            top_score=tuple(self.top_score),
            abstention=tuple(self.abstention),
            fallback=tuple(self.fallback),
            groundedness=tuple(self.groundedness),
            answer_length=tuple(self.answer_length),
        )


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
        row = rows[0]
        body = _ProfileBody.model_validate_json(row["body"])
        return DriftProfile(row["id"], row["name"], parse_stamp(row["created_at"]), body.sample(), body.lineage)

    def names(self) -> dict[str, str]:
        """Each profile name with the source of its newest profile (``suite`` or ``traffic``), by name."""
        sql = "SELECT name, source FROM drift_profiles ORDER BY name, created_at DESC"
        with self._state.transaction() as cur:
            rows = cur.execute(sql)
        newest: dict[str, str] = {}
        for row in rows:
            newest.setdefault(str(row["name"]), str(row["source"]))
        return newest


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
    return DriftReport(
        profile_id=profile.id,
        profile_name=profile.name,
        checked_at=utc_now(),
        answers=current.questions,
        alpha=alpha,
        signals=tuple(results),
        drifted=any(r.drifted for r in results),
        took_ms=round(took, 1),
    )


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
