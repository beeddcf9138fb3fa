"""The stronger hallucination check, sampled: a judge LLM (ragas faithfulness, wired by the composition root)
scores a configured share of answers, off the request path.

The built-in groundedness score runs on every answer in milliseconds; a judge costs seconds, so a share of the
traffic (``RAGOPS_JUDGE_SHARE``) is queued to one background worker that asks the judge and records the score,
or the failure, as metrics. A full queue drops samples; the request never waits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from serving.infra.background import BackgroundWorker

if TYPE_CHECKING:
    from serving.contracts.answer import Answer, AnswerRequest
    from serving.observe.metrics import ServiceMetrics

log = logging.getLogger("ragops.judge")

Judgement = Callable[[str, "Answer"], float | None]  # (question, answer) -> score, None: not applicable


class SampledJudge:
    def __init__(
        self,
        make_judge: Callable[[], Judgement],
        share: float,
        metrics: ServiceMetrics,
        seed: int | None = None,
        max_pending: int = 100,
    ) -> None:
        self._make_judge = make_judge  # built in the worker thread: the judge owns an event loop
        self._judge: Judgement | None = None
        self._share = share
        self._metrics = metrics
        self._random = random.Random(seed)
        self._worker: BackgroundWorker[tuple[str, Answer]] = BackgroundWorker(
            "ragops-judge", self._judge_all, max_pending, on_drop=self._count_drop
        )

    def _count_drop(self) -> None:
        self._metrics.judge_results.labels("dropped").inc()

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        if answer.outcome != "answered" or self._random.random() >= self._share:
            return
        self._worker.put((request.question, answer))

    def _judge_all(self, items: list[tuple[str, Answer]]) -> None:
        for question, answer in items:
            try:
                self._judge = self._judge or self._make_judge()
                score = self._judge(question, answer)
            except Exception as exc:  # the judge is optional: a failure is counted and logged, never raised
                self._metrics.judge_results.labels("failed").inc()
                log.warning("judgement failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            if score is not None:
                self._metrics.judge_results.labels("scored").inc()
                self._metrics.judge_faithfulness.observe(score)

    def close(self, wait_s: float = 1.0) -> None:
        self._worker.close(wait_s)
