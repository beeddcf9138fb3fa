"""Transparency (EU AI Act art. 50): people are told they are reading an AI system's answers. Every answer of
``/v1/chat`` and ``/v1/chat/completions`` (the completion, and the last chunk of a stream) carries a
``generated_by`` block that says whether an AI system wrote the text, which generator, model and prompt, after
which fallback, and whether it repeats a cached answer; the chat page says so in a visible line, before and after
an answer. Over real HTTP with the extractive generator (and a dead vLLM in front of it for the fallback), the
``openai`` SDK and the page in headless Chromium."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.browser import ai_notice, asked_on_the_page, needs_chromium
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

OXYGEN = "What part of the Earth's atmosphere is oxygen?"
NORMANS = "Who were the Normans?"
OFF_TOPIC = "What is the best recipe for chocolate chip cookies?"  # no passage is close: the similarity rule abstains
BY_EXTRACTIVE = {
    "ai_generated": True,
    "generator": "extractive",
    "model": "extractive",
    "prompt": None,  # the extractive generator reads no prompt
    "fallback": None,
    "cached": False,
}
FIXED_WORDING = {
    "ai_generated": False,
    "generator": None,
    "model": None,
    "prompt": None,
    "fallback": None,
    "cached": False,
}


def start(servers: LiveServers, name: str, **settings: object) -> LiveServer:
    settings = {"generator": "extractive", "default_collection": "sample", **settings}
    return servers(settings, name=name, documents=load_sample_records(40))


@pytest.fixture(scope="module")
def server(module_live_server: LiveServers) -> LiveServer:
    return start(module_live_server, "transparency")


@pytest.fixture(scope="module")
def dead_vllm_server(module_live_server: LiveServers) -> LiveServer:
    """vLLM configured but unreachable: every answer is the extractive fallback's."""
    return start(
        module_live_server, "transparency-fallback", generator="vllm", vllm_base_url="http://127.0.0.1:9/v1",
        vllm_max_retries=0,
    )  # fmt: skip


def chat(server: LiveServer, question: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/v1/chat", json={"question": question, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def sse_data(response: httpx.Response) -> list[Any]:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def chat_stream(server: LiveServer, question: str) -> list[Any]:
    payload = {"question": question, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat", json=payload, timeout=60) as response:
        assert response.status_code == 200
        return sse_data(response)


def completion_stream(server: LiveServer, question: str) -> list[Any]:
    payload = {"model": "ragops", "messages": [{"role": "user", "content": question}], "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=payload, timeout=60) as response:
        assert response.status_code == 200
        return sse_data(response)


def test_a_chat_answer_says_an_ai_system_wrote_it_and_a_cached_one_repeats_that(server: LiveServer) -> None:
    first = chat(server, OXYGEN)
    assert first["outcome"] == "answered" and first["citations"]
    assert first["generated_by"] == BY_EXTRACTIVE
    again = chat(server, OXYGEN)
    assert again["outcome"] == "cached" and again["answer"] == first["answer"]
    # The cached answer's generated_by is the one of the answer it repeats, marked cached.
    assert again["generated_by"] == {**BY_EXTRACTIVE, "cached": True}


def test_the_streamed_answer_event_carries_it(server: LiveServer) -> None:
    events = chat_stream(server, NORMANS)
    assert events[-1] == "[DONE]" and events[-2]["type"] == "answer"
    assert events[-2]["generated_by"] == BY_EXTRACTIVE
    assert all("generated_by" not in e for e in events[:-2])  # deltas are text only


def test_fixed_wording_is_not_marked_ai_generated(server: LiveServer) -> None:
    answer = chat(server, OFF_TOPIC)
    assert answer["outcome"] == "abstained" and answer["generator"] is None
    assert answer["generated_by"] == FIXED_WORDING
    completion = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "ragops", "messages": [{"role": "user", "content": OFF_TOPIC}]},
        timeout=60,
    ).json()
    assert completion["generated_by"] == {**FIXED_WORDING, "cached": True}  # the same abstention, repeated


def test_openai_completion_and_last_chunk_carry_it_and_the_sdk_still_parses_them(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    question = "What is the composition of the Earth's atmosphere?"
    completion = client.chat.completions.create(model="ragops", messages=[{"role": "user", "content": question}])
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert (completion.model_extra or {})["generated_by"] == BY_EXTRACTIVE
    cached = client.chat.completions.create(model="ragops", messages=[{"role": "user", "content": question}])
    assert (cached.model_extra or {})["generated_by"] == {**BY_EXTRACTIVE, "cached": True}

    stream = client.chat.completions.create(
        model="ragops", messages=[{"role": "user", "content": "Where did the Normans come from?"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["generated_by"] == BY_EXTRACTIVE
    assert all("generated_by" not in (c.model_extra or {}) for c in chunks[:-1])

    raw = completion_stream(server, "When did the Normans conquer England?")  # the wire, without the SDK
    assert raw[-1] == "[DONE]" and raw[-2]["choices"][0]["finish_reason"] == "stop"
    assert raw[-2]["generated_by"] == BY_EXTRACTIVE and all("generated_by" not in c for c in raw[:-2])


def test_an_extractive_fallback_names_the_generator_it_stands_in_for(dead_vllm_server: LiveServer) -> None:
    answer = chat(dead_vllm_server, OXYGEN)
    by = answer["generated_by"]
    assert by["ai_generated"] is True and by["generator"] == "extractive" and by["model"] == "extractive"
    assert by["prompt"] is None and by["cached"] is False
    assert by["fallback"]["from"] == "vllm" and by["fallback"]["reason"].startswith("connection")
    assert by["fallback"] == answer["fallback"]
    assert chat(dead_vllm_server, OXYGEN)["generated_by"]["cached"] is False  # fallback answers are not cached

    streamed = chat_stream(dead_vllm_server, NORMANS)[-2]["generated_by"]
    assert streamed["generator"] == "extractive" and streamed["fallback"]["from"] == "vllm"
    payload = {"model": "ragops", "messages": [{"role": "user", "content": OXYGEN}]}
    completion = httpx.post(f"{dead_vllm_server.url}/v1/chat/completions", json=payload, timeout=60).json()
    assert completion["generated_by"]["fallback"]["from"] == "vllm"
    assert completion["generated_by"]["fallback"] == completion["ragops"]["fallback"]
    last = completion_stream(dead_vllm_server, NORMANS)[-2]["generated_by"]
    assert last["generator"] == "extractive" and last["fallback"]["from"] == "vllm"


def test_openapi_documents_generated_by(server: LiveServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    components = schema["components"]["schemas"]
    fields = {"ai_generated", "generator", "model", "prompt", "fallback", "cached"}
    assert set(components["GeneratedBy"]["properties"]) == fields
    assert set(components["GeneratedBy"]["required"]) == fields
    for model in ("ChatAnswer", "ChatAnswerEvent", "ChatCompletion", "ChatCompletionChunk"):
        assert "generated_by" in components[model]["properties"], model
    body = schema["paths"]["/v1/chat"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatAnswer"}


@needs_chromium
def test_the_page_says_an_ai_system_writes_the_answers_before_and_after_one(server: LiveServer) -> None:
    question = "What language did the Normans speak?"  # asked nowhere else: not cached yet
    with asked_on_the_page(server.url, question) as (page, errors):  # visible before asking: the helper checks
        after = ai_notice(page)
        assert "(extractive: sentences quoted from the sources, no language model)" in after
        assert "repeated" not in after and page.inner_text("#answer").strip()
        page.fill("#question", question)  # the same question again, as the conversation's next turn: it names
        page.click("#send")  # its subject, so it is searched as asked, and the cached answer says so
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        assert "repeated from an earlier answer" in ai_notice(page)
    assert errors == []


@needs_chromium
def test_the_page_names_the_fallback_and_fixed_wording(dead_vllm_server: LiveServer) -> None:
    with asked_on_the_page(dead_vllm_server.url, OXYGEN) as (page, errors):
        assert "standing in for vllm" in ai_notice(page)
    with asked_on_the_page(dead_vllm_server.url, OFF_TOPIC) as (page, more_errors):
        assert ai_notice(page).startswith("This reply is a fixed message, not written by the AI system.")
    assert errors == more_errors == []
