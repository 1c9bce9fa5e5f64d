"""Connection errors name the address and the cause an operator can act on:
refused, DNS, a TLS client against a plain-http server, an untrusted
certificate, a timeout; for Vault (requests) and ZITADEL (httpx, urllib3)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from rotator.errors import RotatorError
from rotator.netcause import address
from rotator.vault import RetryPolicy, VaultStore
from rotator.zitadel.oidc import OidcClient
from tests.harness.openbao import OpenBao
from tests.harness.processes import free_port

NO_RETRY = RetryPolicy(attempts=1)


def vault_error(url: str) -> str:
    with pytest.raises(RotatorError) as caught:
        VaultStore.connect(url, "secret", retry=NO_RETRY, timeout=1.0).read("p")
    return str(caught.value)


def test_vault_refused() -> None:
    port = free_port()
    assert vault_error(f"http://127.0.0.1:{port}") == (
        f"Vault at secret/p: read: cannot connect to Vault at http://127.0.0.1:{port}: "
        "connection refused (nothing listens on that port?)"
    )


def test_vault_dns() -> None:
    assert vault_error("http://vault.invalid:8200") == (
        "Vault at secret/p: read: cannot connect to Vault at http://vault.invalid:8200: "
        "DNS lookup failed (name not known)"
    )


def test_vault_https_url_against_an_http_server(openbao: OpenBao) -> None:
    url = openbao.url.replace("http://", "https://")
    assert vault_error(url) == (
        f"Vault at secret/p: read: cannot connect to Vault at {address(url)}: "
        "TLS handshake failed: the server does not speak TLS (an http:// server?)"
    )


@pytest.fixture
def silent_server() -> Iterator[str]:
    with closing(socket.socket()) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_vault_timeout(silent_server: str) -> None:
    assert vault_error(silent_server) == (
        f"Vault at secret/p: read: Vault at {silent_server} timed out"
    )


def oidc_error(url: str, tmp_path: Path) -> str:
    client = OidcClient(url, timeout=1.0)
    with pytest.raises(RotatorError) as caught:
        client.endpoints()
    return str(caught.value)


def test_zitadel_refused_and_dns(tmp_path: Path) -> None:
    port = free_port()
    refused = oidc_error(f"http://127.0.0.1:{port}", tmp_path)
    assert refused.endswith(
        f"unreachable at http://127.0.0.1:{port}: connection refused (nothing listens on "
        "that port?) (unavailable)"
    ), refused
    dns = oidc_error("https://zitadel.invalid", tmp_path)
    assert "unreachable at https://zitadel.invalid:443: DNS lookup failed" in dns, dns


def test_address_never_shows_path_query_or_userinfo() -> None:
    assert address("https://user:pw@vault.example:8200/v1/secret?token=x") == (
        "https://vault.example:8200"
    )
    assert address(str(httpx.URL("http://[::1]/x"))) == "http://[::1]:80"
