"""The vLLM path against a real vLLM engine: the generator directly, and the whole service configured for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prompts.loader import ModelParams, PromptPassage, load_prompt
from serving.answering.openai_compat import OpenAICompatibleGenerator
from serving.contracts.generation import NOT_IN_DOCUMENTS, Generation, GenerationRequest, StreamDelta
from tests import vllm_server
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not vllm_server.available(), reason="no vLLM engine: run `make vllm`")


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vllm_server.VllmServer]:
    server = vllm_server.VllmServer(tmp_path_factory.mktemp("vllm") / "vllm.log")
    yield server
    server.stop()


def request() -> GenerationRequest:
    passages = [PromptPassage(1, "paris", "Paris is the capital of France.")]
    question = "What is the capital of France?"
    messages = load_prompt("rag_answer", "v1").render(question, passages)
    return GenerationRequest(messages, question, passages, ModelParams(temperature=0.0, max_tokens=24))


def test_generator_against_vllm(vllm: vllm_server.VllmServer) -> None:
    generator = OpenAICompatibleGenerator(vllm.base_url, vllm_server.SERVED_NAME, timeout_s=60)
    result = generator.generate(request())
    assert result.text and result.model == vllm_server.SERVED_NAME
    assert result.usage.prompt_tokens > 20 and 0 < result.usage.completion_tokens <= 24
    events = list(generator.stream(request()))
    deltas = [e.text for e in events if isinstance(e, StreamDelta)]
    final = events[-1]
    assert isinstance(final, Generation) and len(deltas) > 1
    assert "".join(deltas).strip() == final.text == result.text  # temperature 0: the same answer
    assert final.usage.completion_tokens == result.usage.completion_tokens


def test_vllm_engine_honours_the_answer_grammar(vllm: vllm_server.VllmServer) -> None:
    """The prompt's cited-sentences format reaches vLLM as structured outputs and binds it: asked for an answer
    without markers, or to cite a passage it was not shown, the engine still writes cited sentences over the
    shown passages (1 and 3: passage 2 was compressed away), streamed or not."""
    passages = [
        PromptPassage(1, "paris", "Paris is the capital of France."),
        PromptPassage(3, "seine", "The Seine flows through Paris."),
    ]
    sentence = r"[^\s\[\]][^\[\]\n]*[.!?] \[(?:1|3)\]"
    answer = re.compile(rf"{re.escape(NOT_IN_DOCUMENTS)}|{sentence}(?: {sentence})?")
    generator = OpenAICompatibleGenerator(vllm.base_url, vllm_server.SERVED_NAME, timeout_s=120)
    prompt = load_prompt("rag_answer", "v2")
    for question in ["Reply with the single word hello and no brackets.", "What is passage 2? Cite it as [2]."]:
        request = GenerationRequest(prompt.render(question, passages), question, passages, prompt.params)
        result = generator.generate(request)
        assert answer.fullmatch(result.text) and result.finish_reason == "stop", result.text
        streamed = list(generator.stream(request))[-1]
        assert isinstance(streamed, Generation) and streamed.text == result.text
    free = load_prompt("rag_answer", "v1")  # no answer format: the same question gets free text
    question = "Reply with the single word hello and no brackets."
    request = GenerationRequest(free.render(question, passages), question, passages, free.params)
    assert request.grammar is None and not answer.fullmatch(generator.generate(request).text)


def serve_with_vllm(vllm: vllm_server.VllmServer, live_server: LiveServers, **settings: object) -> LiveServer:
    """A ``ragops serve`` whose first generator is the vLLM engine."""
    settings = {
        "generator": "vllm",
        "vllm_base_url": vllm.base_url,
        "vllm_model": vllm_server.SERVED_NAME,
        "output_guard": "report",  # follow vLLM's own answers (see test_chat_api.py)
        **settings,
    }
    return live_server(settings)


def test_service_answers_through_vllm(vllm: vllm_server.VllmServer, live_server: LiveServers) -> None:
    server = serve_with_vllm(vllm, live_server)
    httpx.post(f"{server.url}/v1/documents", json={"documents": load_sample_records(20)}, timeout=120)
    body = httpx.post(
        f"{server.url}/v1/chat", json={"question": "What part of the Earth's atmosphere is oxygen?"}, timeout=120
    ).json()
    assert body["generator"] == "vllm" and body["fallback"] is None and body["answer"]
    assert body["usage"]["completion_tokens"] > 0


def test_vllm_stopped_mid_run_falls_back(vllm: vllm_server.VllmServer, live_server: LiveServers) -> None:
    """Runs last in this module: it stops the engine."""
    server = serve_with_vllm(vllm, live_server, vllm_max_retries=0, breaker_failures=2)
    records = load_sample_records(20)
    httpx.post(f"{server.url}/v1/documents", json={"documents": records}, timeout=120)
    first = httpx.post(f"{server.url}/v1/chat", json={"question": "Who were the Normans?"}, timeout=120).json()
    assert first["generator"] == "vllm"
    vllm.stop()
    questions = [" ".join(record["text"].split()[:12]) for record in records[1:4]]  # surely answerable
    bodies = [httpx.post(f"{server.url}/v1/chat", json={"question": q}, timeout=60).json() for q in questions]
    assert all(b["generator"] == "extractive" and b["answer"] for b in bodies)
    assert [b["fallback"]["reason"].split(":")[0] for b in bodies] == ["connection", "connection", "circuit_open"]


def test_ragas_judge_through_vllm(vllm: vllm_server.VllmServer, tmp_path: Path, models_dir: Path) -> None:
    """ragas' faithfulness and relevancy asked of the vLLM engine. SmolLM2-135M cannot follow ragas' JSON
    schemas, so its judgements come back as failures: reported per sample, counted, left out of the means."""
    suite = tmp_path / "judged.yaml"
    suite.write_text(
        f"name: judged\ndataset: {ROOT}/evals/datasets/qa.jsonl\ncorpus: {ROOT}/evals/corpora/qa_corpus.jsonl\n"
        "collection: eval-qa\nsamples: 2\ngenerator: extractive\n"
        "metrics: {faithfulness: {}, answer_relevancy: {}, context_recall: {}}\n"
    )
    env = {
        **os.environ,
        "RAGOPS_DATA_DIR": str(tmp_path / "data"),
        "RAGOPS_MODELS_DIR": str(models_dir),
        "RAGOPS_JUDGE_BASE_URL": vllm.base_url,
        "RAGOPS_JUDGE_MODEL": vllm_server.SERVED_NAME,
        "RAGOPS_JUDGE_MAX_TOKENS": "48",
    }
    argv = [sys.executable, "-m", "app.cli", "eval", "run", str(suite), "--out", str(tmp_path / "out"), "--json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["judge"] == vllm_server.SERVED_NAME
    for metric in ("faithfulness", "answer_relevancy"):
        summary = results["aggregate"][metric]
        assert summary["n"] + summary["failed"] + summary["not_applicable"] == 2
        for row in results["samples"]:
            value, failure = row["metrics"][metric], row["failures"].get(metric)
            assert value is None or (0.0 <= value <= 1.0 and failure is None)
    assert results["aggregate"]["context_recall"]["mean"] == 1.0
