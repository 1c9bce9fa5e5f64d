"""OAuth against the emulator: discovery, the jwt-bearer exchange, the
rotator's TokenSource, and the proofs that a new key or PAT really works."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rotator.clock import OffsetClock
from rotator.errors import (
    ConfigError,
    VerificationError,
    VerificationReason,
    ZitadelError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)
from rotator.keys import KeyPair, build_key_file, generate_key_pair
from rotator.model import User
from rotator.zitadel.detect import classify
from rotator.zitadel.oidc import AccessToken, OidcClient, TokenSource, http_error
from rotator.zitadel.v2 import UserServiceTransport
from tests.harness.emulator import Emulator
from tests.harness.pki import make_pki

TOKEN_LIFETIME = timedelta(hours=12)  # ZITADEL's default, as the emulator mints them


@pytest.fixture(scope="module")
def admin_key(emulator: Emulator) -> dict[str, Any]:
    key_file: dict[str, Any] = json.loads(emulator.admin_key_file.read_text())
    return key_file


@pytest.fixture(scope="module")
def oidc(emulator: Emulator) -> Iterator[OidcClient]:
    with OidcClient(emulator.issuer, timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def transport(
    emulator: Emulator, oidc: OidcClient, admin_key: dict[str, Any]
) -> UserServiceTransport:
    return UserServiceTransport(emulator.issuer, TokenSource(oidc, lambda: admin_key))


@pytest.fixture(scope="module")
def billing(transport: UserServiceTransport) -> User:
    return transport.resolve_user("svc-billing")


@pytest.fixture
def reset(emulator: Emulator) -> Iterator[Emulator]:
    """For tests that inject faults or move the emulator's clock."""
    yield emulator
    emulator.reset()


def _new_key(
    transport: UserServiceTransport, user: User, pair: KeyPair | None = None
) -> dict[str, str]:
    pair = pair or generate_key_pair()
    expires = datetime.now(UTC) + timedelta(days=30)
    credential = transport.add_key(user, pair.public_key_pem, expires)
    return build_key_file(credential.id, user.id, pair.private_key_pem, expires)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc} {exc!r}"
    assert "eyJ" not in text  # no JWT (assertion or access token)
    assert "PRIVATE KEY" not in text
    for secret in secrets:
        assert secret not in text


# -- discovery and exchange ------------------------------------------------------------


def test_discovery_finds_token_and_userinfo_endpoints(oidc: OidcClient, emulator: Emulator) -> None:
    endpoints = oidc.endpoints()
    assert endpoints.issuer == emulator.issuer
    assert endpoints.token_endpoint == f"{emulator.issuer}/oauth/v2/token"
    assert endpoints.userinfo_endpoint == f"{emulator.issuer}/oidc/v1/userinfo"


def test_exchange_with_the_seeded_admin_key_yields_a_usable_token(
    oidc: OidcClient, admin_key: dict[str, Any], emulator: Emulator
) -> None:
    before = datetime.now(UTC)
    access = oidc.exchange_jwt_bearer(admin_key)

    assert isinstance(access, AccessToken)
    assert access.token not in repr(access)
    assert before + TOKEN_LIFETIME - timedelta(seconds=5) <= access.expires_at
    assert access.expires_at <= datetime.now(UTC) + TOKEN_LIFETIME
    assert oidc.userinfo(access.token)["sub"] == emulator.user_ids["rotator-admin"]


def test_exchange_with_an_unknown_key_is_unauthenticated_without_secrets(
    oidc: OidcClient, emulator: Emulator
) -> None:
    pair = generate_key_pair()
    key_file = build_key_file(
        "999999", emulator.user_ids["svc-billing"], pair.private_key_pem, datetime.now(UTC)
    )
    with pytest.raises(ZitadelUnauthenticated) as caught:
        oidc.exchange_jwt_bearer(key_file)
    assert caught.value.status == 500  # ZITADEL's server_error for any refused assertion
    assert "999999" in str(caught.value)
    assert not caught.value.retryable
    _assert_no_secret(caught.value)


def test_unreachable_issuer_is_unavailable_and_retryable(admin_key: dict[str, Any]) -> None:
    with (
        OidcClient(f"http://127.0.0.1:{_closed_port()}", timeout=2) as oidc,
        pytest.raises(ZitadelUnavailable) as caught,
    ):
        oidc.exchange_jwt_bearer(admin_key)
    assert caught.value.retryable
    assert "unreachable" in str(caught.value)


def test_a_slow_token_endpoint_times_out_as_unavailable(
    emulator: Emulator, reset: Emulator, admin_key: dict[str, Any]
) -> None:
    emulator.set_faults(
        rules=[{"method": "token", "code": "unavailable", "rate": 0.0, "latency_ms": 2000}]
    )
    with OidcClient(emulator.issuer, timeout=0.3) as oidc:
        oidc.endpoints()
        started = time.monotonic()
        with pytest.raises(ZitadelUnavailable, match="timed out"):
            oidc.exchange_jwt_bearer(admin_key)
    assert time.monotonic() - started < 1.5  # gave up long before the 2 s answer


@pytest.mark.parametrize(("code", "status"), [("resource_exhausted", 429), ("unavailable", 503)])
def test_overloaded_token_endpoint_is_unavailable(  # noqa: PLR0917 - fixtures
    oidc: OidcClient,
    emulator: Emulator,
    reset: Emulator,
    admin_key: dict[str, Any],
    code: str,
    status: int,
) -> None:
    emulator.set_faults(rules=[{"method": "token", "code": code}])
    with pytest.raises(ZitadelUnavailable) as caught:
        oidc.exchange_jwt_bearer(admin_key)
    assert caught.value.status == status
    assert caught.value.retryable


# -- TokenSource ------------------------------------------------------------------------


def test_token_source_caches_until_five_minutes_before_expiry(
    emulator: Emulator, reset: Emulator, admin_key: dict[str, Any]
) -> None:
    clock = OffsetClock()
    with OidcClient(emulator.issuer, clock=clock) as oidc:
        source = TokenSource(oidc, lambda: admin_key, clock=clock)
        first = source()
        assert source() == first
        assert source.exchanges == 1

        # Move the engine and ZITADEL together; assertions must follow the moved clock.
        step = TOKEN_LIFETIME - timedelta(minutes=6)
        clock.advance(step)
        emulator.advance(step.total_seconds())
        assert source() == first
        assert source.exchanges == 1

        clock.advance(timedelta(minutes=2))
        emulator.advance(120)
        second = source()
        assert second != first
        assert source.exchanges == 2
        assert oidc.userinfo(second)["sub"] == emulator.user_ids["rotator-admin"]


def test_invalidate_rereads_the_key_file(
    emulator: Emulator, oidc: OidcClient, admin_key: dict[str, Any]
) -> None:
    other = emulator.add_user("svc-token-source", key=True)
    current: dict[str, Mapping[str, Any]] = {"key": admin_key}
    reads: list[str] = []

    def provider() -> Mapping[str, Any]:
        reads.append(str(current["key"]["userId"]))
        return current["key"]

    source = TokenSource(oidc, provider)
    assert oidc.userinfo(source())["sub"] == emulator.user_ids["rotator-admin"]
    current["key"] = other["key_file"]
    assert oidc.userinfo(source())["sub"] == emulator.user_ids["rotator-admin"]  # cached
    source.invalidate()
    assert oidc.userinfo(source())["sub"] == other["id"]
    assert reads == [emulator.user_ids["rotator-admin"], other["id"]]


def test_token_source_repr_and_errors_hold_no_token(
    oidc: OidcClient, admin_key: dict[str, Any]
) -> None:
    source = TokenSource(oidc, lambda: admin_key)
    token = source()
    assert token not in repr(source)
    assert token not in repr(source.__dict__.get("_token"))


# -- verify_key -----------------------------------------------------------------------


def test_verify_key_accepts_a_fresh_key(
    oidc: OidcClient, transport: UserServiceTransport, billing: User
) -> None:
    oidc.verify_key(_new_key(transport, billing))


def test_verify_key_refuses_a_removed_key_as_retryable_verification_error(
    oidc: OidcClient, transport: UserServiceTransport, billing: User
) -> None:
    key_file = _new_key(transport, billing)
    transport.remove_key(billing, key_file["keyId"])
    with pytest.raises(VerificationError) as caught:
        oidc.verify_key(key_file)
    assert caught.value.retryable
    assert key_file["keyId"] in str(caught.value)
    assert caught.value.credential_id == key_file["keyId"]
    assert caught.value.reason == VerificationReason.TOKEN_REFUSED == "token_refused"
    _assert_no_secret(caught.value, key_file["key"].splitlines()[1])


def test_verify_key_against_an_unreachable_zitadel_is_unavailable_not_refused(
    admin_key: dict[str, Any],
) -> None:
    with (
        OidcClient(f"http://127.0.0.1:{_closed_port()}", timeout=2) as oidc,
        pytest.raises(ZitadelUnavailable),
    ):
        oidc.verify_key(admin_key)


def _retry(check: Callable[[], None], timeout: float) -> int:
    """The engine's verification loop in miniature: retry VerificationError."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            check()
            return attempts
        except VerificationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_verify_key_is_refused_during_propagation_lag_then_accepted(
    emulator_factory: Callable[..., Emulator],
) -> None:
    lagging = emulator_factory(lag_ms=400)
    admin = json.loads(lagging.admin_key_file.read_text())
    with OidcClient(lagging.issuer) as oidc:
        transport = UserServiceTransport(lagging.issuer, TokenSource(oidc, lambda: admin))
        # The seeded admin key is new too: it waits out the same lag.
        deadline = time.monotonic() + 5
        while True:
            try:
                user = transport.resolve_user("svc-billing")
                break
            except ZitadelUnauthenticated:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        started = time.monotonic()
        key_file = _new_key(transport, user)

        with pytest.raises(VerificationError):
            oidc.verify_key(key_file)
        attempts = _retry(lambda: oidc.verify_key(key_file), timeout=5)

        assert attempts > 1
        assert time.monotonic() - started >= 0.35


# -- verify_pat -----------------------------------------------------------------------


def test_verify_pat_accepts_a_live_pat_and_refuses_a_removed_one(
    oidc: OidcClient, transport: UserServiceTransport
) -> None:
    reports = transport.resolve_user("svc-reports")
    issued = transport.add_pat(reports, datetime.now(UTC) + timedelta(days=30))

    oidc.verify_pat(issued.token)
    oidc.verify_pat(issued.token, reports.id)
    with pytest.raises(VerificationError, match="another subject") as mismatch:
        oidc.verify_pat(issued.token, "1", pat_id=issued.credential.id)
    assert mismatch.value.reason == "subject_mismatch"
    assert mismatch.value.credential_id == issued.credential.id

    transport.remove_pat(reports, issued.credential.id)
    with pytest.raises(VerificationError) as caught:
        oidc.verify_pat(issued.token, reports.id, pat_id=issued.credential.id)
    assert caught.value.reason == "userinfo_refused"
    assert caught.value.credential_id == issued.credential.id
    _assert_no_secret(caught.value, issued.token)


def test_verify_pat_refuses_garbage(oidc: OidcClient) -> None:
    with pytest.raises(VerificationError) as caught:
        oidc.verify_pat("not-a-pat")
    assert "not-a-pat" not in str(caught.value)
    assert caught.value.credential_id is None


def test_a_failing_userinfo_is_an_outage_not_a_refused_pat(
    oidc: OidcClient, transport: UserServiceTransport, emulator: Emulator, reset: Emulator
) -> None:
    issued = transport.add_pat(
        transport.resolve_user("svc-reports"), datetime.now(UTC) + timedelta(days=1)
    )
    emulator.set_faults(rules=[{"method": "userinfo", "code": "internal"}])
    with pytest.raises(ZitadelUnavailable) as caught:
        oidc.verify_pat(issued.token)
    assert caught.value.status == 500
    _assert_no_secret(caught.value, issued.token)


def test_a_500_from_the_token_endpoint_counts_as_a_refusal(
    oidc: OidcClient,
    transport: UserServiceTransport,
    billing: User,
    emulator: Emulator,
    reset: Emulator,
) -> None:
    # ZITADEL answers a not-yet-propagated key exactly like an internal error,
    # so verification treats both as "not yet": retryable, bounded by the engine.
    key_file = _new_key(transport, billing)
    emulator.set_faults(rules=[{"method": "token", "code": "internal", "count": 1}])
    with pytest.raises(VerificationError) as caught:
        oidc.verify_key(key_file)
    assert caught.value.retryable
    oidc.verify_key(key_file)


# -- TLS settings -------------------------------------------------------------------------


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zitadel\.tls\.ca_file"):
        OidcClient("https://zitadel.example", verify_tls=str(tmp_path / "missing-ca.pem"))


def test_a_ca_file_is_loaded(tmp_path: Path) -> None:
    ca = make_pki(tmp_path).ca_file
    OidcClient("https://zitadel.example", verify_tls=str(ca)).close()



def test_a_discovery_document_pointing_elsewhere_is_refused(admin_key: dict[str, Any]) -> None:
    """A new key's assertion must never be sent to another host than the issuer."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "issuer": f"http://127.0.0.1:{self.server.server_port}",
                    "token_endpoint": "http://attacker.invalid/oauth/v2/token",
                    "userinfo_endpoint": f"http://127.0.0.1:{self.server.server_port}/u",
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with OidcClient(f"http://127.0.0.1:{server.server_port}") as oidc:
            with pytest.raises(ZitadelError, match="token_endpoint away from"):
                oidc.endpoints()
            with pytest.raises(ZitadelError, match="away from"):
                oidc.exchange_jwt_bearer(admin_key)
    finally:
        server.shutdown()
        server.server_close()


# -- one HTTP status table ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (400, "invalid_argument", ZitadelRejected),
        (401, "unauthenticated", ZitadelUnauthenticated),
        (403, "permission_denied", ZitadelPermissionDenied),
        (404, "not_found", ZitadelNotFound),
        (409, "aborted", ZitadelUnavailable),
        (418, "failed_precondition", ZitadelRejected),
        (429, "resource_exhausted", ZitadelUnavailable),
        (500, "internal", ZitadelUnavailable),
        (501, "unimplemented", ZitadelRejected),
        (502, "unavailable", ZitadelUnavailable),
        (503, "unavailable", ZitadelUnavailable),
        (504, "deadline_exceeded", ZitadelUnavailable),
        (599, "unavailable", ZitadelUnavailable),
    ],
)
def test_oidc_and_api_detection_read_an_http_status_alike(
    status: int, code: str, error_type: type[ZitadelError]
) -> None:
    """A bare HTTP status (no OAuth or Connect body) means the same to the
    OIDC client and to the API probe: one table, in rotator.zitadel.codes."""
    bare = httpx.Response(status, text="<html>proxy</html>")
    oidc_error = http_error(bare, "userinfo")
    assert (oidc_error.code, type(oidc_error)) == (code, error_type)
    if status in (404, 501):
        assert classify(bare) == "v1"  # a server without the v2 method
        return
    with pytest.raises(ZitadelError) as probe:
        classify(bare)
    assert (probe.value.code, type(probe.value)) == (code, error_type)
