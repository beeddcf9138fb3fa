"""API keys: the store and the authenticator on SQLite and Postgres, the ``ragops keys`` CLI, and over real HTTP
a key that is revoked, expires or is rotated stops working within ``key_cache_s``, and never shows in the
server's log or in ``keys list``."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.cli.keys import ADMIN_KEY_COMMAND
from app.container import Services
from app.main import create_app
from serving.governance.access import AdmissionUnavailableError, KeyLimits, Principal, Role
from serving.governance.keys import Authenticator, KeyStore, parse_key
from serving.infra.clock import parse_stamp
from serving.infra.state_store import StateStore, StateStoreUnavailableError
from tests.live_server import LiveServer, LiveServers

ENV_KEYS = {"bootstrap-admin-key": "ops:admin", "reader-key": "acme:reader", "old-style-key": "acme"}
CACHE_S = 0.5
READER = {"tenant": "acme", "role": "reader"}
METRICS_TOKEN = "scrape-token"


@pytest.fixture
def state(tmp_path: Path, database_url: str | None) -> Iterator[StateStore]:
    store = StateStore.open(database_url, tmp_path / "state.sqlite")
    yield store
    store.close()


def in_a_while(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_a_key_authenticates_until_revoked(state: StateStore) -> None:
    keys = KeyStore(state)
    record, key = keys.create("acme", Role.editor, "ci", None, KeyLimits(requests_per_minute=7))
    auth = Authenticator(keys, {}, cache_s=0)
    assert auth.has_keys()
    assert auth.authenticate(key) == Principal(record.id, "acme", Role.editor, KeyLimits(7, None))
    key_id, secret = parse_key(key) or ("", "")
    assert key_id == record.id and len(key_id) == 12 and len(secret) == 43
    stored = keys.lookup(record.id)
    assert stored is not None and secret not in stored.secret_hash and len(stored.secret_hash) == 64
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "rgk_", "", f"rgk_{'Z' * 12}_{secret}"):
        assert auth.authenticate(wrong) is None, wrong
    assert keys.revoke(record.id).revoked_at is not None
    assert auth.authenticate(key) is None
    assert auth.has_keys()  # the only key is revoked: the server stays closed (never an open door)


def test_revocation_and_expiry_within_the_cache(state: StateStore) -> None:
    keys = KeyStore(state)
    lasting = keys.create("acme", Role.reader, "", None, KeyLimits())
    brief = keys.create("acme", Role.reader, "", in_a_while(0.6), KeyLimits())
    auth = Authenticator(keys, {}, cache_s=CACHE_S)
    assert auth.authenticate(lasting.key) and auth.authenticate(brief.key)
    keys.revoke(lasting.record.id)
    assert auth.authenticate(lasting.key) is not None  # cached: trusted for up to cache_s
    time.sleep(CACHE_S + 0.15)
    assert auth.authenticate(lasting.key) is None
    assert auth.authenticate(brief.key) is None  # expiry is checked on every request, cached or not


def test_last_used_is_written_once_a_minute(state: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = KeyStore(state)
    record, key = keys.create("acme", Role.reader, "", None, KeyLimits())
    writes: list[str] = []
    touch = keys.touch

    def counted_touch(key_id: str, when: str) -> None:
        writes.append(key_id)
        touch(key_id, when)

    monkeypatch.setattr(keys, "touch", counted_touch)
    auth = Authenticator(keys, {}, cache_s=60)
    for _ in range(50):
        assert auth.authenticate(key) is not None
    assert writes == [record.id]
    used = keys.get(record.id)
    assert used is not None and used.last_used_at is not None and record.created_at is not None
    assert used.last_used_at >= record.created_at


def test_rotation_keeps_the_old_key_for_its_grace(state: StateStore) -> None:
    keys = KeyStore(state)
    old = keys.create("acme", Role.admin, "deploy", in_a_while(3600), KeyLimits(tokens_per_day=5))
    new = keys.rotate(old.record.id, timedelta(hours=24))
    after = keys.get(old.record.id)
    assert after is not None and after.expires_at == old.record.expires_at  # never later than it already was
    assert (new.record.tenant, new.record.role, new.record.name, new.record.tokens_per_day) == (
        "acme",
        "admin",
        "deploy",
        5,
    )
    assert new.record.rotated_from == old.record.id and new.record.expires_at is not None
    auth = Authenticator(keys, {}, cache_s=0)
    assert auth.authenticate(old.key) is not None and auth.authenticate(new.key) is not None
    newer = keys.rotate(new.record.id, timedelta(0))
    assert auth.authenticate(new.key) is None and auth.authenticate(newer.key) is not None
    with pytest.raises(ValueError, match="expired"):
        keys.rotate(new.record.id, timedelta(hours=1))


def test_env_keys(state: StateStore) -> None:
    auth = Authenticator(KeyStore(state), ENV_KEYS, cache_s=0)
    assert auth.has_keys()
    admin, reader = auth.authenticate("bootstrap-admin-key"), auth.authenticate("reader-key")
    assert admin is not None and (admin.tenant, admin.role) == ("ops", Role.admin)
    assert reader is not None and (reader.tenant, reader.role) == ("acme", Role.reader)
    old_style = auth.authenticate("old-style-key")  # a key from before roles: its tenant's documents, no more
    assert old_style is not None and (old_style.tenant, old_style.role) == ("acme", Role.editor)
    assert admin.key_id.startswith("env-") and len(admin.key_id) == 12
    assert auth.authenticate("reader-ke") is None and auth.authenticate("reader-key ") is None


def test_a_store_that_fails_refuses_rather_than_opens(state: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = KeyStore(state)
    _, key = keys.create("acme", Role.reader, "", None, KeyLimits())

    def down(*_: object) -> None:
        raise StateStoreUnavailableError("state store sqlite:... unavailable: disk I/O error")

    monkeypatch.setattr(keys, "lookup", down)
    monkeypatch.setattr(keys, "any_made", down)
    with pytest.raises(AdmissionUnavailableError):
        Authenticator(keys, {}, cache_s=0).has_keys()
    with_env = Authenticator(keys, ENV_KEYS, cache_s=0)
    assert with_env.has_keys() and with_env.authenticate("reader-key") is not None  # settings keys still work
    with pytest.raises(AdmissionUnavailableError):
        with_env.authenticate(key)


def cli(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), "keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip(
    tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if database_url is not None:
        monkeypatch.setenv("RAGOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGOPS_API_KEYS", json.dumps(ENV_KEYS))
    code, out, _ = cli(capsys, tmp_path, "create", "--tenant", "acme", "--role", "reader", "--name", "bot", "--json")
    made = json.loads(out)
    assert code == 0 and made["key"].startswith(f"rgk_{made['id']}_") and made["role"] == "reader"
    code, out, _ = cli(capsys, tmp_path, "create", "--tenant", "acme", "--role", "editor", "--expires", "2099-01-01")
    assert code == 0 and "2099-01-01T00:00:00" in out and "key: rgk_" in out
    code, out, _ = cli(capsys, tmp_path, "rotate", made["id"], "--grace", "1h", "--json")
    rotated = json.loads(out)
    assert code == 0 and rotated["rotated_from"] == made["id"]
    assert cli(capsys, tmp_path, "revoke", rotated["id"])[0] == 0
    code, out, _ = cli(capsys, tmp_path, "list", "--json")
    listed = {record["id"]: record for record in json.loads(out)}
    assert len(listed) == 6 and {r["source"] for r in listed.values()} == {"store", "env"}
    assert listed[rotated["id"]]["revoked_at"] is not None and listed[made["id"]]["expires_at"] is not None
    code, table, _ = cli(capsys, tmp_path, "list")
    assert code == 0 and table.splitlines()[0].split() == [
        "id", "name", "tenant", "role", "created", "expires", "revoked", "last", "used", "source",
    ]  # fmt: skip
    for text in (json.dumps(listed), table):
        assert made["key"] not in text and rotated["key"] not in text and "bootstrap-admin-key" not in text
    for argv in (("revoke", "nope"), ("rotate", rotated["id"]), ("revoke", listed_env_id(listed))):
        code, out, err = cli(capsys, tmp_path, *argv)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1, (argv, err)
    code, out, _ = cli(capsys, tmp_path, "create", "--tenant", "acme", "--role", "reader", "--expires", "1s", "--json")
    brief = json.loads(out)
    store = StateStore.open(database_url, tmp_path / "state.sqlite")  # where the CLI put it
    try:
        auth = Authenticator(KeyStore(store), {}, cache_s=0)
        assert auth.authenticate(brief["key"]) is not None and auth.authenticate(made["key"]) is not None
        time.sleep(max(0.0, (parse_stamp(brief["expires_at"]) - datetime.now(UTC)).total_seconds()))
        assert auth.authenticate(brief["key"]) is None and auth.authenticate(rotated["key"]) is None
    finally:
        store.close()


def test_a_first_key_that_is_no_admins_warns_with_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reader as the first key closes the admin routes to everyone: allowed, with a warning on stderr naming the
    command that makes an admin key (which works as printed); ``list`` warns too, until an admin key exists."""
    code, out, err = cli(capsys, tmp_path, "create", "--tenant", "acme", "--role", "reader", "--json")
    assert code == 0 and json.loads(out)["role"] == "reader"
    assert "warning: no active admin key" in err and f"`{ADMIN_KEY_COMMAND}`" in err
    code, out, err = cli(capsys, tmp_path, "list")
    assert code == 0 and "reader" in out and "no active admin key" in err
    command = shlex.split(ADMIN_KEY_COMMAND)
    assert command[:2] == ["ragops", "keys"]
    code, out, err = cli(capsys, tmp_path, *command[2:])
    assert code == 0 and "role admin" in out and "no active admin key" not in err
    assert "no active admin key" not in cli(capsys, tmp_path, "list")[2]


def listed_env_id(listed: dict[str, dict[str, Any]]) -> str:
    return next(key_id for key_id, record in listed.items() if record["source"] == "env")


@pytest.mark.parametrize(
    "argv",
    [
        ("create", "--tenant", "a b", "--role", "reader"),
        ("create", "--tenant", "a", "--role", "reader", "--expires", "2001-01-01"),
        ("create", "--tenant", "a", "--role", "reader", "--expires", "soon"),
        ("create", "--tenant", "a", "--role", "reader", "--expires", "9999999999999d"),
        ("create", "--tenant", "a", "--role", "reader", "--rpm", "0"),
        ("create", "--tenant", "a", "--role", "reader", "--name", "two\nlines"),
        ("create", "--tenant", "a", "--role", "reader", "--name", "c1\u0085control"),
        ("create", "--tenant", "a", "--role", "reader", "--name", "bidi\u202eflip"),
        ("rotate", "nope", "--grace", "31d"),
    ],
)
def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    code, out, err = cli(capsys, tmp_path, *argv)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err


def test_list_shows_a_stored_unprintable_name_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = StateStore.open(None, tmp_path / "state.sqlite")
    try:
        record = KeyStore(store).create("acme", Role.reader, "ok", None, KeyLimits()).record
        with store.transaction(write=True) as cursor:  # written before names were checked, or edited
            cursor.execute("UPDATE api_keys SET name = ? WHERE id = ?", ["bot\x1b[2J\x85\u202eevil", record.id])
    finally:
        store.close()
    code, table, _ = cli(capsys, tmp_path, "list")
    assert code == 0 and "bot\\x1b[2J\\x85\\u202eevil" in table
    assert all(char.isprintable() for line in table.splitlines() for char in line)
    made = cli(capsys, tmp_path, "create", "--tenant", "acme", "--role", "reader", "--name", "café bot")
    assert made[0] == 0  # printable non-ASCII stays allowed


def test_an_open_server_makes_no_key_over_http(make_services: Callable[..., Services]) -> None:
    services = make_services(generator="extractive", guards=False)
    with TestClient(create_app(services=services)) as client:
        refused = client.post("/v1/admin/keys", json=READER)
        assert refused.status_code == 403 and "ragops keys create" in refused.json()["error"]["message"]
        assert client.get("/v1/admin/keys").json() == {"keys": []}  # the open server's caller is its admin
    assert KeyStore(services.state).list() == []


@pytest.fixture(scope="module")
def server(module_live_server: LiveServers) -> LiveServer:
    settings = {
        "generator": "extractive", "guards": False, "api_keys": ENV_KEYS, "key_cache_s": CACHE_S,
        "metrics_token": METRICS_TOKEN, "auth_failures_per_minute": 100000,
    }  # fmt: skip
    return module_live_server(settings, name="keys", log_level="info")


@pytest.fixture(scope="module")
def admin(server: LiveServer) -> httpx.Client:
    return server.client(timeout=60, headers={"Authorization": "Bearer bootstrap-admin-key"})


def works(server: LiveServer, key: str) -> bool:
    response = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def stops_within(server: LiveServer, key: str, seconds: float) -> float:
    """Seconds until ``key`` is refused (polling); fails past ``seconds``."""
    started = time.monotonic()
    while works(server, key):
        assert time.monotonic() - started < seconds, f"{key[:16]}... still works after {seconds}s"
        time.sleep(0.05)
    return time.monotonic() - started


def create(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/v1/admin/keys", json={**READER, **body})
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


def test_revoked_key_stops_within_the_cache(server: LiveServer, admin: httpx.Client) -> None:
    made = create(admin, name="to revoke")
    assert works(server, made["key"])
    listed = admin.get("/v1/admin/keys").json()["keys"]
    assert made["id"] in {record["id"] for record in listed} and made["key"] not in json.dumps(listed)
    revoked = admin.delete(f"/v1/admin/keys/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None and "key" not in revoked.json()
    assert stops_within(server, made["key"], CACHE_S + 1.0) <= CACHE_S + 1.0
    trail = admin.get("/v1/admin/audit", params={"limit": 1000}).json()["records"]
    actions = [(r["admin"]["action"], r["admin"]["target"]) for r in trail if r.get("admin")]
    assert ("keys.create", made["id"]) in actions and ("keys.revoke", made["id"]) in actions
    assert made["key"].split("_", 2)[2] not in json.dumps(trail)


def test_key_made_and_revoked_by_the_cli_while_serving(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, server.data_dir, "create", "--tenant", "acme", "--role", "reader", "--json")
    made = json.loads(out)
    assert code == 0 and works(server, made["key"])
    assert cli(capsys, server.data_dir, "revoke", made["id"])[0] == 0
    stops_within(server, made["key"], CACHE_S + 1.0)
    code, table, _ = cli(capsys, server.data_dir, "list")
    assert made["id"] in table and made["key"].split("_", 2)[2] not in table


def test_expired_key_stops(server: LiveServer, admin: httpx.Client) -> None:
    made = create(admin, expires_in="2s")
    assert works(server, made["key"])
    assert parse_stamp(made["expires_at"]) <= datetime.now(UTC) + timedelta(seconds=2)
    time.sleep(max(0.0, (parse_stamp(made["expires_at"]) - datetime.now(UTC)).total_seconds()))
    assert not works(server, made["key"])  # expiry is exact, not subject to the cache


def test_rotation_grace_over_http(server: LiveServer, admin: httpx.Client) -> None:
    old = create(admin, name="rotating")
    assert works(server, old["key"])
    rotated = admin.post(f"/v1/admin/keys/{old['id']}/rotate", json={"grace": "2s"})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["rotated_from"] == old["id"] and new["previous"]["id"] == old["id"]
    assert works(server, new["key"]) and works(server, old["key"])  # both during the grace
    ends = parse_stamp(new["previous"]["expires_at"])
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()))
    assert not works(server, old["key"]) and works(server, new["key"])


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/admin/keys", {"tenant": "acme", "role": "root"}, 400),
        ("POST", "/v1/admin/keys", {"tenant": "a b", "role": "reader"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "expires_in": "soon"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "expires_in": "2027-01-01"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "expires_at": "2001-01-01"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "expires_in": "99999999999999d"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "expires_in": "1d", "expires_at": "2099-01-01"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "requests_per_minute": 0}, 400),
        ("POST", "/v1/admin/keys", {**READER, "tokens_per_day": 10**30}, 400),
        ("POST", "/v1/admin/keys", {**READER, "name": "a\u0000b"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "name": "a\u009bb"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "name": "a\u2028b"}, 400),
        ("POST", "/v1/admin/keys", {**READER, "secret": "mine"}, 400),
        ("POST", "/v1/admin/keys", [], 400),
        ("DELETE", "/v1/admin/keys/absent", None, 404),
        ("DELETE", "/v1/admin/keys/%00%ff", None, 404),
        ("POST", "/v1/admin/keys/absent/rotate", None, 404),
        ("POST", "/v1/admin/keys/absent/rotate", {"grace": "31d"}, 400),
        ("POST", "/v1/admin/keys/absent/rotate", {"grace": -1}, 400),
    ],
)  # fmt: skip
def test_admin_key_routes_refuse_bad_input(admin: httpx.Client, method: str, path: str, body: Any, status: int) -> None:
    response = admin.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_env_keys_are_listed_and_cannot_be_revoked(admin: httpx.Client) -> None:
    listed = admin.get("/v1/admin/keys").json()["keys"]
    env = [record for record in listed if record["source"] == "env"]
    assert {(r["tenant"], r["role"]) for r in env} == {("ops", "admin"), ("acme", "reader"), ("acme", "editor")}
    for method, suffix in (("DELETE", ""), ("POST", "/rotate")):
        refused = admin.request(method, f"/v1/admin/keys/{env[0]['id']}{suffix}")
        assert refused.status_code == 409 and "RAGOPS_API_KEYS" in refused.json()["error"]["message"]


def test_metrics_token(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer reader-key"}).status_code == 401
    scraped = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200 and "ragops_" in scraped.text


def test_keys_never_in_the_log(server: LiveServer, admin: httpx.Client) -> None:
    made = create(admin, name="logged?")
    secret = made["key"].split("_", 2)[2]
    # A key where the request log line does show what came: the path of a request.
    assert httpx.get(f"{server.url}/v1/nothing/{made['key']}").status_code == 404
    chat = {"question": f"is {made['key']} a key?"}
    httpx.post(f"{server.url}/v1/chat", json=chat, headers={"Authorization": f"Bearer {made['key']}"}, timeout=60)
    time.sleep(0.3)  # the log line is written after the response
    log = server.log_path.read_text()
    assert "/v1/nothing/[API_KEY]" in log
    assert secret not in log and "bootstrap-admin-key" not in log
