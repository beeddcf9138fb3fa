"""The answering pipeline in process: citations, abstention, the answer cache and its invalidation."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from app.container import Services
from app.parts import UnavailableGenerator
from prompts.registry import PromptRegistry
from retrieval.documents import Document, Section
from retrieval.index import Scope
from serving.answering.fallback import FallbackChain
from serving.answering.pipeline import Answer, RagPipeline
from serving.answering.stages import Generate
from serving.contracts.answer import ANSWER_ID, AnswerRequest, resolve_citations
from serving.contracts.generation import NOT_IN_DOCUMENTS, Generation, GenerationRequest, StreamDelta, Usage
from tests.conftest import sample_documents

SCOPE = Scope("sample", "default")


@pytest.fixture
def extractive(make_services: Callable[..., Services]) -> Services:
    services = make_services(generator="extractive")
    services.ingestor.ingest_documents(sample_documents(40), SCOPE)
    return services


def test_answer_cites_retrieved_passages(extractive: Services) -> None:
    answer = extractive.pipeline.answer(
        AnswerRequest(question="What part of the Earth's atmosphere is oxygen?", scope=SCOPE)
    )
    assert answer.generator == "extractive" and answer.fallback is None and not answer.cached
    production = PromptRegistry().labels("rag_answer")["production"]
    assert answer.outcome == "answered" and answer.prompt.name == "rag_answer" and answer.prompt.version == production
    assert [c.index for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    numbers = {int(n) for n in re.findall(r"\[(\d+)\]", answer.answer)}
    assert numbers and numbers == {c.index for c in answer.citations if c.cited}
    assert set(answer.timings_ms) >= {"embed", "search", "generate", "total"}


def test_unrelated_question_abstains_without_calling_a_model(extractive: Services) -> None:
    answer = extractive.pipeline.answer(AnswerRequest(question="How do I reset my router password?", scope=SCOPE))
    assert (answer.answer, answer.outcome, answer.generator, answer.citations, answer.abstained) == (
        NOT_IN_DOCUMENTS,
        "abstained",
        None,
        [],
        True,
    )
    empty = extractive.pipeline.answer(AnswerRequest(question="anything", scope=Scope("empty-collection", "default")))
    assert empty.abstained and empty.relevance is None


def test_an_outage_is_a_failure_not_an_abstention(extractive: Services) -> None:
    """Every generator failing gives the fixed answer with outcome "failed": never counted as an abstention."""
    broken = Generate(FallbackChain([UnavailableGenerator("extractive", "down for the test")]))
    pipeline = RagPipeline(replace(extractive.pipeline.stages, generate=broken), extractive.pipeline.prompt_for,
                           observer=extractive.observe)  # fmt: skip
    answer = pipeline.answer(AnswerRequest(question="What part of the Earth's atmosphere is oxygen?", scope=SCOPE))
    assert (answer.answer, answer.outcome, answer.abstained, answer.generator) == (
        NOT_IN_DOCUMENTS,
        "failed",
        False,
        None,
    )
    assert answer.fallback is not None and "down for the test" in answer.fallback.reason
    registry = extractive.metrics.registry
    assert registry.get_sample_value("ragops_answers_total", {"outcome": "failed", "generator": "none"}) == 1
    assert registry.get_sample_value("ragops_answers_total", {"outcome": "abstained", "generator": "none"}) is None
    assert not pipeline.answer(
        AnswerRequest(question="What part of the Earth's atmosphere is oxygen?", scope=SCOPE)
    ).cached


class SaysNotInDocuments:
    """A model that abstains in the fixed sentence (as the cited-sentences grammar lets it)."""

    name = "abstainer"

    def generate(self, request: GenerationRequest) -> Generation:
        return Generation(NOT_IN_DOCUMENTS, Usage(prompt_tokens=9, completion_tokens=8), "stop", "abstainer-model")

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        yield StreamDelta(NOT_IN_DOCUMENTS)
        yield self.generate(request)


def test_a_model_that_says_the_passages_lack_the_answer_abstains(extractive: Services) -> None:
    stages = replace(extractive.pipeline.stages, generate=Generate(FallbackChain([SaysNotInDocuments()])))
    pipeline = RagPipeline(stages, extractive.pipeline.prompt_for, observer=extractive.observe)
    answer = pipeline.answer(AnswerRequest(question="What part of the Earth's atmosphere is oxygen?", scope=SCOPE))
    assert (answer.answer, answer.outcome, answer.abstained, answer.generator) == (
        NOT_IN_DOCUMENTS,
        "abstained",
        True,
        "abstainer",
    )
    assert answer.groundedness is None or answer.groundedness.score is None  # nothing claimed, nothing to judge
    assert answer.fallback is None  # the output guard lets an abstention through


def test_cache_hit_and_invalidation_on_index_change(extractive: Services) -> None:
    question = AnswerRequest(question="What part of the Earth's atmosphere is oxygen?", scope=SCOPE)
    first = extractive.pipeline.answer(question)
    again = extractive.pipeline.answer(
        AnswerRequest(question="  what part of the earth's atmosphere is OXYGEN ", scope=SCOPE)
    )
    assert again.cached and again.outcome == "cached" and again.answer == first.answer
    assert set(again.timings_ms) == {"total"}
    assert ANSWER_ID.match(first.id) and ANSWER_ID.match(again.id) and again.id != first.id  # each answer its own
    extractive.ingestor.ingest_documents([Document("new", (Section("Oxygen makes up a fifth of air."),))], SCOPE)
    assert not extractive.pipeline.answer(question).cached  # the index changed
    other_tenant = AnswerRequest(question=question.question, scope=Scope("sample", "someone-else"))
    assert not extractive.pipeline.answer(other_tenant).cached


def test_semantic_cache_matches_a_paraphrase(make_services: Callable[..., Services]) -> None:
    services = make_services(generator="extractive", semantic_cache_threshold=0.9)
    services.ingestor.ingest_documents(sample_documents(40), SCOPE)
    services.pipeline.answer(AnswerRequest(question="What part of the Earth's atmosphere is oxygen?", scope=SCOPE))
    assert services.pipeline.answer(
        AnswerRequest(question="What part of Earth's atmosphere is oxygen", scope=SCOPE)
    ).cached
    assert not services.pipeline.answer(AnswerRequest(question="Who were the Normans?", scope=SCOPE)).cached


def test_streaming_yields_deltas_then_the_answer(extractive: Services) -> None:
    events = list(extractive.pipeline.stream(AnswerRequest(question="Who were the Normans?", scope=SCOPE)))
    assert isinstance(events[-1], Answer) and all(isinstance(e, str) for e in events[:-1])
    assert "".join(str(e) for e in events[:-1]).strip() == events[-1].answer


def test_unknown_citation_numbers_are_dropped() -> None:
    from retrieval.documents import Hit

    hits = [
        Hit(doc_id="a", chunk_id="c1", score=1.0, text="A.", title=None, source=None, metadata={}),
        Hit(doc_id="b", chunk_id="c2", score=0.5, text="B.", title=None, source=None, metadata={}),
    ]
    text, citations = resolve_citations("Alpha [1]. Beta [2, 7]. Gamma [9].", hits)
    assert text == "Alpha [1]. Beta [2]. Gamma ."
    assert [(c.index, c.cited) for c in citations] == [(1, True), (2, True)]
