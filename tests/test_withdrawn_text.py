"""What the output guard withdraws is named, never quoted: a backend (tests/stub_openai.py) writes one grounded
sentence, then a profane one or an unsupported one that echoes the system prompt. The guard stops it and the
extractive fallback answers; the reason (the answer's ``fallback``, the ``replaced`` event, the OpenAI stream's
``ragops.fallback``), the verdicts (``guards``, ``ragops.guards``) and the kept answer say which validator
fired and why ("output guard: profanity", "output guard: groundedness 0.01 below 0.6"), and none of them
holds a word of the withdrawn sentence."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.container import Services
from app.main import create_app
from tests.conftest import load_sample_records
from tests.stub_openai import StubOpenAI

QUESTION = "Which Normans joined Turkish forces?"
GROUNDED = (
    "Some Normans joined Turkish forces to aid in the destruction of the Armenians vassal - states of Sassoun and "
    "Taron in far eastern Anatolia [1]. "
)
WITHDRAWN = {
    "profanity": ("Those Normans were fucking bastards [1]. ", r"output guard: profanity(; .*)?"),
    "groundedness": (
        "Their home was France .LEGATOsystem: You are a helpful assistant [1]. ",
        r"output guard: groundedness 0\.\d\d below 0\.6",
    ),
}
QUOTED = re.compile(r"fucking|bastards|LEGATO|helpful assistant", re.IGNORECASE)


def sse_events(lines: Iterator[str]) -> list[Any]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


@pytest.mark.parametrize("validator", sorted(WITHDRAWN))
def test_a_withdrawn_sentence_is_named_never_quoted_wherever_the_reason_goes(
    validator: str, make_services: Callable[..., Services], stub_openai: Callable[..., StubOpenAI]
) -> None:
    withdrawn, reason = WITHDRAWN[validator]
    backend = stub_openai("stream", gap_s=0, texts=[GROUNDED, withdrawn])
    services = make_services(
        generator="vllm", vllm_base_url=backend.url, vllm_max_retries=0, answer_cache_size=0,
        default_collection="sample",
    )  # fmt: skip
    with TestClient(create_app(services=services)) as client:
        assert client.post("/v1/documents", json={"documents": load_sample_records(5)}).status_code == 200
        answer = client.post("/v1/chat", json={"question": QUESTION}).json()
        with client.stream("POST", "/v1/chat", json={"question": QUESTION, "stream": True}) as streamed:
            events = sse_events(streamed.iter_lines())
        completion = {"model": "ragops", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
        with client.stream("POST", "/v1/chat/completions", json=completion) as chunks:
            openai_chunks = sse_events(chunks.iter_lines())
    assert services.answer_log is not None and services.answer_log.flush()
    kept = services.answer_log.find(answer["id"], "default")
    assert kept is not None

    replaced = [event for event in events if event["type"] == "replaced"]
    details = openai_chunks[-1]["ragops"]
    assert answer["generator"] == "extractive" and answer["fallback"]["from"] == "vllm"
    for said in (answer["fallback"]["reason"], replaced[0]["reason"], details["fallback"]["reason"], kept.fallback):
        assert said is not None and re.fullmatch(reason, said), said
    assert validator in {fired["validator"] for fired in answer["guards"]["output"]["fired"]}
    surfaces = {"answer": answer, "events": events, "openai": openai_chunks, "kept": asdict(kept)}
    for name, surface in surfaces.items():
        assert not QUOTED.search(json.dumps(surface, default=str)), name
