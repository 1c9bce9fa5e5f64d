""" "Not found" says whether the user does not exist or the rotator's identity
may not see it, and what to grant where (rotator/zitadel/visibility.py),
over both APIs against the emulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rotator.errors import ZitadelNotFound, ZitadelPermissionDenied
from rotator.ports import ZitadelTransport
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v1 import ManagementTransport
from rotator.zitadel.v2 import UserServiceTransport
from tests.harness.emulator import Emulator


@pytest.fixture(autouse=True)
def _reset(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


def connect(emulator: Emulator, api: str, key_file: dict[str, Any]) -> ZitadelTransport:
    source = TokenSource(OidcClient(emulator.issuer), lambda: key_file)
    if api == "v2":
        return UserServiceTransport(emulator.issuer, source)
    return ManagementTransport(f"http://{emulator.grpc_target}", source)


def acme_manager(emulator: Emulator, api: str) -> tuple[ZitadelTransport, str]:
    """An identity with ORG_USER_MANAGER in acme only (its own org)."""
    added = emulator.add_user(
        f"svc-rotator-{uuid.uuid4().hex[:8]}", org="acme", roles=["ORG_USER_MANAGER"], key=True
    )
    return connect(emulator, api, added["key_file"]), str(added["id"])


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_a_user_that_does_not_exist_where_the_identity_may_look(
    emulator: Emulator, api: str
) -> None:
    transport, me = acme_manager(emulator, api)
    acme = emulator.org_ids["acme"]
    with pytest.raises(ZitadelNotFound) as caught:
        transport.resolve_user("svc-nobody", acme)
    assert str(caught.value) == (
        f"ZITADEL ListUsers: user 'svc-nobody' not found in org {acme}: it does not exist "
        f"(the rotator's identity (user {me}) may list users in org {acme}) (not_found)"
    )


def test_v2_a_user_in_an_org_the_identity_may_not_read_names_the_grant(
    emulator: Emulator,
) -> None:
    """v2 ListUsers leaves out what the caller may not read: the probe finds no
    other user in globex, so the message says what to grant there."""
    transport, me = acme_manager(emulator, "v2")
    globex = emulator.org_ids["globex"]
    with pytest.raises(ZitadelNotFound) as caught:
        transport.resolve_user("svc-ledger", globex)  # exists, in globex
    assert str(caught.value) == (
        f"ZITADEL ListUsers: user 'svc-ledger' not found in org {globex}: the rotator's "
        f"identity (user {me}) sees no user in org {globex}, so it may exist unseen; "
        f"grant it ORG_USER_MANAGER in org {globex} (or check the name) (not_found)"
    )
    # ... and an identity granted that role there finds it
    granted = emulator.add_user(
        f"svc-rotator-{uuid.uuid4().hex[:8]}",
        org="acme",
        roles=["ORG_USER_MANAGER"],
        key=True,
        memberships=[{"org": "globex", "roles": ["ORG_USER_MANAGER"]}],
    )
    both = connect(emulator, "v2", granted["key_file"])
    assert both.resolve_user("svc-ledger", globex).id == emulator.user_ids["svc-ledger"]


def test_v1_a_refused_look_up_names_the_role_and_the_org(emulator: Emulator) -> None:
    transport, me = acme_manager(emulator, "v1")
    globex = emulator.org_ids["globex"]
    with pytest.raises(ZitadelPermissionDenied) as caught:
        transport.resolve_user("svc-ledger", globex)
    assert str(caught.value) == (
        f"ZITADEL ListUsers: cannot look up user 'svc-ledger' in org {globex}: the rotator's "
        f"identity (user {me}) was refused (membership not found (AUTHZ-cdgFk) "
        f"(permission_denied)); grant it ORG_USER_MANAGER in org {globex} (permission_denied)"
    )
