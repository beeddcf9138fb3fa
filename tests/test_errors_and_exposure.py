"""Issue 10's reproductions, over real HTTP against ``ragops serve``: every 5xx answered in the error shape,
counted, logged once with its traceback, on a connection that stays open; a stream failing midway; bodies
over ``max_body_bytes``; PII in URLs kept out of the log; an open address refused without API keys; an index
that cannot open at start; /docs without a CDN; the OpenAPI document's X-Tenant pattern and error responses.

The server is ``tests/faulty_serve.py``: real ``ragops serve`` in which a search for ``fault-runtime`` or
``fault-index`` raises inside the route, and a chat stream asked about ``fault-midstream`` raises after its
first delta."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from retrieval.index import SCOPE_NAME_PATTERN
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers, free_port

MAX_BODY = 65_536


@pytest.fixture(scope="module")
def server(module_live_server: LiveServers) -> LiveServer:
    settings = {"generator": "extractive", "default_collection": "sample", "max_body_bytes": MAX_BODY}
    return module_live_server(
        settings, name="errors", log_level="info", module="tests.faulty_serve", documents=load_sample_records(8)
    )


@pytest.fixture(scope="module")
def client(server: LiveServer) -> httpx.Client:
    return server.client()


def errors_counted(client: httpx.Client, status: int) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "ragops_errors_total" and sample.labels == {"status": str(status)}:
                return float(sample.value)
    return 0.0


def assert_error_shape(body: dict[str, Any], kind: str) -> dict[str, Any]:
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "param", "code"}
    assert body["error"]["type"] == kind
    return dict(body["error"])


def assert_logged_once_with_traceback(server: LiveServer, rid: str, exception: str) -> dict[str, Any]:
    lines = server.lines_of(rid)
    with_traceback = [line for line in lines if "exception" in line]
    assert len(with_traceback) == 1, lines
    line = with_traceback[0]
    assert line["level"] == "error" and line["message"] == "request"
    assert "Traceback" in line["exception"] and exception in line["exception"]
    assert "NoneType: None" not in json.dumps(lines)
    return line


# --- every 5xx is answered, counted, logged once, and keeps the connection -------------------------------------


def test_a_route_that_raises_is_a_500_in_the_error_shape_counted_and_logged_once(
    server: LiveServer, client: httpx.Client
) -> None:
    before = errors_counted(client, 500)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps({"query": "fault-runtime", "collection": "sample"})
    connection.request("POST", "/v1/search", body, {"content-type": "application/json", "x-request-id": "boom500"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    assert response.status == 500 and response.getheader("x-request-id") == "boom500"
    error = assert_error_shape(payload, "server_error")
    assert error["code"] == "internal_error" and "boom500" in error["message"]
    assert "alice" not in json.dumps(payload)  # the exception's text stays in the log

    socket_before = connection.sock
    connection.request("GET", "/healthz")  # the same keep-alive connection, not a new one
    assert connection.getresponse().read() == b'{"status":"ok"}' and connection.sock is socket_before
    connection.close()

    assert errors_counted(client, 500) == before + 1
    line = assert_logged_once_with_traceback(server, "boom500", "RuntimeError: injected fault [EMAIL]")
    assert (line["level"], line["message"], line["path"], line["status"]) == ("error", "request", "/v1/search", 500)


def test_an_index_that_cannot_serve_is_a_503_with_its_message(server: LiveServer, client: httpx.Client) -> None:
    before = errors_counted(client, 503)
    response = client.post("/v1/search", json={"query": "fault-index"}, headers={"x-request-id": "boom503"})
    assert response.status_code == 503
    error = assert_error_shape(response.json(), "service_unavailable_error")
    assert error["message"] == "index is read-only (injected fault)" and error["code"] == "index_unavailable"
    assert errors_counted(client, 503) == before + 1
    assert_logged_once_with_traceback(server, "boom503", "IndexUnavailableError")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat", {"question": "What is oxygen? fault-midstream", "stream": True}),
        (
            "/v1/chat/completions",
            {"model": "ragops", "stream": True, "messages": [{"role": "user", "content": "Oxygen? fault-midstream"}]},
        ),
    ],
)
def test_a_stream_failing_midway_ends_with_an_error_event_then_done(
    server: LiveServer, client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    before = errors_counted(client, 500)
    rid = "stream" + path.replace("/", "")
    with client.stream("POST", path, json=body, headers={"x-request-id": rid}) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 3 and events[-1] == "[DONE]", events
    error = assert_error_shape(json.loads(events[-2]), "server_error")
    assert rid in error["message"]
    assert errors_counted(client, 500) == before + 1
    line = assert_logged_once_with_traceback(server, rid, "RuntimeError: injected fault")
    assert (line["status"], line["error_status"]) == (200, 500)


# --- request bodies over max_body_bytes ---------------------------------------------------------------------


def test_a_declared_oversized_body_gets_413_before_it_is_read(server: LiveServer, client: httpx.Client) -> None:
    """The request says 50 MB and sends 10 bytes: the answer comes at once, so nothing waited for the body."""
    before = errors_counted(client, 413)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/documents HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n" + b'{"documen'
        )
        head, _, rest = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 413 ")
    error = assert_error_shape(json.loads(rest), "invalid_request_error")
    assert str(MAX_BODY) in error["message"]
    assert errors_counted(client, 413) == before + 1


def _read_response(sock: socket.socket) -> tuple[bytes, bytes, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, separator, rest = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += sock.recv(65536)
    return head, separator, rest


def test_a_chunked_oversized_body_gets_413_and_changes_nothing(client: httpx.Client) -> None:
    """No Content-Length: the bytes are counted as they come; a valid ingest, only too big, writes nothing."""
    documents = [{"id": f"big-{n}", "text": "oxygen " * 200} for n in range(60)]
    payload = json.dumps({"documents": documents, "collection": "big"}).encode()
    assert len(payload) > MAX_BODY

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    response = client.post(
        "/v1/documents", content=chunks(), headers={"content-type": "application/json"}
    )  # httpx sends an iterator chunked
    assert response.status_code == 413
    assert_error_shape(response.json(), "invalid_request_error")
    listed = client.get("/v1/documents", params={"collection": "big"}).json()
    assert listed["documents"] == []


# --- the log: PII in URLs, the bind address --------------------------------------------------------------------


def test_an_email_in_the_url_never_reaches_the_log(server: LiveServer, client: httpx.Client) -> None:
    for n, (method, url) in enumerate(
        [
            ("GET", "/v1/documents?q=carol.pii%40example.org&collection=sample"),
            ("GET", "/v1/documents?collection=carol.pii%40example.org"),
            ("DELETE", "/v1/documents/carol.pii%40example.org?collection=sample"),
            ("DELETE", "/v1/documents/carol.pii%2540example.org?collection=sample"),
            ("GET", "/nowhere/carol.pii@example.org"),
        ]
    ):
        response = client.request(method, url, headers={"x-request-id": f"pii{n}"})
        assert response.status_code in (200, 400, 404)
        assert server.lines_of(f"pii{n}"), "the request line is logged"
    log = server.log_path.read_text()
    assert "carol" not in log and "%40" not in log
    deleted = [line for line in server.log_lines() if line["request_id"] in ("pii2", "pii3")]
    assert {line["path"] for line in deleted} == {"/v1/documents/[EMAIL]"}


def test_the_log_has_one_request_line_per_request_and_the_bind_address_in_clear(server: LiveServer) -> None:
    lines = server.log_lines()
    assert any(line["message"].startswith(f"Uvicorn running on http://127.0.0.1:{server.port}") for line in lines)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]  # ours has no query string


# --- /docs and the OpenAPI document ---------------------------------------------------------------------------


def test_docs_are_served_from_this_server_only(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "http:" not in page.text and "https:" not in page.text and "//" not in page.text.replace("://", "")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3 and all(asset.startswith("/docs/assets/") for asset in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200
    assert '"validatorUrl": null' in page.text  # no spec sent to validator.swagger.io
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


def test_openapi_documents_the_tenant_header_and_every_error(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    operations = {(m, p): op for p, ops in schema["paths"].items() for m, op in ops.items()}
    tenant = next(p for p in operations[("post", "/v1/search")]["parameters"] if p["name"] == "x-tenant")
    assert tenant["schema"]["pattern"] == SCOPE_NAME_PATTERN and tenant["in"] == "header"
    for (method, path), operation in operations.items():
        expected = {"500"} | ({"400", "413"} if "requestBody" in operation else set())
        assert expected <= set(operation["responses"]), (method, path)
        for status, entry in operation["responses"].items():
            if status.startswith(("4", "5")) and path != "/readyz":
                assert entry["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }, (method, path, status)
    for key in [("post", "/v1/search"), ("get", "/v1/documents"), ("post", "/v1/documents")]:
        assert {"400", "401", "503"} <= set(operations[key]["responses"]), key
    assert "404" in operations[("delete", "/v1/documents/{doc_id}")]["responses"]
    assert "503" in operations[("get", "/readyz")]["responses"]


def test_a_wrong_method_is_a_405_with_allow(client: httpx.Client) -> None:
    response = client.put("/v1/search", json={})
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert_error_shape(response.json(), "invalid_request_error")


# --- ragops serve: safe by default on a network, an index that cannot open ----------------------------------


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port()), *args]
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "ragops.example.internal"])
def test_serve_refuses_an_open_address_without_api_keys(host: str, tmp_path: Path) -> None:
    done = _serve("--host", host, RAGOPS_DATA_DIR=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"ragops: error: refusing to serve on {host} ")
    assert "RAGOPS_API_KEYS" in done.stderr and "RAGOPS_ALLOW_OPEN=true" in done.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was opened


def test_serve_on_an_index_that_cannot_open_is_one_line_and_exit_1(server: LiveServer, models_dir: Path) -> None:
    """Allowed open (RAGOPS_ALLOW_OPEN) it goes on to open the index, which the running server holds: one line
    saying so, exit 1, no traceback; the warning about the open address names it in clear."""
    done = _serve(
        "--host", "0.0.0.0", RAGOPS_DATA_DIR=str(server.data_dir), RAGOPS_MODELS_DIR=str(models_dir),
        RAGOPS_ALLOW_OPEN="true",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ragops: error: ") and "index" in last  # the index's own message says what to do
    assert "Traceback" not in done.stderr
    warning = next(json.loads(line) for line in done.stderr.splitlines() if "without API keys" in line)
    assert warning["level"] == "warning" and "serving 0.0.0.0 without API keys" in warning["message"]
