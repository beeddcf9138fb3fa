"""Per-address limits key on the real client: ``X-Forwarded-For`` counts only when the peer is a trusted proxy,
and then only its last address that is not itself a proxy (the ones before it are the client's to forge)."""

from __future__ import annotations

import httpx
import pytest

from tests.live_server import LiveServer, LiveServers

FAILURES_PER_MINUTE = 3


def _server(live_server: LiveServers, trusted: list[str]) -> LiveServer:
    settings = {
        "generator": "extractive",
        "api_keys": {"good-key": "acme:reader"},
        "auth_failures_per_minute": FAILURES_PER_MINUTE,
        "trusted_proxies": trusted,
    }
    return live_server(settings)


@pytest.fixture
def behind_proxy(live_server: LiveServers) -> LiveServer:
    return _server(live_server, ["127.0.0.0/8"])


@pytest.fixture
def direct(live_server: LiveServers) -> LiveServer:
    return _server(live_server, [])


def _models(server: LiveServer, forwarded_for: str | list[str], key: str = "wrong-key") -> httpx.Response:
    """``forwarded_for``: the header's value, or its lines (a proxy may append a line rather than extend one)."""
    lines = [forwarded_for] if isinstance(forwarded_for, str) else forwarded_for
    headers = [("Authorization", f"Bearer {key}"), *(("X-Forwarded-For", line) for line in lines)]
    return httpx.get(f"{server.url}/v1/models", headers=headers, timeout=10)


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_failure_limit(behind_proxy: LiveServer) -> None:
    for _ in range(FAILURES_PER_MINUTE):
        assert _models(behind_proxy, "203.0.113.7").status_code == 401
    refused = _models(behind_proxy, "203.0.113.7")
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "auth_failures_per_minute"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _models(behind_proxy, "203.0.113.7", key="good-key").status_code == 429  # the address, not the key
    # Another client behind the same proxy is not refused; a forged first hop does not change who the client is.
    assert _models(behind_proxy, "198.51.100.9").status_code == 401
    assert _models(behind_proxy, "198.51.100.9, 203.0.113.7").status_code == 429
    assert _models(behind_proxy, "198.51.100.1", key="good-key").status_code == 200
    # A proxy that appends its own line: each request's forged first line changes nothing, the last line counts.
    for forged in range(FAILURES_PER_MINUTE):
        assert _models(behind_proxy, [f"192.0.2.{forged}", "198.51.100.77"]).status_code == 401
    assert _models(behind_proxy, ["192.0.2.99", "198.51.100.77"]).status_code == 429


def test_without_trusted_proxies_the_header_is_ignored(direct: LiveServer) -> None:
    for i in range(FAILURES_PER_MINUTE):
        assert _models(direct, f"203.0.113.{i}").status_code == 401  # a new forged address each time
    assert _models(direct, "198.51.100.200").status_code == 429  # all were the one peer
