"""Streams carry only guarded text: ragops' own SSE stream and the OpenAI-compatible one, over real HTTP.

Two servers: ``ragops serve`` with the embedded llama.cpp model (what users run), and the same app in process
with a scripted model in front of the extractive fallback (the fault injected: an answer that leaks an e-mail
address and then invents a claim), served by uvicorn on 127.0.0.1 so the stream is real HTTP too."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.api.openai_api import WITHDRAWN_NOTICE
from app.container import Services, build_services
from app.main import create_app
from app.parts import build_guards
from app.settings import load_settings
from retrieval.documents import Document, Hit, Section
from retrieval.embedding import Embedder
from retrieval.index import Scope
from safety.pii import RedactionMemo
from serving.answering.answer_cache import InMemoryAnswerCache
from serving.answering.extractive import ExtractiveGenerator
from serving.answering.fallback import FallbackChain
from serving.answering.output_stage import OutputGuard
from serving.answering.pipeline import RagPipeline
from serving.answering.stages import CachedAnswers, ComposePrompt, Generate
from serving.answering.streaming_guard import SentenceGuard, SentenceSplitter
from serving.contracts.answer import AnswerRequest, resolve_citations
from serving.contracts.generation import Generation, GenerationRequest, GeneratorError, Replaced, StreamDelta, Usage
from tests.browser import ai_notice, asked_on_the_page, needs_chromium
from tests.conftest import sample_documents
from tests.live_server import LiveServer, LiveServers, free_port

EMAIL, PHONE = "alice.secret@example.com", "555 123 4567"
CONTACT = Document(
    "contact",
    (
        Section(
            "Alice Secret is the archivist of the Norman history collection. You can reach Alice Secret by e-mail "
            f"at {EMAIL} or by phone at +1 {PHONE}. The archive opens on weekdays."
        ),
    ),
    title="Archive contacts",
)
SCOPE = Scope("sample", "default")

# The scripted model's answers, by question. The grounded sentence keeps its passage sentence's names: one that
# drops the Armenians, Sassoun and Taron loses to them in the relation check (they stand closer to the claim).
JOINED = (
    "Some Normans joined Turkish forces to aid in the destruction of the Armenians vassal - states of Sassoun and "
    "Taron in far eastern Anatolia"
)
GROUNDED_THEN_INVENTED = "Which Normans joined Turkish forces?"
LEAKS_ONLY = "Who joined the Turkish forces in Anatolia?"
ABSTAINS = "Who painted the Norman archive's ceiling?"
TAUTOLOGY = "Who founded the Norman archive, and when?"
SCRIPTS = {
    ABSTAINS: "The passage does not contain the answer to the question. [1]",  # SmolLM2's, inside the grammar
    TAUTOLOGY: "The document is from the document. [2]",
    GROUNDED_THEN_INVENTED: (
        f"{JOINED}, writes {EMAIL} [1]. "
        "The Normans were invented by Napoleon in 1850 on the Moon [1]. Napoleon then flew them to Mars [1]."
    ),
    LEAKS_ONLY: f"{JOINED}, writes {EMAIL} [1].",
}


class Scripted:
    """Injects a fault: a model that answers a fixed text, word by word, whatever the passages say. It records
    how many words it was asked for and whether its stream was closed (the guard stops a model by closing)."""

    name = "scripted"

    def __init__(self) -> None:
        self.words_sent = 0
        self.closed = False

    def generate(self, request: GenerationRequest) -> Generation:
        return Generation(SCRIPTS[request.question], Usage(prompt_tokens=10, completion_tokens=5), "stop", "scripted")

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        self.words_sent, self.closed = 0, False
        try:
            for word in re.findall(r"\S+\s*", SCRIPTS[request.question]):
                self.words_sent += 1
                yield StreamDelta(word)
            yield self.generate(request)
        except GeneratorExit:
            self.closed = True
            raise


class FailsMidAnswer(Scripted):
    name = "flaky"

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        yield StreamDelta(f"{JOINED}. They ")  # says where: more than the question
        raise GeneratorError("connection", "the backend went away")


def scripted_pipeline(services: Services, model: Scripted, enforce: bool = True) -> RagPipeline:
    extractive = ExtractiveGenerator(services.embedder)
    guards = build_guards(services.settings, services.embedder)
    assert guards is not None
    stages = services.pipeline.stages
    return RagPipeline(
        type(stages)(
            input_guard=stages.input_guard,
            rewrite=stages.rewrite,
            cache=CachedAnswers(
                InMemoryAnswerCache(), services.embedder, lambda _: str(services.ingestor.version), "x"
            ),
            retrieve=stages.retrieve,
            screen=stages.screen,
            abstain=stages.abstain,
            compose=ComposePrompt(services.embedder, context_sentences=0),
            generate=Generate(FallbackChain([model, extractive])),
            output_guard=OutputGuard(guards.output, extractive, enforce=enforce),
            cite=stages.cite,
        ),
        services.pipeline.prompt_for,
    )


class ThreadServer:
    """The app in this process, served by uvicorn on 127.0.0.1 (a real socket, so streams are real HTTP)."""

    def __init__(self, services: Services) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        config = uvicorn.Config(create_app(services=services), host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]),
                                log_level="warning")  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._server.started, "uvicorn did not start"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def scripted_services(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, embedder: Embedder
) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("scripted")
    settings = load_settings(models_dir=models_dir, data_dir=data_dir, generator="extractive")
    services = build_services(settings, embedder=embedder)
    services.ingestor.ingest_documents([*sample_documents(40), CONTACT], SCOPE)
    yield services
    services.close()


@pytest.fixture(scope="module")
def scripted_server(scripted_services: Services) -> Iterator[tuple[ThreadServer, Scripted]]:
    model = Scripted()
    scripted_services.pipeline = scripted_pipeline(scripted_services, model)
    server = ThreadServer(scripted_services)
    yield server, model
    server.stop()


@pytest.fixture(scope="module")
def llama_server(module_live_server: LiveServers) -> LiveServer:
    # The default generator (llama.cpp), the output guard enforced.
    server = module_live_server({"answer_cache_size": 0}, name="llama-stream")
    document = {"id": CONTACT.id, "title": CONTACT.title, "text": CONTACT.sections[0].text}
    server.ingest([document], collection="contacts")
    return server


def chat_events(url: str, question: str, collection: str = "sample") -> list[dict[str, Any]]:
    payload = {"question": question, "collection": collection, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat", json=payload, timeout=120) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def openai_chunks(url: str, question: str, collection: str = "sample") -> list[dict[str, Any]]:
    payload = {"model": "ragops", "messages": [{"role": "user", "content": question}], "stream": True,
               "collection": collection}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=120) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def after_last_replacement(events: list[dict[str, Any]]) -> str:
    """What a client of ragops' stream shows at the end: the deltas after the last ``replaced`` event."""
    shown = ""
    for event in events:
        shown = "" if event["type"] == "replaced" else shown + event.get("text", "")
    return shown


def as_openai_content(events: list[dict[str, Any]]) -> str:
    """ragops' events as the OpenAI stream renders them: a withdrawal announced once something was sent."""
    text = ""
    for event in events:
        if event["type"] == "replaced" and text:
            text += WITHDRAWN_NOTICE
        text += event.get("text", "")
    return text


def test_the_splitter_cuts_sentences_and_loses_nothing() -> None:
    text = (
        "Alice is the archivist. [1] Reach her at alice.secret@example.com or +1 555 123 4567 [1, 2]!\n\n"
        "A list:\n- one (see [3].)\n- two. -----BEGIN RSA PRIVATE KEY-----\nMIIB. abc\n-----END RSA PRIVATE KEY-----"
        " Done?  Yes [9]"
    )
    for seed in range(20):
        rng, splitter, pieces, at = random.Random(seed), SentenceSplitter(), [], 0
        while at < len(text):
            step = rng.randint(1, 6)
            pieces += splitter.feed(text[at : at + step])
            at += step
        pieces.append(splitter.finish())
        assert "".join(pieces) == text
        assert pieces[:3] == ["Alice is the archivist. [1]", " Reach her at alice.secret@example.com or +1 555 123 "
                              "4567 [1, 2]!", "\n\nA list:"]  # fmt: skip
        assert pieces[-1] == "  Yes [9]"
        assert any(p.startswith(" -----BEGIN") and "-----END RSA PRIVATE KEY----- Done?" in p for p in pieces)


def test_released_sentences_join_to_the_final_answer_text() -> None:
    """Invalid markers dropped sentence by sentence, and the spaces they leave, match the whole answer's cleaning
    (``resolve_citations``), however the deltas fall."""
    hits = [
        Hit(
            doc_id=f"d{i}",
            chunk_id=f"d{i}#0",
            score=0.5,
            text="Some passage text.",
            title=None,
            source=None,
            metadata={},
        )
        for i in range(2)
    ]
    words = ["Alpha", "beta.", "[1]", "[9]", "[1, 7]", "gamma!", "\n", "delta?", " ", "[2]."]
    rng = random.Random(7)
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        guard, released, at = SentenceGuard(None, ["a", "b"]), [], 0
        while at < len(text):
            step = rng.randint(1, 5)
            released += guard.feed(text[at : at + step])
            at += step
        released += guard.finish()
        assert "".join(released) == guard.text == resolve_citations(text, hits)[0], text


def test_citations_show_retrieved_text_redacted() -> None:
    hit = Hit(
        doc_id="contact",
        chunk_id="contact#0",
        score=0.9,
        text=CONTACT.sections[0].text,
        title=f"Mail {EMAIL}",
        source=None,
        metadata={},
    )
    _, [redacted] = resolve_citations("Reach Alice Secret [1].", [hit], RedactionMemo())
    assert EMAIL not in redacted.text and "[EMAIL]" in redacted.text and "[PHONE]" in redacted.text
    assert redacted.title == "Mail [EMAIL]" and redacted.cited
    _, [raw] = resolve_citations("Reach Alice Secret [1].", [hit])
    assert EMAIL in raw.text


def test_an_ungrounded_sentence_stops_the_model_and_the_fallback_streams(
    scripted_server: tuple[ThreadServer, Scripted],
) -> None:
    server, model = scripted_server
    events = chat_events(server.url, GROUNDED_THEN_INVENTED)
    kinds = [e["type"] for e in events]
    replaced = kinds.index("replaced")
    assert kinds[0] == "delta" and kinds[replaced + 1] == "delta" and kinds[-1] == "answer"
    assert kinds.count("replaced") == 1 and set(kinds[1:replaced]) <= {"delta"}
    first = "".join(e["text"] for e in events[:replaced])
    assert first == f"{JOINED}, writes [EMAIL] [1]."
    assert events[replaced]["from"] == "scripted" and "groundedness" in events[replaced]["reason"]
    answer = events[-1]
    assert answer["generator"] == "extractive" and answer["fallback"]["from"] == "scripted"
    assert answer["answer"] == after_last_replacement(events) and answer["answer"]
    assert answer["guards"]["output"]["action"] == "fallback" and "fallback_output" in answer["guards"]
    assert {f["validator"] for f in answer["guards"]["output"]["fired"]} >= {"pii", "groundedness"}
    assert not any("Napoleon" in e.get("text", "") or EMAIL in json.dumps(e) for e in events)
    assert model.closed and model.words_sent < len(SCRIPTS[GROUNDED_THEN_INVENTED].split())  # the model stopped


def test_openai_stream_sends_guarded_text_then_a_notice_then_the_fallback(
    scripted_server: tuple[ThreadServer, Scripted],
) -> None:
    server, _ = scripted_server
    chunks = openai_chunks(server.url, GROUNDED_THEN_INVENTED)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["ragops"]["generator"] == "extractive"
    answer = chat_events(server.url, GROUNDED_THEN_INVENTED)[-1]["answer"]  # the same pipeline, deterministic
    first = f"{JOINED}, writes [EMAIL] [1]."
    assert content(chunks) == first + WITHDRAWN_NOTICE + answer
    assert EMAIL not in json.dumps(chunks) and "Napoleon" not in content(chunks)


def test_a_redacted_answer_streams_redacted_and_stays_whole(scripted_server: tuple[ThreadServer, Scripted]) -> None:
    server, _ = scripted_server
    events = chat_events(server.url, LEAKS_ONLY)
    assert [e["type"] for e in events][-1] == "answer" and "replaced" not in [e["type"] for e in events]
    answer = events[-1]
    assert answer["generator"] == "scripted" and answer["answer"] == after_last_replacement(events)
    assert answer["answer"] == f"{JOINED}, writes [EMAIL] [1]."
    contact = [c for c in answer["citations"] if c["doc_id"] == "contact"]
    assert all(EMAIL not in c["text"] and "[EMAIL]" in c["text"] for c in contact)
    assert EMAIL not in json.dumps(events)
    chunks = openai_chunks(server.url, LEAKS_ONLY)
    assert content(chunks) == answer["answer"] and EMAIL not in json.dumps(chunks)


def test_report_mode_only_redacts(scripted_services: Services) -> None:
    pipeline = scripted_pipeline(scripted_services, Scripted(), enforce=False)
    events = list(pipeline.stream(AnswerRequest(question=GROUNDED_THEN_INVENTED, scope=SCOPE)))
    answer = events[-1]
    assert not any(isinstance(e, Replaced) for e in events)
    assert answer.generator == "scripted" and "Napoleon" in answer.answer and EMAIL not in answer.answer  # type: ignore[union-attr]
    assert answer.answer == "".join(e for e in events if isinstance(e, str))  # type: ignore[union-attr]
    assert answer.guards.output.action == "fallback" and answer.guards.output.enforced is False  # type: ignore[union-attr]


def test_a_model_failing_mid_answer_is_replaced_not_patched(scripted_services: Services) -> None:
    pipeline = scripted_pipeline(scripted_services, FailsMidAnswer())
    events = list(pipeline.stream(AnswerRequest(question=GROUNDED_THEN_INVENTED, scope=SCOPE)))
    replaced = [e for e in events if isinstance(e, Replaced)]
    assert len(replaced) == 1 and replaced[0].from_ == "flaky" and replaced[0].reason.startswith("connection")
    assert replaced[0].code == "generator_failed"
    answer = events[-1]
    after = "".join(e for e in events[events.index(replaced[0]) + 1 :] if isinstance(e, str))
    assert answer.generator == "extractive" and answer.answer == after and "cut off" not in after  # type: ignore[union-attr]


def test_an_own_words_abstention_streams_and_counts_as_one(scripted_services: Services) -> None:
    events = list(
        scripted_pipeline(scripted_services, Scripted()).stream(AnswerRequest(question=ABSTAINS, scope=SCOPE))
    )
    answer = events[-1]
    assert not any(isinstance(e, Replaced) for e in events)
    assert (answer.outcome, answer.generator, answer.fallback) == ("abstained", "scripted", None)  # type: ignore[union-attr]
    assert answer.answer == "".join(e for e in events if isinstance(e, str)) == SCRIPTS[ABSTAINS]  # type: ignore[union-attr]


def test_an_answer_with_nothing_to_support_is_never_shown(scripted_services: Services) -> None:
    """The tautology fails groundedness (or, were nothing in it to judge, is held and judged as a whole when the
    model ends) and is withdrawn before a client saw any of it: the fallback's answer is all that streams."""
    events = list(
        scripted_pipeline(scripted_services, Scripted()).stream(AnswerRequest(question=TAUTOLOGY, scope=SCOPE))
    )
    answer = events[-1]
    replaced = [i for i, e in enumerate(events) if isinstance(e, Replaced)]
    assert replaced == [0] and events[0].code == "ungrounded"  # type: ignore[union-attr]
    assert answer.generator == "extractive" and answer.fallback is not None  # type: ignore[union-attr]
    assert "from the document" not in json.dumps([e for e in events if isinstance(e, str)])
    assert "from the document" not in answer.model_dump_json()  # type: ignore[union-attr]


@needs_chromium
def test_web_page_clears_a_replaced_answer(scripted_server: tuple[ThreadServer, Scripted]) -> None:
    server, _ = scripted_server
    with asked_on_the_page(server.url, GROUNDED_THEN_INVENTED) as (page, errors):
        shown, notice = page.inner_text("#answer"), page.inner_text("#notice")
        reason = page.text_content("#notice-reason")  # the server's words, folded under "Technical details"
        who = ai_notice(page)  # the replacement's writer, and whom it stands in for
    assert errors == [] and "could not be checked against your documents, so it was withdrawn" in notice
    assert "groundedness" not in notice and reason is not None and "groundedness" in reason
    assert "(extractive: sentences quoted from the sources, no language model, standing in for scripted)" in who
    assert "writes [EMAIL]" not in shown and shown.strip()


def test_llama_streams_carry_no_raw_contact_details(llama_server: LiveServer) -> None:
    questions = ["What is Alice Secret's e-mail address?", "What is the contact e-mail of the archive?"]
    shown_redacted = False
    for question in questions:
        events = chat_events(llama_server.url, question, "contacts")
        answer = events[-1]
        assert answer["type"] == "answer" and answer["answer"] == after_last_replacement(events)
        raw = json.dumps(events)
        assert EMAIL not in raw and PHONE not in raw
        assert answer["citations"] and all("[EMAIL]" in c["text"] for c in answer["citations"])
        shown_redacted = shown_redacted or any("[EMAIL]" in e.get("text", "") for e in events)
        chunks = openai_chunks(llama_server.url, question, "contacts")
        assert EMAIL not in json.dumps(chunks) and PHONE not in json.dumps(chunks)
        # The model is deterministic (temperature 0, seed 0) and nothing is cached: the same answer, as OpenAI
        # clients get it, is the guarded text and nothing else.
        assert content(chunks) == as_openai_content(events)
        assert (chunks[-1]["ragops"]["fallback"] is None) == ("replaced" not in [e["type"] for e in events])
    assert shown_redacted  # an answer did carry the address, redacted before it was sent


def test_openapi_documents_the_replaced_event(llama_server: LiveServer) -> None:
    schemas = httpx.get(f"{llama_server.url}/openapi.json", timeout=30).json()["components"]["schemas"]
    event = schemas["ChatReplacedEvent"]
    assert {"from", "reason", "code", "type"} <= set(event["properties"])
    members = json.dumps(schemas["ChatStreamEvent"])
    assert "ChatReplacedEvent" in members
