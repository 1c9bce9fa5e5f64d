"""ManagementTransport (ZITADEL Management API v1 over gRPC), end to end.

The transport talks to the emulator's real gRPC port.  The engine-facing
behaviour it shares with the other transports (users, keys, PATs, permissions,
error mapping, tokens, deadlines) is asserted in tests/contract/test_transport.py;
here only what is v1's own: endpoints, TLS, the x-zitadel-orgid header, gRPC
channel reconnects, token refresh on a long-lived channel, API detection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from rotator.clock import OffsetClock
from rotator.errors import (
    ConfigError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)
from rotator.keys import generate_key_pair
from rotator.zitadel import codes
from rotator.zitadel.detect import PROBE_PATH, choose_api, classify, detect_api
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v1 import Endpoint, ManagementTransport, parse_endpoint
from rotator.zitadel.v1.gen.zitadel_management_v1_pb2_grpc import (
    add_ManagementServiceServicer_to_server,
)
from tests.emulator.domain import Domain
from tests.emulator.grpc_v1 import ManagementServicer, start_grpc
from tests.harness.emulator import Emulator
from tests.harness.pki import make_pki

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
        (_response(404, {"code": 5, "message": "Not Found", "details": []}), "v1"),
        (httpx.Response(302, headers={"location": "/ui/console"}), "v1"),
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


class TlsZitadel:
    def __init__(self, root: Path) -> None:
        self.domain = Domain(root / "state")
        org = self.domain.create_org("acme")
        admin = self.domain.create_user(org.id, "rotator-admin", roles=["ORG_OWNER"])
        self.token, _ = self.domain.issue_access_token(
            admin, ["openid"], [self.domain.zitadel_project_id], None
        )
        pki = make_pki(root)
        self.ca_file = pki.ca_file
        self.server, self.port = start_grpc(
            self.domain, tls=(pki.cert_file.read_bytes(), pki.key_file.read_bytes())
        )


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
        assert transport.resolve_user("rotator-admin").username == "rotator-admin"


def test_tls_with_system_cas_rejects_a_private_ca(tls_zitadel: TlsZitadel) -> None:
    with ManagementTransport(
        f"grpcs://127.0.0.1:{tls_zitadel.port}", lambda: tls_zitadel.token, timeout=3
    ) as transport, pytest.raises(ZitadelUnavailable) as info:
        transport.resolve_user("svc-billing")
    assert tls_zitadel.token not in str(info.value)


def test_plaintext_against_a_tls_port_fails_as_unavailable(tls_zitadel: TlsZitadel) -> None:
    with ManagementTransport(
        f"127.0.0.1:{tls_zitadel.port}", lambda: tls_zitadel.token, insecure=True, timeout=3
    ) as transport, pytest.raises(ZitadelUnavailable):
        transport.resolve_user("svc-billing")


def test_ca_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read CA file"):
        ManagementTransport("https://z.example.com", lambda: "t", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="needs TLS"):
        ManagementTransport("z.example.com:1", lambda: "t", insecure=True, ca_file="/etc/hosts")


def test_unreachable_endpoint_is_unavailable() -> None:
    with ManagementTransport("http://127.0.0.1:9", lambda: "t", timeout=2) as transport, \
            pytest.raises(ZitadelUnavailable) as info:
        transport.resolve_user("svc-billing")
    assert info.value.retryable
    assert info.value.method == "ListUsers"


# --- a ZITADEL too old for AddMachineKey.public_key -----------------------------------------


class PublicKeyUnawareServicer(ManagementServicer):
    """The emulator's servicer as a ZITADEL whose AddMachineKeyRequest has no
    field 4: the public key never arrives and the server generates a pair."""

    def AddMachineKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        request.ClearField("public_key")
        return super().AddMachineKey(request, context)


def test_a_server_generated_key_is_never_kept(tmp_path: Path) -> None:
    domain = Domain(tmp_path)
    org = domain.create_org("acme")
    admin = domain.create_user(org.id, "rotator-admin", roles=["ORG_OWNER"])
    target = domain.create_user(org.id, "svc-billing")
    token, _ = domain.issue_access_token(admin, ["openid"], [domain.zitadel_project_id], None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_ManagementServiceServicer_to_server(PublicKeyUnawareServicer(domain), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ManagementTransport(f"http://127.0.0.1:{port}", lambda: token) as transport:
            user = transport.resolve_user(target.id)
            with pytest.raises(ZitadelRejected, match="instead of registering") as info:
                transport.add_key(user, generate_key_pair().public_key_pem, _in(30))
            assert "key removed" in str(info.value)
            assert "PRIVATE KEY" not in str(info.value)
            assert transport.list_keys(user) == []
    finally:
        server.stop(0)
        domain.close()


# --- end to end against the emulator's gRPC port ------------------------------------------


def _key_file(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


def _token_source(emulator: Emulator, key_file: dict[str, str]) -> TokenSource:
    return TokenSource(OidcClient(emulator.issuer), lambda: key_file)


@pytest.fixture(scope="module")
def admin_source(emulator: Emulator) -> TokenSource:
    return _token_source(emulator, _key_file(emulator.admin_key_file))


@pytest.fixture(scope="module")
def transport(emulator: Emulator, admin_source: TokenSource) -> Iterator[ManagementTransport]:
    with ManagementTransport(f"http://{emulator.grpc_target}", admin_source) as t:
        yield t


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").reset()


def _in(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def test_it_is_a_zitadel_transport(transport: ManagementTransport) -> None:
    assert transport.api == "v1"
    assert transport.resolve_user("svc-billing").username == "svc-billing"


def test_login_names_are_global_and_ids_are_scoped_to_the_org_header(
        transport: ManagementTransport, emulator: Emulator) -> None:
    # GetUserByLoginNameGlobal: a user of another org is found, with its own org
    ledger = transport.resolve_user("svc-ledger@globex.localhost")
    assert (ledger.id, ledger.org_id) == (emulator.user_ids["svc-ledger"],
                                          emulator.org_ids["globex"])


def test_user_of_another_org_is_not_found_by_id(transport: ManagementTransport,
                                                emulator: Emulator) -> None:
    with pytest.raises(ZitadelNotFound, match="MANAG-fpo4B"):
        transport.resolve_user(emulator.user_ids["svc-ledger"])


def test_the_org_header_is_the_users_org(emulator: Emulator,
                                         transport: ManagementTransport) -> None:
    """A rotator that manages users in two orgs: each call runs in the user's org."""
    multi = emulator.add_user("svc-rotator-multi", roles=["ORG_OWNER"], key=True,
                              memberships=[{"org": "globex", "roles": ["ORG_USER_MANAGER"]}])
    source = _token_source(emulator, multi["key_file"])
    with ManagementTransport(f"http://{emulator.grpc_target}", source) as t:
        ledger = t.resolve_user("svc-ledger@globex.localhost")
        assert ledger.org_id == emulator.org_ids["globex"]
        key = t.add_key(ledger, generate_key_pair().public_key_pem, _in(30))
        assert key.id in {c.id for c in t.list_keys(ledger)}
        t.remove_key(ledger, key.id)
        # a user-name lookup runs in the given org
        assert t.resolve_user("svc-ledger", org_id=emulator.org_ids["globex"]).id == ledger.id
    # the admin (member of acme only) cannot touch globex's user; ZITADEL says
    # NotFound "membership not found", which must not read as "the key is gone"
    with pytest.raises(ZitadelPermissionDenied, match="membership not found"):
        transport.add_key(ledger, generate_key_pair().public_key_pem, _in(30))


def test_the_token_is_refreshed_before_it_expires(emulator: Emulator) -> None:
    """ZITADEL's clock and the rotator's move 12 h on (token lifetime): the next
    call carries a freshly exchanged token instead of failing."""
    clock = OffsetClock()
    key_file = _key_file(emulator.admin_key_file)
    source = TokenSource(OidcClient(emulator.issuer, clock=clock), lambda: key_file)
    with ManagementTransport(f"http://{emulator.grpc_target}", source) as t:
        assert t.resolve_user("svc-billing").username == "svc-billing"
        first = source()
        emulator.advance(12 * 3600)
        clock.advance(timedelta(hours=12))
        assert t.resolve_user("svc-billing").username == "svc-billing"
        assert source() != first
    assert source.exchanges == 2


def test_the_channel_survives_a_zitadel_restart(emulator: Emulator,
                                                transport: ManagementTransport) -> None:
    user = transport.resolve_user("svc-reports")
    key = transport.add_key(user, generate_key_pair().public_key_pem, _in(30))
    emulator.kill()
    with pytest.raises(ZitadelUnavailable):
        transport.list_keys(user)
    emulator.start()
    # the same channel reconnects on its own (reconnect backoff capped at 5 s)
    deadline = time.monotonic() + 8
    while True:
        try:
            listed = transport.list_keys(user)
            break
        except ZitadelUnavailable:
            assert time.monotonic() < deadline, "channel did not reconnect"
            time.sleep(0.2)
    assert key.id in {c.id for c in listed}
    transport.remove_key(user, key.id)


# --- zitadel.api: auto ----------------------------------------------------------------------


def test_auto_detects_v2_on_a_v4_instance(emulator: Emulator, admin_source: TokenSource) -> None:
    assert detect_api(emulator.issuer, admin_source()) == "v2"
    events: list[tuple[str, dict[str, object]]] = []

    class Audit:
        def emit(self, event: str, **fields: object) -> None:
            events.append((event, fields))

    assert choose_api("auto", emulator.issuer, admin_source, audit=Audit()) == "v2"
    assert events == [("zitadel.api_detected",
                       {"api": "v2", "issuer": emulator.issuer, "probe": PROBE_PATH})]


def test_auto_falls_back_to_v1_without_v2_key_methods(
        emulator_factory: Callable[..., Emulator]) -> None:
    old = emulator_factory(no_v2_keys=True)
    source = _token_source(old, _key_file(old.admin_key_file))
    assert detect_api(old.issuer, source()) == "v1"
    assert choose_api("auto", old.issuer, source) == "v1"
    # and v1 really serves that instance
    with ManagementTransport(f"http://{old.grpc_target}", source) as t:
        user = t.resolve_user("svc-billing")
        assert t.add_key(user, generate_key_pair().public_key_pem, _in(30)).id


def test_detection_does_not_guess_when_zitadel_is_down(emulator: Emulator,
                                                      admin_source: TokenSource) -> None:
    emulator.set_faults(rules=[{"method": "ListKeys", "code": "unavailable"}])
    with pytest.raises(ZitadelUnavailable):
        detect_api(emulator.issuer, admin_source())
    emulator.reset()
    with pytest.raises(ZitadelUnauthenticated):
        detect_api(emulator.issuer, "not-a-token")
    with pytest.raises(ZitadelUnavailable):
        detect_api("http://127.0.0.1:9", "t", timeout=2)


def test_explicit_settings_skip_detection() -> None:
    def never() -> str:
        raise AssertionError("no token needed")

    assert choose_api("v1", "http://127.0.0.1:9", never) == "v1"
    assert choose_api("v2", "http://127.0.0.1:9", never) == "v2"
    with pytest.raises(ConfigError, match=r"zitadel\.api"):
        choose_api("v3", "http://127.0.0.1:9", never)
