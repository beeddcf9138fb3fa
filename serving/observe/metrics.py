"""Prometheus metrics of the service, in a registry of its own (no process globals), exposed at ``/metrics``.

Per answer: counts by outcome (answered, cached, abstained, refused, failed) and generator ("none" when no
generator wrote the answer), latency per pipeline stage, tokens, cache hits, fallbacks by
reason, guard triggers by validator, the groundedness histogram. Over a rolling window of recent answers: the
hallucination rate (share of judged answers below the groundedness threshold) and the fallback rate; when one
crosses its alert threshold, a structured alert is logged once and ``ragops_alert_active{alert=...}`` is 1 until
the rate falls back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.contracts.answer import Answer

alert_log = logging.getLogger("ragops.alerts")
# An alert's fields (its ``extra``, keys of the JSON log line), in the order a terminal line shows them.
ALERT_FIELDS = ("prompt", "rate", "threshold", "answers", "rated", "raters", "signals", "profile")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RecentRatings(Protocol):
    """A prompt version's latest ratings, as the feedback store counts them (``loop.feedback.DownRate``)."""

    @property
    def prompt_version(self) -> str: ...
    @property
    def rated(self) -> int: ...
    @property
    def raters(self) -> int: ...
    @property
    def rate(self) -> float | None: ...


class DriftSignal(Protocol):
    @property
    def signal(self) -> str: ...
    @property
    def statistic(self) -> float | None: ...
    @property
    def drifted(self) -> bool: ...


class DriftCheck(Protocol):
    """What the metrics read of a finished drift check (``loop.drift.DriftReport``)."""

    @property
    def profile_id(self) -> str: ...
    @property
    def answers(self) -> int: ...
    @property
    def took_ms(self) -> float: ...
    @property
    def drifted(self) -> bool: ...
    @property
    def signals(self) -> Sequence[DriftSignal]: ...


@dataclass(frozen=True)
class AlertThresholds:
    hallucination_rate: float = 0.2
    fallback_rate: float = 0.3
    window: int = 100  # answers
    min_answers: int = 20  # no alert on a handful of answers
    thumbs_down_rate: float = 0.3  # of a prompt version's latest ``window`` ratings, after ``min_answers`` of them
    min_raters: int = 5  # ... given by this many raters: one rater's 22 thumbs-down are one opinion


@dataclass(frozen=True, kw_only=True)
class TenantLabels:
    """How a tenant is named in a metric's ``tenant`` label: its name, or (``hashed``) the first 12 hex digits
    of its SHA-256, or of its HMAC-SHA256 under ``key`` (a guessed name cannot be checked without the key)."""

    hashed: bool = False
    key: str | None = None

    def of(self, tenant: str) -> str:
        if not self.hashed:
            return tenant
        if self.key is None:
            return hashlib.sha256(tenant.encode()).hexdigest()[:12]
        return hmac.new(self.key.encode(), tenant.encode(), hashlib.sha256).hexdigest()[:12]


TenantMetric = TypeVar("TenantMetric", Counter, Gauge)


class ByTenant(Generic[TenantMetric]):
    """A metric whose one label is the tenant, named as ``TenantLabels`` says: callers pass the tenant."""

    def __init__(self, metric: TenantMetric, labels: TenantLabels) -> None:
        self._metric: TenantMetric = metric
        self._labels = labels

    def labels(self, tenant: str) -> TenantMetric:
        child: TenantMetric = self._metric.labels(self._labels.of(tenant))
        return child

    def remove(self, tenant: str) -> None:
        self._metric.remove(self._labels.of(tenant))


class ServiceMetrics:
    def __init__(
        self, groundedness_threshold: float, alerts: AlertThresholds | None = None, tenants: TenantLabels | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._threshold = groundedness_threshold
        self._alerts = alerts or AlertThresholds()
        self._tenants = tenants or TenantLabels()
        r = self.registry
        self.answers = Counter(
            "ragops_answers", "Answers by outcome and generator.", ["outcome", "generator"], registry=r
        )
        self.stage_seconds = Histogram(
            "ragops_stage_seconds", "Time per pipeline stage.", ["stage", "generator"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.tokens = Counter("ragops_tokens", "Tokens by generator and kind.", ["generator", "kind"], registry=r)
        self.cache_hits = Counter("ragops_answer_cache_hits", "Answers served from the answer cache.", registry=r)
        self.fallbacks = Counter("ragops_fallbacks", "Fallback answers by reason.", ["reason"], registry=r)
        self.guard_triggers = Counter(
            "ragops_guard_triggers", "Guard validators that fired.", ["guard", "validator", "action"], registry=r
        )
        self.groundedness = Histogram(
            "ragops_groundedness", "Groundedness score of answers.", buckets=[i / 10 for i in range(1, 11)], registry=r
        )
        self.judge_faithfulness = Histogram(
            "ragops_judge_faithfulness", "ragas faithfulness of sampled answers (judge LLM).",
            buckets=[i / 10 for i in range(1, 11)], registry=r,
        )  # fmt: skip
        self.judge_results = Counter(
            "ragops_judge_results", "Sampled judgements by result (scored, failed, dropped).", ["result"], registry=r
        )
        self.errors = Counter("ragops_errors", "Requests that ended in an error response.", ["status"], registry=r)
        self.generator_restarts = Counter(
            "ragops_generator_restarts", "llama.cpp worker processes restarted, by cause (SIGILL, SIGKILL, hung, ...).",
            ["cause"], registry=r,
        )  # fmt: skip
        self.gc_pauses = Histogram(
            "ragops_gc_pause_seconds", "Garbage collector pauses by generation (every thread waits; 2 is a full one).",
            ["generation"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rates = Gauge("ragops_rolling_rate", "Rates over the recent answers.", ["rate"], registry=r)
        self.alert_active = Gauge(
            "ragops_alert_active", "1 while a rate is above its alert threshold.", ["alert"], registry=r
        )
        for add_metrics in (self._add_governance_metrics, self._add_feedback_metrics, self._add_canary_metrics,
                            self._add_drift_metrics):  # fmt: skip
            add_metrics(r)
        self._window: deque[tuple[bool | None, bool]] = deque(maxlen=self._alerts.window)
        self._firing: set[str] = set()
        self._lock = threading.Lock()

    def _add_governance_metrics(self, r: CollectorRegistry) -> None:
        """Cost and budgets, rate limits and Redis, the audit trail's writes."""
        tenants = self._tenants
        self.cost = ByTenant(
            Counter("ragops_cost_usd", "What answers cost (prices setting), by tenant.", ["tenant"], registry=r),
            tenants,
        )
        self.budget_used = ByTenant(
            Gauge(
                "ragops_budget_used_ratio", "Share of its monthly budget a tenant has spent.", ["tenant"], registry=r
            ),
            tenants,
        )
        self.budget_soft_ratio = ByTenant(
            Gauge(
                "ragops_budget_soft_ratio", "The used share at which a tenant's budget warns.", ["tenant"], registry=r
            ),
            tenants,
        )
        self.rate_limit_refusals = Counter(
            "ragops_rate_limit_refusals", "Requests refused with 429 by a rate limit or quota.", ["limit"], registry=r
        )
        self.rate_limiter_degraded = Gauge(
            "ragops_rate_limiter_degraded",
            "1 while Redis is unreachable: limits counted in process (or refused, rate_limit_fail=closed).",
            registry=r,
        )
        self.redis_errors = Counter(
            "ragops_redis_errors", "Failed Redis commands by part (rate_limits, answer_cache).", ["part"], registry=r
        )
        self.audit_records = Counter("ragops_audit_records", "Audit records committed.", registry=r)
        self.audit_failures = Counter(
            "ragops_audit_write_failures", "Audit records whose batch failed to commit (their requests got 503).",
            registry=r,
        )  # fmt: skip
        self.audit_commit_seconds = Histogram(
            "ragops_audit_commit_seconds", "Time to commit one batch of audit records (group commit).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.audit_batch_records = Histogram(
            "ragops_audit_batch_records", "Audit records per committed batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r,
        )  # fmt: skip

    def _add_feedback_metrics(self, r: CollectorRegistry) -> None:
        """Users' ratings of answers, per prompt version, and the version's recent thumbs-down rate."""
        self.feedback = Counter(
            "ragops_feedback", "Ratings received, by prompt, version and rating (a changed rating counts again).",
            ["prompt", "version", "rating"], registry=r,
        )  # fmt: skip
        self.thumbs_down_rate = Gauge(
            "ragops_thumbs_down_rate",
            "Share of thumbs-down among a prompt version's latest rated answers (alert_window of them, all replicas).",
            ["prompt", "version"], registry=r,
        )  # fmt: skip
        self.thumbs_down_raters = Gauge(
            "ragops_thumbs_down_raters",
            "Distinct raters of a prompt version's latest rated answers (alert_window of them, all replicas).",
            ["prompt", "version"], registry=r,
        )  # fmt: skip
        self.thumbs_down_alert = Gauge(
            "ragops_thumbs_down_alert",
            "1 while a prompt version's thumbs-down rate is above alert_thumbs_down_rate (after alert_min_answers "
            "ratings from alert_min_raters raters).",
            ["prompt", "version"], registry=r,
        )  # fmt: skip

    def _add_canary_metrics(self, r: CollectorRegistry) -> None:
        """The canary's live share of users and the analysis' decisions (rollback, promote)."""
        self.canary_share = Gauge(
            "ragops_canary_share", "Share of users the prompt's canary version serves now (0 after a decision).",
            ["prompt"], registry=r,
        )  # fmt: skip
        self.canary_decisions = Counter(
            "ragops_canary_decisions", "Canary analysis decisions taken by this replica, by decision.",
            ["prompt", "decision"], registry=r,
        )  # fmt: skip

    def observe_canary_share(self, prompt: str, share: float) -> None:
        self.canary_share.labels(prompt).set(share)

    def observe_canary_decision(self, prompt: str, decision: str) -> None:
        self.canary_decisions.labels(prompt, decision).inc()

    def observe_feedback(self, prompt: str, rating: str, recent: RecentRatings) -> None:
        """One rating kept: counted, and its version's recent rate (read from the store, so over every replica's
        ratings) exported; crossing the threshold logs an alert once, falling back under it a resolution."""
        self.feedback.labels(prompt, recent.prompt_version, rating).inc()
        rate = recent.rate or 0.0
        enough = recent.rated >= self._alerts.min_answers and recent.raters >= self._alerts.min_raters
        firing = enough and rate > self._alerts.thumbs_down_rate
        self.thumbs_down_rate.labels(prompt, recent.prompt_version).set(rate)
        self.thumbs_down_raters.labels(prompt, recent.prompt_version).set(recent.raters)
        self.thumbs_down_alert.labels(prompt, recent.prompt_version).set(1 if firing else 0)
        alert = f"thumbs_down_rate:{prompt}@{recent.prompt_version}"
        with self._lock:
            changed = firing != (alert in self._firing)
            (self._firing.add if firing else self._firing.discard)(alert)
        details = {"alert": "thumbs_down_rate", "prompt": f"{prompt}@{recent.prompt_version}", "rate": round(rate, 4),
                   "rated": recent.rated, "raters": recent.raters,
                   "threshold": self._alerts.thumbs_down_rate}  # fmt: skip
        if changed:
            alert_log.log(logging.WARNING if firing else logging.INFO,
                          "alert firing" if firing else "alert resolved", extra=details)  # fmt: skip

    def observe(self, answer: Answer) -> None:
        generator = answer.generator or "none"
        self.answers.labels(answer.outcome, generator).inc()
        if answer.outcome == "cached":
            self.cache_hits.inc()
        for stage, ms in answer.timings_ms.items():
            self.stage_seconds.labels(stage, generator).observe(ms / 1000)
        self.tokens.labels(generator, "prompt").inc(answer.usage.prompt_tokens)
        self.tokens.labels(generator, "completion").inc(answer.usage.completion_tokens)
        if answer.fallback:
            self.fallbacks.labels(_reason(answer.fallback.reason)).inc()
        for guard, fired in answer.guards.fired() if answer.guards else []:
            self.guard_triggers.labels(guard, fired.validator, fired.action).inc()
        score = answer.groundedness.score if answer.groundedness else None
        if score is not None:
            self.groundedness.observe(score)
        if answer.outcome != "cached":
            self._record(None if score is None else score < self._threshold, answer.fallback is not None)

    def _record(self, hallucinated: bool | None, fallback: bool) -> None:
        with self._lock:
            self._window.append((hallucinated, fallback))
            judged = [h for h, _ in self._window if h is not None]
            rates = {
                "hallucination_rate": sum(judged) / len(judged) if judged else 0.0,
                "fallback_rate": sum(f for _, f in self._window) / len(self._window),
            }
            limits = {
                "hallucination_rate": self._alerts.hallucination_rate,
                "fallback_rate": self._alerts.fallback_rate,
            }
            counts = {"hallucination_rate": len(judged), "fallback_rate": len(self._window)}
            for name, rate in rates.items():
                self.rates.labels(name).set(rate)
                firing = counts[name] >= self._alerts.min_answers and rate > limits[name]
                if firing and name not in self._firing:
                    self._firing.add(name)
                    details = {
                        "alert": name,
                        "rate": round(rate, 4),
                        "threshold": limits[name],
                        "answers": counts[name],
                    }
                    alert_log.warning("alert firing", extra=details)
                elif not firing and name in self._firing:
                    self._firing.discard(name)
                    alert_log.info("alert resolved", extra={"alert": name, "rate": round(rate, 4)})
                self.alert_active.labels(name).set(1 if firing else 0)

    def _add_drift_metrics(self, r: CollectorRegistry) -> None:
        """The periodic drift check (serving/loop/drift.py): each signal's score and verdict, the check's time."""
        self.drift_score = Gauge(
            "ragops_drift_score",
            "Last drift check, per signal: ROC AUC of the domain classifier (query_embedding), KS statistic "
            "(numbers), window rate minus reference rate (rates).",
            ["signal"], registry=r,
        )  # fmt: skip
        self.drift_detected = Gauge(
            "ragops_drift_detected", "1 when the last drift check found the signal drifted (Holm-corrected).",
            ["signal"], registry=r,
        )  # fmt: skip
        self.drift_check_seconds = Histogram(
            "ragops_drift_check_seconds", "Time of one drift check (embedding the window included).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._drift_firing = False

    def observe_drift(self, report: DriftCheck) -> None:
        """A finished drift check; logs ``alert firing`` (``drift``) when drift appears, ``resolved`` when it ends."""
        for result in report.signals:
            if result.statistic is not None:
                self.drift_score.labels(result.signal).set(result.statistic)
            self.drift_detected.labels(result.signal).set(1 if result.drifted else 0)
        self.drift_check_seconds.observe(report.took_ms / 1000)
        if report.drifted != self._drift_firing:
            self._drift_firing = report.drifted
            drifted = [r.signal for r in report.signals if r.drifted]
            extra = {"alert": "drift", "signals": drifted, "profile": report.profile_id, "answers": report.answers}
            if report.drifted:
                alert_log.warning("alert firing", extra=extra)
            else:
                alert_log.info("alert resolved", extra=extra)

    def observe_audit_batch(self, records: int, seconds: float, ok: bool) -> None:
        """One group commit of the audit writer: its size and time, or its failure."""
        if not ok:
            self.audit_failures.inc(records)
            return
        self.audit_records.inc(records)
        self.audit_commit_seconds.observe(seconds)
        self.audit_batch_records.observe(records)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def alert_line(record: logging.LogRecord) -> str:
    """An alert as one line for a terminal, named, with its fields: ``alert firing: hallucination_rate rate=0.45
    threshold=0.2 answers=24`` (a plain handler would print the bare message; the JSON log has the fields)."""
    fields = record.__dict__
    shown = [f"{key}={_field(fields[key])}" for key in ALERT_FIELDS if key in fields]
    return " ".join([f"{record.getMessage()}: {fields.get('alert', 'unnamed')}", *shown])


def _field(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _reason(text: str) -> str:
    """A bounded label: the kind before the first colon ("timeout", "circuit_open", "output guard")."""
    return (text.split(":", 1)[0].strip() or "unknown")[:40]
