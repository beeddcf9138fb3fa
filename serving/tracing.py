"""LangSmith tracing of the answering pipeline: one trace per request, with the input guard, retrieval, prompt,
generation and output guard as child runs.

Off unless ``LANGSMITH_API_KEY`` or ``LANGSMITH_ENDPOINT`` is set. The trace is built from the finished answer
(its timings place the child runs) and handed to a background thread that posts batches to LangSmith's
``/runs/batch`` with a short timeout: a slow or dead endpoint costs a request nothing, and at shutdown the
thread gets one second before pending runs are dropped. Inputs and outputs are redacted (PII, secrets) by
default: traces leave the machine.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from safety.pii import redact_values

if TYPE_CHECKING:
    from serving.pipeline import Answer, AnswerRequest

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
    guards = answer.guards or {}
    citations = [{"index": c.index, "doc_id": c.doc_id, "score": c.score, "text": c.text} for c in answer.citations]
    runs = [
        {
            "id": str(root_id), "trace_id": str(root_id), "dotted_order": root_order, "name": "ragops.chat",
            "run_type": "chain", "session_name": project, "start_time": start.isoformat(), "end_time": end.isoformat(),
            "inputs": {"question": request.question, "collection": request.scope.collection, "top_k": request.top_k},
            "outputs": {"answer": answer.answer, "generator": answer.generator, "fallback": answer.fallback,
                        "refused": answer.refused, "abstained": answer.abstained,
                        "groundedness": answer.groundedness},
            "extra": {"metadata": {"prompt": answer.prompt, "tenant": request.scope.tenant, "cached": answer.cached}},
        }
    ]  # fmt: skip
    steps: list[tuple[str, str, float, dict[str, Any], dict[str, Any]]] = []
    if "input" in guards:
        steps.append(("guard.input", "tool", guards["input"].get("latency_ms", 0.0), {"question": request.question},
                      guards["input"]))  # fmt: skip
    steps.append(("retrieval", "retriever", timings.get("embed", 0.0) + timings.get("search", 0.0),
                  {"query": request.question}, {"documents": citations}))  # fmt: skip
    steps.append(("prompt", "prompt", 0.0, {"question": request.question}, {"prompt": answer.prompt}))
    if "generate" in timings:
        steps.append(("generation", "llm", timings["generate"], {"question": request.question},
                      {"text": answer.answer, "model": answer.model, "usage": answer.usage.__dict__}))  # fmt: skip
    if "output" in guards:
        steps.append(("guard.output", "tool", guards["output"].get("latency_ms", 0.0), {"answer": answer.answer},
                      guards["output"]))  # fmt: skip
    cursor = start
    for name, run_type, ms, inputs, outputs in steps:
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
        batch_size: int = 50,
    ) -> None:
        self._url = endpoint.rstrip("/") + "/runs/batch"
        self._project = project
        self._redact = redact
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=max_pending)
        self._batch_size = batch_size
        headers = {"x-api-key": api_key} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="ragops-tracing", daemon=True)
        self._thread.start()

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        runs = trace_runs(request, answer, self._project)
        if self._redact:
            runs = [{**r, "inputs": redact_values(r["inputs"]), "outputs": redact_values(r["outputs"])} for r in runs]
        try:
            self._queue.put_nowait(runs)
        except queue.Full:  # the endpoint is not keeping up: drop rather than grow or block
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = list(item)
            while len(batch) < self._batch_size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._post(batch)
                    return
                batch.extend(more)
            self._post(batch)

    def _post(self, runs: list[dict[str, Any]]) -> None:
        try:
            self._client.post(self._url, json={"post": runs, "patch": []}).raise_for_status()
        except Exception as exc:  # whatever the endpoint or a closing client does: drop, never raise
            self.dropped += 1
            log.warning("trace upload failed; runs dropped", extra={"error": str(exc)[:200], "runs": len(runs)})

    def close(self, wait_s: float = 1.0) -> None:
        """Send what is pending within ``wait_s``; a dead endpoint never holds up shutdown longer."""
        with contextlib.suppress(queue.Full):  # full: the daemon thread dies with the process instead
            self._queue.put_nowait(None)
        self._thread.join(wait_s)
        self._client.close()
