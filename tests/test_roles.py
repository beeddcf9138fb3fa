"""Every route x every role, over real HTTP: a reader, an editor and an admin key (two tenants, keys from both
sources), no key, and a wrong key. Every route either is public by design or declares its role, and the matrix
below covers every route the app has: a new route fails ``test_every_route_is_public_or_declares_a_role``
until it is added here, with the role it needs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount

from app.main import create_app
from app.settings import load_settings
from serving.governance.access import KeyLimits, Role
from serving.governance.keys import KeyStore
from serving.infra.state_store import StateStore
from tests.conftest import ROOT
from tests.live_server import LiveServer, LiveServers

ENV_KEYS = {
    "acme-editor-key": "acme:editor",
    "acme-admin-key": "acme:admin",
    "globex-reader-key": "globex:reader",
    "globex-editor-key": "globex:editor",
}
COLLECTION = "roles"
ACME_DOC = {"id": "acme-plan", "text": "Acme launch plan for the rocket skates: ship them to the desert in May."}
GLOBEX_DOC = {"id": "globex-memo", "text": "Globex memo on the rocket skates: the desert launch slips to June."}
PUBLIC = {"/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json", "/docs/assets"}
ASK = {"question": "When do the skates ship?", "collection": COLLECTION}
INGEST = {"documents": [ACME_DOC], "collection": COLLECTION}
IN_COLLECTION = f"?collection={COLLECTION}"
LABEL = "roles-test"  # a label no shipped prompt uses, in the server's own copy of the prompts


@dataclass(frozen=True)
class Case:  # a table's row: positional, read as a table
    """One route: the role it needs (None: public) and a request that the role may make, with its status."""

    method: str
    path: str  # as the app declares it
    role: Role | None
    url: str
    body: dict[str, Any] | None
    allowed_status: int


# Allowed requests change nothing that later cases read: unknown ids answer 404, the ingest repeats a document
# already there.
CASES = [
    Case("GET", "/healthz", None, "/healthz", None, 200),
    Case("GET", "/readyz", None, "/readyz", None, 200),
    Case("GET", "/metrics", None, "/metrics", None, 401),  # keys on, no metrics_token: nobody (test_reach.py)
    Case("GET", "/", None, "/", None, 200),
    Case("GET", "/docs", None, "/docs", None, 200),
    Case("GET", "/openapi.json", None, "/openapi.json", None, 200),
    Case("HEAD", "/openapi.json", None, "/openapi.json", None, 200),
    Case("GET", "/docs/assets", None, "/docs/assets/swagger-ui.css", None, 200),
    Case("GET", "/v1/models", Role.reader, "/v1/models", None, 200),
    Case("POST", "/v1/search", Role.reader, "/v1/search", {"query": "rocket skates", "collection": COLLECTION}, 200),
    Case("POST", "/v1/chat", Role.reader, "/v1/chat", ASK, 200),
    Case(
        "POST",
        "/v1/chat/completions",
        Role.reader,
        "/v1/chat/completions",
        {
            "model": "ragops",
            "messages": [{"role": "user", "content": "When do the skates ship?"}],
            "collection": COLLECTION,
        },
        200,
    ),
    Case("POST", "/v1/feedback", Role.reader, "/v1/feedback", {"id": "ans_" + "0" * 32, "rating": "down"}, 404),
    Case("POST", "/v1/conversations", Role.reader, "/v1/conversations", {}, 201),
    Case("GET", "/v1/conversations/{conversation_id}", Role.reader, "/v1/conversations/conv_" + "0" * 32, None, 404),
    Case("DELETE", "/v1/conversations/{conversation_id}", Role.reader, f"/v1/conversations/conv_{'0' * 32}", None, 404),
    Case("GET", "/v1/documents", Role.reader, f"/v1/documents?collection={COLLECTION}", None, 200),
    Case("POST", "/v1/documents", Role.editor, "/v1/documents", INGEST, 200),
    Case("POST", "/v1/files", Role.editor, "/v1/files", None, 400),  # no file part: tests/test_files.py uploads
    Case("DELETE", "/v1/documents/{doc_id:path}", Role.editor, f"/v1/documents/absent{IN_COLLECTION}", None, 404),
    Case("GET", "/v1/admin/keys", Role.admin, "/v1/admin/keys", None, 200),
    Case("POST", "/v1/admin/keys", Role.admin, "/v1/admin/keys", {"tenant": "acme", "role": "reader"}, 201),
    Case("DELETE", "/v1/admin/keys/{key_id}", Role.admin, "/v1/admin/keys/absent", None, 404),
    Case("POST", "/v1/admin/keys/{key_id}/rotate", Role.admin, "/v1/admin/keys/absent/rotate", {}, 404),
    Case("GET", "/v1/admin/prompts", Role.admin, "/v1/admin/prompts", None, 200),
    Case(
        "POST",
        "/v1/admin/prompts/{name}/labels/{label}",
        Role.admin,
        "/v1/admin/prompts/absent/labels/x",
        {"version": "v1"},
        404,
    ),
    Case(
        "POST",
        "/v1/admin/prompts/{name}/labels/{label}/rollback",
        Role.admin,
        "/v1/admin/prompts/absent/labels/x/rollback",
        None,
        404,
    ),
    Case("GET", "/v1/admin/usage", Role.admin, "/v1/admin/usage", None, 200),
    Case("GET", "/v1/admin/budgets", Role.admin, "/v1/admin/budgets", None, 200),
    Case("PUT", "/v1/admin/budgets/{tenant}", Role.admin, "/v1/admin/budgets/acme", {}, 400),
    Case("DELETE", "/v1/admin/budgets/{tenant}", Role.admin, "/v1/admin/budgets/nobody", None, 404),
    Case("GET", "/v1/admin/audit", Role.admin, "/v1/admin/audit", None, 200),
    Case("GET", "/v1/admin/audit/verify", Role.admin, "/v1/admin/audit/verify", None, 200),
    Case(
        "DELETE",
        "/v1/admin/subjects/documents/{doc_id:path}",
        Role.admin,
        "/v1/admin/subjects/documents/absent",
        None,
        200,
    ),
    Case("DELETE", "/v1/admin/subjects/users/{user}", Role.admin, "/v1/admin/subjects/users/nobody", None, 200),
]


@dataclass
class Keys:
    reader: str  # acme's, from the state store
    editor: str
    admin: str
    other_reader: str  # globex's
    other_editor: str

    def of(self, role: Role) -> str:
        return {Role.reader: self.reader, Role.editor: self.editor, Role.admin: self.admin}[role]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_live_server: LiveServers) -> tuple[LiveServer, Keys]:
    data = tmp_path_factory.mktemp("roles")
    prompts = data / "prompts"
    shutil.copytree(ROOT / "prompts", prompts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    store = StateStore.open(None, data / "state.sqlite")  # the server's own state store, before it starts
    reader = KeyStore(store).create("acme", Role.reader, "leaked reader", None, KeyLimits()).key
    store.close()
    limits = {role.value: {"requests_per_minute": 10_000, "tokens_per_day": 10_000_000} for role in Role}
    settings = {
        "data_dir": data, "generator": "extractive", "guards": False, "prompts_dir": prompts,
        "api_keys": ENV_KEYS, "role_limits": limits, "auth_failures_per_minute": 100000,
    }  # fmt: skip
    live = module_live_server(settings, name="roles")
    keys = Keys(reader, "acme-editor-key", "acme-admin-key", "globex-reader-key", "globex-editor-key")
    for key, doc in ((keys.editor, ACME_DOC), (keys.other_editor, GLOBEX_DOC)):
        live.ingest([doc], headers=bearer(key), collection=COLLECTION)
    return live, keys


@pytest.fixture(scope="module")
def http(server: tuple[LiveServer, Keys]) -> httpx.Client:
    return server[0].client(timeout=60)


def declared_role(dependant: Dependant) -> Role | None:
    """The role a route's dependencies require (``app.api.deps._caller`` marks its dependency)."""
    pending = list(dependant.dependencies)
    while pending:
        dependency = pending.pop()
        role = getattr(dependency.call, "required_role", None)
        if role is not None:
            return Role(role)
        pending.extend(dependency.dependencies)
    return None


def app_routes() -> dict[tuple[str, str], Role | None]:
    """(method, path) -> declared role of every route the app serves, included routers' too (FastAPI keeps
    those behind one entry of ``app.routes`` each); mounts (the docs' assets) are public."""
    found: dict[tuple[str, str], Role | None] = {}
    for route in iter_route_contexts(create_app(load_settings()).routes):
        assert route.path is not None
        if isinstance(route.original_route, APIRoute):
            found.update({(method, route.path): declared_role(route.dependant) for method in route.methods or ()})
        elif isinstance(route.original_route, Mount):
            found[("GET", route.path)] = None
        else:
            found.update({(method, route.path): None for method in route.methods or ()})
    return found


def test_every_route_is_public_or_declares_a_role() -> None:
    routes = app_routes()
    for (method, path), role in routes.items():
        assert (role is None) == (path in PUBLIC), f"{method} {path}: public by design, or it must declare a role"
    matrix = {(case.method, case.path): case.role for case in CASES}
    assert matrix == routes, "the matrix below must list every route with the role it declares"


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.method} {case.path}")
def test_route_by_role(case: Case, server: tuple[LiveServer, Keys], http: httpx.Client) -> None:
    keys = server[1]
    callers: dict[str, dict[str, str]] = {
        "no key": {},
        "wrong key": bearer("rgk_AAAAAAAAAAAA_" + "x" * 43),
        **{role.value: bearer(keys.of(role)) for role in Role},
    }
    for caller, headers in callers.items():
        response = http.request(case.method, case.url, json=case.body, headers=headers)
        if case.role is None or (caller in Role.__members__ and Role(caller).allows(case.role)):
            assert response.status_code == case.allowed_status, (caller, response.text)
        elif caller in Role.__members__:
            assert response.status_code == 403, (caller, response.text)
            error = response.json()["error"]
            assert error["code"] == "insufficient_role" and f"needs the {case.role.value} role" in error["message"]
        else:
            assert response.status_code == 401, (caller, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == ("missing_api_key" if caller == "no key" else "invalid_api_key")


def test_a_leaked_reader_key_cannot_write_delete_or_leave_its_tenant(
    server: tuple[LiveServer, Keys], http: httpx.Client
) -> None:
    reader = bearer(server[1].reader)
    doc = {"documents": [{"id": "forged", "text": "Forged."}], "collection": COLLECTION}
    assert http.post("/v1/documents", json=doc, headers=reader).status_code == 403
    assert http.delete(f"/v1/documents/acme-plan?collection={COLLECTION}", headers=reader).status_code == 403
    assert http.post("/v1/admin/keys", json={"tenant": "acme", "role": "admin"}, headers=reader).status_code == 403
    for headers in (reader, {**reader, "X-Tenant": "globex"}):  # the key decides the tenant, not the header
        listed = http.get(f"/v1/documents?collection={COLLECTION}", headers=headers).json()["documents"]
        assert [d["id"] for d in listed] == ["acme-plan"]
        search = {"query": "rocket skates desert launch", "collection": COLLECTION, "top_k": 10}
        hits = http.post("/v1/search", json=search, headers=headers).json()["hits"]
        assert hits and {hit["doc_id"] for hit in hits} == {"acme-plan"}
        chat = {"question": "When is the rocket skates launch in the desert?", "collection": COLLECTION}
        answer = http.post("/v1/chat", json=chat, headers=headers).json()
        assert answer["citations"] and {c["doc_id"] for c in answer["citations"]} == {"acme-plan"}
        assert "June" not in answer["answer"]
    other = bearer(server[1].other_reader)  # and globex's reader sees globex's document only
    listed = http.get(f"/v1/documents?collection={COLLECTION}", headers={**other, "X-Tenant": "acme"}).json()
    assert [d["id"] for d in listed["documents"]] == ["globex-memo"]


def test_admin_moves_prompt_labels(server: tuple[LiveServer, Keys], http: httpx.Client) -> None:
    admin = bearer(server[1].admin)
    listing = http.get("/v1/admin/prompts", headers=admin).json()
    rag = next(p for p in listing["prompts"] if p["name"] == "rag_answer")
    assert {"v1", "v2"} <= set(rag["versions"]) and "production" in rag["labels"]
    served = listing["served"]
    moves = [("v1", None), ("v2", "v1")]
    for version, previous in moves:
        moved = http.post(f"/v1/admin/prompts/rag_answer/labels/{LABEL}", json={"version": version}, headers=admin)
        assert moved.status_code == 200, moved.text
        assert (moved.json()["version"], moved.json()["previous"]) == (version, previous)
        assert "labels are live" in moved.json()["applies"]
    back = http.post(f"/v1/admin/prompts/rag_answer/labels/{LABEL}/rollback", headers=admin).json()
    assert (back["version"], back["previous"]) == ("v1", "v2")
    again = http.post(f"/v1/admin/prompts/rag_answer/labels/{LABEL}/rollback", headers=admin)
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"
    after = http.get("/v1/admin/prompts", headers=admin).json()
    assert next(p for p in after["prompts"] if p["name"] == "rag_answer")["labels"][LABEL] == "v1"
    assert after["served"] == served  # the label moved is not the one this server answers with
    for url, body in (
        (f"/v1/admin/prompts/rag_answer/labels/{LABEL}", {"version": "v999"}),
        (f"/v1/admin/prompts/rag_answer/labels/{LABEL}", {"version": "../../etc/passwd"}),
        ("/v1/admin/prompts/rag_answer/labels/Bad Label!", {"version": "v1"}),
        (f"/v1/admin/prompts/rag_answer/labels/{LABEL}", {"version": 3}),
        (f"/v1/admin/prompts/rag_answer/labels/{LABEL}", {}),
    ):
        refused = http.post(url, json=body, headers=admin)
        assert refused.status_code == 400, (url, body, refused.text)
    assert http.post("/v1/admin/prompts/../labels/x", json={"version": "v1"}, headers=admin).status_code == 404
