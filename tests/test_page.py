"""The chat page shows its work, in headless Chromium against real ``ragops serve`` processes: a status line from
the moment Ask is clicked (searching, writing, done, or the API's error), the answer as it streams, a withdrawn
draft explained in plain words (the server's reason kept under "Technical details"), citations by title and
source, the API key kept for the tab and sent on every call, and the upload control. It keeps a conversation: each
turn with its own answer, citations and notes, a follow-up's "Searched for" line, the turns shown again after a
reload, a new conversation on request, and a full, expired or unkept conversation said plainly.

The model is tests/stub_openai.py's OpenAI-compatible stub behind the vLLM generator: a well-formed stream whose
chunks come ``GAP_S`` apart (so the page is caught mid-answer without the test sleeping), one that invents a claim
(the output guard withdraws it), or one too slow to answer (the extractive fallback stands in). The answering
server is tests/faulty_serve.py's, which fails a stream asked about ``fault-midstream`` after its first delta.
Conversations are asked of the extractive generator (quotes, no model), as fast as a question can be answered.
Screenshots are saved under each test's tmp_path at fixed points; the assertions are on the DOM."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrieval.loaders import FILE_PARSERS
from tests.browser import ai_notice, launch, needs_chromium
from tests.live_server import LiveServer, LiveServers
from tests.stub_openai import StubOpenAI

READER, EDITOR = "page-reader-key", "page-editor-key"
KEYS = {READER: "default:reader", EDITOR: "default:editor"}
LIGHT_TITLE, LIGHT_SOURCE = "The Harbour Light: a visitor's guide", "https://example.org/guides/harbour-light"
DOCUMENTS = [
    {
        "id": "harbour-light",
        "title": LIGHT_TITLE,
        "source": LIGHT_SOURCE,
        "text": "The harbour light was built in 1854 from granite quarried on the island. Its lamp is lit every "
        "evening at sunset by the keeper. The keeper's cottage stands beside the tower and is open to visitors on "
        "Saturdays. Visitors climb 112 steps to reach the lantern room.",
    },
    {
        "id": "tide-tables",
        "title": "Tide tables for the north shore",
        "source": "tides.md",
        "text": "High tide on the north shore comes about forty minutes after high tide in the harbour. Spring "
        "tides follow the full and the new moon.",
    },
    {  # no title: the page names it by its source
        "id": "ferry-notes",
        "source": "ferry.txt",
        "text": "The ferry to the island leaves the pier at nine and at three. Bicycles travel free.",
    },
]
QUESTION = "When was the harbour light built and who lights its lamp?"
GROUNDED = (  # sentences of the passage, in pieces: the page shows the first sentence before the second is written
    "The harbour light was built ",
    "in 1854 from granite quarried on the island. [1] ",
    "Its lamp is lit every evening ",
    "at sunset by the keeper. [1] ",
)
INVENTED = (GROUNDED[0] + GROUNDED[1], "It was later carried to the Moon by Napoleon in 1999. [1] ")
GAP_S = 0.5
SEARCHING, WRITING = "Searching your documents…", "Writing the answer…"
# A follow-up whose pronoun only the earlier turn explains (as in tests/test_conversations_api.py), and distractors.
CONVERSATION_DOCUMENTS = [
    {"id": "rollo", "text": "Rollo was a Viking leader who founded the Duchy of Normandy in 911. Rollo died around "
     "the year 930 in Rouen, and his son William Longsword succeeded him."},
    {"id": "curie", "text": "Marie Curie was a physicist who died in 1934 at Passy in France."},
    {"id": "turing", "text": "Alan Turing was a mathematician who died in 1954 at his home in Wilmslow, England."},
]  # fmt: skip
FIRST, FOLLOW_UP, THIRD = "Who founded the Duchy of Normandy?", "When did he die?", "Where did he die?"
EXPIRED = "The earlier conversation had expired; this question starts a new one."
FULL = "This conversation is full; start a new one."
NOT_KEPT = "This server does not keep conversations; the page sends the earlier questions and answers itself."
CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{32}")
UNCHECKED = "The first draft could not be checked against your documents, so it was withdrawn."
QUOTED = "Here instead are the sentences of your documents that answer it most closely."


def keyed_server(servers: LiveServers, name: str, stub: StubOpenAI, **settings: Any) -> LiveServer:
    settings = {
        "generator": "vllm", "vllm_base_url": stub.url, "vllm_max_retries": 0, "api_keys": KEYS,
        "default_collection": "sample",  # the page's
        "answer_cache_size": 0,  # every question streams from the model (a cached answer comes at once)
        **settings,
    }  # fmt: skip
    server = servers(settings, name=name, module="tests.faulty_serve")
    server.ingest(DOCUMENTS, headers={"Authorization": f"Bearer {EDITOR}"})
    return server


@pytest.fixture(scope="module")
def answering(module_live_server: LiveServers) -> Iterator[LiveServer]:
    """A model that streams a grounded answer, a chunk every GAP_S."""
    stub = StubOpenAI("stream", texts=GROUNDED, gap_s=GAP_S)
    yield keyed_server(module_live_server, "answering", stub)
    stub.close()


@pytest.fixture(scope="module")
def withdrawing(module_live_server: LiveServers) -> Iterator[LiveServer]:
    """A model whose second sentence is invented: the output guard withdraws the answer."""
    stub = StubOpenAI("stream", texts=INVENTED, gap_s=0.1)
    yield keyed_server(module_live_server, "withdrawing", stub)
    stub.close()


@pytest.fixture(scope="module")
def silent(module_live_server: LiveServers) -> Iterator[LiveServer]:
    """A model that never answers in time: the extractive generator answers instead."""
    stub = StubOpenAI("slow")
    yield keyed_server(module_live_server, "silent", stub, generation_timeout_s=0.5)
    stub.close()


def conversing_server(servers: LiveServers, name: str, **settings: Any) -> LiveServer:
    settings = {
        "generator": "extractive", "api_keys": KEYS, "default_collection": "sample", "answer_cache_size": 0,
        "conversation_max_turns": 3,  # the fourth question is a 413
        **settings,
    }  # fmt: skip
    server = servers(settings, name=name)
    server.ingest(CONVERSATION_DOCUMENTS, headers={"Authorization": f"Bearer {EDITOR}"})
    return server


@pytest.fixture(scope="module")
def conversing(module_live_server: LiveServers) -> LiveServer:
    """A server that keeps conversations (at most 3 turns each)."""
    return conversing_server(module_live_server, "conversing")


@pytest.fixture(scope="module")
def forgetful(module_live_server: LiveServers) -> LiveServer:
    """A server that keeps none: the page sends the earlier turns itself."""
    return conversing_server(module_live_server, "forgetful", conversation_retention_days=0)


# Installed before the page's own script runs: when Ask was clicked, and each text the status line showed.
TIMELINE = """
window.statusTimeline = [];
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  new MutationObserver(() => statusTimeline.push([performance.now(), status.textContent]))
    .observe(status, { childList: true, characterData: true, subtree: true });
  document.getElementById("send").addEventListener("click", () => { window.clickedAt = performance.now(); }, true);
});
"""


class Chromium:
    """A browser for one test: ``page(url)`` opens the chat page in a new tab, collecting its script errors and
    the requests it makes."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.requests: list[Any] = []
        self.context = browser.new_context()

    def page(self, url: str) -> Any:
        page = self.context.new_page()
        page.add_init_script(TIMELINE)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request))
        page.goto(url + "/")
        ai_notice(page)
        return page

    def keys_sent(self, path: str) -> list[str | None]:
        """The Authorization header of each request the pages made to ``path``."""
        return [r.all_headers().get("authorization") for r in self.requests if r.url.endswith(path)]


@contextmanager
def chromium() -> Iterator[Chromium]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield Chromium(browser)
        finally:
            browser.close()


def ask(page: Any, question: str, state: str = "done", key: str | None = READER) -> None:
    if key is not None:
        page.fill("#apikey", key)
    page.fill("#question", question)
    page.click("#send")
    page.wait_for_selector(f"body[data-state={state}]", timeout=60_000)


def visible_text(page: Any, selector: str) -> str:
    return str(page.inner_text(selector))


TURNS = """Array.from(document.querySelectorAll("#turns > li"), (turn) => {
  const searched = turn.querySelector(".searched-for");
  return { question: turn.querySelector(".question").textContent, state: turn.dataset.state,
           searched: searched.hidden ? null : searched.textContent, answer: turn.querySelector(".answer").textContent,
           cited: Array.from(turn.querySelectorAll(".citations li.cited"), (c) => c.dataset.docId),
           notes: turn.querySelector(".notice").textContent, status: turn.querySelector(".turn-status").textContent };
})"""


def turns_shown(page: Any) -> list[dict[str, Any]]:
    """The conversation on the page, a dict a turn: question, state, "Searched for" line (None when not shown),
    answer, cited documents, notes, and the turn's own status line."""
    return list(page.evaluate(TURNS))


def kept_conversation(page: Any) -> str | None:
    """The id of the conversation the page keeps for the tab."""
    return page.evaluate("sessionStorage.getItem('ragops-conversation')")  # type: ignore[no-any-return]


def chats_sent(browser: Chromium) -> list[dict[str, Any]]:
    """The bodies of the pages' POST /v1/chat requests."""
    return [json.loads(r.post_data) for r in browser.requests if r.url.endswith("/v1/chat")]


@needs_chromium
def test_the_page_shows_each_step_of_an_answer(answering: LiveServer, tmp_path: Path) -> None:
    with chromium() as browser:
        page = browser.page(answering.url)
        page.fill("#apikey", READER)
        page.fill("#question", QUESTION)
        page.click("#send")
        page.wait_for_function("statusTimeline.length > 0")
        page.screenshot(path=str(tmp_path / "1-asked.png"))
        (shown_at, first), *_ = page.evaluate("statusTimeline")
        assert first == SEARCHING and shown_at - page.evaluate("clickedAt") < 100

        page.wait_for_function(
            "document.body.dataset.state === 'streaming' && document.getElementById('answer').textContent"
        )
        streamed = visible_text(page, "#answer")
        page.screenshot(path=str(tmp_path / "2-streaming.png"))
        assert visible_text(page, "#status") == WRITING and page.get_attribute("#answer", "aria-busy") == "true"

        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        page.screenshot(path=str(tmp_path / "3-done.png"), full_page=True)
        answer = visible_text(page, "#answer")
        assert answer.startswith(streamed.strip()) and len(streamed.strip()) < len(answer)  # shown as it came
        assert answer == "".join(GROUNDED).strip() and not page.is_visible("#notice")
        assert [text for _, text in page.evaluate("statusTimeline")][:2] == [SEARCHING, WRITING]
        assert (
            visible_text(page, "#status").startswith("Done in ") and page.get_attribute("#answer", "aria-busy") is None
        )
        assert "generator: vllm" in visible_text(page, "#meta") and "standing in" not in ai_notice(page)

        first = page.locator("#citations li").first
        assert first.locator(".title").inner_text() == f"{LIGHT_TITLE} (cited)"
        assert first.locator(".where a").get_attribute("href") == LIGHT_SOURCE
        assert first.locator(".where").inner_text() == f"{LIGHT_SOURCE} · harbour-light"  # the id in small print
        titles = page.locator("#citations li .title").all_inner_texts()
        assert "ferry.txt" in titles and "Tide tables for the north shore" in titles  # untitled: by its source
    assert browser.errors == []


@needs_chromium
def test_the_key_is_kept_for_the_tab_and_sent_on_every_call(answering: LiveServer) -> None:
    with chromium() as browser:
        page = browser.page(answering.url)
        page.fill("#apikey", READER)
        page.reload()
        assert page.input_value("#apikey") == READER  # the same tab: kept
        assert browser.page(answering.url).input_value("#apikey") == ""  # another tab: not shared
        ask(page, QUESTION, key=None)
        page.click("#thumbs-up")
        page.wait_for_selector("body[data-feedback=sent]", timeout=10_000)
        page.set_input_files("#files", files=[{"name": "a.md", "mimeType": "text/markdown", "buffer": b"# A\n\nB."}])
        page.click("#upload-send")
        page.wait_for_selector("body[data-upload=done], body[data-upload=error]", timeout=30_000)
        bearer = f"Bearer {READER}"
        assert browser.keys_sent("/v1/chat") == browser.keys_sent("/v1/feedback") == browser.keys_sent("/v1/files")
        assert browser.keys_sent("/v1/chat") == [bearer]
    assert browser.errors == []


@needs_chromium
def test_errors_are_a_readable_line_never_a_blank(answering: LiveServer, tmp_path: Path) -> None:
    refused = httpx.post(f"{answering.url}/v1/chat", json={"question": QUESTION}, timeout=30)
    assert refused.status_code == 401
    with chromium() as browser:
        page = browser.page(answering.url)
        ask(page, QUESTION, state="error", key=None)
        page.screenshot(path=str(tmp_path / "no-key.png"))
        assert visible_text(page, "#status") == "Error: " + refused.json()["error"]["message"]
        assert page.get_attribute("#status", "class") == "error"

        ask(page, f"{QUESTION} fault-midstream", state="error")  # the stream fails after its first sentence
        page.screenshot(path=str(tmp_path / "midstream.png"))
        assert visible_text(page, "#status").startswith("Error: internal error; see the server log for request id")
        assert visible_text(page, "#answer").strip() == (GROUNDED[0] + GROUNDED[1]).strip()  # what it had shown

        page.fill("#collection", "nothing-here")
        ask(page, QUESTION, state="error")
        assert "nothing-here" in visible_text(page, "#status")

        page.fill("#collection", "sample")
        ask(page, QUESTION)  # a good answer after errors clears them
        assert visible_text(page, "#status").startswith("Done in ") and page.get_attribute("#status", "class") == ""
    assert browser.errors == []


@needs_chromium
def test_a_withdrawn_draft_is_explained_in_plain_words(withdrawing: LiveServer, tmp_path: Path) -> None:
    body = {"question": QUESTION, "stream": True}
    headers = {"Authorization": f"Bearer {READER}"}
    streamed = httpx.post(f"{withdrawing.url}/v1/chat", json=body, headers=headers, timeout=60).text
    events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert [e["code"] for e in events if e["type"] == "replaced"] == ["ungrounded"]  # what the page's words follow
    with chromium() as browser:
        page = browser.page(withdrawing.url)
        ask(page, QUESTION)
        page.screenshot(path=str(tmp_path / "withdrawn.png"), full_page=True)
        shown = visible_text(page, "#notice")
        assert f"{UNCHECKED} {QUOTED}" in shown
        assert "groundedness" not in shown + visible_text(page, "#answer") + visible_text(page, "#meta")
        assert not page.is_visible("#notice-reason")  # the server's reason: kept, folded away
        page.click("#notice summary")
        assert page.is_visible("#notice-reason")
        assert visible_text(page, "#notice-reason").startswith("vllm: output guard: groundedness")
        assert "Napoleon" not in visible_text(page, "#answer") and "standing in for vllm" in ai_notice(page)
    assert browser.errors == []


@needs_chromium
def test_a_model_that_does_not_answer_is_explained_too(silent: LiveServer) -> None:
    with chromium() as browser:
        page = browser.page(silent.url)
        ask(page, QUESTION)
        note = visible_text(page, "#notice-text")
        assert note == f"The model could not answer this time (it failed or took too long). {QUOTED}"
        assert str(page.text_content("#notice-reason")).startswith("vllm: timeout")
        assert visible_text(page, "#answer").strip()
    assert browser.errors == []


@needs_chromium
def test_the_upload_control_shows_what_the_api_said(silent: LiveServer, tmp_path: Path) -> None:
    text = b"# Bees\n\nThe apiary holds twelve hives."
    files = [{"name": "bees.md", "mimeType": "text/markdown", "buffer": text}]
    said = httpx.post(
        f"{silent.url}/v1/files",
        files={"file": ("bees.md", text, "text/markdown")},
        headers={"Authorization": f"Bearer {READER}"},  # a reader may not add documents
        timeout=30,
    )
    assert said.status_code == 403
    with chromium() as browser:
        page = browser.page(silent.url)
        page.click("#upload-send")
        assert visible_text(page, "#upload-status") == "Choose one or more files first."
        page.fill("#apikey", READER)
        page.set_input_files("#files", files=files)
        page.click("#upload-send")
        page.wait_for_selector("body[data-upload=error]", timeout=30_000)
        page.screenshot(path=str(tmp_path / "upload-refused.png"))
        assert visible_text(page, "#upload-status") == "Not added: " + said.json()["error"]["message"]
        assert page.get_attribute("#upload-status", "class") == "error" and page.is_enabled("#upload-send")
    assert browser.errors == []


@needs_chromium
def test_an_uploaded_file_is_cited_by_its_title(silent: LiveServer, tmp_path: Path) -> None:
    files = [
        {
            "name": "bees.md",
            "mimeType": "text/markdown",
            "buffer": b"# Keeping bees on the island\n\nThe island apiary holds twelve hives behind the chapel. "
            b"The bees make heather honey in August.\n",
        }
    ]
    with chromium() as browser:
        page = browser.page(silent.url)
        page.fill("#apikey", EDITOR)
        page.set_input_files("#files", files=files)
        page.click("#upload-send")
        page.wait_for_selector("body[data-upload=done]", timeout=60_000)
        page.screenshot(path=str(tmp_path / "uploaded.png"))
        assert visible_text(page, "#upload-status").startswith("Added 1 file in sample: ")
        assert "bees.md" in visible_text(page, "#upload-status") and page.input_value("#files") == ""
        ask(page, "How many hives does the island apiary hold?", key=None)
        page.screenshot(path=str(tmp_path / "asked-about-upload.png"), full_page=True)
        assert "twelve hives" in visible_text(page, "#answer")
        titles = page.locator("#citations li.cited .title").all_inner_texts()
        assert "Keeping bees on the island (cited)" in titles
    assert browser.errors == []


def test_the_upload_control_offers_exactly_the_formats_the_server_reads() -> None:
    page = (Path(__file__).resolve().parents[1] / "app" / "static" / "index.html").read_text()
    accept = re.search(r'<input id="files"[^>]*accept="([^"]+)"', page)
    assert accept is not None
    assert set(accept.group(1).split(",")) == set(FILE_PARSERS)


@needs_chromium
def test_the_page_keeps_a_conversation_and_shows_it_again_after_a_reload(
    conversing: LiveServer, tmp_path: Path
) -> None:
    with chromium() as browser:
        page = browser.page(conversing.url)
        ask(page, FIRST)
        (first,) = turns_shown(page)
        assert "Rollo" in first["answer"] and "rollo" in first["cited"] and first["searched"] is None
        ask(page, FOLLOW_UP, key=None)
        page.screenshot(path=str(tmp_path / "follow-up.png"), full_page=True)
        shown = turns_shown(page)
        assert [turn["question"] for turn in shown] == [FIRST, FOLLOW_UP] and shown[0] == first  # still there
        assert shown[1]["searched"] == "Searched for: When did Rollo die?"  # how the follow-up was understood
        assert "930" in shown[1]["answer"] and "rollo" in shown[1]["cited"] and shown[1]["state"] == "done"
        assert visible_text(page, "#answer") == shown[1]["answer"]  # the current turn's parts carry the ids
        assert page.locator("#turns > li").nth(1).locator("#status").count() == 1  # and the status line

        conversation = kept_conversation(page)
        assert conversation is not None and CONVERSATION_ID.fullmatch(conversation)
        assert browser.keys_sent("/v1/conversations") == [f"Bearer {READER}"]  # started once, with the key
        assert [chat.get("conversation_id") for chat in chats_sent(browser)] == [conversation] * 2
        assert not any("history" in chat for chat in chats_sent(browser))  # the server holds the earlier turns
        kept = httpx.get(f"{conversing.url}/v1/conversations/{conversation}",
                         headers={"Authorization": f"Bearer {READER}"}, timeout=30).json()  # fmt: skip
        assert [turn["answer"] for turn in kept["turns"]] == [first["answer"], shown[1]["answer"]]

        page.reload()
        page.wait_for_selector("body[data-conversation=restored]", timeout=30_000)
        page.screenshot(path=str(tmp_path / "restored.png"), full_page=True)
        restored = turns_shown(page)
        assert [(turn["question"], turn["answer"], turn["searched"]) for turn in restored] == [
            (turn["question"], turn["answer"], turn["searched"]) for turn in shown
        ]
        assert all(turn["cited"] == [] and turn["state"] == "restored" for turn in restored)  # none are kept
        assert browser.keys_sent(f"/v1/conversations/{conversation}") == [f"Bearer {READER}"]

        ask(page, THIRD, key=None)  # the reloaded page goes on with the same conversation
        third = turns_shown(page)[2]
        assert third["searched"] == "Searched for: Where did Rollo die?" and "Rouen" in third["answer"]
        assert kept_conversation(page) == conversation and chats_sent(browser)[-1]["conversation_id"] == conversation
    assert browser.errors == []


@needs_chromium
def test_a_new_conversation_starts_afresh_and_a_full_or_expired_one_is_said_plainly(
    conversing: LiveServer, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {READER}"}
    with chromium() as browser:
        page = browser.page(conversing.url)
        assert page.is_disabled("#new-conversation")  # nothing to clear yet
        for question in (FIRST, FOLLOW_UP, THIRD):
            ask(page, question)
        full = kept_conversation(page)
        ask(page, "Who succeeded him?", state="error")  # the server keeps 3 turns: a 413
        page.screenshot(path=str(tmp_path / "full.png"), full_page=True)
        assert visible_text(page, "#status") == FULL and page.get_attribute("#status", "class") == "error"
        assert page.is_enabled("#new-conversation") and "urge" in str(page.get_attribute("#new-conversation", "class"))
        assert [turn["state"] for turn in turns_shown(page)] == ["done"] * 3 + ["error"]

        page.click("#new-conversation")
        assert turns_shown(page) == [] and kept_conversation(page) is None and page.is_disabled("#new-conversation")
        assert page.get_attribute("#new-conversation", "class") in (None, "")
        ask(page, FIRST, key=None)
        fresh = kept_conversation(page)
        assert fresh is not None and fresh != full and len(turns_shown(page)) == 1
        kept = httpx.get(f"{conversing.url}/v1/conversations/{full}", headers=headers, timeout=30)
        assert len(kept.json()["turns"]) == 3  # forgotten by the page, not deleted

        # Gone on the server (as an expired one is): the question is asked again in a new conversation, once.
        assert httpx.delete(f"{conversing.url}/v1/conversations/{fresh}", headers=headers, timeout=30).is_success
        ask(page, "When did Rollo die?", key=None)
        page.screenshot(path=str(tmp_path / "expired.png"), full_page=True)
        latest = turns_shown(page)[-1]
        assert EXPIRED in latest["notes"] and "930" in latest["answer"] and latest["state"] == "done"
        assert kept_conversation(page) not in (None, full, fresh)
        assert [chat["conversation_id"] for chat in chats_sent(browser)[-2:]] == [fresh, kept_conversation(page)]
    assert browser.errors == []


@needs_chromium
def test_a_server_that_keeps_no_conversations_gets_the_earlier_turns_from_the_page(
    forgetful: LiveServer, tmp_path: Path
) -> None:
    with chromium() as browser:
        page = browser.page(forgetful.url)
        ask(page, FIRST)
        ask(page, FOLLOW_UP, key=None)
        page.screenshot(path=str(tmp_path / "page-history.png"), full_page=True)
        first, follow_up = turns_shown(page)
        assert NOT_KEPT in first["notes"] and kept_conversation(page) is None
        assert follow_up["searched"] == "Searched for: When did Rollo die?"
        assert "930" in follow_up["answer"] and "rollo" in follow_up["cited"]
        sent = chats_sent(browser)
        assert not any("conversation_id" in chat for chat in sent)
        assert sent[1]["history"] == [
            {"role": "user", "content": FIRST},
            {"role": "assistant", "content": first["answer"]},
        ]
        assert len(browser.keys_sent("/v1/conversations")) == 1  # the server said so once: not asked again
    assert browser.errors == []
