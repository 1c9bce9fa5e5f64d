"""ManagementTransport (ZITADEL Management API v1 over gRPC), end to end.

The transport talks to the emulator's real gRPC port; the engine-facing
contract is the ZitadelTransport Protocol and the rotator.errors types.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from rotator.errors import (
    ConfigError,
    ZitadelError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)
from rotator.keys import generate_key_pair
from rotator.zitadel import codes
from rotator.zitadel.base import CredentialKind
from rotator.zitadel.detect import classify
from rotator.zitadel.v1 import Endpoint, ManagementTransport, parse_endpoint
from tests.emulator.domain import Domain
from tests.emulator.grpc_v1 import start_grpc

# --- endpoint parsing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://zitadel.example.com", Endpoint("zitadel.example.com:443", tls=True)),
        ("https://zitadel.example.com:8443/", Endpoint("zitadel.example.com:8443", tls=True)),
        ("grpcs://z.example.com", Endpoint("z.example.com:443", tls=True)),
        ("http://127.0.0.1:8080", Endpoint("127.0.0.1:8080", tls=False)),
        ("grpc://localhost:9000", Endpoint("localhost:9000", tls=False)),
        ("z.example.com:443", Endpoint("z.example.com:443", tls=True)),
        ("https://[::1]:8443", Endpoint("[::1]:8443", tls=True)),
    ],
)
def test_endpoint_forms(url: str, expected: Endpoint) -> None:
    assert parse_endpoint(url) == expected


@pytest.mark.parametrize("url", ["ftp://x", "https://", "https://x/management/v1", "http://x:99999"])
def test_bad_endpoints_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(url)


# --- status mapping (shared with v2) ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        ("not_found", ZitadelNotFound, False),
        ("permission_denied", ZitadelPermissionDenied, False),
        ("unauthenticated", ZitadelUnauthenticated, False),
        ("unavailable", ZitadelUnavailable, True),
        ("resource_exhausted", ZitadelUnavailable, True),
        ("deadline_exceeded", ZitadelUnavailable, True),
        ("internal", ZitadelUnavailable, True),
        ("unknown", ZitadelUnavailable, True),
        ("aborted", ZitadelUnavailable, True),
        ("invalid_argument", ZitadelRejected, False),
        ("failed_precondition", ZitadelRejected, False),
        ("already_exists", ZitadelRejected, False),
        ("unimplemented", ZitadelRejected, False),
        ("NOT_FOUND", ZitadelNotFound, False),  # grpc.StatusCode names
    ],
)
def test_status_names_map_to_rotator_errors(code: str, cls: type, retryable: bool) -> None:
    message = "Machine key not found (COMMAND-4m77G)"
    error = codes.error_for(code, message, method="RemoveMachineKey")
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.code == code.lower()
    assert str(error) == (
        f"ZITADEL RemoveMachineKey: Machine key not found (COMMAND-4m77G) ({code.lower()})"
    )


def test_every_grpc_status_has_the_connect_name() -> None:
    for status in grpc.StatusCode:
        assert codes.code_name(status.value[0]) == codes.normalise(status.name)
    assert codes.normalise("CANCELLED") == "canceled"  # Connect spelling


# --- api detection decisions (the live probe is tested against the emulator) -------------


def _response(status: int, body: object | None = None, text: str = "") -> httpx.Response:
    if body is not None:
        return httpx.Response(status, json=body)
    return httpx.Response(status, text=text, headers={"content-type": "text/plain"})


@pytest.mark.parametrize(
    ("response", "api"),
    [
        (_response(200, {}), "v2"),
        (_response(400, {"code": "invalid_argument", "message": "invalid"}), "v2"),
        (_response(404, text="404 page not found"), "v1"),
        (_response(404, {"code": "unimplemented", "message": "x"}), "v1"),
        (_response(501, {"code": "unimplemented", "message": "x"}), "v1"),
        (_response(405, text="method not allowed"), "v1"),
        (_response(200, text="<html>console</html>"), "v1"),
    ],
)
def test_detection_decisions(response: httpx.Response, api: str) -> None:
    assert classify(response) == api


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (_response(401, {"code": "unauthenticated", "message": "Errors.Token.Invalid"}),
         ZitadelUnauthenticated),
        (_response(503, text="upstream down"), ZitadelUnavailable),
        (_response(429, text="slow down"), ZitadelUnavailable),
        (_response(500, {"code": "internal", "message": "Errors.Internal"}), ZitadelUnavailable),
    ],
)
def test_detection_never_guesses_on_failures(response: httpx.Response, cls: type) -> None:
    with pytest.raises(cls):
        classify(response)


# --- TLS: custom CA, system CA, plaintext -------------------------------------------------


def _self_signed_ca_and_server_cert() -> tuple[bytes, bytes, bytes]:
    """(CA certificate PEM, server certificate PEM for 127.0.0.1, server key PEM)."""
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rotator test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


class TlsZitadel:
    def __init__(self, root: Path) -> None:
        self.domain = Domain(root / "state")
        org = self.domain.create_org("acme")
        admin = self.domain.create_user(org.id, "rotator-admin", roles=["ORG_OWNER"])
        self.token, _ = self.domain.issue_access_token(
            admin, ["openid"], [self.domain.zitadel_project_id], None
        )
        ca, cert, key = _self_signed_ca_and_server_cert()
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(ca)
        self.server, self.port = start_grpc(self.domain, tls=(cert, key))


@pytest.fixture(scope="module")
def tls_zitadel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsZitadel]:
    """The emulator's gRPC servicer behind TLS with a private CA (in process:
    the emulator process itself serves plaintext only)."""
    z = TlsZitadel(tmp_path_factory.mktemp("tls"))
    yield z
    z.server.stop(0)
    z.domain.close()


def test_tls_with_a_custom_ca_file(tls_zitadel: TlsZitadel) -> None:
    with ManagementTransport(
        f"https://127.0.0.1:{tls_zitadel.port}", lambda: tls_zitadel.token,
        ca_file=tls_zitadel.ca_file,
    ) as transport:
        assert transport.my_org().name == "acme"


def test_tls_with_system_cas_rejects_a_private_ca(tls_zitadel: TlsZitadel) -> None:
    with ManagementTransport(
        f"grpcs://127.0.0.1:{tls_zitadel.port}", lambda: tls_zitadel.token, timeout=3
    ) as transport, pytest.raises(ZitadelUnavailable) as info:
        transport.my_org()
    assert tls_zitadel.token not in str(info.value)


def test_plaintext_against_a_tls_port_fails_as_unavailable(tls_zitadel: TlsZitadel) -> None:
    with ManagementTransport(
        f"127.0.0.1:{tls_zitadel.port}", lambda: tls_zitadel.token, insecure=True, timeout=3
    ) as transport, pytest.raises(ZitadelUnavailable):
        transport.my_org()


def test_ca_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read CA file"):
        ManagementTransport("https://z.example.com", lambda: "t", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="needs TLS"):
        ManagementTransport("z.example.com:1", lambda: "t", insecure=True, ca_file="/etc/hosts")


def test_unreachable_endpoint_is_unavailable() -> None:
    with ManagementTransport("http://127.0.0.1:9", lambda: "t", timeout=2) as transport, \
            pytest.raises(ZitadelUnavailable) as info:
        transport.my_org()
    assert info.value.retryable
    assert info.value.method == "GetMyOrg"


def _unused() -> None:  # keep imports used while the emulator section is written
    _ = (json, ZitadelError, CredentialKind, generate_key_pair)
