"""TLS end to end: the rotator against an emulator that speaks only HTTPS and
gRPC over TLS, with a certificate from a private CA made here, on ONE port as
ZITADEL does: the configs name no ``grpc_target``, the rotator derives it from
``zitadel.url``.

What an operator relies on: with ``zitadel.tls.ca_file`` naming that CA every
path (discovery, token exchange, v2 Connect through the SDK, v1 gRPC, the API
probe) verifies the server and works; without it the rotator trusts only the
system CAs, stops before creating anything and says why in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from rotator.errors import ZitadelUnavailable
from rotator.model import User
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v1 import ManagementTransport
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao
from tests.harness.pki import Pki, make_pki

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- a private CA

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_emulator(pki: Pki) -> Iterator[Emulator]:
    with Emulator.running(tls=(pki.cert_file, pki.key_file), grpc_port=False) as emu:
        yield emu


# --------------------------------------------------------------------------- the CLI


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


#: Trust settings CI images often export; the CLI must keep to ``zitadel.tls``
#: whatever they say (passed through when set, pointing at the system bundle).
CA_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)


def rotator(config: Path, *args: str, env: dict[str, str]) -> Run:
    """The CLI as a real process with ``env``, PATH and the CA_ENV settings."""
    inherited = {name: os.environ[name] for name in CA_ENV if name in os.environ}
    done = subprocess.run(
        [sys.executable, "-m", "rotator", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **inherited, **env},
    )
    return Run(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Vault:
    """A fresh KV mount on the session's OpenBao and the environment to reach it."""

    url: str
    mount: str
    env: dict[str, str]


@pytest.fixture
def vault(openbao: OpenBao, kv_mount: str) -> Vault:
    return Vault(openbao.url, kv_mount, openbao.env(openbao.create_kv_token(kv_mount)))


def write_config(
    tmp_path: Path,
    emulator: Emulator,
    vault: Vault,
    *,
    api: str,
    users: dict[str, str],
    ca_file: Path | None,
    insecure: bool = False,
) -> Path:
    zitadel: dict[str, Any] = {
        "url": emulator.issuer,
        "api": api,  # no grpc_target: derived from url, as in production
        "credentials": {"key_file": str(emulator.admin_key_file)},
        "timeout": "5s",
    }
    if ca_file is not None:
        zitadel["tls"] = {"ca_file": str(ca_file)}
    if insecure:
        zitadel["tls"] = {"insecure": True}
    raw = {
        "zitadel": zitadel,
        "vault": {"url": vault.url, "mount": vault.mount},
        "policy": {"verify_timeout": "20s"},
        "targets": [
            {"name": "signer", "user": users["key"], "kind": "key"},
            {"name": "reader", "user": users["pat"], "kind": "pat"},
        ],
    }
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def fresh_users(emulator: Emulator, tag: str) -> dict[str, str]:
    """Two new machine users (key target, PAT target) -> ``{"key": id, "pat": id}``."""
    return {kind: emulator.add_user(f"svc-tls-{tag}-{kind}")["id"] for kind in ("key", "pat")}


def credentials_of(emulator: Emulator, user_ids: set[str]) -> dict[str, list[Any]]:
    state = emulator.state()
    return {kind: [c for c in state[kind] if c["user_id"] in user_ids] for kind in ("keys", "pats")}


@pytest.mark.parametrize("api", ["v1", "v2", "auto"])
def test_the_cli_rotates_a_key_and_a_pat_over_tls_with_the_configured_ca(
    api: str, tmp_path: Path, tls_emulator: Emulator, pki: Pki, vault: Vault
) -> None:
    assert tls_emulator.issuer.startswith("https://")
    users = fresh_users(tls_emulator, api)
    config = write_config(tmp_path, tls_emulator, vault, api=api, users=users, ca_file=pki.ca_file)
    env = vault.env

    rotated = rotator(config, "rotate", "--all", "--json", env=env)
    assert rotated.code == 0, rotated.stdout + rotated.stderr
    outcomes = {r["target"]: r["outcome"] for r in json.loads(rotated.stdout)}
    assert outcomes == {"signer": "rotated", "reader": "rotated"}

    status = rotator(config, "status", "--json", env=env)
    assert status.code == 0, status.stderr
    rows = {r["target"]: r for r in json.loads(status.stdout)}
    assert {name: row["state"] for name, row in rows.items()} == {
        "signer": "ready",
        "reader": "ready",
    }
    # What Vault says was created is what ZITADEL holds, live, for those users.
    live = credentials_of(tls_emulator, set(users.values()))
    assert [k["id"] for k in live["keys"] if not k.get("removed_at")] == [
        rows["signer"]["credential_id"]
    ]
    assert [p["id"] for p in live["pats"] if not p.get("removed_at")] == [
        rows["reader"]["credential_id"]
    ]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_without_the_ca_file_the_rotator_refuses_the_server_and_creates_nothing(
    api: str, tmp_path: Path, tls_emulator: Emulator, vault: Vault
) -> None:
    users = fresh_users(tls_emulator, f"untrusted-{api}")
    config = write_config(tmp_path, tls_emulator, vault, api=api, users=users, ca_file=None)
    before = tls_emulator.state()

    run = rotator(config, "rotate", "--all", env=vault.env)

    assert run.code == 3, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("rotator: error: cannot start: ZITADEL"), lines[0]
    # Not "unreachable": the operator learns what to fix.
    assert "TLS certificate refused: self-signed certificate in certificate chain" in lines[0]
    assert "zitadel.tls.ca_file" in lines[0], lines[0]
    assert "Traceback" not in run.stderr
    assert credentials_of(tls_emulator, set(users.values())) == {"keys": [], "pats": []}
    after = tls_emulator.state()
    assert (after["keys"], after["pats"]) == (before["keys"], before["pats"])


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_a_ca_file_is_unused_but_harmless_with_a_plaintext_zitadel(
    api: str, tmp_path: Path, emulator: Emulator, pki: Pki, vault: Vault
) -> None:
    """One config (say, a chart mounting the CA everywhere) for both APIs: over
    http:// there is no certificate to check; v1 used to fail every rotation
    with "zitadel.ca_file: a CA file needs TLS; drop insecure"."""
    assert emulator.issuer.startswith("http://")
    users = fresh_users(emulator, f"plain-{api}")
    config = write_config(tmp_path, emulator, vault, api=api, users=users, ca_file=pki.ca_file)
    rotated = rotator(config, "rotate", "--all", "--json", env=vault.env)
    assert rotated.code == 0, rotated.stdout + rotated.stderr
    assert {r["outcome"] for r in json.loads(rotated.stdout)} == {"rotated"}


def test_insecure_skips_verification_over_https_but_not_over_grpc(
    tmp_path: Path, tls_emulator: Emulator, vault: Vault
) -> None:
    users = fresh_users(tls_emulator, "insecure")
    v2 = write_config(
        tmp_path, tls_emulator, vault, api="v2", users=users, ca_file=None, insecure=True
    )
    rotated = rotator(v2, "rotate", "--all", "--json", env=vault.env)
    assert rotated.code == 0, rotated.stdout + rotated.stderr
    assert {r["outcome"] for r in json.loads(rotated.stdout)} == {"rotated"}

    # gRPC has no "skip verification": v1 refuses the setting before any call.
    v1 = write_config(
        tmp_path, tls_emulator, vault, api="v1", users=users, ca_file=None, insecure=True
    )
    before = credentials_of(tls_emulator, set(users.values()))
    run = rotator(v1, "rotate", "--all", "--force", env=vault.env)
    assert run.code == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1
    assert "zitadel.tls.insecure: gRPC cannot skip certificate verification" in run.stderr
    assert credentials_of(tls_emulator, set(users.values())) == before


# --------------------------------------------------------------------------- the transports alone


@pytest.fixture(scope="module")
def token(tls_emulator: Emulator, pki: Pki) -> Iterator[TokenSource]:
    """The rotator's own token, over HTTPS trusting the CA: only the management
    channel's trust differs between the cases below."""
    oidc = OidcClient(tls_emulator.issuer, verify_tls=str(pki.ca_file), timeout=5)
    yield TokenSource(oidc, lambda: json.loads(tls_emulator.admin_key_file.read_text()))
    oidc.close()


def management(api: str, emulator: Emulator, token: TokenSource, ca_file: Path | None) -> Any:
    if api == "v1":
        return ManagementTransport(
            f"https://{emulator.grpc_target}", token, ca_file=ca_file, timeout=5
        )
    from zitadel_client.transport_options import TransportOptions  # slow import

    from rotator.zitadel.v2 import UserServiceTransport

    options = TransportOptions(ca_cert_path=str(ca_file) if ca_file else None)
    return UserServiceTransport(emulator.issuer, token, timeout=5, transport_options=options)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_management_api_trusts_the_ca_file_and_only_it(
    api: str, tls_emulator: Emulator, pki: Pki, token: TokenSource
) -> None:
    org = tls_emulator.org_ids["acme"]
    trusted = management(api, tls_emulator, token, pki.ca_file)
    try:
        assert trusted.resolve_user("svc-billing", org).id == tls_emulator.user_ids["svc-billing"]
    finally:
        trusted.close()

    system_only = management(api, tls_emulator, token, None)
    try:
        with pytest.raises(ZitadelUnavailable) as refused:
            system_only.resolve_user("svc-billing", org)
    finally:
        system_only.close()
    assert "certificate" in str(refused.value).lower()
    if api == "v2":  # v1 passes on gRPC's own words (CERTIFICATE_VERIFY_FAILED)
        assert "TLS certificate refused" in str(refused.value)


@pytest.fixture(scope="module")
def misnamed_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, Pki]]:
    """An emulator whose certificate, from a trusted CA, names another host."""
    pki = make_pki(tmp_path_factory.mktemp("misnamed"), [x509.DNSName("zitadel.example")])
    with Emulator.running(tls=(pki.cert_file, pki.key_file), grpc_port=False) as emu:
        yield emu, pki


@pytest.mark.parametrize("path", ["oidc", "v1", "v2"])
def test_a_certificate_for_another_host_is_refused_even_from_the_trusted_ca(
    path: str, misnamed_emulator: tuple[Emulator, Pki]
) -> None:
    emulator, pki = misnamed_emulator
    before = emulator.state()
    with pytest.raises(ZitadelUnavailable) as refused:
        add_a_pat_through(path, emulator, pki.ca_file)
    message = str(refused.value)
    if path == "v1":
        assert "Hostname Verification Check failed" in message
    else:
        assert "TLS certificate refused: IP address mismatch" in message
    assert emulator.state()["pats"] == before["pats"]


def add_a_pat_through(path: str, emulator: Emulator, ca_file: Path) -> None:
    """Discovery (``oidc``) or AddPersonalAccessToken over ``v1`` / ``v2``."""
    if path == "oidc":
        with OidcClient(emulator.issuer, verify_tls=str(ca_file), timeout=5) as oidc:
            oidc.endpoints()
        return
    user = User(
        id=emulator.user_ids["svc-reports"],
        org_id=emulator.org_ids["acme"],
        username="svc-reports",
        active=True,
        machine=True,
    )
    # The call never gets as far as presenting the token.
    transport = management(path, emulator, lambda: "unused", ca_file)
    try:
        transport.add_pat(user, datetime.now(UTC) + timedelta(days=1))
    finally:
        transport.close()


# --------------------------------------------------------------------------- the official SDK


#: requests (under the SDK's token request) lets these override the session's
#: ``verify``, so ``TransportOptions.ca_cert_path`` is silently replaced by them.
REQUESTS_CA_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def test_the_official_sdk_with_private_key_works_with_the_ca(
    tls_emulator: Emulator, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zitadel_client import Zitadel  # slow import: this test only
    from zitadel_client.models import UserServiceGetUserByIDRequest
    from zitadel_client.transport_options import TransportOptions

    for name in REQUESTS_CA_ENV:
        monkeypatch.delenv(name, raising=False)
    user_id = tls_emulator.user_ids["svc-billing"]
    client = Zitadel.with_private_key(
        tls_emulator.issuer,
        str(tls_emulator.admin_key_file),
        transport_options=TransportOptions(ca_cert_path=str(pki.ca_file)),
    )
    found = client.users.get_user_by_id(UserServiceGetUserByIDRequest(user_id=user_id))
    assert found.user is not None
    assert found.user.user_id == user_id

    # Without it the SDK's discovery (system CAs) refuses the certificate.
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        Zitadel.with_private_key(tls_emulator.issuer, str(tls_emulator.admin_key_file))


def test_sdk_quirk_requests_ca_bundle_overrides_ca_cert_path_for_the_token_request(
    tls_emulator: Emulator, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the rotator builds the SDK with ``with_access_token`` and exchanges
    its token itself (httpx with an explicit SSLContext): with
    ``REQUESTS_CA_BUNDLE`` set, as on many CI images, ``with_private_key``
    ignores ``ca_cert_path`` at the token endpoint (discovery still honours it)."""
    import certifi
    from zitadel_client import Zitadel
    from zitadel_client.exceptions import ZitadelError as SdkError
    from zitadel_client.models import UserServiceGetUserByIDRequest
    from zitadel_client.transport_options import TransportOptions

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    client = Zitadel.with_private_key(  # discovery: fine, it uses ca_cert_path
        tls_emulator.issuer,
        str(tls_emulator.admin_key_file),
        transport_options=TransportOptions(ca_cert_path=str(pki.ca_file)),
    )
    request = UserServiceGetUserByIDRequest(user_id=tls_emulator.user_ids["svc-billing"])
    with pytest.raises(SdkError, match=r"Failed to refresh token.*CERTIFICATE_VERIFY_FAILED"):
        client.users.get_user_by_id(request)
