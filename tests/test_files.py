"""``POST /v1/files`` and ``ragops ingest --url``, against a real ``ragops serve`` with keys of two tenants: every
format read and answered from, hostile uploads refused by name with nothing written, roles, tenants, the audit
record, and the CLI uploading through the server while it holds the data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.governance.access import Role
from serving.governance.subjects import SubjectKeys
from serving.infra.state_store import StateStore
from tests.live_server import LiveServer, LiveServers, free_port
from tests.test_loaders import minimal_docx, minimal_pdf

KEYS = {
    "acme-editor-key": "acme:editor",
    "acme-reader-key": "acme:reader",
    "acme-admin-key": "acme:admin",
    "globex-editor-key": "globex:editor",
}
EDITOR, READER, ADMIN, OTHER_EDITOR = (
    {"Authorization": f"Bearer {key}"} for key in KEYS
)  # fmt: skip
MAX_FILES = 8  # max_documents_per_request
MAX_CHARS = 20_000  # max_document_chars
MAX_BODY = 512 * 1024  # max_body_bytes

PDF_PAGES = [
    "The handbook covers onboarding for new staff.",
    "The badge office is in building C, room 12.",
    "Laptops are replaced every four years by the IT desk.",
]
FORMATS: dict[str, bytes] = {
    "guide.md": b"# Kettle guide\n\nDescale the kettle with citric acid every month.",
    "page.html": b"<html><head><title>Garden</title></head><body><h1>Roses</h1><p>Prune roses in March.</p></body>",
    "handbook.pdf": minimal_pdf(PDF_PAGES, title="Staff handbook"),
    "memo.docx": minimal_docx([("Heading 1", "Parking"), ("Normal", "Bicycles park in the north yard.")]),
    "notes.rst": b"Boats\n=====\n\nThe ferry leaves at nine.",
    "plain.txt": b"The canteen closes at three on Fridays.",
}


@pytest.fixture(scope="module")
def server(module_live_server: LiveServers) -> LiveServer:
    limits = {role.value: {"requests_per_minute": 10_000, "tokens_per_day": 10_000_000} for role in Role}
    return module_live_server(
        {
            "generator": "extractive", "guards": False, "api_keys": KEYS, "role_limits": limits,
            "max_documents_per_request": MAX_FILES, "max_document_chars": MAX_CHARS, "max_body_bytes": MAX_BODY,
        },
        name="files",
    )  # fmt: skip


def upload(
    server: LiveServer, files: list[tuple[str, bytes]], collection: str, headers: dict[str, str] = EDITOR
) -> httpx.Response:
    parts = [("file", (name, data)) for name, data in files]
    return httpx.post(
        f"{server.url}/v1/files", files=parts, data={"collection": collection}, headers=headers, timeout=120
    )


def listed(server: LiveServer, collection: str, headers: dict[str, str] = EDITOR) -> list[str]:
    response = httpx.get(f"{server.url}/v1/documents", params={"collection": collection}, headers=headers)
    assert response.status_code == 200, response.text
    return [document["id"] for document in response.json()["documents"]]


def test_every_format_is_read_and_answered_from(server: LiveServer) -> None:
    response = upload(server, list(FORMATS.items()), "formats")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["collection"] == "formats" and report["added"] == 6 and report["failed"] == 0
    documents = {d["id"]: d for d in report["documents"]}
    assert list(documents) == list(FORMATS)  # in the order sent
    assert all(d["status"] == "added" and d["chunks"] >= 1 and d["source"] == d["id"] for d in documents.values())
    titles = {name: d["title"] for name, d in documents.items()}
    assert titles == {
        "guide.md": "Kettle guide", "page.html": "Garden", "handbook.pdf": "Staff handbook",
        "memo.docx": "Parking", "notes.rst": "Boats", "plain.txt": "plain",
    }  # fmt: skip
    assert documents["handbook.pdf"]["chunks"] >= 1 and report["chunks"] == sum(d["chunks"] for d in documents.values())
    assert sorted(listed(server, "formats")) == sorted(FORMATS)

    ask = {"question": "Where is the badge office?", "collection": "formats"}
    answer = httpx.post(f"{server.url}/v1/chat", json=ask, headers=READER, timeout=60).json()
    assert "building C" in answer["answer"], answer
    cited = [citation for citation in answer["citations"] if citation["cited"]]
    assert cited and {(c["doc_id"], c["source"]) for c in cited} == {("handbook.pdf", "handbook.pdf")}, answer

    again = upload(server, list(FORMATS.items()), "formats").json()  # unchanged files cost nothing
    assert again["unchanged"] == 6 and again["embeddings_computed"] == 0 and again["chunks"] == 0
    assert {d["status"] for d in again["documents"]} == {"unchanged"}
    assert all(d["chunks"] >= 1 for d in again["documents"])
    changed = upload(server, [("plain.txt", b"The canteen closes at two on Fridays.")], "formats").json()
    assert changed["documents"][0]["status"] == "updated" and changed["updated"] == 1
    assert sorted(listed(server, "formats")) == sorted(FORMATS)


ONE_OVER_BODY = b"# Big\n" + b"x" * MAX_BODY
BAD_UPLOADS: list[tuple[str, list[tuple[str, bytes]], int, str]] = [
    ("wrong type", [("tool.exe", b"MZ\x90\x00")], 415, "tool.exe: unsupported file type .exe"),
    ("records", [("rows.jsonl", b'{"id": "a", "text": "b"}\n')], 415, "rows.jsonl: unsupported file type .jsonl"),
    ("not a pdf", [("report.pdf", b"<html>a web page</html>")], 415, "report.pdf: not a PDF"),
    ("not a docx", [("memo.docx", minimal_pdf(["x"]))], 415, "memo.docx: not a DOCX file"),
    ("binary text", [("notes.md", b"\x89PNG\r\n\x1a\n\x00\x00")], 415, "notes.md: not UTF-8 text"),
    ("corrupt pdf", [("broken.pdf", b"%PDF-1.4\n1 0 obj << >>")], 400, "broken.pdf: unreadable PDF"),
    ("empty", [("empty.md", b"")], 400, "empty.md: empty file"),
    ("no text", [("blank.pdf", minimal_pdf([" "]))], 400, "blank.pdf: no text found"),
    ("text too long", [("long.md", b"# Long\n" + b"word " * MAX_CHARS)], 413, "long.md: text longer than 20000"),
    ("body too large", [("huge.md", ONE_OVER_BODY)], 413, "max_body_bytes"),
    ("too many files", [(f"f{i}.md", b"# F\nText.") for i in range(MAX_FILES + 1)], 400, "at most 8 files"),
    ("no name", [("", b"# A\nText.")], 400, "Expected UploadFile"),  # a part without a file name is a field
    ("dot dot", [("..", b"# A\nText.")], 400, "names no file"),
    ("sent twice", [("a.md", b"# A\nOne."), ("dir/a.md", b"# A\nTwo.")], 400, "a.md: sent twice"),
    (
        "one bad file in a batch",
        [("good.md", b"# Good\nFine text."), ("fine.pdf", minimal_pdf(["Fine"])), ("bad.pdf", b"not a pdf")],
        415,
        "bad.pdf: not a PDF",
    ),
]


@pytest.mark.parametrize(("case", "files", "status", "message"), BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_a_bad_upload_is_refused_by_name_and_nothing_is_written(
    server: LiveServer, case: str, files: list[tuple[str, bytes]], status: int, message: str
) -> None:
    response = upload(server, files, "hostile")
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and (error["param"] is None or error["param"].startswith("file")), error
    assert listed(server, "hostile") == []


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ({"json": {"documents": []}}, {}, "file: Field required"),
        ({"data": {"collection": "no such/name!"}, "files": [("file", ("a.md", b"# A\nx"))]}, {}, "collection"),
        ({"files": [("file", ("a.md", b"# A\nx"))], "data": {"collection": "ok"}}, {"X-Tenant": "globex"}, None),
    ],
)
def test_form_fields_are_checked(
    server: LiveServer, body: dict[str, Any], headers: dict[str, str], message: str | None
) -> None:
    response = httpx.post(f"{server.url}/v1/files", headers={**EDITOR, **headers}, timeout=60, **body)
    if message is None:  # the key decides the tenant, never the header
        assert response.status_code == 200 and listed(server, "ok") == ["a.md"]
        assert listed(server, "ok", OTHER_EDITOR) == []
        return
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text


@pytest.mark.parametrize("name", [b"a\x00b.md", b"a\x01b.md", b"\x7f.md"])
def test_a_control_character_in_the_name_is_refused(server: LiveServer, name: bytes) -> None:
    """Sent raw: httpx (like browsers) would percent-encode it."""
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"Content-Type: text/markdown\r\n\r\n# A\nText.\r\n--XyZ--\r\n"
    )
    headers = {**EDITOR, "Content-Type": "multipart/form-data; boundary=XyZ"}
    response = httpx.post(f"{server.url}/v1/files", content=body, headers=headers)
    assert response.status_code == 400 and "control character" in response.json()["error"]["message"], response.text
    assert listed(server, "default") == []


def test_a_chunked_body_past_the_limit_is_refused_as_it_arrives(server: LiveServer) -> None:
    """No Content-Length to refuse up front: the body is counted as it is read."""

    def body() -> Iterator[bytes]:
        yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.md"\r\n\r\n# Big\n'
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536
        yield b"\r\n--XyZ--\r\n"

    headers = {**EDITOR, "Content-Type": "multipart/form-data; boundary=XyZ"}
    response = httpx.post(f"{server.url}/v1/files", content=body(), headers=headers, timeout=60)
    assert response.status_code == 413 and "max_body_bytes" in response.json()["error"]["message"], response.text
    assert listed(server, "default") == []


def test_a_path_in_the_name_is_cut_to_the_file_name(server: LiveServer) -> None:
    names = ["../../escape.md", "C:\\Users\\me\\win.md", "/etc/passwd.txt", "./dot.md"]
    response = upload(server, [(name, b"# T\nSome text.") for name in names], "paths")
    assert response.status_code == 200, response.text
    assert [d["id"] for d in response.json()["documents"]] == ["escape.md", "win.md", "passwd.txt", "dot.md"]
    assert sorted(listed(server, "paths")) == ["dot.md", "escape.md", "passwd.txt", "win.md"]


def test_roles_and_tenants(server: LiveServer) -> None:
    secret = [("acme-plan.md", b"# Acme plan\nThe acme rocket ships to the desert in May.")]
    assert upload(server, secret, "tenants", READER).status_code == 403
    assert upload(server, secret, "tenants", {}).status_code == 401
    assert listed(server, "tenants") == []
    assert upload(server, secret, "tenants").status_code == 200
    assert listed(server, "tenants") == ["acme-plan.md"]
    assert listed(server, "tenants", OTHER_EDITOR) == []  # globex sees none of acme's
    search = {"query": "acme rocket desert", "collection": "tenants"}
    assert httpx.post(f"{server.url}/v1/search", json=search, headers=OTHER_EDITOR).json()["hits"] == []
    theirs = upload(server, [("acme-plan.md", b"# Globex\nGlobex text.")], "tenants", OTHER_EDITOR).json()
    assert theirs["documents"][0]["status"] == "added"  # the same name in another tenant is another document
    hits = httpx.post(f"{server.url}/v1/search", json=search, headers=EDITOR).json()["hits"]
    assert {hit["text"] for hit in hits} == {"The acme rocket ships to the desert in May."}


def test_the_upload_is_audited_with_its_collection_and_documents(server: LiveServer) -> None:
    files = [("audit-a.md", b"# A\nAudited text."), ("audit-b.txt", b"More audited text.")]
    rid = "filesaudit1"
    response = httpx.post(
        f"{server.url}/v1/files",
        files=[("file", f) for f in files],
        data={"collection": "audited"},
        headers={**EDITOR, "X-Request-ID": rid},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    page = httpx.get(f"{server.url}/v1/admin/audit", params={"limit": 1000}, headers=ADMIN)
    assert page.status_code == 200, page.text
    records = page.json()["records"]
    (record,) = [r for r in records if r["request_id"] == rid]
    assert (record["route"], record["status"], record["tenant"], record["role"]) == ("/v1/files", 200, "acme", "editor")
    assert record["admin"]["action"] == "files.upload" and record["admin"]["target"] == "audited"
    detail = record["admin"]["detail"]
    assert detail["files"] == 2 and detail["bytes"] == sum(len(data) for _, data in files)
    store = StateStore.open(None, server.data_dir / "state.sqlite")
    try:  # named as an erasure of each would name it; never in clear in the hashed body
        refs = [SubjectKeys(store).ref("document", "acme", name, "audited") for name, _ in files]
    finally:
        store.close()
    assert detail["document_refs"] == refs
    assert "audit-a.md" not in json.dumps(record)


def ragops(server: LiveServer, *args: str, key: str | None = "acme-editor-key") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **server.env, "RAGOPS_API_KEY": key or ""}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "ingest", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_ragops_ingest_url_uploads_through_the_server(server: LiveServer, tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "intro.md").write_text("# Intro\nThe welcome desk opens at eight.")
    (root / "sub" / "memo.docx").write_bytes(FORMATS["memo.docx"])
    (root / "sub" / "handbook.pdf").write_bytes(FORMATS["handbook.pdf"])
    (root / "sub" / "intro.md").write_text("# Same name\nA second intro.")  # a name taken: this one fails
    (root / ".hidden" / "secret.md").write_text("# Secret\nNot sent.")
    (root / "fake.pdf").write_bytes(b"not a pdf")
    records = [{"id": f"rec-{i}", "text": f"Record number {i} is about ferries."} for i in range(MAX_FILES + 3)]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")

    done = ragops(server, "--url", server.url, "--collection", "cli", "--json", str(root))
    assert done.returncode == 3, done.stderr  # partial: two files failed, the rest went in
    report = json.loads(done.stdout)
    assert (report["added"], report["failed"], report["collection"]) == (3 + len(records), 2, "cli")
    errors = {Path(e["source"]).relative_to(root).as_posix(): e["error"] for e in report["errors"]}
    assert errors["fake.pdf"].startswith("415: fake.pdf: not a PDF")
    assert "same name as" in errors["sub/intro.md"]
    assert sorted(listed(server, "cli")) == sorted(
        ["intro.md", "memo.docx", "handbook.pdf", *(r["id"] for r in records)]
    )

    again = ragops(server, "--url", server.url, "--collection", "cli", str(root / "intro.md"), str(root / "rows.jsonl"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"0 added, 0 updated, {1 + len(records)} unchanged, 0 removed, 0 failed")

    for key, code, words in (("wrong-key", 1, "refused the key"), ("acme-reader-key", 1, "needs the editor role")):
        refused = ragops(server, "--url", server.url, str(root / "intro.md"), key=key)
        assert refused.returncode == code and words in refused.stderr and len(refused.stderr.splitlines()) == 1
    nobody = ragops(server, "--url", f"http://127.0.0.1:{free_port()}", str(root / "intro.md"))
    assert nobody.returncode == 1 and nobody.stderr.startswith("ragops: error: cannot reach http://127.0.0.1:"), (
        nobody.stderr
    )
    local = ragops(server, str(root / "intro.md"))  # the server holds the data dir: the message says what to do
    assert local.returncode == 1 and "ragops ingest --url http://HOST:PORT" in local.stderr, local.stderr
