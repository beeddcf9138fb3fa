"""The HTTP API over real HTTP: a ``ragops serve`` process on 127.0.0.1 and an httpx client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

KEYS = {"key-acme": "acme", "key-globex": "globex"}


@pytest.fixture(scope="module")
def client(module_live_server: LiveServers) -> httpx.Client:
    return module_live_server(name="api").client()


@pytest.fixture(scope="module")
def sample_ingested(client: httpx.Client) -> list[dict[str, Any]]:
    records = load_sample_records(30)
    response = client.post("/v1/documents", json={"documents": records, "collection": "sample"})
    assert response.status_code == 200, response.text
    return records


def document_ids(client: httpx.Client, collection: str = "sample", **headers: str) -> list[str]:
    response = client.get("/v1/documents", params={"collection": collection}, headers=headers)
    assert response.status_code == 200
    return [d["id"] for d in response.json()["documents"]]


def test_health_ready_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["embedding_model"].startswith("all-MiniLM-L6-v2")
    schema = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/documents", "/v1/documents/{doc_id}"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_openapi_documents_every_answer_field_and_the_error_shape(client: httpx.Client) -> None:
    """Clients generate code from /openapi.json: the 200s of the chat routes, their streamed events and the
    errors are all there, with their fields."""
    schema = client.get("/openapi.json").json()
    for path, fields in [
        ("/v1/chat", {"answer", "outcome", "citations", "generator", "guards", "groundedness", "prompt", "usage"}),
        ("/v1/chat/completions", {"id", "choices", "usage", "citations", "ragops"}),
    ]:
        responses = schema["paths"][path]["post"]["responses"]
        body = _resolve(schema, responses["200"]["content"]["application/json"]["schema"])
        assert fields <= set(body["properties"]), path
        stream = _resolve(schema, responses["200"]["content"]["text/event-stream"]["schema"])
        assert stream.get("properties") or stream.get("anyOf"), path
        error = _resolve(schema, responses["400"]["content"]["application/json"]["schema"])
        assert set(_resolve(schema, error["properties"]["error"])["properties"]) == {"type", "message", "param", "code"}
        assert "422" not in responses  # invalid requests are 400s in the OpenAI shape
    outcome = _resolve(
        schema, _resolve(schema, {"$ref": "#/components/schemas/ChatAnswerEvent"})["properties"]["outcome"]
    )
    # client_closed and cut_by_shutdown: the audit's outcomes of a stream that ended before its answer
    assert set(outcome["enum"]) == {"answered", "cached", "abstained", "refused", "failed", "client_closed",
                                    "cut_by_shutdown"}  # fmt: skip


def test_search(client: httpx.Client, sample_ingested: list[dict[str, Any]]) -> None:
    target = sample_ingested[3]
    query = " ".join(target["text"].split()[:12])
    for mode in ("hybrid", "dense", "sparse"):
        body = client.post("/v1/search", json={"query": query, "collection": "sample", "top_k": 3, "mode": mode}).json()
        assert body["mode"] == mode and len(body["hits"]) == 3
        assert body["hits"][0]["doc_id"] == target["id"]
        assert set(body["hits"][0]) >= {"doc_id", "chunk_id", "score", "text", "title", "source", "metadata"}
    filtered = client.post(
        "/v1/search",
        json={"query": query, "collection": "sample", "filter": {"doc_ids": [sample_ingested[0]["id"]]}},
    ).json()
    assert {h["doc_id"] for h in filtered["hits"]} == {sample_ingested[0]["id"]}


def test_document_lifecycle(client: httpx.Client) -> None:
    docs = [{"id": "guide/intro.md", "text": "Kittens purr when content.", "title": "Intro", "metadata": {"v": 1}}]
    first = client.post("/v1/documents", json={"documents": docs, "collection": "life"}).json()
    assert (first["added"], first["chunks"]) == (1, 1)
    assert client.post("/v1/documents", json={"documents": docs, "collection": "life"}).json()["unchanged"] == 1
    hit = client.post("/v1/search", json={"query": "kittens", "collection": "life"}).json()["hits"][0]
    assert (hit["doc_id"], hit["title"], hit["metadata"]) == ("guide/intro.md", "Intro", {"v": 1})
    assert client.delete("/v1/documents/guide/intro.md", params={"collection": "life"}).json()["deleted"] is True
    missing = client.delete("/v1/documents/guide/intro.md", params={"collection": "life"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert document_ids(client, "life") == []


@pytest.mark.parametrize(
    ("method", "path", "payload", "param"),
    [
        ("post", "/v1/search", {"query": ""}, "query"),
        ("post", "/v1/search", {"query": "   "}, "query"),
        ("post", "/v1/search", {"query": "x" * 5000}, "query"),
        ("post", "/v1/search", {"query": "x", "top_k": 0}, "top_k"),
        ("post", "/v1/search", {"query": "x", "top_k": 1000}, "top_k"),
        ("post", "/v1/search", {"query": "x", "mode": "fuzzy"}, "mode"),
        ("post", "/v1/search", {"query": "x", "collection": "../etc"}, "collection"),
        ("post", "/v1/search", {"query": "x", "filter": {"metadata": {"a": {"nested": 1}}}}, None),
        ("post", "/v1/search", {"query": "x", "unknown": 1}, "unknown"),
        ("post", "/v1/search", {"top_k": 3}, "query"),
        ("post", "/v1/chat", {"question": "Who were the Normans?\u0000"}, "question"),  # Postgres text holds no NUL
        ("post", "/v1/search", "not json", None),
        ("post", "/v1/search", [1, 2], None),
        ("post", "/v1/documents", {"documents": []}, "documents"),
        ("post", "/v1/documents", {"documents": [{"id": "", "text": "x"}]}, "documents.0.id"),
        (
            "post",
            "/v1/documents",
            {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
            "documents.1.id",
        ),
        (
            "post",
            "/v1/documents",
            {"documents": [{"id": "ok", "text": "fine"}, {"id": "b", "text": 5}]},
            "documents.1.text",
        ),
        ("post", "/v1/documents", {"documents": [{"id": "ok", "text": "fine", "body": "x"}]}, "documents.0.body"),
        ("get", "/v1/documents?collection=bad%20name", None, "collection"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_change_nothing(
    client: httpx.Client, sample_ingested: list[dict[str, Any]], method: str, path: str, payload: Any, param: str | None
) -> None:
    before = document_ids(client)
    if isinstance(payload, str):
        response = client.request(method, path, content=payload, headers={"content-type": "application/json"})
    else:
        response = client.request(method, path, json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert document_ids(client) == before
    assert "ok" not in document_ids(client, "default")


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    response = client.put("/v1/search")
    assert response.status_code == 405 and "error" in response.json()


def test_x_tenant_header_separates_tenants(client: httpx.Client) -> None:
    doc = {"documents": [{"id": "memo", "text": "Quarterly budget memo for the board."}], "collection": "memos"}
    assert client.post("/v1/documents", json=doc, headers={"X-Tenant": "north"}).status_code == 200
    query = {"query": "budget memo", "collection": "memos"}
    assert client.post("/v1/search", json=query, headers={"X-Tenant": "south"}).json()["hits"] == []
    assert len(client.post("/v1/search", json=query, headers={"X-Tenant": "north"}).json()["hits"]) == 1
    bad = client.post("/v1/search", json=query, headers={"X-Tenant": "no spaces allowed"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Tenant"


def test_concurrent_searches(client: httpx.Client, sample_ingested: list[dict[str, Any]]) -> None:
    queries = [" ".join(r["text"].split()[:8]) for r in sample_ingested[:20]]
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda q: client.post("/v1/search", json={"query": q, "collection": "sample"}), queries)
        )
    assert [r.status_code for r in responses] == [200] * 20


@pytest.fixture(scope="module")
def keyed_server(module_live_server: LiveServers) -> LiveServer:
    return module_live_server({"api_keys": KEYS}, name="api-keys")


def test_api_keys_decide_the_tenant(keyed_server: LiveServer) -> None:
    with keyed_server.client() as http:
        doc = {"documents": [{"id": "plan", "text": "Acme launch plan for the rocket skates."}]}
        assert http.post("/v1/documents", json=doc).status_code == 401
        wrong = http.post("/v1/documents", json=doc, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        acme, globex = ({"Authorization": f"Bearer {key}"} for key in KEYS)
        assert http.post("/v1/documents", json=doc, headers=acme).status_code == 200
        query = {"query": "rocket skates launch"}
        # The key, not a header, decides the tenant: globex cannot ask for acme's data.
        assert http.post("/v1/search", json=query, headers={**globex, "X-Tenant": "acme"}).json()["hits"] == []
        assert http.post("/v1/search", json=query, headers=acme).json()["hits"][0]["doc_id"] == "plan"
        assert http.get("/healthz").status_code == 200  # probes need no key
