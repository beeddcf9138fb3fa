"""ragas metrics for the runner.

Two kinds: context precision and recall against the reference passages (ragas' non-LLM variants: string
similarity between retrieved and reference contexts, no model), and faithfulness and answer relevancy, which
ask a judge LLM reached through any OpenAI-compatible endpoint (vLLM, a hosted API). A judge is optional: without
one the judge metrics are not applicable. A judgement that fails (an unreachable judge, output that does not
parse, a NaN) raises, and the runner reports it as failed and leaves it out of means.

ragas is imported inside the functions: it is slow to import and only eval runs need it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evals.metrics import Metric, Sample
from retrieval.offline import apply_offline_environment

if TYPE_CHECKING:
    from retrieval.embedding import Embedder
    from serving.contracts.answer import Answer

JUDGE_METRICS = ("faithfulness", "answer_relevancy")


class JudgementError(Exception):
    """A judge metric gave no usable score for a sample."""


def _contexts(result: Answer) -> list[str]:
    return [c.text for c in result.citations]


def _single_turn(metric: Any, sample: Sample, result: Answer) -> float | None:
    if not sample.reference_contexts:
        return None
    from ragas.dataset_schema import SingleTurnSample

    turn = SingleTurnSample(
        user_input=sample.question,
        retrieved_contexts=_contexts(result) or [""],
        reference_contexts=list(sample.reference_contexts),
    )
    return float(metric.single_turn_score(turn))


def context_precision(sample: Sample, result: Answer) -> float | None:
    """ragas NonLLMContextPrecisionWithReference: are the passages that match a reference ranked first?"""
    apply_offline_environment()  # ragas: no telemetry, no fetches
    from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference

    return _single_turn(NonLLMContextPrecisionWithReference(), sample, result)


def context_recall(sample: Sample, result: Answer) -> float | None:
    """ragas NonLLMContextRecall: share of the reference passages found among the retrieved ones."""
    apply_offline_environment()  # ragas: no telemetry, no fetches
    from ragas.metrics._context_recall import NonLLMContextRecall

    return _single_turn(NonLLMContextRecall(), sample, result)


RAGAS_METRICS: dict[str, Metric] = {"context_precision": context_precision, "context_recall": context_recall}


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str
    model: str
    api_key: str = "not-needed"
    timeout_s: float = 60.0
    max_tokens: int = 512


def judge_metrics(config: JudgeConfig | None, embedder: Embedder) -> dict[str, Metric]:
    """Faithfulness and answer relevancy through ``config``'s judge; not applicable (None) without a judge."""
    if config is None:
        return {name: lambda sample, result: None for name in JUDGE_METRICS}
    judge = _Judge(config, embedder)
    return {"faithfulness": judge.faithfulness, "answer_relevancy": judge.answer_relevancy}


class _Judge:
    """One event loop and one client for a whole run: ragas' metrics are async."""

    def __init__(self, config: JudgeConfig, embedder: Embedder) -> None:
        apply_offline_environment()  # ragas: no telemetry, no fetches
        from openai import AsyncOpenAI
        from ragas.llms.base import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, Faithfulness

        self._loop = asyncio.new_event_loop()
        client = AsyncOpenAI(base_url=config.base_url, api_key=config.api_key, timeout=config.timeout_s, max_retries=0)
        # One attempt per judgement: a judge that answers off-schema fails the sample rather than looping.
        llm = llm_factory(config.model, client=client, temperature=0.0, max_tokens=config.max_tokens, max_retries=1)
        self._faithfulness = Faithfulness(llm=llm)
        self._relevancy = AnswerRelevancy(llm=llm, embeddings=_embeddings(embedder), strictness=1)

    def _run(self, judged: Callable[[], Any]) -> float:
        try:
            value = self._loop.run_until_complete(judged()).value
        except Exception as exc:  # whatever the judge or its output parser raised: a failed judgement
            raise JudgementError(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        if value is None or math.isnan(float(value)):
            raise JudgementError("the judge returned NaN")
        return float(value)

    def faithfulness(self, sample: Sample, result: Answer) -> float | None:
        if result.abstained or result.outcome == "failed" or not result.answer.strip():
            return None
        return self._run(
            lambda: self._faithfulness.ascore(
                user_input=sample.question, response=result.answer, retrieved_contexts=_contexts(result)
            )
        )

    def answer_relevancy(self, sample: Sample, result: Answer) -> float | None:
        if sample.expected != "answer" or not result.answer.strip():
            return None
        return self._run(lambda: self._relevancy.ascore(user_input=sample.question, response=result.answer))


def _embeddings(embedder: Embedder) -> Any:
    """ragas' embedding interface over ragops' own embedder (the same local model, no download)."""
    from ragas.embeddings.base import BaseRagasEmbedding

    class LocalEmbeddings(BaseRagasEmbedding):
        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return [float(x) for x in embedder.embed([text])[0]]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

    return LocalEmbeddings()
