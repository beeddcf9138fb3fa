"""The llama.cpp engine's first-token work (issue 27): a prompt evaluates only what it does not share with the last
prompt that began with the same system message, even when a prompt with another one ran in between; greedy decoding
under the answer grammar tries the grammar on the best token first. Answers come out token for token as without
either (llama-cpp-python alone). The real model, in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prompts.loader import PromptPassage, load_prompt
from serving.answering.llamacpp.engine import GreedyGrammarSampler, LlamaEngine
from serving.answering.llamacpp.protocol import Done, Job
from serving.answering.llamacpp.worker import WARMUP
from serving.contracts.generation import GenerationRequest

PASSAGES = [
    PromptPassage(1, "d1", "The Normans gave their name to Normandy, a region in northern France. Rollo led them."),
    PromptPassage(2, "d2", "The Amazon rainforest covers much of the Amazon basin of South America."),
]
QUESTIONS = ["Who led the Normans?", "What does the Amazon rainforest cover?"]


def job(number: int, question: str) -> Job:
    prompt = load_prompt("rag_answer", "v2")
    request = GenerationRequest(prompt.render(question, PASSAGES), question, PASSAGES, prompt.params)
    return Job.of(number, request).model_copy(update={"max_tokens": 24})


def done(engine: LlamaEngine, job: Job) -> Done:
    events = list(engine.run(job, lambda: False))
    assert isinstance(events[-1], Done), events[-1]
    return events[-1]


@pytest.fixture(scope="module")
def engines(gguf: Path) -> Iterator[tuple[LlamaEngine, LlamaEngine]]:
    yield LlamaEngine(gguf), LlamaEngine(gguf, prefix_cache=False, fast_grammar=False)


def test_a_prompt_between_answers_does_not_cost_the_system_prompt(engines: tuple[LlamaEngine, LlamaEngine]) -> None:
    """Answer, another prompt (the worker's warm-up: another system message), answer: the second answer reuses the
    first one's system prompt and template up to its passages (what llama-cpp-python alone reuses only when the
    two answers are consecutive), and both engines write the same answers, the grammar mostly checked on one
    token."""
    cached, plain = engines
    texts: dict[str, list[str]] = {"cached": [], "plain": []}
    reused: dict[str, list[int]] = {"cached": [], "plain": []}
    for name, engine in (("cached", cached), ("plain", plain)):
        for number, question in enumerate(QUESTIONS, 1):
            done(engine, WARMUP)
            answer = done(engine, job(number, question))
            texts[name].append(answer.text)
            reused[name].append(answer.prompt_tokens_reused)
            assert answer.prompt_ms > 0
    system_tokens = len(cached._llm.tokenize(load_prompt("rag_answer", "v2").system.encode(), add_bos=False))
    assert reused["cached"][1] > system_tokens, reused  # the system prompt, its template and "Passage [1]"
    assert reused["plain"][1] < 16, reused  # only what the warm-up's prompt shares: the template's first tokens
    assert texts["cached"] == texts["plain"], texts
    sampler = cached._llm._sampler
    assert isinstance(sampler, GreedyGrammarSampler) and sampler.checked > sampler.applied, sampler
    assert not isinstance(plain._llm._sampler, GreedyGrammarSampler)


def test_consecutive_answers_and_a_repeated_question(engines: tuple[LlamaEngine, LlamaEngine]) -> None:
    """Without anything between, the KV cache already holds the shared start; a question asked again evaluates
    (almost) nothing and answers the same."""
    cached, _ = engines
    first = done(cached, job(1, QUESTIONS[0]))
    second = done(cached, job(2, QUESTIONS[1]))
    again = done(cached, job(3, QUESTIONS[1]))
    assert second.prompt_tokens_reused > 60, second
    assert again.prompt_tokens_reused == cached.prompt_tokens - 1, (again, cached.prompt_tokens)
    assert again.text == second.text, (first, second, again)
