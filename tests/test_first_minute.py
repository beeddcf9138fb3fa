"""The first minute: the README's example questions, asked as a new user would, of a server as `make run` starts
it (the default settings: SmolLM2 in llama.cpp, the output guard enforced), through `/v1/chat` and the openai
SDK. Every answer is grounded and cited, or an honest fallback or abstention: never an unsupported answer shown as
grounded."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from app.settings import flat_fields
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

# The questions the README's "A first question" section asks.
README_QUESTIONS = ("What part of the Earth's atmosphere is oxygen?", "Who were the Normans?")
THRESHOLD = flat_fields()["groundedness_threshold"].default


@pytest.fixture(scope="module")
def server(module_live_server: LiveServers) -> LiveServer:
    live = module_live_server({"generation_timeout_s": 120}, name="first-minute")
    live.ingest(load_sample_records(40), collection="sample")
    return live


def assert_honest(answer: dict[str, Any]) -> None:
    """Grounded and cited, or said to be a fallback, or an abstention."""
    if answer["outcome"] == "abstained":
        return
    assert answer["outcome"] == "answered", answer
    assert any(c["cited"] for c in answer["citations"]), answer
    if answer["fallback"] is None:  # the model's own answer passed the output guard
        assert answer["groundedness"]["score"] >= THRESHOLD, answer
    else:  # the guard replaced it: the fallback says why, and its own answer is checked too
        assert answer["generator"] == "extractive" and answer["fallback"]["reason"], answer


@pytest.mark.parametrize("question", README_QUESTIONS)
def test_readme_questions_over_the_chat_api(server: LiveServer, question: str) -> None:
    response = httpx.post(f"{server.url}/v1/chat", json={"question": question, "collection": "sample"}, timeout=180)
    assert response.status_code == 200, response.text
    assert_honest(response.json())


def test_readme_question_through_the_openai_sdk(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=180)
    reply = client.chat.completions.create(
        model="ragops",
        messages=[{"role": "user", "content": "Who were the Normans?"}],
        extra_body={"collection": "sample"},
    )
    extra = reply.model_extra or {}
    details = extra["ragops"]
    assert_honest({**details, "citations": extra["citations"]})
    assert reply.choices[0].message.content
