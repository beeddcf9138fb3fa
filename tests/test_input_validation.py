"""Input is validated before anything is written (issue 10): documents and search filters, over the rules in
``retrieval/validation.py`` and over real HTTP against ``ragops serve``, plus the redaction of search hits."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.search import _hit_body
from app.settings import Settings
from retrieval.documents import Hit
from retrieval.loaders import LoaderError, document_from_record, load_file, load_paths
from retrieval.validation import (
    METADATA_KEY_PATTERN,
    DocumentLimits,
    InvalidFieldError,
    check_filter,
    check_metadata,
)
from safety.pii import RedactionMemo
from tests.live_server import LiveServer, LiveServers

COLLECTION = "valid"
BASELINE: list[dict[str, Any]] = [
    {
        "id": "handbook",
        "text": "The travel handbook says expenses are reimbursed within thirty days of the trip.",
        "title": "Handbook",
        "metadata": {"lang": "en", "日本": "x", "big": 2**63 - 1, "ratio": 0.5, "tags": ["a", {"b-c_1": None}]},
    },
    {"id": "contact", "text": "Questions about payroll go to jane.doe@example.com on weekdays.", "title": "Contact"},
]


def nested(depth: int) -> dict[str, Any]:
    """Metadata ``depth`` objects deep: {"a": {"a": ... {"a": 1}}}."""
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return {"a": value}


# --- the rules ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"id": "a\nb", "text": "x"}, "id", "U+000A"),
        ({"id": "a\x85b", "text": "x"}, "id", "U+0085"),
        ({"id": "a\x7f", "text": "x"}, "id", "U+007F"),
        ({"id": "   ", "text": "x"}, "id", "non-blank"),
        ({"id": "x" * 513, "text": "x"}, "id", "512"),
        ({"id": "a", "text": "null \x00 byte"}, "text", "U+0000"),
        ({"id": "a", "text": "escape \x1b[31m"}, "text", "U+001B"),
        ({"id": "a", "text": "lone \ud800"}, "text", "surrogate"),
        ({"id": "a", "text": "x" * 101}, "text", "longer than 100"),
        ({"id": "a", "text": "x", "title": "t\x07"}, "title", "U+0007"),
        ({"id": "a", "text": "x", "metadata": []}, "metadata", "JSON object"),
        ({"id": "a", "text": "x", "metadata": nested(4)}, "metadata.a.a.a", "deeper than 3"),
        ({"id": "a", "text": "x", "metadata": {"l": [[[1]]]}}, "metadata.l.0.0", "deeper than 3"),
        ({"id": "a", "text": "x", "metadata": {f"k{i}": i for i in range(9)}}, "metadata", "more than 8 keys"),
        ({"id": "a", "text": "x", "metadata": {"s": "x" * 300}}, "metadata", "at most 256"),
        ({"id": "a", "text": "x", "metadata": {"": 1}}, "metadata.", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"..": 1}}, "metadata...", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"o": {"a.b": 1}}}, "metadata.o.a.b", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"a[0]": 1}}, "metadata.a[0]", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"a b": 1}}, "metadata.a b", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"\u0087": 1}}, "metadata.\u0087", "metadata key"),
        ({"id": "a", "text": "x", "metadata": {"n": math.nan}}, "metadata.n", "finite"),
        ({"id": "a", "text": "x", "metadata": {"l": [1, -math.inf]}}, "metadata.l.1", "finite"),
        ({"id": "a", "text": "x", "metadata": {"n": 2**63}}, "metadata.n", "64-bit"),
        ({"id": "a", "text": "x", "metadata": {"n": -(2**63) - 1}}, "metadata.n", "64-bit"),
        ({"id": "a", "text": "x", "metadata": {"s": "esc \x1b"}}, "metadata.s", "U+001B"),
        ({"id": "a", "text": "x", "body": "y"}, "body", "unknown field"),
    ],
)
def test_document_rules_name_the_field(record: dict[str, Any], field: str, reason: str) -> None:
    limits = DocumentLimits(max_document_chars=100, max_metadata_bytes=256, max_metadata_depth=3, max_metadata_keys=8)
    with pytest.raises(InvalidFieldError) as caught:
        document_from_record(record, limits=limits)
    assert caught.value.field == field and reason in caught.value.reason


def test_valid_documents_pass_unchanged() -> None:
    for record in BASELINE:
        document = document_from_record(record)
        assert (document.id, document.metadata) == (record["id"], record.get("metadata", {}))
    deepest = nested(DocumentLimits().max_metadata_depth)
    assert check_metadata(deepest, DocumentLimits()) == deepest
    text = "tabs\tnewlines\nand CR\r are text; so is é and 日本"
    assert document_from_record({"id": "x/y z.md", "text": text}).text == text


def test_defaults_have_one_definition() -> None:
    assert DocumentLimits.from_settings(Settings().limits) == DocumentLimits()


@pytest.mark.parametrize(
    ("doc_ids", "metadata", "field"),
    [
        ([], {"": "x"}, "metadata."),
        ([], {"..": "x"}, "metadata..."),
        ([], {"\u0087": "x"}, "metadata.\u0087"),
        ([], {"a.b": "x"}, "metadata.a.b"),
        ([], {"n": 10**30}, "metadata.n"),
        ([], {"n": [1, 2**64]}, "metadata.n.1"),
        ([], {"n": 1.5}, "metadata.n"),
        ([], {"n": math.nan}, "metadata.n"),
        ([], {"n": None}, "metadata.n"),
        ([], {"n": {"a": 1}}, "metadata.n"),
        ([], {"n": []}, "metadata.n"),
        ([], {"n": list(range(1001))}, "metadata.n"),
        ([], {"n": [[1]]}, "metadata.n.0"),
        ([], {"s": "\ud800"}, "metadata.s"),
        ([], {f"k{i}": 1 for i in range(65)}, "metadata"),
        (["ok", "bad\nid"], {}, "doc_ids.1"),
        (["x"] * 1001, {}, "doc_ids"),
    ],
)
def test_filter_rules_name_the_field(doc_ids: list[Any], metadata: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        check_filter(doc_ids, metadata, DocumentLimits())
    assert caught.value.field == field


def test_filter_accepts_what_documents_can_hold() -> None:
    check_filter(["handbook"], {"lang": ["en", "de"], "日本": "x", "big": 2**63 - 1, "flag": True}, DocumentLimits())


def test_every_accepted_key_is_one_plain_qdrant_path_segment() -> None:
    """The key rule is safe for the engine's JSON-path parser over all of Unicode (not only ASCII)."""
    import qdrant_edge as qe

    accepted = [chr(cp) for cp in range(sys.maxunicode + 1) if METADATA_KEY_PATTERN.fullmatch(chr(cp))]
    assert len(accepted) > 100_000  # letters and digits of every script, '_' and '-'
    for char in accepted:
        qe.FieldCondition(f"metadata.{char}-{char}", match=qe.MatchValue("v"))  # raises on an invalid path
    assert not any(METADATA_KEY_PATTERN.fullmatch(key) for key in ("a.b", "a[0]", "a[]", '"a"', "a b", "a\n"))


def test_jsonl_ingestion_follows_the_same_rules(tmp_path: Path) -> None:
    """The CLI's .jsonl path goes through the same rules, with the limits the settings give."""
    good = {"id": "ok", "text": "fine", "metadata": nested(3)}
    (tmp_path / "deep.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "id": "x", "metadata": nested(130)})
    )
    (tmp_path / "nan.jsonl").write_text('{"id": "n", "text": "t", "metadata": {"score": NaN}}\n')
    (tmp_path / "ok.jsonl").write_text(json.dumps(good) + "\n")
    documents, errors = load_paths([tmp_path], DocumentLimits(max_metadata_depth=3))
    assert [d.id for d in documents] == ["ok"]
    messages = {Path(e["source"]).name: e["error"] for e in errors}
    assert messages["deep.jsonl"].startswith("line 2: 'metadata.a.a.a' nests deeper than 3 levels")
    assert messages["nan.jsonl"].startswith("line 1: 'metadata.score' must be a finite number")
    with pytest.raises(LoaderError, match=r"line 2: 'metadata\.a\.a\.a\.a' nests deeper than 4 levels"):
        load_file(tmp_path / "deep.jsonl", "deep.jsonl")  # default limits


def test_search_hits_are_redacted_for_clients() -> None:
    hit = Hit(
        doc_id="d",
        chunk_id="c",
        score=1.0,
        text="mail jane.doe@example.com",
        title="Call +44 20 7946 0958",
        source=None,
        metadata={},
        headings=("SSN 123-45-6789",),
    )
    memo = RedactionMemo(capacity=2)
    for _ in range(2):  # the second time from the memo: the same masks
        shown = _hit_body(hit, memo)
        assert (shown.text, shown.title, shown.headings) == ("mail [EMAIL]", "Call [PHONE]", ["SSN [US_SSN]"])
    assert _hit_body(hit, None).text == hit.text


# --- over HTTP --------------------------------------------------------------------------------------------
@dataclass
class Served:
    live: LiveServer
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(module_live_server: LiveServers) -> Served:
    live = module_live_server({"generator": "extractive"}, name="validation")
    live.ingest(BASELINE, collection=COLLECTION)
    env = {"RAGOPS_DATA_DIR": str(live.data_dir), "RAGOPS_MODELS_DIR": str(module_live_server.models_dir),
           "RAGOPS_GENERATOR": "extractive"}  # fmt: skip
    return Served(live, env)


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with served.live.client(timeout=60) as http:
        yield http


def listed(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/documents", params={"collection": COLLECTION})
    assert response.status_code == 200
    return dict(response.json())


def local_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def assert_refused(client: httpx.Client, path: str, param: str, *, body: Any = None, raw: str | None = None) -> str:
    """400 (413 for a body over the limit) in the OpenAI shape naming ``param``; nothing written; the same
    keep-alive connection still answers. Returns the message."""
    before = listed(client)
    if raw is not None:
        response = client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code in (400, 413), response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    port = local_port(response)
    after = client.get("/v1/documents", params={"collection": COLLECTION})
    assert after.json() == before and local_port(after) == port  # nothing written; connection kept
    return str(error["message"])


def ingest(*documents: dict[str, Any]) -> dict[str, Any]:
    return {"documents": list(documents), "collection": COLLECTION}


def test_deep_metadata_is_refused_and_the_index_still_opens(
    served: Served, client: httpx.Client, module_live_server: LiveServers
) -> None:
    message = assert_refused(
        client,
        "/v1/documents",
        "documents.0.metadata.a.a.a.a",
        body=ingest({"id": "deep", "text": "t", "metadata": nested(130)}),
    )
    assert "deeper than 4 levels" in message
    before = listed(client)
    served.live.stop()
    cli = subprocess.run(  # the CLI opens the same index the server wrote
        [sys.executable, "-m", "app.cli", "search", "travel expenses reimbursed", "--collection", COLLECTION, "--json"],
        env={**os.environ, **served.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["hits"][0]["doc_id"] == "handbook"
    served.live = module_live_server(env=served.env, name="validation-restarted")
    with served.live.client() as http:
        assert listed(http) == before


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({"": "x"}, "filter.metadata."),
        ({"..": "x"}, "filter.metadata..."),
        ({"\u0087": "x"}, "filter.metadata.\u0087"),
        ({"lang": 10**30}, "filter.metadata.lang"),
        ({"lang": ["en", 1.5]}, "filter.metadata.lang.1"),
    ],
)
def test_bad_search_filters_are_400s(client: httpx.Client, metadata: dict[str, Any], param: str) -> None:
    assert_refused(
        client,
        "/v1/search",
        param,
        body={"query": "travel", "collection": COLLECTION, "filter": {"metadata": metadata}},
    )


def test_search_filters_by_valid_metadata(client: httpx.Client) -> None:
    for metadata, expected in [
        ({"lang": "en"}, ["handbook"]),
        ({"日本": ["x", "y"]}, ["handbook"]),
        ({"lang": "de"}, []),
    ]:
        body = {"query": "expenses", "collection": COLLECTION, "filter": {"metadata": metadata}}
        response = client.post("/v1/search", json=body)
        assert response.status_code == 200, response.text
        assert [hit["doc_id"] for hit in response.json()["hits"]] == expected


def test_huge_metadata_is_refused(client: httpx.Client) -> None:
    huge = {"id": "huge", "text": "t", "metadata": {"blob": "x" * 10_000_000}}
    message = assert_refused(client, "/v1/documents", "documents.0.metadata", body=ingest(huge))
    assert "at most 16384" in message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client: httpx.Client, token: str) -> None:
    record = json.dumps({"id": "n", "text": "t", "metadata": {"score": "TOKEN"}}).replace('"TOKEN"', token)
    raw = f'{{"collection": "{COLLECTION}", "documents": [{record}]}}'  # NaN and Infinity as bare JSON tokens
    message = assert_refused(client, "/v1/documents", "documents.0.metadata.score", raw=raw)
    assert "finite number" in message and "pyo3" not in message


@pytest.mark.parametrize(
    ("document", "param", "said"),
    [
        ({"id": "line\nbreak", "text": "t"}, "documents.1.id", "U+000A"),
        ({"id": "nul", "text": "a\x00b"}, "documents.1.text", "U+0000"),
        ({"id": "esc", "text": "\x1b[2J cleared"}, "documents.1.text", "U+001B"),
        ({"id": "esc-meta", "text": "t", "metadata": {"k": "\x1b"}}, "documents.1.metadata.k", "U+001B"),
    ],
)
def test_control_characters_are_refused_and_the_batch_is_not_written(
    client: httpx.Client, document: dict[str, Any], param: str, said: str
) -> None:
    """The first document is valid; the batch fails as a whole, so it is not written either."""
    message = assert_refused(client, "/v1/documents", param, body=ingest({"id": "fine", "text": "ok"}, document))
    assert said in message
    assert "fine" not in [d["id"] for d in listed(client)["documents"]]


def test_search_hits_show_redacted_text(client: httpx.Client) -> None:
    body = {"query": "payroll questions", "collection": COLLECTION, "filter": {"doc_ids": ["contact"]}}
    hit = client.post("/v1/search", json=body).json()["hits"][0]
    assert "[EMAIL]" in hit["text"] and "jane.doe" not in hit["text"]


def test_openapi_documents_the_rules(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert re.search("letters, digits", schemas["DocumentBody"]["properties"]["metadata"]["description"])
    assert schemas["SearchFilterBody"]["properties"]["metadata"]["additionalProperties"]["anyOf"]
