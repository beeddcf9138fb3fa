"""The stronger hallucination check, sampled: ragas faithfulness through a judge LLM on a configured share of
answers, off the request path.

The built-in groundedness score runs on every answer in milliseconds; a judge costs seconds, so a share of the
traffic (``RAGOPS_JUDGE_SHARE``) is queued to one background thread that asks the judge
(``RAGOPS_JUDGE_BASE_URL``, any OpenAI-compatible server) and records the score, or the failure, as metrics.
A full queue drops samples; the request never waits.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evals.metrics import Metric
    from serving.metrics import ServiceMetrics
    from serving.pipeline import Answer, AnswerRequest

log = logging.getLogger("ragops.judge")


class SampledJudge:
    def __init__(
        self,
        make_judge: Callable[[], Metric],
        share: float,
        metrics: ServiceMetrics,
        seed: int | None = None,
        max_pending: int = 100,
    ) -> None:
        self._make_judge = make_judge  # built in the worker thread: the judge owns an event loop
        self._share = share
        self._metrics = metrics
        self._random = random.Random(seed)
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="ragops-judge", daemon=True)
        self._thread.start()

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        if answer.refused or answer.abstained or answer.cached or self._random.random() >= self._share:
            return
        try:
            self._queue.put_nowait((request.question, answer.to_dict()))
        except queue.Full:
            self._metrics.judge_results.labels("dropped").inc()

    def _run(self) -> None:
        from evals.metrics import Sample

        judge: Metric | None = None
        while (item := self._queue.get()) is not None:
            question, body = item
            try:
                judge = judge or self._make_judge()
                score = judge(Sample("live", question), body)
            except Exception as exc:  # the judge is optional: a failure is counted and logged, never raised
                self._metrics.judge_results.labels("failed").inc()
                log.warning("judgement failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            if score is None:
                continue
            self._metrics.judge_results.labels("scored").inc()
            self._metrics.judge_faithfulness.observe(score)

    def close(self, wait_s: float = 1.0) -> None:
        with contextlib.suppress(queue.Full):  # full: the daemon thread dies with the process instead
            self._queue.put_nowait(None)
        self._thread.join(wait_s)
