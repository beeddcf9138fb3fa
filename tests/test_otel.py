"""OpenTelemetry export: spans over OTLP/HTTP as a collector receives them (decoded from protobuf), side by side
with LangSmith from a served request, and a dead collector costing a request nothing."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from retrieval.index import Scope
from safety.groundedness import Groundedness
from safety.guards import GuardVerdict
from serving.contracts.answer import AnswerRequest, Citation, GuardVerdicts
from serving.contracts.generation import Usage
from serving.observe.otel import OtelTracer, traces_url
from tests.conftest import load_sample_records, make_answer
from tests.http_receiver import HttpReceiver
from tests.live_server import LiveServers

EMAIL = "jane@example.com"


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    assert which is not None
    return getattr(value, which)


def received_spans(receiver: HttpReceiver) -> tuple[list[Span], dict[str, Any]]:
    """Every span the receiver got at /v1/traces, and the resource attributes they came with."""
    spans: list[Span] = []
    resource: dict[str, Any] = {}
    for recorded in receiver.requests:
        if recorded.path != "/v1/traces":
            continue
        assert recorded.headers["content-type"] == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(recorded.body)
        for resource_spans in message.resource_spans:
            resource |= {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    return spans, resource


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


def traced_answer() -> tuple[AnswerRequest, Any]:
    request = AnswerRequest(question=f"I am {EMAIL}. Who were the Normans?", scope=Scope("sample", "acme"))
    citation = Citation(index=1, doc_id="d1", chunk_id="c1", title=None, source=None, text=f"Normans {EMAIL}",
                        score=0.8, cited=True)  # fmt: skip
    answer = make_answer(
        "The Normans came from Normandy. [1]", generator="llamacpp", model="smollm2", citations=[citation],
        usage=Usage(prompt_tokens=120, completion_tokens=12), groundedness=Groundedness(score=0.9),
        timings_ms={"embed": 5.0, "search": 7.0, "generate": 300.0, "total": 330.0},
        guards=GuardVerdicts(input=GuardVerdict(action="redact", latency_ms=2.0),
                             output=GuardVerdict(action="pass", latency_ms=4.0)),
    )  # fmt: skip
    return request, answer


def test_an_answer_becomes_a_span_tree_with_genai_attributes() -> None:
    receiver = HttpReceiver()
    tracer = OtelTracer(receiver.url, "ragops-test", "1.2.3")
    request, answer = traced_answer()
    try:
        tracer.record(request, answer)
        assert tracer.flush(10.0)
    finally:
        tracer.close()
        receiver.close()
    spans, resource = received_spans(receiver)
    assert resource["service.name"] == "ragops-test" and resource["service.version"] == "1.2.3"
    root = next(span for span in spans if not span.parent_span_id)
    children = {span.name: span for span in spans if span.parent_span_id == root.span_id}
    assert len(spans) == 6 and set(children) == {"guard.input", "retrieval", "prompt", "generation", "guard.output"}
    assert all(span.trace_id == root.trace_id for span in spans)
    assert root.name == "ragops.chat" and root.kind == Span.SPAN_KIND_SERVER
    assert abs((root.end_time_unix_nano - root.start_time_unix_nano) / 1e6 - 330.0) < 0.01
    ordered = sorted(children.values(), key=lambda span: span.start_time_unix_nano)
    assert [span.name for span in ordered] == ["guard.input", "retrieval", "prompt", "generation", "guard.output"]
    assert all(root.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano <= root.end_time_unix_nano
               for s in ordered)  # fmt: skip
    top = attributes(root)
    assert top["gen_ai.response.id"] == answer.id and top["ragops.prompt.version"] == "v1"
    assert top["ragops.tenant"] == "acme" and top["ragops.outcome"] == "answered"
    assert top["ragops.generator"] == "llamacpp" and top["ragops.groundedness"] == 0.9
    generation = attributes(children["generation"])
    assert generation["gen_ai.operation.name"] == "chat" and generation["gen_ai.request.model"] == "smollm2"
    assert generation["gen_ai.usage.input_tokens"] == 120 and generation["gen_ai.usage.output_tokens"] == 12
    assert generation["openinference.span.kind"] == "LLM"
    retrieval = attributes(children["retrieval"])
    assert retrieval["gen_ai.operation.name"] == "retrieval" and retrieval["retrieval.documents.0.document.id"] == "d1"
    assert EMAIL not in str([attributes(span) for span in spans])  # redacted like LangSmith's traces


def test_a_served_request_is_traced_to_langsmith_and_otlp_side_by_side(live_server: LiveServers) -> None:
    langsmith, collector = HttpReceiver(), HttpReceiver()
    env = {
        "LANGSMITH_ENDPOINT": langsmith.url, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "ragops-live",
    }  # fmt: skip
    server = live_server({"default_collection": "sample", "generator": "extractive"}, env)
    try:
        server.ingest(load_sample_records(20))
        body = httpx.post(f"{server.url}/v1/chat", json={"question": "Who were the Normans?"}, timeout=60).json()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (collector.paths("POST") and langsmith.paths("POST")):
            time.sleep(0.1)
    finally:
        server.stop()
        langsmith.close()
        collector.close()
    assert langsmith.paths("POST") == ["/runs/batch"]
    spans, resource = received_spans(collector)
    root = next(span for span in spans if span.name == "ragops.chat")
    assert resource["service.name"] == "ragops-live"
    assert attributes(root)["gen_ai.response.id"] == body["id"]
    assert attributes(root)["ragops.prompt.hash"] == body["prompt"]["hash"]


def test_a_dead_collector_costs_a_request_nothing() -> None:
    blackhole = socket.socket()  # accepts connections, never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    tracer = OtelTracer(f"http://127.0.0.1:{blackhole.getsockname()[1]}", "ragops", "0", timeout_s=5.0)
    request, answer = traced_answer()
    timings = []
    for _ in range(3000):  # more than the queue holds: the surplus is dropped, not waited for
        started = time.perf_counter()
        tracer.record(request, answer)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    tracer.close(wait_s=1.0)
    closing = time.perf_counter() - started
    blackhole.close()
    # Never waits for the collector (5 s timeout): the median call is a queue put (p99 is noise on a busy CI box).
    assert sorted(timings)[len(timings) // 2] < 0.001 and max(timings) < 1.0
    assert closing < 1.5 and tracer.dropped > 0


def test_the_traces_url_follows_the_otlp_endpoint_rule() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://x/api/public/otel/v1/traces") == "https://x/api/public/otel/v1/traces"
