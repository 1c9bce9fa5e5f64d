"""The Vault HTTP session reads proxy and CA settings from the environment
once, at start-up, with requests' own precedence (not on every request)."""

from __future__ import annotations

import pytest

from rotator.vault import POOL_SIZE, http_session


def test_environment_is_read_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = http_session("https://vault.example:8200")
    assert session.trust_env is False
    assert session.proxies.get("https") == "http://proxy.example:3128"


def test_no_proxy_exempts_the_vault_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "vault.example")
    assert http_session("https://vault.example:8200").proxies == {}


def test_ca_bundle_from_the_environment_unless_a_ca_file_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/env-ca.pem")
    assert http_session("https://vault.example").verify == "/etc/env-ca.pem"
    assert http_session("https://vault.example", "/etc/vault-ca.pem").verify == "/etc/vault-ca.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert http_session("https://vault.example").verify is True


def test_one_kept_connection_per_worker() -> None:
    adapter = http_session("http://127.0.0.1:8200").get_adapter("http://127.0.0.1:8200/v1/x")
    assert adapter._pool_maxsize == POOL_SIZE  # type: ignore[attr-defined]
    assert POOL_SIZE >= 256  # the largest daemon.concurrency (config/reference.md)
