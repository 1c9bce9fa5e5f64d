"""The v2 UserService transport, through the official SDK, against the emulator."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from zitadel_client.exceptions import ApiError

from rotator.errors import (
    ZitadelError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)
from rotator.keys import build_key_file, generate_key_pair
from rotator.zitadel.base import CredentialKind, User, ZitadelTransport
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v2 import UserServiceTransport, api_error
from tests.harness.emulator import Emulator

IN_30_DAYS = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


@pytest.fixture(scope="module")
def oidc(emulator: Emulator) -> Iterator[OidcClient]:
    with OidcClient(emulator.issuer) as client:
        yield client


@pytest.fixture(scope="module")
def admin_source(emulator: Emulator, oidc: OidcClient) -> TokenSource:
    admin_key = json.loads(emulator.admin_key_file.read_text())
    return TokenSource(oidc, lambda: admin_key)


@pytest.fixture(scope="module")
def transport(emulator: Emulator, admin_source: TokenSource) -> UserServiceTransport:
    return UserServiceTransport(emulator.issuer, admin_source, timeout=5)


@pytest.fixture(scope="module")
def billing(transport: UserServiceTransport) -> User:
    return transport.resolve_user("svc-billing")


@pytest.fixture
def reset(emulator: Emulator) -> Iterator[Emulator]:
    yield emulator
    emulator.reset()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_it_is_a_zitadel_transport(transport: UserServiceTransport) -> None:
    engine_view: ZitadelTransport = transport
    assert engine_view.api == "v2"


# -- resolve_user ------------------------------------------------------------------------


def test_resolve_by_user_name_id_and_login_name(
    transport: UserServiceTransport, emulator: Emulator
) -> None:
    by_name = transport.resolve_user("svc-billing")
    assert by_name == User(
        id=emulator.user_ids["svc-billing"],
        org_id=emulator.org_ids["acme"],
        username="svc-billing",
    )
    assert transport.resolve_user(by_name.id) == by_name
    assert transport.resolve_user("svc-billing", emulator.org_ids["acme"]) == by_name

    added = emulator.add_user("svc-by-login")
    by_login = transport.resolve_user(added["login_name"])
    assert (by_login.id, by_login.username) == (added["id"], "svc-by-login")


def test_unknown_users_are_not_found(transport: UserServiceTransport) -> None:
    with pytest.raises(ZitadelNotFound, match="svc-nobody"):
        transport.resolve_user("svc-nobody")
    with pytest.raises(ZitadelNotFound):
        transport.resolve_user("123456789")
    with pytest.raises(ZitadelNotFound):
        transport.resolve_user("svc-nobody@acme.localhost")


def test_a_user_outside_the_given_org_is_refused(
    transport: UserServiceTransport, emulator: Emulator
) -> None:
    with pytest.raises(ZitadelNotFound):  # by name: scoped to the org
        transport.resolve_user("svc-billing", emulator.org_ids["globex"])
    with pytest.raises(ZitadelRejected, match=emulator.org_ids["globex"]):  # by id: checked
        transport.resolve_user(emulator.user_ids["svc-billing"], emulator.org_ids["globex"])


def test_a_human_user_is_refused_with_a_clear_message(
    transport: UserServiceTransport, emulator: Emulator
) -> None:
    emulator.add_user("alice", type="human")
    with pytest.raises(ZitadelRejected, match="human user; only machine users have keys and PATs"):
        transport.resolve_user("alice")


def test_an_ambiguous_user_name_names_the_candidate_orgs(
    emulator: Emulator, oidc: OidcClient
) -> None:
    emulator.add_user("svc-twin", org="acme")
    emulator.add_user("svc-twin", org="globex")
    # Only a caller who can read both orgs sees both twins.
    both = emulator.add_user(
        "admin-both",
        key=True,
        roles=["ORG_OWNER"],
        memberships=[{"org": "globex", "roles": ["ORG_OWNER"]}],
    )
    transport = UserServiceTransport(emulator.issuer, TokenSource(oidc, lambda: both["key_file"]))

    with pytest.raises(ZitadelRejected) as caught:
        transport.resolve_user("svc-twin")
    assert emulator.org_ids["acme"] in str(caught.value)
    assert emulator.org_ids["globex"] in str(caught.value)
    assert (
        transport.resolve_user("svc-twin", emulator.org_ids["globex"]).org_id
        == (emulator.org_ids["globex"])
    )


# -- keys ----------------------------------------------------------------------------------


def test_key_cycle_add_list_remove(transport: UserServiceTransport, billing: User) -> None:
    pair = generate_key_pair()
    expires = datetime(2030, 1, 2, 0, 0, 0, 123456, tzinfo=UTC)  # stored exactly, no rounding

    added = transport.add_key(billing, pair.public_key_pem, expires)
    assert added.kind is CredentialKind.KEY
    assert added.user_id == billing.id
    assert added.expires_at == expires
    listed = {c.id: c for c in transport.list_keys(billing)}
    assert listed[added.id].expires_at == expires
    assert listed[added.id].created_at is not None

    transport.remove_key(billing, added.id)
    assert added.id not in {c.id for c in transport.list_keys(billing)}
    with pytest.raises(ZitadelNotFound, match=added.id):  # ZITADEL is not idempotent
        transport.remove_key(billing, added.id)


def test_listing_walks_every_page(emulator: Emulator, admin_source: TokenSource) -> None:
    small_pages = UserServiceTransport(emulator.issuer, admin_source, page_size=2)
    user = small_pages.resolve_user(emulator.add_user("svc-many-keys")["id"])
    public_key = generate_key_pair().public_key_pem
    added = [small_pages.add_key(user, public_key, IN_30_DAYS).id for _ in range(5)]
    pats = [small_pages.add_pat(user, IN_30_DAYS).credential.id for _ in range(3)]

    assert [c.id for c in small_pages.list_keys(user)] == added  # oldest first
    assert [c.id for c in small_pages.list_pats(user)] == pats


def test_keys_of_other_users_are_not_listed(transport: UserServiceTransport, billing: User) -> None:
    reports = transport.resolve_user("svc-reports")
    added = transport.add_key(reports, generate_key_pair().public_key_pem, IN_30_DAYS)
    assert added.id not in {c.id for c in transport.list_keys(billing)}
    assert {c.user_id for c in transport.list_keys(reports)} == {reports.id}


def test_invalid_requests_are_rejected(transport: UserServiceTransport, billing: User) -> None:
    public_key = generate_key_pair().public_key_pem
    with pytest.raises(ZitadelRejected) as past:
        transport.add_key(billing, public_key, datetime.now(UTC) - timedelta(days=1))
    assert past.value.code == "invalid_argument"
    with pytest.raises(ZitadelRejected) as garbage:
        transport.add_key(
            billing, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", IN_30_DAYS
        )
    assert garbage.value.code == "invalid_argument"
    ghost = User(id="404404404", org_id=billing.org_id, username="ghost")
    with pytest.raises(ZitadelRejected) as missing:
        transport.add_key(ghost, public_key, IN_30_DAYS)
    assert (missing.value.code, missing.value.status) == ("failed_precondition", 400)


def test_naive_datetimes_are_refused_before_any_call(
    transport: UserServiceTransport, billing: User
) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        transport.add_key(billing, b"", datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        transport.add_pat(billing, datetime(2030, 1, 1))


# -- PATs ----------------------------------------------------------------------------------


def test_pat_cycle_add_list_remove(
    transport: UserServiceTransport, oidc: OidcClient, billing: User
) -> None:
    issued = transport.add_pat(billing, IN_30_DAYS)
    assert issued.token not in repr(issued)
    assert issued.credential.kind is CredentialKind.PAT
    assert issued.credential.expires_at == IN_30_DAYS
    oidc.verify_pat(issued.token, billing.id)
    assert issued.credential.id in {c.id for c in transport.list_pats(billing)}

    transport.remove_pat(billing, issued.credential.id)
    assert issued.credential.id not in {c.id for c in transport.list_pats(billing)}
    with pytest.raises(ZitadelNotFound):
        transport.remove_pat(billing, issued.credential.id)


# -- authorization ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noperm(
    emulator: Emulator, oidc: OidcClient, transport: UserServiceTransport
) -> tuple[UserServiceTransport, User]:
    """The seeded ``svc-noperm`` (no role at all), signing in with a key the
    admin registered for it: it may manage only itself."""
    me = transport.resolve_user("svc-noperm")
    pair = generate_key_pair()
    key = transport.add_key(me, pair.public_key_pem, IN_30_DAYS)
    key_file = build_key_file(key.id, me.id, pair.private_key_pem, IN_30_DAYS)
    return UserServiceTransport(emulator.issuer, TokenSource(oidc, lambda: key_file)), me


def test_a_caller_without_membership_is_denied_not_told_not_found(
    noperm: tuple[UserServiceTransport, User], transport: UserServiceTransport, billing: User
) -> None:
    caller, _ = noperm
    existing = transport.add_key(billing, generate_key_pair().public_key_pem, IN_30_DAYS)

    # ZITADEL says NotFound "membership not found"; read as NotFound the engine
    # would believe the key was already removed.
    with pytest.raises(ZitadelPermissionDenied, match="membership not found") as caught:
        caller.remove_key(billing, existing.id)
    assert caught.value.code == "permission_denied"
    with pytest.raises(ZitadelPermissionDenied):
        caller.add_pat(billing, IN_30_DAYS)
    assert existing.id in {c.id for c in transport.list_keys(billing)}


def test_a_machine_user_manages_its_own_keys_without_roles(
    noperm: tuple[UserServiceTransport, User],
) -> None:
    caller, me = noperm
    added = caller.add_key(me, generate_key_pair().public_key_pem, IN_30_DAYS)
    assert added.id in {c.id for c in caller.list_keys(me)}
    caller.remove_key(me, added.id)


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [("resource_exhausted", 429), ("unavailable", 503), ("internal", 500)],
)
def test_overload_and_outages_are_unavailable(  # noqa: PLR0917 - fixtures
    transport: UserServiceTransport,
    billing: User,
    emulator: Emulator,
    reset: Emulator,
    code: str,
    status: int,
) -> None:
    emulator.set_faults(rules=[{"method": "AddKey", "code": code, "count": 1}])
    with pytest.raises(ZitadelUnavailable) as caught:
        transport.add_key(billing, generate_key_pair().public_key_pem, IN_30_DAYS)
    assert (caught.value.code, caught.value.status) == (code, status)
    assert caught.value.retryable
    # The fault was for one call only: the next one goes through.
    transport.add_key(billing, generate_key_pair().public_key_pem, IN_30_DAYS)


def test_non_connect_answers_map_by_http_status() -> None:
    # What an edge proxy in front of ZITADEL sends: no Connect body.
    for status, expected in [
        (429, "resource_exhausted"),
        (502, "unavailable"),
        (503, "unavailable"),
        (504, "deadline_exceeded"),
    ]:
        error = api_error(ApiError(status, {}, "<html>busy</html>"), "UserService.AddKey", "add")
        assert isinstance(error, ZitadelUnavailable)
        assert (error.code, error.status) == (expected, status)
        assert "html" not in str(error)


def test_a_slow_zitadel_times_out_as_unavailable(
    emulator: Emulator, reset: Emulator, admin_source: TokenSource, billing: User
) -> None:
    impatient = UserServiceTransport(emulator.issuer, admin_source, timeout=0.3)
    emulator.set_faults(
        rules=[{"method": "ListKeys", "code": "unavailable", "rate": 0.0, "latency_ms": 2000}]
    )
    started = time.monotonic()
    with pytest.raises(ZitadelUnavailable, match="timed out"):
        impatient.list_keys(billing)
    assert time.monotonic() - started < 1.5  # gave up long before the 2 s answer


def test_an_unreachable_zitadel_is_unavailable(billing: User) -> None:
    nowhere = UserServiceTransport(f"http://127.0.0.1:{_closed_port()}", lambda: "x", timeout=2)
    with pytest.raises(ZitadelUnavailable, match="unreachable") as caught:
        nowhere.list_keys(billing)
    assert caught.value.retryable


class _StaleThenFresh:
    """A token source whose cached token was revoked behind its back."""

    def __init__(self, fresh: TokenSource) -> None:
        self.fresh = fresh
        self.stale = True
        self.invalidations = 0

    def __call__(self) -> str:
        return "revoked-token" if self.stale else self.fresh()

    def invalidate(self) -> None:
        self.invalidations += 1
        self.stale = False


def test_a_refused_token_is_exchanged_once_and_the_call_retried(
    emulator: Emulator, admin_source: TokenSource, billing: User
) -> None:
    source = _StaleThenFresh(admin_source)
    transport = UserServiceTransport(emulator.issuer, source)
    assert transport.list_keys(billing) is not None
    assert source.invalidations == 1


def test_a_refused_token_without_a_source_to_refresh_is_unauthenticated(
    emulator: Emulator, billing: User
) -> None:
    transport = UserServiceTransport(emulator.issuer, lambda: "made-up-token-value")
    with pytest.raises(ZitadelUnauthenticated) as caught:
        transport.list_keys(billing)
    assert caught.value.status == 401
    assert "made-up-token-value" not in str(caught.value)


def test_a_failing_token_source_is_reported_without_its_message(
    emulator: Emulator, billing: User
) -> None:
    def broken() -> str:
        raise RuntimeError("response body with s3cr3t")

    transport = UserServiceTransport(emulator.issuer, broken)
    with pytest.raises(ZitadelUnauthenticated, match="token source failed") as caught:
        transport.list_keys(billing)
    assert "s3cr3t" not in str(caught.value)


def test_no_error_carries_the_callers_token_or_the_sdk_exception(
    emulator: Emulator, transport: UserServiceTransport, billing: User, reset: Emulator
) -> None:
    # The rotator authenticating with a PAT: the token is a plain string we can search for.
    admin = transport.resolve_user("rotator-admin")
    pat = transport.add_pat(admin, IN_30_DAYS).token
    with_pat = UserServiceTransport(emulator.issuer, lambda: pat)
    errors: list[ZitadelError] = []
    for action in (
        lambda: with_pat.remove_key(billing, "1"),
        lambda: with_pat.resolve_user("svc-nobody"),
        lambda: with_pat.add_key(billing, b"not a key", IN_30_DAYS),
        lambda: with_pat.add_pat(billing, datetime.now(UTC) - timedelta(days=1)),
    ):
        with pytest.raises(ZitadelError) as caught:
            action()
        errors.append(caught.value)
    emulator.set_faults(rules=[{"method": "*", "code": "unavailable"}])
    with pytest.raises(ZitadelError) as outage:
        with_pat.list_pats(billing)
    errors.append(outage.value)

    for error in errors:
        assert pat not in f"{error} {error!r} {error.args}"
        # raised "from None": a traceback shows no ApiError with headers and body
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__
