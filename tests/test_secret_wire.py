"""Client secrets on the in-process ZITADEL (tests/fakes/zitadel.py): the
transport's add_secret / remove_secret / listing and the real OidcClient's
verify_secret, with ZITADEL's rules of zitadel-api.md §11 (one secret per
user, overwritten on regeneration, no expiry, removal of a missing secret
refused, machine users only, projection lag at the token endpoint).

The same behaviours over the v1 and v2 wire are in tests/contract/test_transport.py.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest

from rotator.errors import (
    VerificationError,
    VerificationReason,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)
from rotator.model import NEVER_EXPIRES, Credential, CredentialKind, User
from rotator.redact import REDACTED
from rotator.zitadel.oidc import OidcClient
from tests.fakes.fixtures import zitadel as zitadel  # noqa: PLC0414 (a fixture)
from tests.fakes.zitadel import FakeTransport, FakeZitadel, InProcessOidc
from tests.test_security import Front, assert_clean
from tests.test_security import front as front  # noqa: PLC0414 (a fixture)


@pytest.fixture
def transport(zitadel: FakeZitadel) -> FakeTransport:
    return zitadel.transport()


@pytest.fixture
def oidc(zitadel: FakeZitadel) -> InProcessOidc:
    return zitadel.verifier()


@pytest.fixture
def user(transport: FakeTransport) -> User:
    return transport.resolve_user("svc-billing")


def test_a_new_secret_works_at_the_token_endpoint(
    transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    assert user.has_secret is False
    issued = transport.add_secret(user)
    assert (issued.user_id, issued.client_id) == (user.id, "svc-billing")
    assert re.fullmatch(r"[A-Za-z0-9]{64}", issued.secret)  # ZITADEL's default generator
    assert issued.created_at is not None
    assert issued.secret not in repr(issued)
    assert transport.resolve_user(user.id).has_secret is True
    oidc.verify_secret(issued.client_id, issued.secret, user_id=user.id)
    # the login name is a client id too (§7.3)
    oidc.verify_secret("svc-billing@acme.localhost", issued.secret, user_id=user.id)


def test_regenerating_overwrites_the_one_secret(
    transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    first = transport.add_secret(user)
    second = transport.add_secret(user)
    assert first.secret != second.secret
    oidc.verify_secret(second.client_id, second.secret, user_id=user.id)
    with pytest.raises(VerificationError) as refused:
        oidc.verify_secret(first.client_id, first.secret, user_id=user.id)
    assert refused.value.reason is VerificationReason.TOKEN_REFUSED
    assert "Secret.Invalid" in str(refused.value)
    assert first.secret not in str(refused.value)


def test_removal_is_true_once_then_false(
    transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    issued = transport.add_secret(user)
    assert transport.remove_secret(user) is True
    assert transport.resolve_user(user.id).has_secret is False
    with pytest.raises(VerificationError, match=r"Secret\.NotExisting"):
        oidc.verify_secret(issued.client_id, issued.secret, user_id=user.id)
    # ZITADEL refuses the second removal (FailedPrecondition COMMAND-coi82n): not an error here
    assert transport.remove_secret(user) is False


def test_a_secret_is_listed_per_org_as_a_credential_that_never_expires(
    zitadel: FakeZitadel, transport: FakeTransport, user: User
) -> None:
    acme = zitadel.org_ids["acme"]
    assert transport.list_org_credentials(CredentialKind.SECRET, acme) == []
    transport.add_secret(user)
    reports = transport.resolve_user("svc-reports")
    transport.add_secret(reports)
    expected = {
        Credential(id=u.id, kind=CredentialKind.SECRET, user_id=u.id, expires_at=NEVER_EXPIRES)
        for u in (user, reports)
    }
    assert set(transport.list_org_credentials(CredentialKind.SECRET, acme) or []) == expected
    transport.remove_secret(user)
    assert [c.user_id for c in transport.list_org_credentials(CredentialKind.SECRET, acme)
            or []] == [reports.id]


def test_only_machine_users_have_secrets(zitadel: FakeZitadel, transport: FakeTransport) -> None:
    human = zitadel.add_user("alice", type="human")
    as_user = User(id=human["id"], org_id=human["org_id"], username="alice")
    with pytest.raises(ZitadelRejected) as caught:
        transport.add_secret(as_user)
    assert caught.value.code == "failed_precondition"
    with pytest.raises(ZitadelRejected):  # "user does not exist", not "no secret"
        transport.remove_secret(as_user)


def test_a_secret_of_a_user_outside_the_callers_reach_is_refused(
    zitadel: FakeZitadel, user: User
) -> None:
    nobody = zitadel.transport("svc-noperm")
    with pytest.raises(ZitadelPermissionDenied):
        nobody.add_secret(user)
    with pytest.raises(ZitadelPermissionDenied):
        nobody.remove_secret(user)


def test_the_subject_must_be_the_expected_user(
    transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    issued = transport.add_secret(user)
    with pytest.raises(VerificationError) as caught:
        oidc.verify_secret(issued.client_id, issued.secret, user_id="4242")
    assert caught.value.reason is VerificationReason.SUBJECT_MISMATCH


def test_within_the_lag_the_old_secret_passes_and_the_new_one_fails(
    zitadel: FakeZitadel, transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    old = transport.add_secret(user)
    zitadel.clock.advance(timedelta(seconds=1))
    zitadel.lag_ms = 30_000
    new = transport.add_secret(user)
    oidc.verify_secret(old.client_id, old.secret, user_id=user.id)
    with pytest.raises(VerificationError):
        oidc.verify_secret(new.client_id, new.secret, user_id=user.id)

    zitadel.clock.advance(timedelta(seconds=31))
    oidc.verify_secret(new.client_id, new.secret, user_id=user.id)
    with pytest.raises(VerificationError):
        oidc.verify_secret(old.client_id, old.secret, user_id=user.id)


def test_regenerating_twice_within_the_lag_keeps_the_first_secret_visible(
    zitadel: FakeZitadel, transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    first = transport.add_secret(user)
    zitadel.lag_ms = 30_000
    zitadel.clock.advance(timedelta(seconds=31))  # the first one has propagated
    second = transport.add_secret(user)
    third = transport.add_secret(user)  # the projection has not even seen the second
    oidc.verify_secret(first.client_id, first.secret, user_id=user.id)
    for unseen in (second, third):
        with pytest.raises(VerificationError):
            oidc.verify_secret(unseen.client_id, unseen.secret, user_id=user.id)
    zitadel.clock.advance(timedelta(seconds=31))
    oidc.verify_secret(third.client_id, third.secret, user_id=user.id)


def test_a_removed_secret_still_passes_within_the_lag(
    zitadel: FakeZitadel, transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    issued = transport.add_secret(user)
    zitadel.clock.advance(timedelta(seconds=1))
    zitadel.lag_ms = 30_000
    assert transport.remove_secret(user) is True
    oidc.verify_secret(issued.client_id, issued.secret, user_id=user.id)
    zitadel.clock.advance(timedelta(seconds=31))
    with pytest.raises(VerificationError, match=r"Secret\.NotExisting"):
        oidc.verify_secret(issued.client_id, issued.secret, user_id=user.id)


def test_a_token_issued_before_a_regeneration_stays_valid(
    transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    old = transport.add_secret(user)
    token = oidc.exchange_client_credentials(old.client_id, old.secret)
    transport.add_secret(user)
    assert oidc.userinfo(token.token)["sub"] == user.id
    transport.remove_secret(user)
    assert oidc.userinfo(token.token)["sub"] == user.id


def test_faults_strike_the_secret_calls_by_their_v2_names(
    zitadel: FakeZitadel, transport: FakeTransport, user: User
) -> None:
    zitadel.set_faults(rules=[{"method": "AddSecret", "code": "unavailable", "count": 1},
                              {"method": "RemoveSecret", "code": "unavailable", "count": 1}])
    with pytest.raises(ZitadelUnavailable):
        transport.add_secret(user)
    assert transport.resolve_user(user.id).has_secret is False  # a "fail" fault does nothing
    transport.add_secret(user)
    with pytest.raises(ZitadelUnavailable):
        transport.remove_secret(user)
    assert transport.remove_secret(user) is True


def test_a_lost_answer_still_regenerated_the_secret(
    zitadel: FakeZitadel, transport: FakeTransport, oidc: InProcessOidc, user: User
) -> None:
    first = transport.add_secret(user)
    zitadel.set_faults(rules=[{"method": "AddSecret", "code": "unavailable", "count": 1,
                               "mode": "lost"}])
    with pytest.raises(ZitadelUnavailable):
        transport.add_secret(user)
    # ZITADEL acted: the secret we knew is gone (what the engine's loss recovery handles)
    with pytest.raises(VerificationError):
        oidc.verify_secret(first.client_id, first.secret, user_id=user.id)


def test_an_echoed_client_secret_stays_out_of_the_token_error(front: Front) -> None:
    """A front that echoes the request (the Basic header, the form) into its
    error text: the secret, plain or Basic-encoded, never reaches the message."""
    front.refuse_tokens = True
    secret = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tABCD"
    with OidcClient(front.url) as oidc:
        with pytest.raises(ZitadelUnauthenticated) as raw:
            oidc.exchange_client_credentials("svc-billing", secret)
        with pytest.raises(VerificationError) as verified:
            oidc.verify_secret("svc-billing", secret, user_id="1")
    basic = base64.b64encode(f"svc-billing:{secret}".encode()).decode()
    sent = front.requests[-1][2]["Authorization"]
    assert sent == f"Basic {basic}"  # client_secret_basic, as ZITADEL reads it (§7.3)
    for message in (str(raw.value), str(verified.value)):
        assert "you sent" in message
        assert REDACTED in message
        assert_clean(message, [secret, basic])
