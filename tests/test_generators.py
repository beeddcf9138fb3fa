"""Generators and the fallback chain. The backends are real (llama.cpp with SmolLM2, the extractive generator,
an OpenAI-compatible HTTP server); fakes only inject faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from prompts.loader import ModelParams, PromptPassage, load_prompt
from retrieval.embedding import Embedder
from serving.extractive import ExtractiveGenerator
from serving.fallback import ChainDelta, ChainResult, CircuitBreaker, FallbackChain, Replaced
from serving.generation import (
    NOT_IN_DOCUMENTS,
    Generation,
    GenerationRequest,
    GeneratorError,
    StreamDelta,
    Usage,
)
from serving.llamacpp import LlamaCppGenerator
from serving.openai_compat import OpenAICompatibleGenerator
from tests.faulty_server import FaultyServer

PASSAGES = [
    PromptPassage(1, "paris", "Paris is the capital of France. It lies on the Seine."),
    PromptPassage(2, "tea", "Green tea should steep for two minutes. Black tea takes longer."),
]


def request(question: str = "What is the capital of France?", max_tokens: int = 24) -> GenerationRequest:
    prompt = load_prompt("rag_answer", "v1")
    return GenerationRequest(
        prompt.render(question, PASSAGES), question, PASSAGES, ModelParams(temperature=0.0, max_tokens=max_tokens)
    )


@pytest.fixture(scope="session")
def llamacpp() -> LlamaCppGenerator:
    return LlamaCppGenerator()


def test_extractive_is_deterministic_and_cites(embedder: Embedder) -> None:
    generator = ExtractiveGenerator(embedder)
    first = generator.generate(request())
    assert first.text.startswith("Paris is the capital of France.") and "[1]" in first.text
    assert generator.generate(request()) == first
    streamed = list(generator.stream(request()))
    assert "".join(e.text for e in streamed if isinstance(e, StreamDelta)) == first.text
    assert streamed[-1] == first


def test_extractive_says_when_nothing_fits(embedder: Embedder) -> None:
    answer = ExtractiveGenerator(embedder, min_similarity=0.5).generate(request("Who painted the Mona Lisa?"))
    assert answer.text == NOT_IN_DOCUMENTS


def test_llamacpp_generates_and_streams(llamacpp: LlamaCppGenerator) -> None:
    result = llamacpp.generate(request())
    assert result.text and result.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens > 50 and 0 < result.usage.completion_tokens <= 24
    events = list(llamacpp.stream(request()))
    deltas = [e.text for e in events if isinstance(e, StreamDelta)]
    assert len(deltas) > 1 and isinstance(events[-1], Generation)
    assert "".join(deltas).strip() == events[-1].text == result.text  # temperature 0, seeded: same answer


def test_llamacpp_consumer_stopping_early_does_not_wedge_the_model(llamacpp: LlamaCppGenerator) -> None:
    stream = llamacpp.stream(request(max_tokens=64))
    assert isinstance(next(stream), StreamDelta)
    stream.close()  # like a client that disconnects after the first token
    started = time.monotonic()
    assert llamacpp.generate(request()).text
    assert time.monotonic() - started < 20


def test_llamacpp_deadline_is_a_timeout(llamacpp: LlamaCppGenerator) -> None:
    slow = LlamaCppGenerator.__new__(LlamaCppGenerator)
    slow.__dict__.update(llamacpp.__dict__)
    slow._timeout_s = 0.0
    with pytest.raises(GeneratorError) as failure:
        slow.generate(request())
    assert failure.value.kind == "timeout"


@pytest.mark.parametrize(("mode", "kind"), [("error", "status"), ("malformed", "malformed"), ("slow", "timeout")])
def test_openai_compatible_failures_are_classified(mode: str, kind: str) -> None:
    server = FaultyServer(mode)
    try:
        generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=0.5, max_retries=1)
        with pytest.raises(GeneratorError) as failure:
            generator.generate(request())
        assert failure.value.kind == kind
        if mode == "error":
            assert server.calls == 2  # one retry on a 5xx
    finally:
        server.close()


def test_connection_refused_is_a_connection_failure() -> None:
    generator = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", timeout_s=1, max_retries=0)
    with pytest.raises(GeneratorError) as failure:
        generator.generate(request())
    assert failure.value.kind == "connection"


class Failing:
    """Injects a fault: fails every call, optionally after streaming a few words."""

    def __init__(self, name: str = "flaky", kind: str = "timeout", words_before_failing: int = 0) -> None:
        self.name = name
        self.calls = 0
        self._kind = kind
        self._words = words_before_failing

    def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        raise GeneratorError(self._kind, "injected")  # type: ignore[arg-type]

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        self.calls += 1
        for word in ["partial ", "answer "][: self._words]:
            yield StreamDelta(word)
        raise GeneratorError(self._kind, "injected")  # type: ignore[arg-type]


def test_chain_falls_back_and_says_why(embedder: Embedder) -> None:
    chain = FallbackChain([Failing(kind="connection"), ExtractiveGenerator(embedder)])
    result = chain.generate(request())
    assert result.generator == "extractive"
    assert result.fallback is not None and result.fallback.from_ == "flaky"
    assert result.fallback.reason.startswith("connection")


def test_empty_output_falls_back(embedder: Embedder) -> None:
    class Empty:
        name = "empty"

        def generate(self, request: GenerationRequest) -> Generation:
            return Generation("  ", Usage(), "stop", "m")

        def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
            yield Generation("", Usage(), "stop", "m")

    chain = FallbackChain([Empty(), ExtractiveGenerator(embedder)])
    for result in (chain.generate(request()), list(chain.stream(request()))[-1]):
        assert isinstance(result, ChainResult) and result.generator == "extractive"
        assert result.fallback is not None and result.fallback.reason.startswith("empty")


def test_circuit_breaker_opens_and_recovers(embedder: Embedder) -> None:
    now = [0.0]
    flaky = Failing()
    chain = FallbackChain([flaky, ExtractiveGenerator(embedder)], failure_threshold=2, cooldown_s=10)
    chain.breakers["flaky"] = CircuitBreaker(2, 10, clock=lambda: now[0])
    for _ in range(4):
        chain.generate(request())
    assert flaky.calls == 2  # open after two failures: the next calls skip it
    assert chain.generate(request()).fallback.reason == "circuit_open"  # type: ignore[union-attr]
    now[0] = 11.0  # cool-down over: one trial call goes through, fails, opens again
    chain.generate(request())
    assert flaky.calls == 3 and chain.breakers["flaky"].state == "open"


def test_breaker_closes_after_a_successful_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(1, 5, clock=lambda: now[0])
    breaker.record_failure()
    assert not breaker.allow()
    now[0] = 6
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_stream_failing_mid_answer_says_so_then_continues_with_the_fallback(embedder: Embedder) -> None:
    chain = FallbackChain([Failing(words_before_failing=2), ExtractiveGenerator(embedder)])
    events = list(chain.stream(request()))
    replaced = next(i for i, e in enumerate(events) if isinstance(e, Replaced))
    before = "".join(e.text for e in events[:replaced] if isinstance(e, ChainDelta))
    after = "".join(e.text for e in events[replaced:] if isinstance(e, ChainDelta))
    assert before == "partial answer " and "Paris" in after
    final = events[-1]
    assert isinstance(final, ChainResult) and final.generator == "extractive" and final.fallback is not None
    assert final.generation.text == after  # the fallback's answer alone: nothing of the failed one


def test_stream_failing_before_first_token_is_replaced_silently(embedder: Embedder) -> None:
    events = list(FallbackChain([Failing(), ExtractiveGenerator(embedder)]).stream(request()))
    text = "".join(e.text for e in events if isinstance(e, ChainDelta))
    assert not any(isinstance(e, Replaced) for e in events) and text.startswith("Paris")
