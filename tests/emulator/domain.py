"""The emulator's transport-independent model of one ZITADEL instance.

Everything that decides *what* ZITADEL answers lives here: organisations,
users, memberships, machine keys, PATs, metadata, issued access tokens, the
authorization rules (§3, §6.4), expiry (§6.1), public-key parsing (§6.2),
propagation lag (§6.3) and caller authentication (§1, §7.7).  Transports
(Connect JSON in ``connect_v2.py``, gRPC in ``grpc_v1.py``, OAuth in
``oidc.py``) only translate wire formats and call the methods below.  Every
rule raises :class:`EmuError` (``code`` = snake_case gRPC/Connect name).

State lives in SQLite (WAL) under the state dir; every mutation is one
transaction, so ``kill -9`` loses nothing that was answered.  Instants are
integer nanoseconds since the epoch (``tests.emulator.times``); "now" is
``domain.now()`` = real UTC time + a persisted clock offset.

Public API for transports
=========================

Per request, in this order (ZITADEL's interceptor order, §1):

1. ``domain.faults.check(method_name)``  (bare name: "AddMachineKey")
2. ``caller = domain.authenticate(authorization_header, org_header)``
   (Bearer access token with the ZITADEL audience, or a PAT; resolves
   ``x-zitadel-orgid`` -> ``caller.ctx_org_id``)
3. v1 only: ``domain.authorize_v1(caller, "user.write")`` (permission in the ctx
   org; see ``V1_PERMISSIONS`` for each method's permission)
4. PGV validation of the request message (transport's job; v1 after step 3,
   v2 after step 2)
5. the handler method below.

v1 handlers (ManagementService; everything scoped to ``caller.ctx_org_id``;
a user of another org is "not found"):

- ``get_my_org(caller) -> Org``
- ``get_user_by_id_v1(caller, user_id) -> User``
- ``get_user_by_login_name_global(caller, login_name) -> User`` (any org)
- ``list_users_v1(caller, queries, offset, limit, asc, sorting_column) -> (total, [User])``
- ``add_machine_key_v1(caller, user_id, expiration: int | None, public_key: bytes | None)
  -> AddedKey`` (expiration None -> 9999-12-31T23:59:59Z; ``AddedKey.key_details`` is
  the key JSON bytes, or None when a public key was supplied)
- ``list_machine_keys_v1(caller, user_id, offset, limit) -> (total, [MachineKey])``
- ``get_machine_key_v1(caller, user_id, key_id) -> MachineKey``
- ``remove_machine_key_v1(caller, user_id, key_id) -> Details``
- ``add_pat_v1(caller, user_id, expiration: int | None) -> AddedPat``
- ``list_pats_v1(caller, user_id, offset, limit) -> (total, [Pat])``
- ``get_pat_v1(caller, user_id, token_id) -> Pat``
- ``remove_pat_v1(caller, user_id, token_id) -> Details``
- ``set_user_metadata_v1(caller, user_id, key, value: bytes) -> Metadata``
- ``get_user_metadata_v1(caller, user_id, key) -> Metadata``
- ``list_user_metadata_v1(caller, user_id, offset, limit, key_queries) -> (total, [Metadata])``
- ``remove_user_metadata_v1(caller, user_id, key) -> Details``

v2 handlers (UserService; permission checked against the *target user's*
org; a machine user may manage itself without any role):

- ``add_key_v2(caller, user_id, expiration: int, public_key: bytes | None) -> AddedKey``
- ``remove_key_v2(caller, user_id, key_id) -> int`` (deletion date)
- ``list_keys_v2(caller, filters: list[ResourceFilter], sorting, offset, limit, asc)
  -> (total, applied_limit, [MachineKey])``
- ``add_pat_v2``, ``remove_pat_v2``, ``list_pats_v2`` likewise
- ``get_user_by_id_v2(caller, user_id) -> User``
- ``list_users_v2(caller, queries, offset, limit, asc, sorting_column) -> (total, [User])``
- ``set_user_metadata_v2(caller, user_id, [(key, value)]) -> int`` (set date)
- ``list_user_metadata_v2(caller, user_id, key_filters, offset, limit, asc)
  -> (total, applied_limit, [Metadata])``
- ``delete_user_metadata_v2(caller, user_id, keys) -> int`` (deletion date)
- ``add_secret_v2(caller, user_id) -> AddedSecret`` (regenerates: one secret per
  machine user, overwritten; no expiry)
- ``remove_secret_v2(caller, user_id) -> int`` (deletion date; FailedPrecondition
  ``Errors.User.Machine.Secret.NotExisting`` when the user has none)

v1 secret handlers (ctx org): ``generate_machine_secret_v1(caller, user_id) ->
AddedSecret`` (``client_id`` = the user name), ``remove_machine_secret_v1(caller,
user_id) -> Details``.

User queries (v1 ``SearchQuery`` and v2 ``user.v2.SearchQuery``) are trees of
the dataclasses ``UserNameQ, LoginNameQ, FieldTextQ, TypeQ, InIdsQ, OrgIdQ, StateQ, AndQ,
OrQ, NotQ``; text methods are ``TextQueryMethod`` ints (0 EQUALS ..
7 ENDS_WITH_IGNORE_CASE).  ``user_state_v1`` / ``user_state_v2`` map the
stored state name to each API's enum number.

Administration (seeding, /_emulator endpoints): ``create_org``,
``create_user``, ``grant_roles``, ``set_user_state``, ``create_machine_key``,
``set_metadata_admin``, ``generate_machine_secret``, ``create_app``, ``bulk_create``,
``set_clock_offset``, ``advance_clock``, ``mark_started``, ``dump_state``.
Plain lookups without authorization: ``get_org``, ``org_by_name``,
``list_orgs``, ``get_user``, ``all_users``, ``user_by_login_name``,
``roles_of``, ``metadata_of``.  OAuth support: ``jwt_profile_key``,
``check_client_secret``, ``issue_access_token``, ``token_info``.

Projection lag (``lag_ms``, §6.3, §11): for that long after a change, the
token endpoint still sees the state before it - a key added is not yet usable,
a key removed still is; after a secret is regenerated (or removed) the OLD
secret still passes and the NEW one fails.  Issued access tokens never depend
on the secret that obtained them.
"""

# SQL fragments below are module constants, never request data; handler
# signatures mirror the request messages field by field.
# ruff: noqa: S608, PLR0917

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tests.emulator import keys as keymat
from tests.emulator import times
from tests.emulator.errors import EmuError, zerr
from tests.emulator.faults import Faults

if TYPE_CHECKING:
    from tests.emulator.webkeys import WebKeys

__all__ = ["EmuError", "zerr"]  # re-exported for transports; extended below

ACCESS_TOKEN_LIFETIME_NS = 12 * 3600 * times.NS  # DefaultAccessTokenLifetime
ZITADEL_AUD_SCOPE = "urn:zitadel:iam:org:project:id:zitadel:aud"
PAT_SCOPES = ("openid", "profile", "urn:zitadel:iam:user:metadata",
              "urn:zitadel:iam:user:resourceowner")
DEFAULT_QUERY_LIMIT = 100  # SystemDefaults.DefaultQueryLimit
MAX_QUERY_LIMIT = 1000  # SystemDefaults.MaxQueryLimit

# --- roles and permissions (cmd/defaults.yaml InternalAuthZ, the subset used) ----
_R = "user.read"
_W = "user.write"
_G = "user.global.read"
_O = "org.read"
#: instance-level web key permissions (§12)
_WK = frozenset({"iam.web_key.read", "iam.web_key.write", "iam.web_key.delete"})
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "IAM_OWNER": frozenset({_O, _R, _G, _W}) | _WK,
    "IAM_OWNER_VIEWER": frozenset({_O, _R, _G, "iam.web_key.read"}),
    "IAM_ORG_MANAGER": frozenset({_O, _R, _G, _W}),
    "IAM_USER_MANAGER": frozenset({_O, _R, _G, _W}),
    "IAM_LOGIN_CLIENT": frozenset({_O, _R, _W}),
    "ORG_OWNER": frozenset({_O, _R, _G, _W}),
    "ORG_USER_MANAGER": frozenset({_O, _R, _G, _W}),
    "ORG_OWNER_VIEWER": frozenset({_O, _R, _G}),
    "ORG_SETTINGS_MANAGER": frozenset({_O}),
    "ORG_USER_PERMISSION_EDITOR": frozenset({_O, _R, _G}),
    "ORG_PROJECT_PERMISSION_EDITOR": frozenset({_O, _R, _G}),
    "ORG_PROJECT_CREATOR": frozenset({_G}),
    "PROJECT_OWNER": frozenset({_R, _G}),
    "PROJECT_OWNER_VIEWER": frozenset({_R, _G}),
    "PROJECT_OWNER_GLOBAL": frozenset({_G}),
    "PROJECT_GRANT_OWNER": frozenset({_R, _G}),
    "PROJECT_GRANT_OWNER_VIEWER": frozenset({_R, _G}),
}
INSTANCE_ROLES = frozenset(r for r in ROLE_PERMISSIONS if r.startswith("IAM_"))

#: Permission the v1 auth interceptor checks per ManagementService method (§3).
V1_PERMISSIONS: dict[str, str] = {
    "GetMyOrg": _O,
    "GetUserByID": _R,
    "GetUserByLoginNameGlobal": _G,
    "ListUsers": _R,
    "AddMachineKey": _W,
    "ListMachineKeys": _R,
    "GetMachineKeyByIDs": _R,
    "RemoveMachineKey": _W,
    "AddPersonalAccessToken": _W,
    "ListPersonalAccessTokens": _R,
    "GetPersonalAccessTokenByIDs": _R,
    "RemovePersonalAccessToken": _W,
    "SetUserMetadata": _W,
    "BulkSetUserMetadata": _W,
    "ListUserMetadata": _R,
    "GetUserMetadata": _R,
    "RemoveUserMetadata": _W,
    "GenerateMachineSecret": _W,
    "RemoveMachineSecret": _W,
}

USER_STATES_V1 = {"ACTIVE": 1, "INACTIVE": 2, "DELETED": 3, "LOCKED": 4, "SUSPEND": 5,
                  "INITIAL": 6}
USER_STATES_V2 = {"ACTIVE": 1, "INACTIVE": 2, "DELETED": 3, "LOCKED": 4, "INITIAL": 5}


def user_state_v1(state: str) -> int:
    return USER_STATES_V1.get(state, 0)


def user_state_v2(state: str) -> int:
    return USER_STATES_V2.get(state, 0)


# --- records -------------------------------------------------------------------


@dataclass(frozen=True)
class Details:
    """ObjectDetails: add responses use creation_date, change/remove change_date."""

    sequence: int
    creation_date: int
    change_date: int
    resource_owner: str


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    primary_domain: str
    state: str  # "ACTIVE"
    created: int
    changed: int
    sequence: int


@dataclass(frozen=True)
class User:
    id: str
    org_id: str
    username: str
    type: str  # "machine" | "human"
    state: str  # "ACTIVE", "INACTIVE", "LOCKED", ...
    name: str
    description: str
    access_token_type: int  # 0 BEARER, 1 JWT
    has_secret: bool
    given_name: str
    family_name: str
    email: str
    created: int
    changed: int
    sequence: int
    org_domain: str

    @property
    def login_names(self) -> list[str]:
        return [f"{self.username}@{self.org_domain}"]

    @property
    def preferred_login_name(self) -> str:
        return self.login_names[0]

    @property
    def display_name(self) -> str:
        if self.type == "machine":
            return self.name
        return f"{self.given_name} {self.family_name}".strip() or self.username


@dataclass(frozen=True)
class MachineKey:
    id: str
    user_id: str
    org_id: str
    created: int
    changed: int
    expiration: int
    public_key: bytes = field(repr=False)  # SubjectPublicKeyInfo DER
    removed_at: int | None
    sequence: int
    type: int = 1  # KEY_TYPE_JSON


@dataclass(frozen=True)
class Pat:
    id: str
    user_id: str
    org_id: str
    created: int
    changed: int
    expiration: int
    scopes: tuple[str, ...]
    removed_at: int | None
    sequence: int


@dataclass(frozen=True)
class Metadata:
    user_id: str
    org_id: str
    key: str
    value: bytes
    created: int
    changed: int
    sequence: int


@dataclass(frozen=True)
class AccessToken:
    id: str
    user_id: str
    key_id: str | None
    created: int
    expiration: int
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    revoked: bool


@dataclass(frozen=True)
class App:
    client_id: str
    project_id: str
    name: str


@dataclass(frozen=True)
class AddedKey:
    key: MachineKey
    #: key JSON file (§6.2) for server-generated keys; None with a public key.
    key_details: bytes | None = field(repr=False)
    details: Details


@dataclass(frozen=True)
class AddedPat:
    pat: Pat
    token: str = field(repr=False)
    details: Details


@dataclass(frozen=True)
class AddedSecret:
    user_id: str
    client_id: str  # the user name (GenerateMachineSecret's client_id)
    secret: str = field(repr=False)
    details: Details


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of one request."""

    user_id: str
    org_id: str  # the caller's own org (resource owner)
    ctx_org_id: str  # x-zitadel-orgid if given, else org_id
    token_kind: str  # "access_token" | "pat"
    token_id: str


# --- user queries (v1 SearchQuery / v2 SearchQuery) -----------------------------


@dataclass(frozen=True)
class UserNameQ:
    value: str
    method: int = 0


@dataclass(frozen=True)
class LoginNameQ:
    value: str
    method: int = 0


@dataclass(frozen=True)
class FieldTextQ:
    """Text query on another user attribute: "given_name", "family_name",
    "display_name", "email", "nick_name"."""

    attr: str
    value: str
    method: int = 0


@dataclass(frozen=True)
class TypeQ:
    type: str  # "machine" | "human"


@dataclass(frozen=True)
class InIdsQ:
    ids: tuple[str, ...]


@dataclass(frozen=True)
class OrgIdQ:
    org_id: str


@dataclass(frozen=True)
class StateQ:
    state: str


@dataclass(frozen=True)
class AndQ:
    queries: tuple[Any, ...]


@dataclass(frozen=True)
class OrQ:
    queries: tuple[Any, ...]


@dataclass(frozen=True)
class NotQ:
    query: Any


def text_matches(value: str, pattern: str, method: int) -> bool:
    """zitadel.v1.TextQueryMethod semantics."""
    if method % 2 == 1:
        value, pattern = value.lower(), pattern.lower()
    kind = method // 2
    if kind == 0:
        return value == pattern
    if kind == 1:
        return value.startswith(pattern)
    if kind == 2:
        return pattern in value
    if kind == 3:
        return value.endswith(pattern)
    raise EmuError("invalid_argument", f"unknown text query method {method}")


@dataclass(frozen=True)
class OrgQ:
    """One zitadel.org.v2.SearchQuery: ``kind`` name, domain, state, id or default."""
    kind: str
    value: str = ""
    method: int = 0


def org_matches(org: Org, q: OrgQ) -> bool:
    if q.kind == "name":
        return text_matches(org.name, q.value, q.method)
    if q.kind == "domain":
        return text_matches(org.primary_domain, q.value, q.method)
    if q.kind == "id":
        return org.id == q.value
    if q.kind == "state":
        return q.value in ("", org.state)
    return False  # default: the emulator has no default organization


def user_matches(user: User, q: Any) -> bool:
    if isinstance(q, UserNameQ):
        return text_matches(user.username, q.value, q.method)
    if isinstance(q, LoginNameQ):
        return any(text_matches(n, q.value, q.method) for n in user.login_names)
    if isinstance(q, FieldTextQ):
        value = user.display_name if q.attr == "display_name" else getattr(user, q.attr, "")
        return text_matches(str(value), q.value, q.method)
    if isinstance(q, TypeQ):
        return user.type == q.type
    if isinstance(q, InIdsQ):
        return user.id in q.ids
    if isinstance(q, OrgIdQ):
        return user.org_id == q.org_id
    if isinstance(q, StateQ):
        return user.state == q.state
    if isinstance(q, AndQ):
        return all(user_matches(user, s) for s in q.queries)
    if isinstance(q, OrQ):
        return any(user_matches(user, s) for s in q.queries)
    if isinstance(q, NotQ):
        return not user_matches(user, q.query)
    raise EmuError("invalid_argument", f"unsupported user query {type(q).__name__}")


# --- v2 key / PAT filters (KeysSearchFilter, PersonalAccessTokensSearchFilter) ---


@dataclass(frozen=True)
class ResourceFilter:
    """One v2 filter.  ``field``: "id" | "user_id" | "organization_id" for IDFilter;
    "created" | "expiration" for TimestampFilter (``method`` = TimestampFilterMethod
    0 EQUALS, 1 AFTER, 2 AFTER_OR_EQUALS, 3 BEFORE, 4 BEFORE_OR_EQUALS)."""

    field: str
    id: str = ""
    timestamp: int = 0
    method: int = 0


#: v2 KeyFieldName / PersonalAccessTokenFieldName -> attribute.
SORT_FIELDS = {0: "created", 1: "created", 2: "id", 3: "user_id", 4: "org_id", 5: "expiration"}


def v2_pagination(offset: int, limit: int) -> tuple[int, int]:
    """§4.2: limit 0 -> 100; > 1000 -> InvalidArgument."""
    if limit == 0:
        limit = DEFAULT_QUERY_LIMIT
    if limit > MAX_QUERY_LIMIT:
        raise zerr("invalid_argument", "Limit exceeded", "QUERY-4M0fs")
    return offset, limit


def _page(items: list[Any], offset: int, limit: int) -> list[Any]:
    end = None if limit == 0 else offset + limit
    return items[offset:end]


# --- errors ZITADEL answers ------------------------------------------------------

def _membership_not_found() -> EmuError:
    return EmuError("not_found", "membership not found (AUTHZ-cdgFk)", "AUTHZ-cdgFk",
                    "membership not found")


def _token_invalid() -> EmuError:
    return zerr("unauthenticated", "Errors.Token.Invalid", "AUTH-7fs1e")


ERR_EXPIRE_BEFORE_NOW = ("invalid_argument", "Errors.AuthNKey.ExpireBeforeNow", "DOMAIN-dv3t5")
ERR_SECRET_NOT_EXISTING = ("failed_precondition", "Secret doesn't exist", "COMMAND-coi82n")
#: Errors.User.NotExisting: the machine write model of an unknown, human or
#: (v1) other-org user has no state (internal/command/user_machine_secret.go).
ERR_SECRET_USER_ADD = ("failed_precondition", "User doesn't exist", "COMMAND-x8910n")
ERR_SECRET_USER_REMOVE = ("failed_precondition", "User doesn't exist", "COMMAND-x7s802")
ERR_BAD_PUBLIC_KEY = ("invalid_argument",
                      "Public key is not a valid RSA public key in PKIX format with PEM encoding",
                      "COMMAND-5F3h1")


# --- the domain ------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, primary_domain TEXT NOT NULL,
  state TEXT NOT NULL, created TEXT NOT NULL, changed TEXT NOT NULL, sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY, org_id TEXT NOT NULL, username TEXT NOT NULL, type TEXT NOT NULL,
  state TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
  access_token_type INTEGER NOT NULL, secret_hash TEXT, given_name TEXT NOT NULL,
  family_name TEXT NOT NULL, email TEXT NOT NULL, created TEXT NOT NULL, changed TEXT NOT NULL,
  sequence INTEGER NOT NULL, UNIQUE (org_id, username));
CREATE TABLE IF NOT EXISTS memberships (
  user_id TEXT NOT NULL, org_id TEXT NOT NULL, role TEXT NOT NULL,
  PRIMARY KEY (user_id, org_id, role));
CREATE TABLE IF NOT EXISTS machine_keys (
  id TEXT PRIMARY KEY, user_id TEXT NOT NULL, org_id TEXT NOT NULL, created TEXT NOT NULL,
  changed TEXT NOT NULL, expiration TEXT NOT NULL, public_key BLOB NOT NULL,
  removed_at TEXT, sequence INTEGER NOT NULL, created_k TEXT NOT NULL,
  expiration_k TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pats (
  id TEXT PRIMARY KEY, user_id TEXT NOT NULL, org_id TEXT NOT NULL, created TEXT NOT NULL,
  changed TEXT NOT NULL, expiration TEXT NOT NULL, scopes TEXT NOT NULL,
  token_hash TEXT NOT NULL UNIQUE, removed_at TEXT, sequence INTEGER NOT NULL,
  created_k TEXT NOT NULL, expiration_k TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metadata (
  user_id TEXT NOT NULL, org_id TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
  created TEXT NOT NULL, changed TEXT NOT NULL, sequence INTEGER NOT NULL,
  PRIMARY KEY (user_id, key));
CREATE TABLE IF NOT EXISTS access_tokens (
  id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, key_id TEXT,
  created TEXT NOT NULL, expiration TEXT NOT NULL, scopes TEXT NOT NULL, audience TEXT NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0);
-- The last secret change per user, for the token endpoint's lagging view:
-- prev_hash is what the projection showed before it (NULL: no secret) until
-- visible (= changed + the lag in force at the change).
CREATE TABLE IF NOT EXISTS secret_changes (
  user_id TEXT PRIMARY KEY, prev_hash TEXT, changed TEXT NOT NULL, visible TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
  client_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL,
  secret_hash TEXT NOT NULL);
-- Lists must not scan the instance (a fleet has 10,000s of credentials): the
-- v2 filters by user and by organization, v1's per-user lists and ListUsers by
-- org use these.  created_k / expiration_k are sort_key(created / expiration).
CREATE INDEX IF NOT EXISTS machine_keys_by_user
  ON machine_keys (user_id, removed_at, created_k, length(id), id, org_id);
CREATE INDEX IF NOT EXISTS machine_keys_by_org
  ON machine_keys (org_id, removed_at, created_k, length(id), id, user_id);
CREATE INDEX IF NOT EXISTS machine_keys_active
  ON machine_keys (removed_at, created_k, length(id), id, user_id, org_id);
CREATE INDEX IF NOT EXISTS pats_by_user
  ON pats (user_id, removed_at, created_k, length(id), id, org_id);
CREATE INDEX IF NOT EXISTS pats_by_org
  ON pats (org_id, removed_at, created_k, length(id), id, user_id);
CREATE INDEX IF NOT EXISTS pats_active
  ON pats (removed_at, created_k, length(id), id, user_id, org_id);
CREATE INDEX IF NOT EXISTS users_by_org ON users (org_id);
CREATE INDEX IF NOT EXISTS users_by_username ON users (username);
"""


#: Shifts every representable instant (0001-01-01 .. 9999-12-31, in ns) above zero.
_SORT_KEY_SHIFT = 10**21


def sort_key(instant: int) -> str:
    """A fixed-width text whose order is the instants' numeric order.  Instants
    are stored as text (9999-12-31 in ns overflows SQLite's 64-bit integers), so
    SQL sorts and compares these instead."""
    return f"{instant + _SORT_KEY_SHIFT:022d}"


@functools.lru_cache(maxsize=64)
def _scopes(text: str) -> tuple[str, ...]:
    """A PAT's stored scopes (a JSON list; a fleet's PATs share a handful)."""
    return tuple(json.loads(text))


def _hash(secret: str) -> str:
    # Only digests of PATs, tokens and client secrets touch the disk.
    return hashlib.sha256(secret.encode()).hexdigest()


def _t(value: str | None) -> int | None:
    return None if value is None else int(value)


def _fmt_opt(instant: int | None) -> str | None:
    return None if instant is None else times.format_protojson(instant)


def _opaque_token() -> str:
    return keymat.b64url(secrets.token_bytes(48))


_SECRET_ALPHABET = string.ascii_letters + string.digits


def _client_secret() -> str:
    """The default ClientSecret generator: 64 letters and digits (§11)."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(64))


_Listed = TypeVar("_Listed", MachineKey, Pat)

_INSERT_KEY = ("INSERT INTO machine_keys (id, user_id, org_id, created, changed, expiration, "
               "public_key, sequence, created_k, expiration_k) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_PAT = ("INSERT INTO pats (id, user_id, org_id, created, changed, expiration, scopes, "
               "token_hash, sequence, created_k, expiration_k) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_USER = "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)"

#: ResourceFilter.field -> column; TimestampFilterMethod -> SQL operator.
_FILTER_COLUMNS = {"id": "id", "user_id": "user_id", "organization_id": "org_id",
                   "created": "created_k", "expiration": "expiration_k"}
_TIMESTAMP_OPS = {0: "=", 1: ">", 2: ">=", 3: "<", 4: "<="}


class Domain:
    """One emulated ZITADEL instance backed by ``<state_dir>/zitadel.sqlite``."""

    def __init__(self, state_dir: Path, *, lag_ms: int = 0, rate_limit: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lag_ns = lag_ms * 1_000_000
        self.faults = Faults(rate_limit=rate_limit, startup_rate_limit=rate_limit)
        self.issuer = ""  # set by the server once its port is known
        self._caught_up = 0  # see mark_started()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.state_dir / "zitadel.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._ids = itertools.count()
        self._last_id = 0
        self.fresh = self._meta("instance_id") is None
        if self.fresh:
            with self._tx():
                self._set_meta("instance_id", self._new_id())
                self._set_meta("zitadel_project_id", self._new_id())
                self._set_meta("clock_offset_ns", "0")
                self._set_meta("sequence", "0")
                self._set_meta("signing_key_id", self._new_id())
        self._offset_ns = int(self._meta("clock_offset_ns") or "0")
        self.instance_id = str(self._meta("instance_id"))
        self.zitadel_project_id = str(self._meta("zitadel_project_id"))
        self.signing_key_id = str(self._meta("signing_key_id"))
        self._signing_key: Any = None

    @property
    def signing_key(self) -> Any:
        """The instance's RSA signing key (id_tokens, JWKS), generated on first use
        so that start-up stays fast."""
        with self._lock:
            if self._signing_key is None:
                stored = self._meta("signing_key")
                if stored is None:
                    stored = keymat.private_pkcs1_pem(keymat.generate_rsa()).decode()
                    with self._tx():
                        self._set_meta("signing_key", stored)
                self._signing_key = keymat.load_private_pem(stored.encode())
            return self._signing_key

    @functools.cached_property
    def web_keys(self) -> WebKeys:
        """The instance's web keys (§12): JWKS, token signatures, WebKeyService."""
        from tests.emulator.webkeys import WebKeys

        return WebKeys(self)

    # --- plumbing -----------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (also serialises all access across threads)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _q(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _meta(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", key)
        return str(rows[0]["value"]) if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _next_sequence(self) -> int:
        seq = int(self._meta("sequence") or "0") + 1
        self._set_meta("sequence", str(seq))
        return seq

    def _new_id(self) -> str:
        """Snowflake-like numeric id: ms since 2019-01-01 << 22 | counter; strictly
        increasing within the process and (by time) across restarts."""
        with self._lock:
            candidate = (int(time.time() * 1000) - 1_546_300_800_000) << 22
            self._last_id = max(candidate, self._last_id + 1)
            return str(self._last_id)

    # --- time ---------------------------------------------------------------------

    def mark_started(self) -> None:
        """Projections are caught up when the server starts: the lag applies only
        to keys added or removed after this point (not to seeded keys)."""
        self._caught_up = self.now()

    def now(self) -> int:
        return time.time_ns() + self._offset_ns

    @property
    def clock_offset_seconds(self) -> float:
        return self._offset_ns / times.NS

    def set_clock_offset(self, seconds: float) -> None:
        offset = int(seconds * times.NS)
        if not times.MIN_TIMESTAMP <= time.time_ns() + offset <= times.MAX_TIMESTAMP:
            raise ValueError("the clock would leave 0001-01-01..9999-12-31")
        with self._tx():
            self._offset_ns = offset
            self._set_meta("clock_offset_ns", str(self._offset_ns))

    def advance_clock(self, seconds: float) -> None:
        self.set_clock_offset(self._offset_ns / times.NS + seconds)

    # --- row mapping --------------------------------------------------------------

    def _org(self, row: sqlite3.Row) -> Org:
        return Org(row["id"], row["name"], row["primary_domain"], row["state"],
                   int(row["created"]), int(row["changed"]), row["sequence"])

    def _user(self, row: sqlite3.Row) -> User:
        return User(
            id=row["id"], org_id=row["org_id"], username=row["username"], type=row["type"],
            state=row["state"], name=row["name"], description=row["description"],
            access_token_type=row["access_token_type"], has_secret=row["secret_hash"] is not None,
            given_name=row["given_name"], family_name=row["family_name"], email=row["email"],
            created=int(row["created"]), changed=int(row["changed"]), sequence=row["sequence"],
            org_domain=row["primary_domain"],
        )

    _USER_SELECT = ("SELECT u.*, o.primary_domain FROM users u JOIN orgs o ON o.id = u.org_id")

    def _key(self, row: sqlite3.Row) -> MachineKey:
        return MachineKey(row["id"], row["user_id"], row["org_id"], int(row["created"]),
                          int(row["changed"]), int(row["expiration"]), bytes(row["public_key"]),
                          _t(row["removed_at"]), row["sequence"])

    def _pat(self, row: sqlite3.Row) -> Pat:
        return Pat(row["id"], row["user_id"], row["org_id"], int(row["created"]),
                   int(row["changed"]), int(row["expiration"]), _scopes(row["scopes"]),
                   _t(row["removed_at"]), row["sequence"])

    def _md(self, row: sqlite3.Row) -> Metadata:
        return Metadata(row["user_id"], row["org_id"], row["key"], bytes(row["value"]),
                        int(row["created"]), int(row["changed"]), row["sequence"])

    # --- plain lookups (no authorization) -----------------------------------------

    def get_org(self, org_id: str) -> Org | None:
        rows = self._q("SELECT * FROM orgs WHERE id = ?", org_id)
        return self._org(rows[0]) if rows else None

    def org_by_name(self, name: str) -> Org | None:
        rows = self._q("SELECT * FROM orgs WHERE name = ?", name)
        return self._org(rows[0]) if rows else None

    def list_orgs(self) -> list[Org]:
        return [self._org(r) for r in self._q("SELECT * FROM orgs ORDER BY rowid")]

    def get_user(self, user_id: str) -> User | None:
        rows = self._q(self._USER_SELECT + " WHERE u.id = ?", user_id)
        return self._user(rows[0]) if rows else None

    def all_users(self) -> list[User]:
        return [self._user(r) for r in self._q(self._USER_SELECT + " ORDER BY u.rowid")]

    def user_by_login_name(self, login_name: str) -> User | None:
        wanted = login_name.lower()
        # SQLite folds ASCII case only: a hit is exact, a miss is re-checked below
        rows = self._q(self._USER_SELECT + " WHERE u.username || '@' || o.primary_domain = ? "
                       "COLLATE NOCASE ORDER BY u.rowid", login_name)
        for user in map(self._user, rows):
            if any(n.lower() == wanted for n in user.login_names):
                return user
        for user in self.all_users():
            if any(n.lower() == wanted for n in user.login_names):
                return user
        return None

    def roles_of(self, user_id: str) -> list[tuple[str, str]]:
        """[(org_id or "" for instance, role)]"""
        return [(r["org_id"], r["role"]) for r in
                self._q("SELECT org_id, role FROM memberships WHERE user_id = ? ORDER BY rowid",
                        user_id)]

    def _keys_where(self, where: str, *args: Any) -> list[MachineKey]:
        return [self._key(r) for r in
                self._q(f"SELECT * FROM machine_keys WHERE {where} ORDER BY rowid", *args)]

    def _pats_where(self, where: str, *args: Any) -> list[Pat]:
        return [self._pat(r) for r in
                self._q(f"SELECT * FROM pats WHERE {where} ORDER BY rowid", *args)]

    def metadata_of(self, user_id: str) -> list[Metadata]:
        """All metadata of a user (no authorization; userinfo claims, state dump)."""
        return self._metadata_of(user_id)

    def _metadata_of(self, user_id: str) -> list[Metadata]:
        return [self._md(r) for r in
                self._q("SELECT * FROM metadata WHERE user_id = ? ORDER BY rowid", user_id)]

    # --- administration (seed, /_emulator) ------------------------------------------

    def create_org(self, name: str, primary_domain: str | None = None) -> Org:
        now = self.now()
        with self._tx() as db:
            org_id = self._new_id()
            seq = self._next_sequence()
            db.execute(
                "INSERT INTO orgs VALUES (?, ?, ?, 'ACTIVE', ?, ?, ?)",
                (org_id, name, primary_domain or f"{name}.localhost", str(now), str(now), seq),
            )
        org = self.get_org(org_id)
        assert org is not None
        return org

    def create_user(
        self,
        org_id: str,
        username: str,
        *,
        type: str = "machine",
        name: str | None = None,
        description: str = "",
        roles: Sequence[str] = (),
        access_token_type: int = 0,
        state: str = "ACTIVE",
        given_name: str = "",
        family_name: str = "",
        email: str = "",
    ) -> User:
        if type not in ("machine", "human"):
            raise ValueError("type must be 'machine' or 'human'")
        if self.get_org(org_id) is None:
            raise EmuError("not_found", f"org {org_id} does not exist")
        now = self.now()
        with self._tx() as db:
            user_id = self._new_id()
            seq = self._next_sequence()
            try:
                db.execute(
                    _INSERT_USER,
                    (user_id, org_id, username, type, state, name or username, description,
                     access_token_type, given_name, family_name, email, str(now), str(now), seq),
                )
            except sqlite3.IntegrityError as exc:
                raise EmuError("already_exists", f"user {username!r} exists in org") from exc
        self.grant_roles(user_id, org_id, [r for r in roles if r not in INSTANCE_ROLES])
        self.grant_roles(user_id, None, [r for r in roles if r in INSTANCE_ROLES])
        user = self.get_user(user_id)
        assert user is not None
        return user

    def grant_roles(self, user_id: str, org_id: str | None, roles: Sequence[str]) -> None:
        """Membership of ``user_id`` in ``org_id`` (None = the instance)."""
        for role in roles:
            if role not in ROLE_PERMISSIONS:
                raise ValueError(f"unknown role {role!r}")
            if (org_id is None) != (role in INSTANCE_ROLES):
                scope = "instance" if org_id is None else "org"
                raise ValueError(f"role {role} cannot be granted on the {scope}")
        with self._tx() as db:
            for role in roles:
                db.execute("INSERT OR IGNORE INTO memberships VALUES (?, ?, ?)",
                           (user_id, org_id or "", role))

    def set_user_state(self, user_id: str, state: str) -> None:
        if state not in USER_STATES_V1:
            raise ValueError(f"unknown state {state!r}")
        with self._tx() as db:
            seq = self._next_sequence()
            db.execute("UPDATE users SET state = ?, changed = ?, sequence = ? WHERE id = ?",
                       (state, str(self.now()), seq, user_id))

    def generate_machine_secret(self, user_id: str) -> str:
        """One secret per machine user; generating replaces it (§11).  Admin
        seeding: no authorization, and a human user is silently skipped."""
        user = self.get_user(user_id)
        if user is None or user.type != "machine":
            return _client_secret()
        return self._set_secret(user, _client_secret())[0]

    def _set_secret(self, user: User, secret: str | None) -> tuple[str, int, int]:
        """Store ``secret``'s digest (None: remove it) -> (secret, sequence, now).
        Records what the token endpoint's projection showed before, for the lag."""
        now = self.now()
        with self._tx() as db:
            current = db.execute("SELECT secret_hash FROM users WHERE id = ?",
                                 (user.id,)).fetchone()["secret_hash"]
            change = db.execute("SELECT * FROM secret_changes WHERE user_id = ?",
                                (user.id,)).fetchone()
            # a change still inside the lag: the projection has not caught up with
            # it either, so it still shows that change's predecessor
            prev = (change["prev_hash"] if change is not None and self._lagging(change, now)
                    else current)
            seq = self._next_sequence()
            db.execute("UPDATE users SET secret_hash = ?, changed = ?, sequence = ? WHERE id = ?",
                       (None if secret is None else _hash(secret), str(now), seq, user.id))
            db.execute("INSERT OR REPLACE INTO secret_changes VALUES (?, ?, ?, ?)",
                       (user.id, prev, str(now), str(now + self.lag_ns)))
        return secret or "", seq, now

    def _lagging(self, change: sqlite3.Row, now: int) -> bool:
        """Whether a secret change is not yet visible to the token endpoint (changes
        from before the server started are: projections catch up at start)."""
        return int(change["changed"]) >= self._caught_up and int(change["visible"]) > now

    def bulk_create(self, org_id: str, count: int, *, prefix: str = "bulk-",
                    keys_per_user: int = 0, pats_per_user: int = 0,
                    expiration: int | None = None,
                    roles: Sequence[str] = ()) -> dict[str, Any]:
        """``count`` machine users ``<prefix>00000``.. in ``org_id``, each with
        ``keys_per_user`` keys and ``pats_per_user`` PATs expiring at
        ``expiration`` (default 9999-12-31), in ONE transaction (10,000 users
        in about a second; a name taken rolls everything back).  The keys share
        one generated key pair (generating 10,000 would take minutes); its
        PKCS#1 PEM is in the answer's ``private_key``.  Answers
        ``{"org_id", "users": [{"id", "username", "login_name",
        "keys": [key id], "pats": [{"id", "token"}]}], ["private_key"]}``."""
        if count < 0 or keys_per_user < 0 or pats_per_user < 0:
            raise ValueError("users, keys_per_user and pats_per_user must be >= 0")
        org = self.get_org(org_id)
        if org is None:
            raise EmuError("not_found", f"org {org_id} does not exist")
        bad = [r for r in roles if r not in ROLE_PERMISSIONS or r in INSTANCE_ROLES]
        if bad:
            raise ValueError(f"not org roles: {bad}")
        exp = times.DEFAULT_EXPIRATION if expiration is None else expiration
        private = keymat.generate_rsa() if keys_per_user else None
        spki = keymat.public_spki_der(private) if private is not None else b""
        width = max(5, len(str(max(count - 1, 0))))
        now = self.now()
        users: list[dict[str, Any]] = []
        with self._tx() as db:
            seq = int(self._meta("sequence") or "0")
            user_rows, key_rows, pat_rows, grants = [], [], [], []
            for i in range(count):
                user_id = self._new_id()
                username = f"{prefix}{i:0{width}d}"
                seq += 1
                user_rows.append((user_id, org.id, username, "machine", "ACTIVE", username, "",
                                  0, "", "", "", str(now), str(now), seq))
                grants += [(user_id, org.id, r) for r in roles]
                entry: dict[str, Any] = {"id": user_id, "username": username,
                                         "login_name": f"{username}@{org.primary_domain}",
                                         "keys": [], "pats": []}
                for _ in range(keys_per_user):
                    seq += 1
                    key_id = self._new_id()
                    key_rows.append((key_id, user_id, org.id, str(now), str(now), str(exp),
                                     spki, seq, sort_key(now), sort_key(exp)))
                    entry["keys"].append(key_id)
                for _ in range(pats_per_user):
                    seq += 1
                    pat_id, token = self._new_id(), _opaque_token()
                    pat_rows.append((pat_id, user_id, org.id, str(now), str(now), str(exp),
                                     json.dumps(PAT_SCOPES), _hash(token), seq, sort_key(now),
                                     sort_key(exp)))
                    entry["pats"].append({"id": pat_id, "token": token})
                users.append(entry)
            try:
                db.executemany(_INSERT_USER, user_rows)
            except sqlite3.IntegrityError as exc:
                raise EmuError("already_exists",
                               f"a user named {prefix}... already exists in the org") from exc
            db.executemany(_INSERT_KEY, key_rows)
            db.executemany(_INSERT_PAT, pat_rows)
            db.executemany("INSERT OR IGNORE INTO memberships VALUES (?, ?, ?)", grants)
            self._set_meta("sequence", str(seq))
        out: dict[str, Any] = {"org_id": org.id, "users": users}
        if private is not None:
            out["private_key"] = keymat.private_pkcs1_pem(private).decode()
        return out

    def create_machine_key(self, user_id: str, expiration: int | None = None) -> AddedKey:
        """Server-generated key without authorization (seed, /_emulator/users)."""
        user = self._machine_user(user_id, None, "COMMAND-bnipwm1")
        exp = times.DEFAULT_EXPIRATION if expiration is None else expiration
        return self._insert_key(user, exp, None)

    def set_metadata_admin(self, user_id: str, key: str, value: bytes) -> None:
        user = self.get_user(user_id)
        if user is None:
            raise EmuError("not_found", f"user {user_id} does not exist")
        self._set_metadata(user, [(key, value)])

    def create_app(self, name: str) -> tuple[App, str]:
        """An API application (for introspection client auth): (app, client secret)."""
        secret = secrets.token_urlsafe(48)
        with self._tx() as db:
            project_id = self._new_id()
            client_id = f"{self._new_id()}@{name}"
            db.execute("INSERT INTO apps VALUES (?, ?, ?, ?)",
                       (client_id, project_id, name, _hash(secret)))
        return App(client_id, project_id, name), secret

    def verify_app(self, client_id: str, secret: str) -> App | None:
        rows = self._q("SELECT * FROM apps WHERE client_id = ?", client_id)
        if not rows or not secrets.compare_digest(rows[0]["secret_hash"], _hash(secret)):
            return None
        return App(rows[0]["client_id"], rows[0]["project_id"], rows[0]["name"])

    def app_exists(self, client_id: str) -> bool:
        return bool(self._q("SELECT 1 FROM apps WHERE client_id = ?", client_id))

    def verify_machine_secret(self, user: User, secret: str) -> bool:
        return self.check_client_secret(user, secret) == "ok"

    def check_client_secret(self, user: User, secret: str) -> str:
        """The client_credentials check as the lagging projection sees it (§7.3,
        §11): "ok", "missing" (no secret) or "invalid"."""
        rows = self._q("SELECT u.secret_hash, c.prev_hash, c.changed, c.visible FROM users u "
                       "LEFT JOIN secret_changes c ON c.user_id = u.id WHERE u.id = ?", user.id)
        if not rows:
            return "missing"
        row = rows[0]
        stored = row["secret_hash"]
        if row["changed"] is not None and self._lagging(row, self.now()):
            stored = row["prev_hash"]
        if stored is None:
            return "missing"
        return "ok" if secrets.compare_digest(stored, _hash(secret)) else "invalid"

    def dump_state(self, *, include_tokens: bool = False) -> dict[str, Any]:
        """Orgs, users, keys, PATs, metadata - never secret values.  Stable while
        nothing changes (no "now"), so tests can compare two dumps; issued access
        tokens only with ``include_tokens`` (authenticating mints them)."""
        state: dict[str, Any] = {
            "orgs": [{"id": o.id, "name": o.name, "primary_domain": o.primary_domain}
                     for o in self.list_orgs()],
            "users": [
                {"id": u.id, "org_id": u.org_id, "username": u.username, "type": u.type,
                 "state": u.state, "login_names": u.login_names, "has_secret": u.has_secret,
                 "roles": [{"org_id": o or None, "role": r} for o, r in self.roles_of(u.id)],
                 "metadata": {m.key: m.value.decode("utf-8", "replace")
                              for m in self._metadata_of(u.id)}}
                for u in self.all_users()
            ],
            "keys": [
                {"id": k.id, "user_id": k.user_id, "org_id": k.org_id,
                 "created": times.format_protojson(k.created),
                 "expiration": times.format_protojson(k.expiration),
                 "removed_at": _fmt_opt(k.removed_at)}
                for k in self._keys_where("1 = 1")
            ],
            "pats": [
                {"id": p.id, "user_id": p.user_id, "org_id": p.org_id,
                 "created": times.format_protojson(p.created),
                 "expiration": times.format_protojson(p.expiration),
                 "removed_at": _fmt_opt(p.removed_at)}
                for p in self._pats_where("1 = 1")
            ],
        }
        if include_tokens:
            state["access_tokens"] = [
                {"id": r["id"], "user_id": r["user_id"], "key_id": r["key_id"],
                 "created": times.format_protojson(int(r["created"])),
                 "expiration": times.format_protojson(int(r["expiration"])),
                 "scopes": json.loads(r["scopes"]), "audience": json.loads(r["audience"])}
                for r in self._q("SELECT * FROM access_tokens ORDER BY rowid")
            ]
        return state

    # --- authentication (§1, §7.7, §8) ------------------------------------------------

    def authenticate(self, bearer_header: str | None, org_header: str | None = None) -> Caller:
        """Resolve ``Authorization`` (+ ``x-zitadel-orgid``) to a Caller, or raise."""
        if not bearer_header:
            raise EmuError("unauthenticated", "auth header missing")
        parts = bearer_header.split("Bearer ")
        if len(parts) != 2 or parts[0] != "" or not parts[1]:
            raise zerr("unauthenticated", "invalid auth header", "AUTH-toLo1")
        token = parts[1]
        user, kind, token_id = self._resolve_token(token, require_zitadel_aud=True)
        ctx_org = user.org_id
        if org_header:
            if self.get_org(org_header) is None:
                raise zerr("permission_denied", "Organisation doesn't exist", "AUTH-Bs7Ds")
            ctx_org = org_header
        return Caller(user.id, user.org_id, ctx_org, kind, token_id)

    def _resolve_token(self, token: str, *, require_zitadel_aud: bool) -> tuple[User, str, str]:
        """(user, "access_token" | "pat", token id) for a valid token, else
        Errors.Token.Invalid."""
        digest = _hash(token)
        now = self.now()
        rows = self._q("SELECT * FROM access_tokens WHERE token_hash = ?", digest)
        if rows:
            row = rows[0]
            audience = json.loads(row["audience"])
            if row["revoked"] or int(row["expiration"]) <= now:
                raise _token_invalid()
            if require_zitadel_aud and self.zitadel_project_id not in audience:
                raise _token_invalid()  # inner "invalid audience (APP-Zxfako)" is only logged
            user = self.get_user(row["user_id"])
            if user is None or user.state != "ACTIVE":
                raise _token_invalid()
            return user, "access_token", row["id"]
        pats = self._pats_where("token_hash = ?", digest)
        if pats:
            pat = pats[0]
            user = self.get_user(pat.user_id)
            if pat.removed_at is not None or pat.expiration <= now or user is None \
                    or user.state != "ACTIVE":
                raise _token_invalid()
            return user, "pat", pat.id
        raise _token_invalid()

    def token_info(self, token: str) -> tuple[User, str, AccessToken | Pat] | None:
        """For userinfo/introspection: the token's user, kind and record, or None
        when the token is not (or no longer) valid.  No audience rule here."""
        try:
            user, kind, token_id = self._resolve_token(token, require_zitadel_aud=False)
        except EmuError:
            return None
        if kind == "pat":
            return user, kind, self._pats_where("id = ?", token_id)[0]
        row = self._q("SELECT * FROM access_tokens WHERE id = ?", token_id)[0]
        return user, kind, AccessToken(row["id"], row["user_id"], row["key_id"],
                                       int(row["created"]), int(row["expiration"]),
                                       tuple(json.loads(row["scopes"])),
                                       tuple(json.loads(row["audience"])), bool(row["revoked"]))

    # --- authorization (§3, §6.4) ----------------------------------------------------

    def _relevant_roles(self, user_id: str, org_id: str) -> list[str]:
        """Memberships SearchMyMemberships(org) returns: instance + that org."""
        return [r for o, r in self.roles_of(user_id) if o in ("", org_id)]

    def _check(self, caller: Caller, permission: str, org_id: str, detail_id: str) -> None:
        roles = self._relevant_roles(caller.user_id, org_id)
        if not roles:
            raise _membership_not_found()
        if not any(permission in ROLE_PERMISSIONS.get(r, frozenset()) for r in roles):
            raise zerr("permission_denied", "No matching permissions found", detail_id)

    def _allowed(self, caller: Caller, permission: str, org_id: str) -> bool:
        return any(permission in ROLE_PERMISSIONS.get(r, frozenset())
                   for r in self._relevant_roles(caller.user_id, org_id))

    def authorize_v1(self, caller: Caller, permission: str) -> None:
        """v1 auth interceptor: ``permission`` in the ctx org (before PGV)."""
        self._check(caller, permission, caller.ctx_org_id, "AUTH-5mWD2")

    def _check_user_v2(self, caller: Caller, user: User, permission: str) -> None:
        """NewPermissionCheckUserWrite / userCheckPermission: self is always allowed."""
        if user.id == caller.user_id:
            return
        self._check(caller, permission, user.org_id, "AUTH-AWfge")

    def _readable_v2(self, caller: Caller, user_id: str, org_id: str) -> bool:
        return user_id == caller.user_id or self._allowed(caller, _R, org_id)

    def _readable_orgs(self, caller: Caller) -> set[str] | None:
        """The orgs whose users ``caller`` may read (user.read), None for all of
        them (an instance role); the caller itself is always readable.  What
        ``_readable_v2`` answers per item, computed once per list request."""
        orgs: set[str] = set()
        for org_id, role in self.roles_of(caller.user_id):
            if _R in ROLE_PERMISSIONS.get(role, frozenset()):
                if org_id == "":
                    return None
                orgs.add(org_id)
        return orgs

    # --- shared command rules -----------------------------------------------------------

    def _validate_new_credential(self, expiration: int, public_key: bytes | None) -> bytes | None:
        """§6.4 order: public-key parse, then expiration."""
        spki = None
        if public_key:
            try:
                spki = keymat.parse_public_key(public_key)
            except keymat.PublicKeyError as exc:
                raise zerr(*ERR_BAD_PUBLIC_KEY) from exc
        if expiration < self.now():
            raise zerr(*ERR_EXPIRE_BEFORE_NOW)
        return spki

    def _machine_user(self, user_id: str, org_id: str | None, detail_id: str) -> User:
        user = self.get_user(user_id)
        if user is None or user.type != "machine" or (org_id is not None and user.org_id != org_id):
            raise zerr("failed_precondition", "User could not be found", detail_id)
        return user

    def _pat_user(self, user_id: str, org_id: str | None) -> User:
        user = self.get_user(user_id)
        if user is None or (org_id is not None and user.org_id != org_id):
            raise zerr("failed_precondition", "User could not be found", "COMMAND-Dggw2")
        if user.type != "machine":
            raise zerr("failed_precondition", "Not allowed for this user type", "COMMAND-Df2f1")
        return user

    def _insert_key(self, user: User, expiration: int, spki: bytes | None) -> AddedKey:
        key_file = None
        private = None
        if spki is None:
            private = keymat.generate_rsa()
            spki = keymat.public_spki_der(private)
        now = self.now()
        with self._tx() as db:
            key_id = self._new_id()
            seq = self._next_sequence()
            db.execute(_INSERT_KEY, (key_id, user.id, user.org_id, str(now), str(now),
                                     str(expiration), spki, seq, sort_key(now),
                                     sort_key(expiration)))
        if private is not None:
            key_file = key_file_json(key_id, user.id, private, expiration)
        key = self._keys_where("id = ?", key_id)[0]
        return AddedKey(key, key_file, Details(seq, now, now, user.org_id))

    def _insert_pat(self, user: User, expiration: int) -> AddedPat:
        token = _opaque_token()
        now = self.now()
        with self._tx() as db:
            pat_id = self._new_id()
            seq = self._next_sequence()
            db.execute(_INSERT_PAT, (pat_id, user.id, user.org_id, str(now), str(now),
                                     str(expiration), json.dumps(PAT_SCOPES), _hash(token), seq,
                                     sort_key(now), sort_key(expiration)))
        pat = self._pats_where("id = ?", pat_id)[0]
        return AddedPat(pat, token, Details(seq, now, now, user.org_id))

    def _remove(self, table: str, item_id: str) -> Details:
        now = self.now()
        with self._tx() as db:
            seq = self._next_sequence()
            db.execute(f"UPDATE {table} SET removed_at = ?, changed = ?, sequence = ? WHERE id = ?",
                       (str(now), str(now), seq, item_id))
            org_id = db.execute(f"SELECT org_id FROM {table} WHERE id = ?",
                                (item_id,)).fetchone()["org_id"]
        return Details(seq, now, now, org_id)

    def _active_key(self, user_id: str, key_id: str, org_id: str | None) -> MachineKey | None:
        found = self._keys_where("id = ? AND user_id = ? AND removed_at IS NULL", key_id, user_id)
        if not found or (org_id is not None and found[0].org_id != org_id):
            return None
        return found[0]

    def _active_pat(self, user_id: str, pat_id: str, org_id: str | None) -> Pat | None:
        found = self._pats_where("id = ? AND user_id = ? AND removed_at IS NULL", pat_id, user_id)
        if not found or (org_id is not None and found[0].org_id != org_id):
            return None
        return found[0]

    def _set_metadata(self, user: User, entries: Sequence[tuple[str, bytes]]) -> tuple[int, int]:
        now = self.now()
        with self._tx() as db:
            seq = self._next_sequence()
            for key, value in entries:
                db.execute(
                    "INSERT INTO metadata VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value, "
                    "changed = excluded.changed, sequence = excluded.sequence",
                    (user.id, user.org_id, key, value, str(now), str(now), seq),
                )
        return seq, now

    # --- v1 ManagementService handlers (ctx-org scoped) -----------------------------------

    def get_my_org(self, caller: Caller) -> Org:
        org = self.get_org(caller.ctx_org_id)
        if org is None:
            raise zerr("not_found", "Organisation not found", "QUERY-iTTGJ")
        return org

    def _user_in_ctx(self, caller: Caller, user_id: str) -> User:
        user = self.get_user(user_id)
        if user is None:
            raise zerr("not_found", "User could not be found", "QUERY-Dfbg2")
        if user.org_id != caller.ctx_org_id:
            raise zerr("not_found", "User could not be found", "MANAG-fpo4B")
        return user

    def get_user_by_id_v1(self, caller: Caller, user_id: str) -> User:
        return self._user_in_ctx(caller, user_id)

    def get_user_by_login_name_global(self, caller: Caller, login_name: str) -> User:
        user = self.user_by_login_name(login_name)
        if user is None:
            raise zerr("not_found", "User could not be found", "QUERY-Dfbg2")
        return user

    def list_users_v1(self, caller: Caller, queries: Sequence[Any], offset: int, limit: int,
                      asc: bool, sorting_column: int = 0) -> tuple[int, list[User]]:
        """v1: the ctx org's users; ``limit`` 0 = no limit."""
        users = [u for u in self._users_narrowed([OrgIdQ(caller.ctx_org_id), *queries], None)
                 if u.org_id == caller.ctx_org_id and all(user_matches(u, q) for q in queries)]
        users = _sort_users(users, sorting_column, asc, default_unsorted=True)
        return len(users), _page(users, offset, limit)

    def add_machine_key_v1(self, caller: Caller, user_id: str, expiration: int | None,
                           public_key: bytes | None) -> AddedKey:
        exp = times.DEFAULT_EXPIRATION if expiration is None else expiration
        spki = self._validate_new_credential(exp, public_key)
        user = self._machine_user(user_id, caller.ctx_org_id, "COMMAND-bnipwm1")
        return self._insert_key(user, exp, spki)

    def list_machine_keys_v1(self, caller: Caller, user_id: str, offset: int,
                             limit: int) -> tuple[int, list[MachineKey]]:
        """Enabled keys of the user in the ctx org, expired included, insertion order."""
        found = self._listed(self._keys_where(
            "user_id = ? AND org_id = ? AND removed_at IS NULL", user_id, caller.ctx_org_id))
        return len(found), _page(found, offset, limit)

    def get_machine_key_v1(self, caller: Caller, user_id: str, key_id: str) -> MachineKey:
        key = self._active_key(user_id, key_id, caller.ctx_org_id)
        if key is None:
            raise zerr("not_found", "Errors.AuthNKey.NotFound", "QUERY-Dgr3g")
        return key

    def remove_machine_key_v1(self, caller: Caller, user_id: str, key_id: str) -> Details:
        if self._active_key(user_id, key_id, caller.ctx_org_id) is None:
            raise zerr("not_found", "Machine key not found", "COMMAND-4m77G")
        return self._remove("machine_keys", key_id)

    def add_pat_v1(self, caller: Caller, user_id: str, expiration: int | None) -> AddedPat:
        exp = times.DEFAULT_EXPIRATION if expiration is None else expiration
        self._validate_new_credential(exp, None)
        user = self._pat_user(user_id, caller.ctx_org_id)
        return self._insert_pat(user, exp)

    def list_pats_v1(self, caller: Caller, user_id: str, offset: int,
                     limit: int) -> tuple[int, list[Pat]]:
        found = self._listed(self._pats_where(
            "user_id = ? AND org_id = ? AND removed_at IS NULL", user_id, caller.ctx_org_id))
        return len(found), _page(found, offset, limit)

    def get_pat_v1(self, caller: Caller, user_id: str, token_id: str) -> Pat:
        pat = self._active_pat(user_id, token_id, caller.ctx_org_id)
        if pat is None:
            raise zerr("not_found", "Errors.PersonalAccessToken.NotFound", "QUERY-fRunu")
        return pat

    def remove_pat_v1(self, caller: Caller, user_id: str, token_id: str) -> Details:
        if self._active_pat(user_id, token_id, caller.ctx_org_id) is None:
            raise zerr("not_found", "Personal Access Token not found", "COMMAND-4m77G")
        return self._remove("pats", token_id)

    def set_user_metadata_v1(self, caller: Caller, user_id: str, key: str,
                             value: bytes) -> Metadata:
        user = self._user_in_ctx(caller, user_id)
        self._set_metadata(user, [(key, value)])
        return next(m for m in self._metadata_of(user.id) if m.key == key)

    def get_user_metadata_v1(self, caller: Caller, user_id: str, key: str) -> Metadata:
        user = self._user_in_ctx(caller, user_id)
        for m in self._metadata_of(user.id):
            if m.key == key:
                return m
        raise zerr("not_found", "Metadata not found", "QUERY-Rgh32")

    def list_user_metadata_v1(self, caller: Caller, user_id: str, offset: int, limit: int,
                              key_queries: Sequence[tuple[str, int]] = ()
                              ) -> tuple[int, list[Metadata]]:
        """``key_queries``: [(key, TextQueryMethod)] ANDed."""
        found = [m for m in self._metadata_of(user_id) if m.org_id == caller.ctx_org_id
                 and all(text_matches(m.key, k, meth) for k, meth in key_queries)]
        return len(found), _page(found, offset, limit)

    def remove_user_metadata_v1(self, caller: Caller, user_id: str, key: str) -> Details:
        user = self._user_in_ctx(caller, user_id)
        if not any(m.key == key for m in self._metadata_of(user.id)):
            raise zerr("not_found", "Metadata not found", "META-ub6hA")
        return self._delete_metadata(user, [key])

    def _delete_metadata(self, user: User, keys: Sequence[str]) -> Details:
        now = self.now()
        with self._tx() as db:
            seq = self._next_sequence()
            db.executemany("DELETE FROM metadata WHERE user_id = ? AND key = ?",
                           [(user.id, k) for k in keys])
        return Details(seq, now, now, user.org_id)

    def _listed(self, items: list[_Listed]) -> list[_Listed]:
        """What a list query sees: with ``list_lag_ms`` (admin fault config) a
        credential created less than that long ago (emulator time) is not in the
        list projection yet - ZITADEL's lists are eventually consistent."""
        lag_ns = self.faults.list_lag_ms * 1_000_000
        if lag_ns <= 0:
            return items
        now = self.now()
        return [i for i in items if i.created + lag_ns <= now]

    def _secret_user(self, user_id: str, org_id: str | None, err: tuple[str, str, str]) -> User:
        user = self.get_user(user_id)
        if user is None or user.type != "machine" or (org_id is not None and user.org_id != org_id):
            raise zerr(*err)
        return user

    def generate_machine_secret_v1(self, caller: Caller, user_id: str) -> AddedSecret:
        user = self._secret_user(user_id, caller.ctx_org_id, ERR_SECRET_USER_ADD)
        secret, seq, now = self._set_secret(user, _client_secret())
        return AddedSecret(user.id, user.username, secret, Details(seq, now, now, user.org_id))

    def remove_machine_secret_v1(self, caller: Caller, user_id: str) -> Details:
        user = self._secret_user(user_id, caller.ctx_org_id, ERR_SECRET_USER_REMOVE)
        if not user.has_secret:
            raise zerr(*ERR_SECRET_NOT_EXISTING)
        _, seq, now = self._set_secret(user, None)
        return Details(seq, now, now, user.org_id)

    # --- v2 UserService handlers -------------------------------------------------------

    def add_secret_v2(self, caller: Caller, user_id: str) -> AddedSecret:
        user = self._secret_user(user_id, None, ERR_SECRET_USER_ADD)
        self._check_user_v2(caller, user, _W)
        secret, seq, now = self._set_secret(user, _client_secret())
        return AddedSecret(user.id, user.username, secret, Details(seq, now, now, user.org_id))

    def remove_secret_v2(self, caller: Caller, user_id: str) -> int:
        user = self._secret_user(user_id, None, ERR_SECRET_USER_REMOVE)
        self._check_user_v2(caller, user, _W)
        if not user.has_secret:
            raise zerr(*ERR_SECRET_NOT_EXISTING)
        return self._set_secret(user, None)[2]

    def add_key_v2(self, caller: Caller, user_id: str, expiration: int,
                   public_key: bytes | None) -> AddedKey:
        spki = self._validate_new_credential(expiration, public_key)
        user = self._machine_user(user_id, None, "COMMAND-bnipwm1")
        self._check_user_v2(caller, user, _W)
        return self._insert_key(user, expiration, spki)

    def remove_key_v2(self, caller: Caller, user_id: str, key_id: str) -> int:
        key = self._active_key(user_id, key_id, None)
        if key is None:
            raise zerr("not_found", "Machine key not found", "COMMAND-4m77G")
        user = self.get_user(user_id)
        assert user is not None
        self._check_user_v2(caller, user, _W)
        return self._remove("machine_keys", key_id).change_date

    def list_keys_v2(self, caller: Caller, filters: Sequence[ResourceFilter], sorting: int,
                     offset: int, limit: int, asc: bool) -> tuple[int, int, list[MachineKey]]:
        return self._list_resources_v2("machine_keys", self._key, caller, filters, sorting,
                                       offset, limit, asc)

    def add_pat_v2(self, caller: Caller, user_id: str, expiration: int) -> AddedPat:
        self._validate_new_credential(expiration, None)
        user = self._pat_user(user_id, None)
        self._check_user_v2(caller, user, _W)
        return self._insert_pat(user, expiration)

    def remove_pat_v2(self, caller: Caller, user_id: str, token_id: str) -> int:
        pat = self._active_pat(user_id, token_id, None)
        if pat is None:
            raise zerr("not_found", "Personal Access Token not found", "COMMAND-4m77G")
        user = self.get_user(user_id)
        assert user is not None
        self._check_user_v2(caller, user, _W)
        return self._remove("pats", token_id).change_date

    def list_pats_v2(self, caller: Caller, filters: Sequence[ResourceFilter], sorting: int,
                     offset: int, limit: int, asc: bool) -> tuple[int, int, list[Pat]]:
        return self._list_resources_v2("pats", self._pat, caller, filters, sorting,
                                       offset, limit, asc)

    def _list_resources_v2(self, table: str, mapper: Any, caller: Caller,
                           filters: Sequence[ResourceFilter], sorting: int, offset: int,
                           limit: int, asc: bool) -> tuple[int, int, list[Any]]:
        """§4.2: readable (user.read or self) enabled items, expired included,
        filters ANDed, sorted (default creation date DESC; ties by id),
        paginated.  One SQL query on the indexes: a list by user or by
        organization costs what it returns, not the instance's size."""
        offset, limit = v2_pagination(offset, limit)
        where = ["removed_at IS NULL"]
        args: list[Any] = []
        for f in filters:
            column = _FILTER_COLUMNS[f.field]
            if f.field in ("created", "expiration"):
                if f.method not in _TIMESTAMP_OPS:
                    raise EmuError("invalid_argument",
                                   f"unknown timestamp filter method {f.method}")
                where.append(f"{column} {_TIMESTAMP_OPS[f.method]} ?")
                args.append(sort_key(f.timestamp))
            else:
                where.append(f"{column} = ?")
                args.append(f.id)
        lag_ns = self.faults.list_lag_ms * 1_000_000
        if lag_ns > 0:  # see _listed()
            where.append("created_k <= ?")
            args.append(sort_key(self.now() - lag_ns))
        readable = self._readable_orgs(caller)
        org_filters = {f.id for f in filters if f.field == "organization_id"}
        if readable is not None and not (org_filters and org_filters <= readable):
            # (a filter on a readable org makes this condition always true:
            # dropped, so the org index alone answers the count)
            marks = ", ".join("?" * len(readable))
            where.append(f"(user_id = ? OR org_id IN ({marks}))")
            args += [caller.user_id, *sorted(readable)]
        direction = "ASC" if asc else "DESC"
        attr = SORT_FIELDS.get(sorting, "created")
        first = {"created": "created_k", "expiration": "expiration_k"}.get(attr, attr)
        order = [f"length(id) {direction}", f"id {direction}"]
        if attr != "id":
            order.insert(0, f"{first} {direction}")
        cond = " AND ".join(where)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM {table} WHERE {cond}",
                                     args).fetchone()[0]
            # the page's rowids first (from the covering indexes; a sort, if
            # any, carries no key material), then those rows
            page = [r[0] for r in self._db.execute(
                f"SELECT rowid FROM {table} WHERE {cond} ORDER BY {', '.join(order)} "
                "LIMIT ? OFFSET ?", [*args, limit, offset])]
            rows = self._db.execute(
                f"SELECT rowid AS rid, * FROM {table} WHERE rowid IN "
                "(SELECT value FROM json_each(?))", (json.dumps(page),)).fetchall()
        by_rowid = {r["rid"]: r for r in rows}
        return int(total), limit, [mapper(by_rowid[rid]) for rid in page]

    def get_user_by_id_v2(self, caller: Caller, user_id: str) -> User:
        user = self.get_user(user_id)
        if user is None:
            raise zerr("not_found", "User could not be found", "QUERY-Dfbg2")
        self._check_user_v2(caller, user, _R)
        return user

    def list_orgs_v2(self, caller: Caller, queries: Sequence[OrgQ], offset: int, limit: int,
                     asc: bool, sorting_column: int = 0) -> tuple[int, list[Org]]:
        """v2 OrganizationService.ListOrganizations: the orgs the caller may read
        (``org.read`` there, or an instance role), matching every query (ANDed).
        A domain query matches the primary domain: the emulator keeps no other."""
        offset, limit = v2_pagination(offset, limit)
        instance = any(_O in ROLE_PERMISSIONS.get(r, frozenset())
                       for o, r in self.roles_of(caller.user_id) if o == "")
        orgs = [o for o in self.list_orgs()
                if (instance or self._allowed(caller, _O, o.id))
                and all(org_matches(o, q) for q in queries)]
        if sorting_column == 1:
            orgs.sort(key=lambda o: o.name, reverse=not asc)
        elif sorting_column == 2 or not asc:
            orgs.sort(key=lambda o: o.created, reverse=not asc)
        return len(orgs), _page(orgs, offset, limit)

    def list_users_v2(self, caller: Caller, queries: Sequence[Any], offset: int, limit: int,
                      asc: bool, sorting_column: int = 0) -> tuple[int, list[User]]:
        """Users the caller may read (or itself); ``limit`` 0 = no limit."""
        readable = self._readable_orgs(caller)
        users = [u for u in self._users_narrowed(queries, caller.user_id, readable)
                 if all(user_matches(u, q) for q in queries)]
        users = _sort_users(users, sorting_column, asc, default_unsorted=False)
        return len(users), _page(users, offset, limit)

    def _users_narrowed(self, queries: Sequence[Any], caller_id: str | None,
                        readable: set[str] | None = None) -> list[User]:
        """A superset of the users matching ``queries`` (ANDed), in insertion
        order, found through the indexes: the query's exact user ids, org,
        user name, type and state become SQL conditions; callers still apply
        ``user_matches`` (text methods other than EQUALS, OR, NOT).  With
        ``caller_id``, only users the caller may read (``readable`` orgs, or
        all when None, plus itself)."""
        where: list[str] = []
        args: list[Any] = []
        pending = list(queries)
        while pending:
            q = pending.pop()
            if isinstance(q, AndQ):
                pending.extend(q.queries)
            elif isinstance(q, InIdsQ):
                where.append("u.id IN (SELECT value FROM json_each(?))")
                args.append(json.dumps(list(q.ids)))
            elif isinstance(q, OrgIdQ):
                where.append("u.org_id = ?")
                args.append(q.org_id)
            elif isinstance(q, UserNameQ) and q.method == 0:
                where.append("u.username = ?")
                args.append(q.value)
            elif isinstance(q, LoginNameQ) and q.method == 0 and "@" in q.value:
                # a login name is ``username@org domain``: its user name is indexed
                where.append("u.username = ?")
                args.append(q.value.rsplit("@", 1)[0])
            elif isinstance(q, TypeQ):
                where.append("u.type = ?")
                args.append(q.type)
            elif isinstance(q, StateQ):
                where.append("u.state = ?")
                args.append(q.state)
        if caller_id is not None and readable is not None:
            where.append("(u.id = ? OR u.org_id IN (SELECT value FROM json_each(?)))")
            args += [caller_id, json.dumps(sorted(readable))]
        cond = " WHERE " + " AND ".join(where) if where else ""
        return [self._user(r) for r in self._q(self._USER_SELECT + cond + " ORDER BY u.rowid",
                                                *args)]

    def _existing_user_v2(self, caller: Caller, user_id: str, permission: str) -> User:
        user = self.get_user(user_id)
        if user is None:
            raise zerr("not_found", "User could not be found", "COMMAND-vgDIu")
        self._check_user_v2(caller, user, permission)
        return user

    def set_user_metadata_v2(self, caller: Caller, user_id: str,
                             entries: Sequence[tuple[str, bytes]]) -> int:
        user = self._existing_user_v2(caller, user_id, _W)
        return self._set_metadata(user, entries)[1]

    def list_user_metadata_v2(self, caller: Caller, user_id: str,
                              key_filters: Sequence[tuple[str, int]], offset: int, limit: int,
                              asc: bool) -> tuple[int, int, list[Metadata]]:
        offset, limit = v2_pagination(offset, limit)
        user = self.get_user(user_id)
        if user is None or not self._readable_v2(caller, user.id, user.org_id):
            return 0, limit, []
        found = [m for m in self._metadata_of(user.id)
                 if all(text_matches(m.key, k, meth) for k, meth in key_filters)]
        found.sort(key=lambda m: (m.created, m.key), reverse=not asc)
        return len(found), limit, _page(found, offset, limit)

    def delete_user_metadata_v2(self, caller: Caller, user_id: str, keys: Sequence[str]) -> int:
        user = self._existing_user_v2(caller, user_id, _W)
        existing = {m.key for m in self._metadata_of(user.id)}
        missing = [k for k in keys if k not in existing]
        if missing:
            raise zerr("not_found", "Metadata list is empty", "META-2n0fs")
        return self._delete_metadata(user, keys).change_date

    # --- OAuth support (§6.3, §7) --------------------------------------------------------

    def jwt_profile_key(self, key_id: str, user_id: str) -> tuple[User, bytes] | None:
        """The projection lookup of §7.2 step 6 with the propagation lag of §6.3:
        a key is visible ``lag`` after creation and stays visible ``lag`` after
        removal; it must not be expired (``expiration > now``); machine users only."""
        rows = self._q("SELECT * FROM machine_keys WHERE id = ? AND user_id = ?", key_id, user_id)
        if not rows:
            return None
        key = self._key(rows[0])
        now = self.now()
        if key.created >= self._caught_up and key.created + self.lag_ns > now:
            return None
        if key.removed_at is not None and (
            key.removed_at < self._caught_up or key.removed_at + self.lag_ns <= now
        ):
            return None
        if key.expiration <= now:
            return None
        user = self.get_user(user_id)
        if user is None or user.type != "machine":
            return None
        return user, key.public_key

    def issue_access_token(self, user: User, scopes: Sequence[str], audience: Sequence[str],
                           key_id: str | None) -> tuple[str, int]:
        """(token, expiration): opaque for ACCESS_TOKEN_TYPE_BEARER users, a JWT
        signed by the instance key for ACCESS_TOKEN_TYPE_JWT (§7.2).  Either way
        only the token's digest is stored and validation is a lookup."""
        now = self.now()
        expiration = now + ACCESS_TOKEN_LIFETIME_NS
        token_id = f"V2_{self._new_id()}-at_{self._new_id()}"
        if user.access_token_type == 1:
            token = self.web_keys.sign({
                "iss": self.issuer, "sub": user.id, "aud": list(audience),
                "exp": expiration // times.NS, "iat": now // times.NS,
                "nbf": now // times.NS, "client_id": user.id, "jti": token_id,
            })
        else:
            token = _opaque_token()
        with self._tx() as db:
            db.execute(
                "INSERT INTO access_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (token_id, _hash(token), user.id, key_id, str(now), str(expiration),
                 json.dumps(list(scopes)), json.dumps(list(audience))),
            )
        return token, expiration


def _sort_users(users: list[User], column: int, asc: bool, *,
                default_unsorted: bool) -> list[User]:
    """UserFieldName: 1 USER_NAME, 7 STATE, 8 TYPE, 9 CREATION_DATE; 0 -> v1 no
    ORDER BY (insertion order), v2 user id (DESC unless asc)."""
    attr = {1: "username", 2: "given_name", 3: "family_name", 4: "username",
            5: "name", 6: "email", 7: "state", 8: "type", 9: "created"}.get(column)
    if attr is None:
        if default_unsorted:
            return users
        return sorted(users, key=lambda u: (len(u.id), u.id), reverse=not asc)
    return sorted(users, key=lambda u: (getattr(u, attr), len(u.id), u.id), reverse=not asc)


def key_file_json(key_id: str, user_id: str, private: Any, expiration: int) -> bytes:
    """§6.2 key JSON, members in ZITADEL's order, compact like Go's encoder."""
    return json.dumps(
        {
            "type": "serviceaccount",
            "keyId": key_id,
            "key": keymat.private_pkcs1_pem(private).decode(),
            "expirationDate": times.format_go_rfc3339nano(expiration),
            "userId": user_id,
        },
        separators=(",", ":"),
    ).encode()


__all__ += [
    "V1_PERMISSIONS",
    "AddedKey",
    "AddedPat",
    "AndQ",
    "Caller",
    "Details",
    "Domain",
    "FieldTextQ",
    "InIdsQ",
    "LoginNameQ",
    "MachineKey",
    "Metadata",
    "NotQ",
    "OrQ",
    "Org",
    "OrgIdQ",
    "Pat",
    "ResourceFilter",
    "StateQ",
    "TypeQ",
    "User",
    "UserNameQ",
]
