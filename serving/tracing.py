"""LangSmith tracing of the answering pipeline: one trace per request, with the input guard, retrieval, prompt,
generation and output guard as child runs.

Off unless ``LANGSMITH_API_KEY`` or ``LANGSMITH_ENDPOINT`` is set. The trace is built from the finished answer
(its timings place the child runs) and handed to a background thread that posts batches to LangSmith's
``/runs/batch`` with a short timeout: a slow or dead endpoint costs a request nothing, and at shutdown the
worker gets one second before pending runs are dropped. Inputs and outputs are redacted (PII, secrets) by
default: traces leave the machine.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from safety.pii import redact_values
from serving.background import BackgroundWorker

if TYPE_CHECKING:
    from serving.answer import Answer
    from serving.stages import AnswerRequest

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
                                                     "abstained", "groundedness", "prompt", "usage"})  # fmt: skip
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
    for name, run_type, ms, inputs, outputs in _steps(request, answer, shown):
        child_id = uuid.uuid4()
        child_end = cursor + timedelta(milliseconds=ms)
        runs.append(
            {
                "id": str(child_id), "trace_id": str(root_id), "parent_run_id": str(root_id),
                "dotted_order": f"{root_order}.{_dotted(cursor, child_id)}", "name": name, "run_type": run_type,
                "session_name": project, "start_time": cursor.isoformat(), "end_time": child_end.isoformat(),
                "inputs": inputs, "outputs": outputs,
            }
        )  # fmt: skip
        cursor = child_end
    return runs


Step = tuple[str, str, float, dict[str, Any], dict[str, Any]]  # name, run type, ms, inputs, outputs


def _steps(request: AnswerRequest, answer: Answer, shown: dict[str, Any]) -> list[Step]:
    """The child runs: the stages the answer went through, with what each saw and returned."""
    timings, guards, question = answer.timings_ms, answer.guards, {"question": request.question}
    citations = [c.model_dump(include={"index", "doc_id", "score", "text"}) for c in answer.citations]
    steps: list[Step] = []
    if guards is not None and guards.input is not None:
        steps.append(("guard.input", "tool", guards.input.latency_ms, question, guards.input.model_dump(mode="json")))
    steps.append(("retrieval", "retriever", timings.get("embed", 0.0) + timings.get("search", 0.0),
                  {"query": request.question}, {"documents": citations}))  # fmt: skip
    steps.append(("prompt", "prompt", 0.0, question, {"prompt": shown["prompt"]}))
    if "generate" in timings:
        steps.append(("generation", "llm", timings["generate"], question,
                      {"text": answer.answer, "model": answer.model, "usage": shown["usage"]}))  # fmt: skip
    if guards is not None and guards.output is not None:
        steps.append(("guard.output", "tool", guards.output.latency_ms, {"answer": answer.answer},
                      guards.output.model_dump(mode="json")))  # fmt: skip
    return steps


class NoTracer:
    def record(self, request: AnswerRequest, answer: Answer) -> None:
        pass

    def close(self) -> None:
        pass


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
        self._worker: BackgroundWorker[list[dict[str, Any]]] = BackgroundWorker(
            "ragops-tracing", self._post, max_pending, batch_size, on_drop=self._count_drop
        )

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        runs = trace_runs(request, answer, self._project)
        if self._redact:
            runs = [{**r, "inputs": redact_values(r["inputs"]), "outputs": redact_values(r["outputs"])} for r in runs]
        self._worker.put(runs)

    def _count_drop(self) -> None:
        self.dropped += 1

    def _post(self, traces: list[list[dict[str, Any]]]) -> None:
        runs = [run for trace in traces for run in trace]
        try:
            self._client.post(self._url, json={"post": runs, "patch": []}).raise_for_status()
        except Exception as exc:  # whatever the endpoint or a closing client does: drop, never raise
            self.dropped += 1
            log.warning("trace upload failed; runs dropped", extra={"error": str(exc)[:200], "runs": len(runs)})

    def close(self, wait_s: float = 1.0) -> None:
        """Send what is pending within ``wait_s``; a dead endpoint never holds up shutdown longer."""
        self._worker.close(wait_s)
        self._client.close()
