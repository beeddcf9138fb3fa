"""OpenTelemetry tracing of the answering pipeline: each answer as one trace exported over OTLP/HTTP (protobuf)
to ``{otlp_endpoint}/v1/traces``, which Langfuse, Phoenix, Jaeger, Tempo and most APMs ingest.

The root span ``ragops.chat`` carries what the request was and how it ended (prompt version, generator, outcome,
groundedness, tenant); its children are the stages of ``serving.observe.tracing.answer_stages``, laid out from the
answer's timings exactly as the LangSmith runs are. Attribute names follow the OpenTelemetry GenAI semantic
conventions where they have one (``gen_ai.*``) and OpenInference's (Phoenix) for span kinds, inputs and retrieved
documents; the rest are ``ragops.*``. Texts are redacted (PII, secrets) like LangSmith's unless ``trace_redact``
is off.

A request only enqueues its answer: the spans are built on a background thread and exported by the SDK's
``BatchSpanProcessor`` with a 2 s timeout, so a slow or dead collector costs a request nothing and holds up
shutdown by at most ``wait_s``. The provider is this tracer's own, never the process-global one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from safety.pii import redact, redact_values
from serving.infra.background import BackgroundWorker
from serving.observe.tracing import FinishedAnswer, Stage, StageKind, answer_stages

if TYPE_CHECKING:
    from serving.contracts.answer import Answer, AnswerRequest

log = logging.getLogger("ragops.tracing")

Attributes = dict[str, AttributeValue]
TRACES_PATH = "/v1/traces"
ROOT_SPAN = "ragops.chat"
# OpenInference span kinds (what Phoenix and Arize draw a span as).
_SPAN_KINDS: dict[StageKind, str] = {"guard": "GUARDRAIL", "tool": "TOOL", "retriever": "RETRIEVER", "prompt": "PROMPT",
                                     "llm": "LLM"}  # fmt: skip
# In-process models are INTERNAL; a model behind HTTP is a CLIENT call (GenAI conventions).
_REMOTE_GENERATORS = frozenset({"vllm"})


def traces_url(endpoint: str) -> str:
    """The signal URL of an ``OTEL_EXPORTER_OTLP_ENDPOINT``-style base URL (a URL already ending in
    ``/v1/traces`` is kept)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class _Texts:
    """Texts as they may leave the machine: redacted, or as they are."""

    def __init__(self, redacting: bool) -> None:
        self._redacting = redacting

    def text(self, value: str) -> str:
        return redact(value) if self._redacting else value

    def json(self, value: dict[str, Any]) -> str:
        shown = redact_values(value) if self._redacting else value
        return json.dumps(shown, ensure_ascii=False, default=str)


def root_attributes(request: AnswerRequest, answer: Answer, texts: _Texts) -> Attributes:
    """What the request was and how it ended."""
    attributes: Attributes = {
        "openinference.span.kind": "CHAIN",
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": ROOT_SPAN,
        "gen_ai.response.id": answer.id,
        "gen_ai.data_source.id": request.scope.collection,
        "input.value": texts.text(request.question),
        "output.value": texts.text(answer.answer),
        "ragops.tenant": request.scope.tenant,
        "ragops.collection": request.scope.collection,
        "ragops.outcome": answer.outcome,
        "ragops.cached": answer.cached,
        "ragops.refused": answer.refused,
        "ragops.abstained": answer.abstained,
        "ragops.prompt.name": answer.prompt.name,
        "ragops.prompt.version": answer.prompt.version,
        "ragops.prompt.hash": answer.prompt.hash,
    }
    optional: dict[str, AttributeValue | None] = {
        "ragops.generator": answer.generator,
        "gen_ai.request.model": answer.model,
        "ragops.fallback.from": answer.fallback.from_ if answer.fallback else None,
        "ragops.fallback.reason": answer.fallback.reason if answer.fallback else None,
        "ragops.groundedness": answer.groundedness.score if answer.groundedness else None,
        "ragops.relevance": answer.relevance,
    }
    attributes.update({name: value for name, value in optional.items() if value is not None})
    return attributes


def stage_attributes(stage: Stage, request: AnswerRequest, answer: Answer, texts: _Texts) -> Attributes:
    """A stage's span: its kind, what it saw and returned, and the conventions' names for its kind."""
    attributes: Attributes = {
        "openinference.span.kind": _SPAN_KINDS[stage.kind],
        "input.value": texts.json(stage.inputs),
        "input.mime_type": "application/json",
        "output.value": texts.json(stage.outputs),
        "output.mime_type": "application/json",
    }
    if stage.kind == "retriever":
        attributes |= _retrieval_attributes(request, answer, texts)
    elif stage.kind == "llm":
        attributes |= _generation_attributes(answer)
    elif stage.kind == "prompt":
        attributes |= {"llm.prompt_template.version": answer.prompt.version, "ragops.prompt.hash": answer.prompt.hash}
    return attributes


def _retrieval_attributes(request: AnswerRequest, answer: Answer, texts: _Texts) -> Attributes:
    attributes: Attributes = {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.data_source.id": request.scope.collection,
        "gen_ai.retrieval.query.text": texts.text(request.question),
    }
    for i, citation in enumerate(answer.citations):  # OpenInference's flattened document list
        prefix = f"retrieval.documents.{i}.document"
        attributes |= {f"{prefix}.id": citation.doc_id, f"{prefix}.score": citation.score,
                       f"{prefix}.content": texts.text(citation.text)}  # fmt: skip
    return attributes


def _generation_attributes(answer: Answer) -> Attributes:
    usage = answer.usage
    attributes: Attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.response.id": answer.id,
        "llm.token_count.prompt": usage.prompt_tokens,
        "llm.token_count.completion": usage.completion_tokens,
    }
    if answer.generator:
        attributes["gen_ai.provider.name"] = answer.generator
    if answer.model:
        attributes |= {"gen_ai.request.model": answer.model, "gen_ai.response.model": answer.model,
                       "llm.model_name": answer.model}  # fmt: skip
    return attributes


def _stage_kind(stage: Stage, answer: Answer) -> SpanKind:
    remote = stage.kind == "llm" and answer.generator in _REMOTE_GENERATORS
    return SpanKind.CLIENT if remote else SpanKind.INTERNAL


def _timeline(finished: FinishedAnswer, start_ns: int) -> Iterator[tuple[Stage, int, int]]:
    """Each stage with its start and end (ns), one after another from the request's start."""
    cursor = start_ns
    for stage in answer_stages(finished.request, finished.answer):
        end = cursor + int(stage.ms * 1e6)
        yield stage, cursor, end
        cursor = end


class OtelTracer:
    def __init__(
        self,
        endpoint: str,
        service_name: str,
        service_version: str,
        redact: bool = True,
        timeout_s: float = 2.0,
        max_pending: int = 1000,
    ) -> None:
        resource = Resource.create({"service.name": service_name, "service.version": service_version})
        self._provider = TracerProvider(resource=resource)
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=timeout_s),
            max_queue_size=2048,
            schedule_delay_millis=1000,
            export_timeout_millis=int(timeout_s * 1000),
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("ragops", service_version)
        self._texts = _Texts(redact)
        self.dropped = 0
        self._worker: BackgroundWorker[FinishedAnswer] = BackgroundWorker(
            "ragops-otel", self._emit, max_pending, batch_size=50, on_drop=self._count_drop
        )

    def record(self, request: AnswerRequest, answer: Answer) -> None:
        self._worker.put(FinishedAnswer(request, answer, time.time_ns()))

    def flush(self, wait_s: float = 5.0) -> bool:
        """Export every span recorded so far (tests and benchmarks)."""
        return self._worker.flush(wait_s) and self._processor.force_flush(int(wait_s * 1000))

    def _count_drop(self) -> None:
        self.dropped += 1

    def _emit(self, batch: list[FinishedAnswer]) -> None:
        for finished in batch:
            try:
                self._spans(finished)
            except Exception as exc:  # a trace that cannot be built is dropped, never raised into the worker
                self.dropped += 1
                log.warning("trace not built; dropped", extra={"error": str(exc)[:200]})

    def _spans(self, finished: FinishedAnswer) -> None:
        request, answer = finished.request, finished.answer
        start = finished.end_ns - int(answer.timings_ms.get("total", 0.0) * 1e6)
        root = self._tracer.start_span(ROOT_SPAN, kind=SpanKind.SERVER, start_time=start,
                                       attributes=root_attributes(request, answer, self._texts))  # fmt: skip
        if answer.outcome == "failed":
            root.set_status(Status(StatusCode.ERROR, answer.fallback.reason if answer.fallback else "failed"))
        parent = trace.set_span_in_context(root)
        for stage, stage_start, stage_end in _timeline(finished, start):
            span = self._tracer.start_span(
                stage.name, context=parent, kind=_stage_kind(stage, answer), start_time=stage_start,
                attributes=stage_attributes(stage, request, answer, self._texts),
            )  # fmt: skip
            span.end(end_time=stage_end)
        root.end(end_time=finished.end_ns)

    def close(self, wait_s: float = 1.0) -> None:
        """Export what is pending within ``wait_s`` in all; a dead collector never holds up shutdown longer."""
        deadline = time.monotonic() + wait_s
        self._worker.close(wait_s)
        # The SDK's shutdown exports all that is queued, each batch with its own timeout (and joins for up to
        # 30 s): it runs on a daemon thread that is given what is left of ``wait_s`` and dies with the process.
        closing = threading.Thread(target=self._processor.shutdown, name="ragops-otel-close", daemon=True)
        closing.start()
        closing.join(max(0.0, deadline - time.monotonic()))
