"""Who may reach what: a loopback server answers only loopback ``Host`` names (DNS rebinding gets 400), ``/metrics``
needs the metrics token once API keys are on, and tenants can be hashed in its labels."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.hosts import AllowedHosts
from app.container import Services
from app.main import create_app
from tests.conftest import load_sample_records
from tests.live_server import LiveServer, LiveServers

READER, EDITOR = "reach-reader-key", "reach-editor-key"
METRICS_TOKEN, LABEL_KEY = "reach-scrape-token", "reach-label-key"


@pytest.fixture(scope="module")
def server(module_live_server: LiveServers) -> LiveServer:
    settings = {
        "generator": "extractive", "default_collection": "sample", "api_keys": {READER: "acme:reader",
        EDITOR: "acme:editor"}, "prices": {"extractive": {"completion_per_1k": 10.0}},
        "metrics_token": METRICS_TOKEN, "metrics_tenant_labels": "hash", "metrics_tenant_key": LABEL_KEY,
    }  # fmt: skip
    live = module_live_server(settings, name="reach")
    live.ingest(load_sample_records(8), headers={"Authorization": f"Bearer {EDITOR}"})
    return live


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "localhost.evil.example", "127.0.0.2"])
def test_a_loopback_server_refuses_a_foreign_host_with_400(server: LiveServer, host: str) -> None:
    refused = httpx.get(f"{server.url}/healthz", headers={"Host": host.format(port=server.port)}, timeout=10)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "Host", "host_not_allowed")
    assert "allowed_hosts" in error["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "::1"])
def test_a_loopback_server_answers_loopback_names_on_any_port(server: LiveServer, host: str) -> None:
    assert httpx.get(f"{server.url}/healthz", headers={"Host": host.format(port=server.port)}).status_code == 200


def test_metrics_need_the_token_and_name_tenants_by_keyed_hash(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/metrics").json()["error"]["code"] == "invalid_metrics_token"
    asked = {"question": "Who were the Normans?"}
    answer = httpx.post(f"{server.url}/v1/chat", json=asked, headers={"Authorization": f"Bearer {READER}"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["cost_usd"] > 0
    scraped = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200
    samples = [sample for family in text_string_to_metric_families(scraped.text) for sample in family.samples]
    tenants = {sample.labels["tenant"] for sample in samples if "tenant" in sample.labels}
    # The documented label: `printf %s acme | openssl dgst -sha256 -hmac KEY`, first 12 hex digits.
    assert tenants == {hmac.new(LABEL_KEY.encode(), b"acme", hashlib.sha256).hexdigest()[:12]}
    assert "acme" not in scraped.text


def test_without_a_metrics_token_metrics_are_public_only_while_no_key_exists(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    with TestClient(create_app(services=make_services())) as open_server:
        assert open_server.get("/metrics").status_code == 200
    keyed_services = make_services(data_dir=tmp_path / "keyed", api_keys={READER: "acme:reader"})
    with TestClient(create_app(services=keyed_services)) as keyed:
        for headers in ({}, {"Authorization": f"Bearer {READER}"}):
            refused = keyed.get("/metrics", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "metrics_token_required"


def test_allowed_hosts_rule() -> None:
    loopback = AllowedHosts.of(None, "127.0.0.1")
    assert loopback.allows("localhost:8000") and loopback.allows("[::1]") and not loopback.allows("ragops-api")
    assert not loopback.allows(None)  # a request without a Host header names nothing allowed
    assert AllowedHosts.of(None, "0.0.0.0").allows("anything") and AllowedHosts.of(None, None).allows("testserver")
    named = AllowedHosts.of(["ragops-api", "Ragops.Example.org"], "127.0.0.1")  # the setting wins over the bind
    assert named.allows("ragops-api:80") and named.allows("ragops.example.org.") and not named.allows("localhost")
    assert AllowedHosts.of(["*"], "127.0.0.1").allows("evil.example")


def test_plain_tenant_hash_is_the_documented_sha256_prefix() -> None:
    from serving.observe.metrics import TenantLabels

    assert TenantLabels(hashed=True).of("acme") == hashlib.sha256(b"acme").hexdigest()[:12]  # `| sha256sum`
    assert TenantLabels().of("acme") == "acme"
