"""LangSmith tracing of the answering pipeline: one trace per request, with the input guard, retrieval, prompt,
generation and output guard as child runs. ``answer_stages`` lays those steps out once, for LangSmith here and
for OpenTelemetry (``serving.observe.otel``); ``FanOutTracer`` sends each answer to both when both are configured.

Off unless ``LANGSMITH_API_KEY`` or ``LANGSMITH_ENDPOINT`` is set. The trace is built from the finished answer
(its timings place the child runs) and handed to a background thread that posts batches to LangSmith's
``/runs/batch`` with a short timeout: a slow or dead endpoint costs a request nothing, and at shutdown the
worker gets one second before pending runs are dropped. Inputs and outputs are redacted (PII, secrets) by
default: traces leave the machine.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from safety.pii import redact_values
from serving.infra.background import BackgroundWorker

if TYPE_CHECKING:
    from serving.contracts.answer import Answer, AnswerRequest

log = logging.getLogger("ragops.tracing")


def _dotted(start: datetime, run_id: uuid.UUID) -> str:
    return f"{start.strftime('%Y%m%dT%H%M%S%fZ')}{run_id}"


def trace_runs(
    request: AnswerRequest, answer: Answer, project: str, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The runs of one request in LangSmith's schema: a root chain run and its children, laid out in time."""
    end = now or datetime.now(UTC)
    timings = answer.timings_ms
    start = end - timedelta(milliseconds=timings.get("total", 0.0))
    root_id = uuid.uuid4()
    root_order = _dotted(start, root_id)
    shown = answer.model_dump(mode="json", include={"answer", "outcome", "generator", "fallback", "refused",
                                                     "abstained", "groundedness", "prompt"})  # fmt: skip
    runs = [
        {
            "id": str(root_id), "trace_id": str(root_id), "dotted_order": root_order, "name": "ragops.chat",
            "run_type": "chain", "session_name": project, "start_time": start.isoformat(), "end_time": end.isoformat(),
            "inputs": {"question": request.question, "collection": request.scope.collection, "top_k": request.top_k},
            "outputs": {k: shown[k] for k in ("answer", "outcome", "generator", "fallback", "refused", "abstained",
                                              "groundedness")},
            "extra": {"metadata": {"prompt": shown["prompt"], "tenant": request.scope.tenant,
                                   "cached": answer.cached}},
        }
    ]  # fmt: skip
    cursor = start
    for stage in answer_stages(request, answer):
        child_id = uuid.uuid4()
        child_end = cursor + timedelta(milliseconds=stage.ms)
        runs.append(
            {
                "id": str(child_id), "trace_id": str(root_id), "parent_run_id": str(root_id),
                "dotted_order": f"{root_order}.{_dotted(cursor, child_id)}", "name": stage.name,
                "run_type": _RUN_TYPES[stage.kind], "session_name": project, "start_time": cursor.isoformat(),
                "end_time": child_end.isoformat(), "inputs": stage.inputs, "outputs": stage.outputs,
            }
        )  # fmt: skip
        cursor = child_end
    return runs


StageKind = Literal["guard", "tool", "retriever", "prompt", "llm"]
_RUN_TYPES: dict[StageKind, str] = {"guard": "tool", "tool": "tool", "retriever": "retriever", "prompt": "prompt",
                                    "llm": "llm"}  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """One stage an answer went through, as a traced step: how long it took, what it saw and returned. LangSmith
    runs and OpenTelemetry spans are both laid out from these, one after the other from the request's start."""

    name: str
    kind: StageKind
    ms: float
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def answer_stages(request: AnswerRequest, answer: Answer) -> list[Stage]:
    """The stages of ``answer`` in the order they ran, timed from its timings and guard verdicts."""
    timings, guards, question = answer.timings_ms, answer.guards, {"question": request.question}
    citations = [c.model_dump(include={"index", "doc_id", "score", "text"}) for c in answer.citations]
    prompt = answer.prompt.model_dump(mode="json")
    stages: list[Stage] = []
    if guards is not None and guards.input is not None:
        stages.append(Stage("guard.input", "guard", guards.input.latency_ms, question,
                            guards.input.model_dump(mode="json")))  # fmt: skip
    query = request.question
    if answer.rewrite is not None:  # a question with earlier turns: how retrieval's query was made from it
        query = answer.rewrite.query
        stages.append(Stage("rewrite", "tool", answer.rewrite.ms, {**question, "turns": len(request.history)},
                            answer.rewrite.model_dump(mode="json")))  # fmt: skip
    stages.append(Stage("retrieval", "retriever", timings.get("embed", 0.0) + timings.get("search", 0.0),
                        {"query": query}, {"documents": citations}))  # fmt: skip
    stages.append(Stage("prompt", "prompt", 0.0, question, {"prompt": prompt}))
    if "generate" in timings:
        stages.append(Stage("generation", "llm", timings["generate"], question,
                            {"text": answer.answer, "model": answer.model,
                             "usage": answer.usage.model_dump(mode="json")}))  # fmt: skip
    if guards is not None and guards.output is not None:
        stages.append(Stage("guard.output", "guard", guards.output.latency_ms, {"answer": answer.answer},
                            guards.output.model_dump(mode="json")))  # fmt: skip
    return stages


@dataclass(frozen=True)
class FinishedAnswer:
    """An answer as a request hands it to a tracer's worker: when it ended, in Unix nanoseconds."""

    request: AnswerRequest
    answer: Answer
    end_ns: int


class Tracer(Protocol):
    """Where finished answers are traced: ``record`` only hands over (a request never waits on an endpoint)."""

    def record(self, request: AnswerRequest, answer: Answer) -> None: ...

    def close(self) -> None: ...


class NoTracer:
    def record(self, request: AnswerRequest, answer: Answer) -> None:
        pass

    def close(self) -> None:
        pass


class FanOutTracer:
    """Every answer to each tracer (LangSmith and OpenTelemetry side by side); each keeps its own queue, so a
    dead endpoint of one costs the others nothing."""

    def __init__(self, tracers: Sequence[Tracer]) -> None:
        self.tracers = tuple(tracers)

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        for tracer in self.tracers:
            tracer.record(request, answer)

    def close(self) -> None:
        for tracer in self.tracers:
            tracer.close()


class LangSmithTracer:
    def __init__(
        self,
        endpoint: str,
        api_key: str | None,
        project: str,
        redact: bool = True,
        timeout_s: float = 2.0,
        max_pending: int = 1000,
        batch_size: int = 20,
    ) -> None:
        self._url = endpoint.rstrip("/") + "/runs/batch"
        self._project = project
        self._redact = redact
        headers = {"x-api-key": api_key} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self.dropped = 0
        self._worker: BackgroundWorker[FinishedAnswer] = BackgroundWorker(
            "ragops-tracing", self._post, max_pending, batch_size, on_drop=self._count_drop
        )

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        # Only the hand-over happens here: building and redacting the runs cost about 0.5 ms (p99 5-10 ms) on
        # the request's thread when they were made here (bench/tracing.py); the worker does it now.
        self._worker.put(FinishedAnswer(request, answer, time.time_ns()))

    def _count_drop(self) -> None:
        self.dropped += 1

    def _runs(self, finished: FinishedAnswer) -> list[dict[str, Any]]:
        ended = datetime.fromtimestamp(finished.end_ns / 1e9, UTC)
        runs = trace_runs(finished.request, finished.answer, self._project, ended)
        if self._redact:
            runs = [{**r, "inputs": redact_values(r["inputs"]), "outputs": redact_values(r["outputs"])} for r in runs]
        return runs

    def _post(self, batch: list[FinishedAnswer]) -> None:
        try:
            runs = [run for finished in batch for run in self._runs(finished)]
        except Exception as exc:  # a trace that cannot be built is dropped, never raised into the worker
            self.dropped += len(batch)
            log.warning("traces not built; dropped", extra={"error": str(exc)[:200]})
            return
        try:
            self._client.post(self._url, json={"post": runs, "patch": []}).raise_for_status()
        except Exception as exc:  # whatever the endpoint or a closing client does: drop, never raise
            self.dropped += 1
            log.warning("trace upload failed; runs dropped", extra={"error": str(exc)[:200], "runs": len(runs)})

    def close(self, wait_s: float = 1.0) -> None:
        """Send what is pending within ``wait_s``; a dead endpoint never holds up shutdown longer."""
        self._worker.close(wait_s)
        self._client.close()
