"""ZITADEL in process: the emulator's domain model without its wire.

:class:`FakeZitadel` is one emulated instance (tests/emulator/domain.py, seeded
like the emulator process).  On top of it:

- :class:`FakeTransport` implements :class:`rotator.ports.ZitadelTransport`
  by calling the domain's v2 UserService handlers directly, in ZITADEL's own
  order (fault check, authentication, handler), and translating the domain's
  errors with :func:`rotator.zitadel.codes.error_for`, the table both real
  transports use.  Every rule (expiry, not-found codes, permissions, machine
  users only) is the domain's; nothing is re-decided here.
- :class:`InProcessOidc` is the real :class:`rotator.zitadel.oidc.OidcClient`
  whose HTTP requests are answered by the emulator's OAuth handlers
  (tests/emulator/oidc.py) in process: ``verify_key`` really signs an RS256
  jwt-bearer assertion with the key file and the domain verifies it against the
  registered public key; ``verify_pat`` really looks the PAT up.  It raises
  VerificationError exactly like the real verifier, because it *is* the real
  verifier.
- :class:`SharedClock`: the engine's clock *is* ZITADEL's (``domain.now()``,
  real time plus the domain's persisted clock offset); ``advance`` moves both,
  ``sleep`` moves them without sleeping.

Fault injection is the emulator's own (:class:`tests.emulator.faults.Faults`,
by v2 method name: ``AddKey``, ``ListKeys``, ``RemoveKey``,
``AddPersonalAccessToken``, ``ListPersonalAccessTokens``,
``RemovePersonalAccessToken``, ``AddSecret``, ``RemoveSecret``, ``GetUserByID``,
``ListUsers``, and ``token`` / ``userinfo`` for the verifier):
``zitadel.set_faults(rules=[...])`` takes the same rules as
``Emulator.set_faults``.  Latency rules really sleep: avoid them in fast tests.

Projection lag: ``FakeZitadel(lag_ms=N)`` or ``zitadel.lag_ms = N`` (the
emulator's ``--lag-ms``): for N ms after a change the token endpoint sees the
state before it (a new key refused; after a secret regeneration the old secret
passes and the new one fails).
"""

from __future__ import annotations

import copy
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from rotator.errors import ZitadelError, ZitadelNotFound, ZitadelPermissionDenied, ZitadelRejected
from rotator.model import (
    Credential,
    CredentialKind,
    IssuedPat,
    IssuedSecret,
    User,
    secret_credential,
)
from rotator.ports import Clock
from rotator.zitadel import visibility
from rotator.zitadel.codes import error_for, is_secret_not_existing
from rotator.zitadel.oidc import OidcClient
from tests.emulator import keys as keymat
from tests.emulator import oidc as emu_oidc
from tests.emulator import times
from tests.emulator.domain import (
    Caller,
    Domain,
    EmuError,
    LoginNameQ,
    OrgIdQ,
    ResourceFilter,
    TypeQ,
    UserNameQ,
)
from tests.emulator.domain import User as DomainUser
from tests.emulator.faults import DropConnection
from tests.emulator.seed import DEFAULT_SEED, apply_seed

T = TypeVar("T")

ISSUER = "http://zitadel.in-process"
#: KeyFieldName / PersonalAccessTokenFieldName CREATED_DATE: oldest first, as the transports ask.
_BY_CREATION = 1
#: Refresh the caller's access token this long before it expires (like TokenSource).
_REFRESH_BEFORE_NS = 5 * 60 * times.NS


def _seed_without_files() -> dict[str, Any]:
    """The emulator's default seed minus what only a process needs (key files, apps):
    in process the admin is authenticated directly (see FakeTransport)."""
    seed = copy.deepcopy(DEFAULT_SEED)
    for org in seed["orgs"]:
        for user in org.get("users", []):
            user.pop("key_file", None)
    seed["apps"] = []
    return seed


def to_datetime(instant: int) -> datetime:
    seconds, nanos = divmod(instant, times.NS)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def to_instant(moment: datetime) -> int:
    if moment.tzinfo is None:
        # the real transports refuse these before any call, and so does this one
        raise ValueError("expiry must be a timezone-aware datetime")
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * times.NS + delta.microseconds * 1000


_INSTANCE_KEY: list[Any] = []
_INSTANCE_KEY_LOCK = threading.Lock()


def _share_instance_signing_key(domain: Domain) -> None:
    """Every in-process instance signs its id_tokens with one RSA key made once
    per test process: generating it costs more than a whole protocol test.
    (Reaches into the domain's own key slot; the key is never a test subject.)"""
    with _INSTANCE_KEY_LOCK:
        if not _INSTANCE_KEY:
            _INSTANCE_KEY.append(keymat.generate_rsa())
        domain._signing_key = _INSTANCE_KEY[0]


class FakeZitadel:
    """One in-process ZITADEL instance, seeded like a fresh emulator."""

    def __init__(self, state_dir: Path, *, lag_ms: int = 0) -> None:
        self.domain = Domain(state_dir, lag_ms=lag_ms)
        self.domain.issuer = ISSUER
        _share_instance_signing_key(self.domain)
        if self.domain.fresh:
            apply_seed(self.domain, _seed_without_files(), Path(state_dir))
        self.domain.mark_started()
        self.clock = SharedClock(self.domain)

    @property
    def issuer(self) -> str:
        return ISSUER

    @property
    def lag_ms(self) -> int:
        """The token endpoint's projection lag (see the module docstring)."""
        return self.domain.lag_ns // 1_000_000

    @lag_ms.setter
    def lag_ms(self, value: int) -> None:
        self.domain.lag_ns = value * 1_000_000

    def close(self) -> None:
        self.domain.close()

    # -- like tests.harness.emulator.Emulator ---------------------------------------------

    @property
    def org_ids(self) -> dict[str, str]:
        return {o.name: o.id for o in self.domain.list_orgs()}

    @property
    def user_ids(self) -> dict[str, str]:
        return {u.username: u.id for u in self.domain.all_users()}

    def add_user(
        self,
        username: str,
        *,
        org: str = "acme",
        roles: Sequence[str] = (),
        type: str = "machine",
        memberships: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """``{"id", "org_id", "login_name"}`` of a new user (as ``Emulator.add_user``)."""
        org_id = self.org_ids[org]
        user = self.domain.create_user(org_id, username, type=type, roles=roles)
        for membership in memberships:
            self.domain.grant_roles(user.id, self.org_ids[membership["org"]],
                                    list(membership["roles"]))
        return {"id": user.id, "org_id": user.org_id, "login_name": user.preferred_login_name}

    def set_faults(self, *, latency_ms: int = 0, rules: Sequence[dict[str, Any]] = ()) -> None:
        self.domain.faults.configure({"latency_ms": latency_ms, "rules": list(rules)})

    def clear_faults(self) -> None:
        self.domain.faults.clear()

    def state(self) -> dict[str, Any]:
        return self.domain.dump_state()

    def transport(self, caller: str = "rotator-admin") -> FakeTransport:
        """A transport acting as the user named ``caller`` (default: the seeded admin)."""
        return FakeTransport(self.domain, self.user_ids[caller])

    def verifier(self, clock: Clock | None = None) -> InProcessOidc:
        return InProcessOidc(self.domain, clock=clock or self.clock)


class SharedClock:
    """:class:`rotator.clock.Clock` that is ZITADEL's clock: no drift, ever."""

    def __init__(self, domain: Domain) -> None:
        self._domain = domain

    def now(self) -> datetime:
        return to_datetime(self._domain.now())

    def sleep(self, seconds: float) -> None:
        """Time passes for everybody, nobody waits."""
        self.advance(timedelta(seconds=seconds))

    def advance(self, delta: timedelta) -> None:
        self._domain.advance_clock(delta.total_seconds())

    @property
    def offset(self) -> timedelta:
        return timedelta(seconds=self._domain.clock_offset_seconds)


class FakeTransport:
    """:class:`rotator.ports.ZitadelTransport` straight onto the domain model."""

    #: The domain's v2 (UserService) rules apply: permissions are checked in the
    #: target user's org and a machine user may manage itself.
    api = "v2"

    def __init__(self, domain: Domain, caller_id: str) -> None:
        self._domain = domain
        self._caller_id = caller_id
        self._token: tuple[str, int] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    # -- one request, in ZITADEL's order -----------------------------------------------------

    def _bearer(self) -> str:
        """The caller's access token, issued by the domain and renewed before it
        expires (as TokenSource does), so an expired token is ZITADEL's to refuse."""
        with self._lock:
            if self._token is None or self._domain.now() >= self._token[1] - _REFRESH_BEFORE_NS:
                user = self._domain.get_user(self._caller_id)
                if user is None:
                    raise error_for("unauthenticated", "caller does not exist", method="token")
                self._token = self._domain.issue_access_token(
                    user, ["openid"], [self._domain.zitadel_project_id], None
                )
            return self._token[0]

    def _call(self, method: str, context: str, handler: Callable[[Caller], T]) -> T:
        try:
            after = self._domain.faults.check(method)
            caller = self._domain.authenticate(f"Bearer {self._bearer()}")
            answer = handler(caller)
            if after is not None:
                after.apply()  # "slow"/"lost"/"drop": ZITADEL acted, the answer is late or lost
            return answer
        except EmuError as exc:
            raise error_for(exc.code, f"{context}: {exc.message}", method=method) from None
        except DropConnection:
            raise error_for("unavailable", f"{context}: connection closed without an answer",
                            method=method) from None

    # -- users -------------------------------------------------------------------------------

    def resolve_user(self, user: str, org_id: str | None = None) -> User:
        """As the v2 transport: "not found" says whether the caller may see the
        user (rotator/zitadel/visibility.py), probed by listing the org's users."""
        try:
            return self._resolve_user(user, org_id)
        except ZitadelPermissionDenied as exc:
            raise visibility.refused(user, org_id, exc, identity=self._caller_id) from None
        except ZitadelNotFound as exc:
            if exc.method != "ListUsers":
                raise
            raise visibility.not_found(user, org_id, identity=self._caller_id,
                                       probe=lambda: self._others_visible(org_id),
                                       method="ListUsers") from None

    def _others_visible(self, org_id: str | None) -> int | ZitadelPermissionDenied | None:
        queries: list[Any] = [OrgIdQ(org_id)] if org_id else []
        try:
            _, users = self._call("ListUsers", "probe which users the identity may see",
                                  lambda c: self._domain.list_users_v2(c, queries, 0, 2, True))
        except ZitadelPermissionDenied as exc:
            return exc
        except ZitadelError:
            return None
        return sum(1 for u in users if u.id != self._caller_id)

    def _resolve_user(self, user: str, org_id: str | None = None) -> User:
        if user.isdigit():
            found = self._call("GetUserByID", f"look up user {user}",
                               lambda c: self._domain.get_user_by_id_v2(c, user))
            resolved = _to_user(found, user)
            if org_id and resolved.org_id != org_id:
                raise ZitadelRejected(f"user {user} belongs to org {resolved.org_id}, not {org_id}",
                                      code="failed_precondition", method="GetUserByID")
            return resolved
        queries: list[Any] = [LoginNameQ(user) if "@" in user else UserNameQ(user)]
        if org_id:
            queries.append(OrgIdQ(org_id))
        where = f" in org {org_id}" if org_id else ""
        _, users = self._call("ListUsers", f"look up user {user!r}{where}",
                              lambda c: self._domain.list_users_v2(c, queries, 0, 10, True))
        if not users:
            raise ZitadelNotFound(f"no user {user!r}{where}", code="not_found", method="ListUsers")
        if len(users) > 1:
            orgs = sorted({u.org_id for u in users})
            raise ZitadelRejected(
                f"user name {user!r} is ambiguous: {len(users)} users in orgs {', '.join(orgs)}; "
                "set the target's org",
                code="failed_precondition", method="ListUsers",
            )
        return _to_user(users[0], user)

    # -- keys ----------------------------------------------------------------------------------

    def add_key(self, user: User, public_key_pem: bytes, expires_at: datetime) -> Credential:
        expiration = to_instant(expires_at)
        added = self._call(
            "AddKey", f"add key for user {user.id}",
            lambda c: self._domain.add_key_v2(c, user.id, expiration, public_key_pem),
        )
        return _credential(CredentialKind.KEY, added.key)

    def list_keys(self, user: User) -> list[Credential]:
        _, _, keys = self._call(
            "ListKeys", f"list keys of user {user.id}",
            lambda c: self._domain.list_keys_v2(
                c, [ResourceFilter("user_id", id=user.id)], _BY_CREATION, 0, 0, True),
        )
        return [_credential(CredentialKind.KEY, k) for k in keys]

    def remove_key(self, user: User, key_id: str) -> None:
        self._call("RemoveKey", f"remove key {key_id} of user {user.id}",
                   lambda c: self._domain.remove_key_v2(c, user.id, key_id))

    # -- personal access tokens ------------------------------------------------------------------

    def add_pat(self, user: User, expires_at: datetime) -> IssuedPat:
        expiration = to_instant(expires_at)
        added = self._call("AddPersonalAccessToken", f"add PAT for user {user.id}",
                           lambda c: self._domain.add_pat_v2(c, user.id, expiration))
        return IssuedPat(credential=_credential(CredentialKind.PAT, added.pat), token=added.token)

    def list_pats(self, user: User) -> list[Credential]:
        _, _, pats = self._call(
            "ListPersonalAccessTokens", f"list PATs of user {user.id}",
            lambda c: self._domain.list_pats_v2(
                c, [ResourceFilter("user_id", id=user.id)], _BY_CREATION, 0, 0, True),
        )
        return [_credential(CredentialKind.PAT, p) for p in pats]

    def remove_pat(self, user: User, pat_id: str) -> None:
        self._call("RemovePersonalAccessToken", f"remove PAT {pat_id} of user {user.id}",
                   lambda c: self._domain.remove_pat_v2(c, user.id, pat_id))

    # -- client secrets ---------------------------------------------------------------------------

    def add_secret(self, user: User) -> IssuedSecret:
        added = self._call("AddSecret", f"add secret for user {user.id}",
                           lambda c: self._domain.add_secret_v2(c, user.id))
        # v2's AddSecretResponse has no client_id: the user name is what the token endpoint takes
        return IssuedSecret(user_id=user.id, client_id=user.username, secret=added.secret,
                            created_at=to_datetime(added.details.creation_date))

    def remove_secret(self, user: User) -> bool:
        try:
            self._call("RemoveSecret", f"remove secret of user {user.id}",
                       lambda c: self._domain.remove_secret_v2(c, user.id))
        except ZitadelRejected as exc:
            if is_secret_not_existing(exc):
                return False
            raise
        return True

    # -- listings --------------------------------------------------------------------------------

    def list_org_credentials(self, kind: CredentialKind, org_id: str) -> list[Credential] | None:
        if kind is CredentialKind.SECRET:
            _, users = self._call(
                "ListUsers", f"list machine users of org {org_id}",
                lambda c: self._domain.list_users_v2(
                    c, [OrgIdQ(org_id), TypeQ("machine")], 0, 0, True),
            )
            return [secret_credential(u.id) for u in users if u.has_secret]
        key = kind is CredentialKind.KEY
        method = "ListKeys" if key else "ListPersonalAccessTokens"
        lister = self._domain.list_keys_v2 if key else self._domain.list_pats_v2
        _, _, items = self._call(
            method, f"list {kind}s of org {org_id}",
            lambda c: lister(c, [ResourceFilter("organization_id", id=org_id)], _BY_CREATION,
                             0, 1000, True),
        )
        return [_credential(kind, item) for item in items]


    # -- inventory -------------------------------------------------------------------------------

    def list_machine_users(self, org_id: str | None) -> list[User]:
        queries: list[Any] = [TypeQ("machine")]
        if org_id:
            queries.append(OrgIdQ(org_id))
        users: list[DomainUser] = []
        while True:  # 1,000 a page, as the v2 transport asks
            offset = len(users)
            _, page = self._call(
                "ListUsers", f"list machine users of org {org_id or 'any'}",
                lambda c: self._domain.list_users_v2(c, queries, offset, 1000, True),  # noqa: B023
            )
            users += page
            if len(page) < 1000:
                break
        return [replace(_to_user(u, u.id), has_secret=u.has_secret) for u in users]

    def org_has_readable_users(self, org_id: str) -> bool:
        _, users = self._call("ListUsers", f"probe users of org {org_id}",
                              lambda c: self._domain.list_users_v2(c, [OrgIdQ(org_id)], 0, 1, True))
        return bool(users)


def _to_user(found: DomainUser, asked: str) -> User:
    if found.type != "machine":
        raise ZitadelRejected(
            f"user {asked!r} ({found.id}) is a human user; only machine users have keys and PATs",
            code="failed_precondition",
        )
    return User(id=found.id, org_id=found.org_id, username=found.username,
                active=found.state == "ACTIVE", machine=True, has_secret=found.has_secret)



def _credential(kind: CredentialKind, item: Any) -> Credential:
    return Credential(id=item.id, kind=kind, user_id=item.user_id,
                      expires_at=to_datetime(item.expiration),
                      created_at=to_datetime(item.created))


class InProcessOidc(OidcClient):
    """The real OidcClient; its HTTP requests are served by the emulator's OAuth
    handlers in this process instead of going over a socket."""

    def __init__(self, domain: Domain, *, clock: Clock) -> None:
        super().__init__(domain.issuer, clock=clock)
        self._domain = domain

    def _request(self, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        path = urllib.parse.urlsplit(url).path
        headers = {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}
        body = urllib.parse.urlencode(kwargs.get("data") or {}).encode()
        answer = emu_oidc.handle(self._domain, path, method, headers, body)
        if answer is None:
            return httpx.Response(404, text="404 page not found")
        status, response_headers, content = answer
        return httpx.Response(status, headers=response_headers, content=content)
