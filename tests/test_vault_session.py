"""The Vault HTTP session: requests' behaviour at urllib3's cost.  Settings
come from the environment once, with requests' precedence; plain calls go
through urllib3, and anything else (a redirect, a proxy) through requests."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from rotator.vault_http import POOL_SIZE, VaultSession
from tests.harness.openbao import OpenBao
from tests.harness.pki import Pki, make_pki


def test_environment_is_read_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = VaultSession("https://vault.example:8200")
    assert session.trust_env is False
    assert session.proxies.get("https") == "http://proxy.example:3128"


def test_no_proxy_exempts_the_vault_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "vault.example")
    assert VaultSession("https://vault.example:8200").proxies == {}


def test_ca_bundle_from_the_environment_unless_a_ca_file_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/env-ca.pem")
    assert VaultSession("https://vault.example").verify == "/etc/env-ca.pem"
    assert VaultSession("https://vault.example", "/etc/vault-ca.pem").verify == "/etc/vault-ca.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert VaultSession("https://vault.example").verify is True


def test_one_kept_connection_per_worker() -> None:
    adapter = VaultSession("http://127.0.0.1:8200").get_adapter("http://127.0.0.1:8200/v1/x")
    assert adapter._pool_maxsize == POOL_SIZE  # type: ignore[attr-defined]
    assert POOL_SIZE >= 256  # the largest daemon.concurrency (config/reference.md)


def test_plain_calls_answer_like_requests(openbao: OpenBao) -> None:
    session = VaultSession(openbao.url)
    headers = {"X-Vault-Token": openbao.root_token, "X-Vault-Request": "true"}
    ours = session.request("GET", f"{openbao.url}/v1/sys/health", headers=headers, timeout=5)
    theirs = requests.get(f"{openbao.url}/v1/sys/health", headers=headers, timeout=5)
    assert (ours.status_code, ours.ok, ours.json()) == (theirs.status_code, True, theirs.json())
    missing = session.request("GET", f"{openbao.url}/v1/sys/nothing-here", headers=headers)
    assert missing.status_code == 404
    assert not missing.ok
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["errors"] == requests.get(
        f"{openbao.url}/v1/sys/nothing-here", headers=headers, timeout=5
    ).json()["errors"]


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """A standby node that sends every request to the active one (307)."""

    def do_POST(self) -> None:
        if self.path.startswith("/standby"):
            self.send_response(307)
            self.send_header("Location", "/active" + self.path.removeprefix("/standby"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_redirect_is_followed_as_requests_does_with_the_same_body(redirecting: str) -> None:
    response = VaultSession(redirecting).request(
        "POST", f"{redirecting}/standby/v1/kv/data/x", json={"data": {"a": 1}}, timeout=5
    )
    assert response.status_code == 200
    assert response.json() == {"data": {"a": 1}}
    assert response.url == f"{redirecting}/active/v1/kv/data/x"


def test_connection_failures_are_requests_exceptions() -> None:
    with pytest.raises(requests.exceptions.ConnectionError) as refused:
        VaultSession("http://127.0.0.1:9").request("GET", "http://127.0.0.1:9/v1/x", timeout=2)
    assert not isinstance(refused.value, requests.exceptions.Timeout)
    assert refused.value.request is not None
    assert refused.value.request.url == "http://127.0.0.1:9/v1/x"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Pki]]:
    pki = make_pki(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", pki
    server.shutdown()
    server.server_close()


def test_tls_trusts_the_configured_ca_and_refuses_an_unknown_one(
    tls_server: tuple[str, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, pki = tls_server
    trusted = VaultSession(url, str(pki.ca_file)).request(
        "POST", f"{url}/active/x", json={"ok": True}, timeout=5
    )
    assert trusted.json() == {"ok": True}
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(requests.exceptions.SSLError) as refused:
        VaultSession(url).request("POST", f"{url}/active/x", json={}, timeout=5)
    assert "certificate verify failed" in str(refused.value)


def test_closing_the_session_closes_its_connections(openbao: OpenBao) -> None:
    session = VaultSession(openbao.url)
    assert session.request("GET", f"{openbao.url}/v1/sys/health", timeout=5).ok
    session.close()
    assert session._fast is not None
    assert not session._fast.pools  # the kept connections are gone
