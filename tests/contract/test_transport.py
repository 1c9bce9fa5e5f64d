"""What every ZITADEL transport does for the engine, asserted once.

Parametrized over the three implementations of ZitadelTransport:

- ``v1``: ManagementTransport, gRPC to the emulator process;
- ``v2``: UserServiceTransport, the official SDK to the emulator process;
- ``fake``: tests/fakes/zitadel.py, the emulator's domain model in process
  (what the fast protocol tests run on).

Behaviours that only exist on a wire (tokens, timeouts, unreachable servers)
run over ``v1`` and ``v2``; behaviours of ZITADEL's v2 rules (a machine user
manages itself, user look-up across orgs) over ``v2`` and ``fake``.  What is
specific to one transport (gRPC metadata, TLS, SDK error details) stays in
tests/test_transport_v1.py and tests/test_transport_v2.py.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from rotator.errors import (
    VerificationError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
    ZitadelUnavailable,
)
from rotator.keys import build_key_file, generate_key_pair
from rotator.model import NEVER_EXPIRES, Credential, CredentialKind, User
from rotator.ports import ZitadelTransport
from rotator.zitadel import visibility
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v1 import ManagementTransport
from rotator.zitadel.v2 import UserServiceTransport
from tests.fakes.zitadel import FakeTransport, FakeZitadel
from tests.harness.emulator import Emulator

#: Protocol method -> the RPC names it is served by (v2, v1), for fault rules.
RPCS = {
    "resolve_user": ("ListUsers", "GetUserByID"),
    "add_key": ("AddKey", "AddMachineKey"),
    "list_keys": ("ListKeys", "ListMachineKeys"),
    "remove_key": ("RemoveKey", "RemoveMachineKey"),
    "add_pat": ("AddPersonalAccessToken",),
    "list_pats": ("ListPersonalAccessTokens",),
    "add_secret": ("AddSecret", "GenerateMachineSecret"),
    "remove_secret": ("RemoveSecret", "RemoveMachineSecret"),
}

TokenProvider = Callable[[], str]


def _in(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def _unique(name: str) -> str:
    # the emulator process is shared by the module's tests: user names must not clash
    return f"{name}-{uuid.uuid4().hex[:6]}"


class Backend(Protocol):
    name: str
    #: The rotator's transport, signed in as the seeded ``rotator-admin`` (ORG_OWNER of acme).
    transport: ZitadelTransport
    user_ids: dict[str, str]
    org_ids: dict[str, str]

    def add_user(self, username: str, **kw: Any) -> dict[str, Any]: ...

    def caller(self, username: str, roles: Sequence[str] = (),
               memberships: Sequence[dict[str, Any]] = ()) -> tuple[ZitadelTransport, User]:
        """A new machine user and a transport signed in as that user."""
        ...

    def small_pages(self) -> ZitadelTransport: ...

    def verify_key(self, key_file: dict[str, str]) -> None: ...

    def verify_pat(self, token: str, user_id: str) -> None: ...

    #: The verifier the engine would use (the real OidcClient; in process for the fake).
    verifier: OidcClient

    def advance(self, seconds: float) -> None:
        """Move ZITADEL's clock (projection lag is measured on it)."""
        ...

    def fail_next(self, method: str, code: str) -> None:
        """The next call of a protocol method fails with this status name."""
        ...

    def stored_expiration(self, key_id: str) -> str:
        """ZITADEL's own record of a key's expiry (RFC 3339, as the state dump has it)."""
        ...


@dataclass
class EmulatorBackend:
    name: str
    emulator: Emulator
    oidc: OidcClient
    transport: ZitadelTransport = field(init=False)

    opened: list[ZitadelTransport] = field(default_factory=list)

    def __post_init__(self) -> None:
        admin_key = json.loads(self.emulator.admin_key_file.read_text())
        self.admin_source = TokenSource(self.oidc, lambda: admin_key)
        self.transport = self.connect(self.admin_source)

    def connect(self, source: TokenProvider, *, url: str | None = None, **kw: Any
                ) -> ZitadelTransport:
        transport: ZitadelTransport
        if self.name == "v1":
            transport = ManagementTransport(
                url or f"http://{self.emulator.grpc_target}", source, **kw)
        else:
            transport = UserServiceTransport(url or self.emulator.issuer, source, **kw)
        self.opened.append(transport)
        return transport

    @property
    def user_ids(self) -> dict[str, str]:
        return self.emulator.user_ids

    @property
    def org_ids(self) -> dict[str, str]:
        return self.emulator.org_ids

    def add_user(self, username: str, **kw: Any) -> dict[str, Any]:
        return self.emulator.add_user(username, **kw)

    def caller(self, username: str, roles: Sequence[str] = (),
               memberships: Sequence[dict[str, Any]] = ()) -> tuple[ZitadelTransport, User]:
        added = self.emulator.add_user(username, roles=roles, key=True, memberships=memberships)
        key_file = added["key_file"]
        me = User(id=added["id"], org_id=added["org_id"], username=username)
        return self.connect(TokenSource(self.oidc, lambda: key_file)), me

    def small_pages(self) -> ZitadelTransport:
        return self.connect(self.admin_source, page_size=2)

    def verify_key(self, key_file: dict[str, str]) -> None:
        self.oidc.verify_key(key_file)

    def verify_pat(self, token: str, user_id: str) -> None:
        self.oidc.verify_pat(token, user_id)

    @property
    def verifier(self) -> OidcClient:
        return self.oidc

    def advance(self, seconds: float) -> None:
        self.emulator.advance(seconds)

    def fail_next(self, method: str, code: str) -> None:
        self.emulator.set_faults(
            rules=[{"method": rpc, "code": code, "count": 1} for rpc in RPCS[method]]
        )

    def stored_expiration(self, key_id: str) -> str:
        return str({k["id"]: k for k in self.emulator.state()["keys"]}[key_id]["expiration"])

    def close(self) -> None:
        for transport in self.opened:
            transport.close()


@dataclass
class FakeBackend:
    zitadel: FakeZitadel
    name: str = "fake"
    transport: ZitadelTransport = field(init=False)

    def __post_init__(self) -> None:
        self.transport = self.zitadel.transport()
        self._verifier = self.zitadel.verifier()

    @property
    def user_ids(self) -> dict[str, str]:
        return self.zitadel.user_ids

    @property
    def org_ids(self) -> dict[str, str]:
        return self.zitadel.org_ids

    def add_user(self, username: str, **kw: Any) -> dict[str, Any]:
        return self.zitadel.add_user(username, **kw)

    def caller(self, username: str, roles: Sequence[str] = (),
               memberships: Sequence[dict[str, Any]] = ()) -> tuple[ZitadelTransport, User]:
        added = self.zitadel.add_user(username, roles=roles, memberships=memberships)
        me = User(id=added["id"], org_id=added["org_id"], username=username)
        return FakeTransport(self.zitadel.domain, added["id"]), me

    def small_pages(self) -> ZitadelTransport:
        return self.transport  # no pages in process: the order is what counts

    def verify_key(self, key_file: dict[str, str]) -> None:
        self._verifier.verify_key(key_file)

    def verify_pat(self, token: str, user_id: str) -> None:
        self._verifier.verify_pat(token, user_id)

    @property
    def verifier(self) -> OidcClient:
        return self._verifier

    def advance(self, seconds: float) -> None:
        self.zitadel.clock.advance(timedelta(seconds=seconds))

    def fail_next(self, method: str, code: str) -> None:
        self.zitadel.set_faults(
            rules=[{"method": rpc, "code": code, "count": 1} for rpc in RPCS[method]]
        )

    def stored_expiration(self, key_id: str) -> str:
        return str({k["id"]: k for k in self.zitadel.state()["keys"]}[key_id]["expiration"])

    def close(self) -> None:
        self.zitadel.close()


@pytest.fixture(scope="module")
def oidc(emulator: Emulator) -> Iterator[OidcClient]:
    with OidcClient(emulator.issuer) as client:
        yield client


@pytest.fixture(params=["v1", "v2", "fake"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "fake":
        fake = FakeBackend(FakeZitadel(tmp_path / "zitadel"))
        yield fake
        fake.close()
        return
    emulator: Emulator = request.getfixturevalue("emulator")
    wire = EmulatorBackend(request.param, emulator, request.getfixturevalue("oidc"))
    yield wire
    wire.close()
    emulator.reset()


#: Projection lag of the ``lagging`` backends (ZITADEL's clock is moved past it, not waited for).
LAG_S = 30


@pytest.fixture(params=["v1", "v2", "fake"])
def lagging(request: pytest.FixtureRequest, tmp_path: Path,
            emulator_factory: Callable[..., Emulator]) -> Iterator[Any]:
    """Like ``backend``, on a ZITADEL whose token endpoint lags ``LAG_S`` behind
    (the emulator's ``--lag-ms``, FakeZitadel's ``lag_ms``)."""
    if request.param == "fake":
        fake = FakeBackend(FakeZitadel(tmp_path / "zitadel", lag_ms=LAG_S * 1000))
        yield fake
        fake.close()
        return
    emulator = emulator_factory(lag_ms=LAG_S * 1000)
    with OidcClient(emulator.issuer) as client:
        wire = EmulatorBackend(request.param, emulator, client)
        yield wire
        wire.close()


#: Over the two transports that talk to a server.
on_the_wire = pytest.mark.parametrize("backend", ["v1", "v2"], indirect=True)
#: Over the transports that follow ZITADEL's v2 (UserService) rules.
v2_rules = pytest.mark.parametrize("backend", ["v2", "fake"], indirect=True)


def test_it_names_its_api(backend: Backend) -> None:
    assert backend.transport.api == ("v1" if backend.name == "v1" else "v2")


# -- resolve_user --------------------------------------------------------------------------


def test_a_user_is_found_by_id_login_name_and_user_name(backend: Backend) -> None:
    transport = backend.transport
    acme = backend.org_ids["acme"]
    expected = User(id=backend.user_ids["svc-billing"], org_id=acme, username="svc-billing",
                    active=True, machine=True, has_secret=False)
    assert transport.resolve_user(expected.id) == expected
    assert transport.resolve_user("svc-billing@acme.localhost") == expected
    assert transport.resolve_user("svc-billing") == expected
    assert transport.resolve_user("svc-billing", org_id=acme) == expected
    assert transport.resolve_user(expected.id, org_id=acme) == expected


@pytest.mark.parametrize("name", ["svc-nobody", "svc-nobody@acme.localhost", "4242424242"])
def test_an_unknown_user_is_not_found(backend: Backend, name: str) -> None:
    with pytest.raises(ZitadelNotFound):
        backend.transport.resolve_user(name)


def test_a_user_it_cannot_see_is_reported_as_maybe_unseen_naming_the_role(
    backend: Backend,
) -> None:
    """The admin has no role in globex: the v1 call is refused, v2 (and the
    fake) list nothing there.  Either way the error names the user, the org
    and the role to grant, never a bare "not found"."""
    globex = backend.org_ids["globex"]
    with pytest.raises((ZitadelNotFound, ZitadelPermissionDenied)) as caught:
        backend.transport.resolve_user("svc-ledger", org_id=globex)
    message = str(caught.value)
    assert "'svc-ledger'" in message
    assert f"org {globex}" in message
    assert f"grant it {visibility.ROLE} in org {globex}" in message
    if backend.name != "v1":  # v2 rules: an empty answer, the probe sees nobody there
        assert isinstance(caught.value, ZitadelNotFound)
        assert "may exist unseen" in message


def test_a_user_missing_where_it_may_list_users_does_not_exist(backend: Backend) -> None:
    acme = backend.org_ids["acme"]
    with pytest.raises(ZitadelNotFound) as caught:
        backend.transport.resolve_user("svc-nobody", org_id=acme)
    message = str(caught.value)
    assert f"user 'svc-nobody' not found in org {acme}: it does not exist" in message


@v2_rules
def test_a_user_outside_the_given_org_is_refused(backend: Backend) -> None:
    globex = backend.org_ids["globex"]
    with pytest.raises(ZitadelNotFound):  # by name: the look-up is scoped to the org
        backend.transport.resolve_user("svc-billing", globex)
    with pytest.raises(ZitadelRejected, match=globex):  # by id: checked
        backend.transport.resolve_user(backend.user_ids["svc-billing"], globex)


@v2_rules
def test_a_human_user_is_refused_with_a_clear_message(backend: Backend) -> None:
    name = _unique("alice")
    backend.add_user(name, type="human")
    with pytest.raises(ZitadelRejected, match="human user; only machine users have keys and PATs"):
        backend.transport.resolve_user(name)


@v2_rules
def test_an_ambiguous_user_name_names_the_candidate_orgs(backend: Backend) -> None:
    twin = _unique("svc-twin")
    backend.add_user(twin, org="acme")
    backend.add_user(twin, org="globex")
    # only a caller who can read both orgs sees both twins
    both, _ = backend.caller(_unique("admin-both"), roles=["ORG_OWNER"],
                             memberships=[{"org": "globex", "roles": ["ORG_OWNER"]}])
    with pytest.raises(ZitadelRejected) as caught:
        both.resolve_user(twin)
    assert backend.org_ids["acme"] in str(caught.value)
    assert backend.org_ids["globex"] in str(caught.value)
    globex = backend.org_ids["globex"]
    assert both.resolve_user(twin, globex).org_id == globex


# -- keys -----------------------------------------------------------------------------------


def test_a_key_is_added_listed_usable_and_removed(backend: Backend) -> None:
    transport = backend.transport
    user = transport.resolve_user("svc-billing")
    pair = generate_key_pair()
    expires = datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)  # stored exactly, no rounding

    added = transport.add_key(user, pair.public_key_pem, expires)
    assert (added.kind, added.user_id, added.expires_at) == (CredentialKind.KEY, user.id, expires)
    assert added.created_at is not None
    listed = {c.id: c for c in transport.list_keys(user)}
    assert listed[added.id].expires_at == expires
    assert listed[added.id].created_at is not None
    # ZITADEL's own record says the same: the expiry is explicit, never year 9999
    assert backend.stored_expiration(added.id) == "2031-02-03T04:05:06.789012Z"
    # the registered public key works for the jwt-bearer grant
    backend.verify_key(build_key_file(added.id, user.id, pair.private_key_pem, expires))

    transport.remove_key(user, added.id)
    assert added.id not in {c.id for c in transport.list_keys(user)}
    with pytest.raises(ZitadelNotFound, match="COMMAND-4m77G"):  # ZITADEL is not idempotent
        transport.remove_key(user, added.id)


def test_lists_hold_every_credential_of_the_user_oldest_first(backend: Backend) -> None:
    transport = backend.small_pages()  # pages of 2 where there are pages
    created = backend.add_user(_unique("svc-many"))
    user = transport.resolve_user(created["id"])
    public_key = generate_key_pair().public_key_pem
    keys = [transport.add_key(user, public_key, _in(30)).id for _ in range(5)]
    pats = [transport.add_pat(user, _in(30)).credential.id for _ in range(3)]
    assert [c.id for c in transport.list_keys(user)] == keys
    assert [c.id for c in transport.list_pats(user)] == pats


def test_credentials_of_other_users_are_not_listed(backend: Backend) -> None:
    transport = backend.transport
    billing = transport.resolve_user("svc-billing")
    reports = transport.resolve_user("svc-reports")
    key = transport.add_key(reports, generate_key_pair().public_key_pem, _in(30))
    pat = transport.add_pat(reports, _in(30))
    assert key.id not in {c.id for c in transport.list_keys(billing)}
    assert pat.credential.id not in {c.id for c in transport.list_pats(billing)}
    assert {c.user_id for c in transport.list_keys(reports)} == {reports.id}
    assert {c.user_id for c in transport.list_pats(reports)} == {reports.id}


def test_invalid_requests_are_rejected(backend: Backend) -> None:
    transport = backend.transport
    billing = transport.resolve_user("svc-billing")
    public_key = generate_key_pair().public_key_pem
    for past in (
        lambda: transport.add_key(billing, public_key, _in(-1)),
        lambda: transport.add_pat(billing, _in(-1)),
    ):
        with pytest.raises(ZitadelRejected, match="DOMAIN-dv3t5") as caught:
            past()
        assert caught.value.code == "invalid_argument"
        assert not caught.value.retryable
    garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ZitadelRejected) as bad_key:
        transport.add_key(billing, garbage, _in(30))
    assert bad_key.value.code == "invalid_argument"
    ghost = User(id="404404404", org_id=billing.org_id, username="ghost")
    with pytest.raises(ZitadelRejected) as missing:
        transport.add_key(ghost, public_key, _in(30))
    assert missing.value.code == "failed_precondition"


def test_a_naive_expiry_is_refused_before_any_call(backend: Backend) -> None:
    billing = backend.transport.resolve_user("svc-billing")
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.transport.add_key(billing, generate_key_pair().public_key_pem,
                                  datetime(2031, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.transport.add_pat(billing, datetime(2031, 1, 1))


# -- PATs -------------------------------------------------------------------------------------


def test_a_pat_is_added_listed_usable_and_removed(backend: Backend) -> None:
    transport = backend.transport
    user = transport.resolve_user("svc-reports")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    issued = transport.add_pat(user, expires)
    assert issued.token not in repr(issued)
    assert (issued.credential.kind, issued.credential.user_id) == (CredentialKind.PAT, user.id)
    assert issued.credential.expires_at == expires
    backend.verify_pat(issued.token, user.id)
    listed = {c.id: c for c in transport.list_pats(user)}
    assert listed[issued.credential.id].expires_at == expires

    transport.remove_pat(user, issued.credential.id)
    assert issued.credential.id not in {c.id for c in transport.list_pats(user)}
    with pytest.raises(ZitadelNotFound, match="COMMAND-4m77G"):
        transport.remove_pat(user, issued.credential.id)


def test_the_verifier_refuses_what_zitadel_would_refuse(backend: Backend) -> None:
    """The verifier the engine uses (the real OidcClient, or the in-process one
    on the fake) proves a credential by using it; a removed one fails."""
    transport = backend.transport
    user = transport.resolve_user("svc-billing")
    pair = generate_key_pair()
    expires = _in(30)
    key = transport.add_key(user, pair.public_key_pem, expires)
    key_file = build_key_file(key.id, user.id, pair.private_key_pem, expires)
    backend.verify_key(key_file)
    transport.remove_key(user, key.id)
    with pytest.raises(VerificationError, match=key.id):
        backend.verify_key(key_file)

    pat = transport.add_pat(user, _in(30))
    with pytest.raises(VerificationError, match="another subject"):
        backend.verify_pat(pat.token, backend.user_ids["svc-reports"])
    transport.remove_pat(user, pat.credential.id)
    with pytest.raises(VerificationError):
        backend.verify_pat(pat.token, user.id)


# -- authorization --------------------------------------------------------------------------------


def test_a_caller_without_membership_is_denied_not_told_not_found(backend: Backend) -> None:
    noperm, _ = backend.caller(_unique("svc-noperm"))
    billing = backend.transport.resolve_user("svc-billing")
    existing = backend.transport.add_key(billing, generate_key_pair().public_key_pem, _in(30))
    # ZITADEL says NotFound "membership not found"; read as NotFound the engine
    # would believe the key was already removed.
    with pytest.raises(ZitadelPermissionDenied, match="membership not found") as caught:
        noperm.remove_key(billing, existing.id)
    assert caught.value.code == "permission_denied"
    assert not caught.value.retryable
    with pytest.raises(ZitadelPermissionDenied, match="AUTHZ-cdgFk"):
        noperm.add_key(billing, generate_key_pair().public_key_pem, _in(30))
    with pytest.raises(ZitadelPermissionDenied):
        noperm.add_pat(billing, _in(30))
    assert existing.id in {c.id for c in backend.transport.list_keys(billing)}


def test_a_caller_with_read_but_not_write_permission(backend: Backend) -> None:
    viewer, _ = backend.caller(_unique("svc-viewer"), roles=["ORG_OWNER_VIEWER"])
    billing = backend.transport.resolve_user("svc-billing")
    viewer.list_keys(billing)  # user.read is enough to list
    with pytest.raises(ZitadelPermissionDenied, match="No matching permissions found") as caught:
        viewer.add_pat(billing, _in(1))
    assert not caught.value.retryable


def test_a_caller_with_a_role_in_another_org_works_there(backend: Backend) -> None:
    multi, _ = backend.caller(_unique("svc-multi"), roles=["ORG_OWNER"],
                              memberships=[{"org": "globex", "roles": ["ORG_USER_MANAGER"]}])
    globex = backend.org_ids["globex"]
    ledger = multi.resolve_user("svc-ledger", org_id=globex)
    assert (ledger.id, ledger.org_id) == (backend.user_ids["svc-ledger"], globex)
    key = multi.add_key(ledger, generate_key_pair().public_key_pem, _in(30))
    assert key.id in {c.id for c in multi.list_keys(ledger)}
    multi.remove_key(ledger, key.id)
    # the admin (a member of acme only) may not touch globex's user
    with pytest.raises(ZitadelPermissionDenied, match="membership not found"):
        backend.transport.add_key(ledger, generate_key_pair().public_key_pem, _in(30))


@v2_rules
def test_a_machine_user_manages_its_own_keys_without_roles(backend: Backend) -> None:
    caller, me = backend.caller(_unique("svc-self"))
    added = caller.add_key(me, generate_key_pair().public_key_pem, _in(30))
    assert added.id in {c.id for c in caller.list_keys(me)}
    caller.remove_key(me, added.id)


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["unavailable", "resource_exhausted", "internal",
                                  "deadline_exceeded"])
@pytest.mark.parametrize("method", ["add_key", "list_keys", "add_pat"])
def test_outages_and_overload_are_retryable_and_pass(backend: Backend, method: str,
                                                     code: str) -> None:
    transport = backend.transport
    user = transport.resolve_user("svc-billing")
    call: Callable[[], object] = {
        "add_key": lambda: transport.add_key(user, generate_key_pair().public_key_pem, _in(30)),
        "list_keys": lambda: transport.list_keys(user),
        "add_pat": lambda: transport.add_pat(user, _in(30)),
    }[method]
    backend.fail_next(method, code)
    with pytest.raises(ZitadelUnavailable) as caught:
        call()
    assert (caught.value.code, caught.value.retryable) == (code, True)
    assert str(caught.value.method).rsplit(".", 1)[-1] in RPCS[method]  # "UserService.AddKey"
    call()  # the fault was for one call only: the next one goes through


# -- on the wire: tokens, deadlines, unreachable servers ------------------------------------------


class _StaleThenFresh:
    """A token source whose cached token was revoked behind its back."""

    def __init__(self, fresh: TokenProvider) -> None:
        self.fresh = fresh
        self.stale = True
        self.invalidations = 0

    def __call__(self) -> str:
        return "revoked-token" if self.stale else self.fresh()

    def invalidate(self) -> None:
        self.invalidations += 1
        self.stale = False


@on_the_wire
def test_a_refused_token_is_exchanged_once_and_the_call_retried(backend: EmulatorBackend) -> None:
    source = _StaleThenFresh(backend.admin_source)
    transport = backend.connect(source)
    billing = transport.resolve_user("svc-billing")
    assert billing.id == backend.user_ids["svc-billing"]
    assert source.invalidations == 1


@on_the_wire
def test_a_refused_token_that_cannot_be_refreshed_is_unauthenticated(
    backend: EmulatorBackend,
) -> None:
    token = "made-up-secret-token-value"
    transport = backend.connect(lambda: token)
    with pytest.raises(ZitadelUnauthenticated) as caught:
        transport.resolve_user("svc-billing")
    assert token not in str(caught.value)
    assert "Errors.Token.Invalid (AUTH-7fs1e)" in str(caught.value)


@on_the_wire
def test_a_failing_token_source_is_reported_without_its_message(backend: EmulatorBackend) -> None:
    def broken() -> str:
        raise RuntimeError("response body with s3cr3t")

    with pytest.raises(ZitadelUnauthenticated) as caught:
        backend.connect(broken).resolve_user("svc-billing")
    assert "s3cr3t" not in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@on_the_wire
def test_an_unreachable_zitadel_is_unavailable(backend: EmulatorBackend) -> None:
    nowhere = backend.connect(lambda: "t", url=f"http://127.0.0.1:{_closed_port()}", timeout=2)
    with pytest.raises(ZitadelUnavailable) as caught:
        nowhere.resolve_user("svc-billing")
    assert caught.value.retryable
    assert caught.value.method is not None


@on_the_wire
def test_every_call_has_a_deadline(backend: EmulatorBackend) -> None:
    impatient = backend.connect(backend.admin_source, timeout=0.3)
    billing = backend.transport.resolve_user("svc-billing")
    backend.emulator.set_faults(rules=[
        {"method": rpc, "code": "unavailable", "rate": 0.0, "latency_ms": 1500}
        for rpc in RPCS["list_keys"]
    ])
    started = time.monotonic()
    with pytest.raises(ZitadelUnavailable) as caught:
        impatient.list_keys(billing)
    assert time.monotonic() - started < 1.2  # gave up long before the 1.5 s answer
    assert (caught.value.code, caught.value.retryable) == ("deadline_exceeded", True)


# -- client secrets (zitadel-api.md 11) -------------------------------------------------------


def _secret_user(backend: Backend) -> User:
    # a fresh user: the wire backends share one emulator per module, and a
    # secret outlives the test that set it
    return backend.transport.resolve_user(backend.add_user(_unique("svc-secret"))["id"])


def test_a_secret_is_added_overwritten_and_removed(backend: Backend) -> None:
    transport = backend.transport
    user = _secret_user(backend)
    assert user.has_secret is False

    first = transport.add_secret(user)
    assert (first.user_id, first.client_id) == (user.id, user.username)
    assert first.secret not in repr(first)
    assert first.created_at is not None
    assert transport.resolve_user(user.id).has_secret is True
    backend.verifier.verify_secret(first.client_id, first.secret, user_id=user.id)

    second = transport.add_secret(user)  # one secret per user: the first one is gone
    assert second.secret != first.secret
    backend.verifier.verify_secret(second.client_id, second.secret, user_id=user.id)
    with pytest.raises(VerificationError) as refused:
        backend.verifier.verify_secret(first.client_id, first.secret, user_id=user.id)
    assert first.secret not in str(refused.value)

    assert transport.remove_secret(user) is True
    assert transport.resolve_user(user.id).has_secret is False
    with pytest.raises(VerificationError):
        backend.verifier.verify_secret(second.client_id, second.secret, user_id=user.id)
    # ZITADEL refuses to remove a missing secret (COMMAND-coi82n): the transport says False
    assert transport.remove_secret(user) is False


def test_the_orgs_secrets_are_listed_as_credentials_that_never_expire(backend: Backend) -> None:
    transport = backend.transport
    acme = backend.org_ids["acme"]
    user, other = _secret_user(backend), _secret_user(backend)
    transport.add_secret(user)
    listed = transport.list_org_credentials(CredentialKind.SECRET, acme)
    assert listed is not None
    assert Credential(id=user.id, kind=CredentialKind.SECRET, user_id=user.id,
                      expires_at=NEVER_EXPIRES) in listed
    assert other.id not in {c.user_id for c in listed}
    transport.remove_secret(user)
    assert user.id not in {c.user_id for c in
                           transport.list_org_credentials(CredentialKind.SECRET, acme) or []}


def test_only_machine_users_get_a_secret(backend: Backend) -> None:
    name = _unique("alice")
    human = backend.add_user(name, type="human")
    as_user = User(id=human["id"], org_id=human["org_id"], username=name)
    for call in (lambda: backend.transport.add_secret(as_user),
                 lambda: backend.transport.remove_secret(as_user)):
        with pytest.raises(ZitadelRejected) as caught:
            call()
        assert caught.value.code == "failed_precondition"
        assert not caught.value.retryable


def test_secret_calls_fail_like_the_others(backend: Backend) -> None:
    user = _secret_user(backend)
    backend.fail_next("add_secret", "unavailable")
    with pytest.raises(ZitadelUnavailable):
        backend.transport.add_secret(user)
    backend.transport.add_secret(user)
    backend.fail_next("remove_secret", "unavailable")
    with pytest.raises(ZitadelUnavailable):
        backend.transport.remove_secret(user)
    assert backend.transport.remove_secret(user) is True


def test_a_token_issued_before_a_regeneration_stays_valid(backend: Backend) -> None:
    user = _secret_user(backend)
    old = backend.transport.add_secret(user)
    token = backend.verifier.exchange_client_credentials(old.client_id, old.secret)
    backend.transport.add_secret(user)
    assert backend.verifier.userinfo(token.token)["sub"] == user.id
    backend.transport.remove_secret(user)
    assert backend.verifier.userinfo(token.token)["sub"] == user.id


def test_within_the_lag_the_old_secret_passes_and_the_new_one_fails(lagging: Backend) -> None:
    user = _secret_user(lagging)
    old = lagging.transport.add_secret(user)
    lagging.advance(LAG_S + 1)
    new = lagging.transport.add_secret(user)
    lagging.verifier.verify_secret(old.client_id, old.secret, user_id=user.id)
    with pytest.raises(VerificationError):
        lagging.verifier.verify_secret(new.client_id, new.secret, user_id=user.id)

    lagging.advance(LAG_S + 1)  # both flip
    lagging.verifier.verify_secret(new.client_id, new.secret, user_id=user.id)
    with pytest.raises(VerificationError):
        lagging.verifier.verify_secret(old.client_id, old.secret, user_id=user.id)


def test_a_removed_secret_passes_until_the_lag_is_over(lagging: Backend) -> None:
    user = _secret_user(lagging)
    issued = lagging.transport.add_secret(user)
    lagging.advance(LAG_S + 1)
    assert lagging.transport.remove_secret(user) is True
    lagging.verifier.verify_secret(issued.client_id, issued.secret, user_id=user.id)
    lagging.advance(LAG_S + 1)
    with pytest.raises(VerificationError):
        lagging.verifier.verify_secret(issued.client_id, issued.secret, user_id=user.id)
