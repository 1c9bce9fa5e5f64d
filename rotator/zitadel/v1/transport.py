"""ZITADEL's Management API v1 (``zitadel.management.v1.ManagementService``) over gRPC.

The only API that can create and remove machine keys and PATs on ZITADEL
before v4.0.  Every call carries

* ``authorization: Bearer <token>`` from a token source (the rotator's own
  jwt-bearer token with the ``...:zitadel:aud`` scope, refreshed by the source),
* ``x-zitadel-orgid``: v1 scopes everything to that org, so a user is always
  addressed in its own org (zitadel-api.md §1, §3),
* a deadline.

Failures leave this module only as :mod:`rotator.errors` types, mapped by
:mod:`rotator.zitadel.codes`; connection failures and deadlines become
``ZitadelUnavailable``.  Error messages hold the method name, the gRPC status
and ZITADEL's own message, never request content or the token.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf import timestamp_pb2

from rotator import ratelimit
from rotator.errors import (
    ConfigError,
    RotatorError,
    ZitadelError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
)
from rotator.model import (
    Credential,
    CredentialKind,
    IssuedPat,
    IssuedSecret,
    User,
    secret_credential,
)
from rotator.ports import ZitadelTransport
from rotator.redact import server_text
from rotator.zitadel import visibility
from rotator.zitadel.codes import error_for, is_secret_not_existing
from rotator.zitadel.v1.gen import (
    zitadel_authn_v1_pb2 as authn_pb,
)
from rotator.zitadel.v1.gen import (
    zitadel_management_v1_pb2 as mgmt_pb,
)
from rotator.zitadel.v1.gen import (
    zitadel_management_v1_pb2_grpc as mgmt_grpc,
)
from rotator.zitadel.v1.gen import (
    zitadel_user_v1_pb2 as user_pb,
)
from rotator.zitadel.v1.gen import (
    zitadel_v1_pb2 as object_pb,
)

ORG_HEADER = "x-zitadel-orgid"
DEFAULT_TIMEOUT = 10.0
DEFAULT_PAGE_SIZE = 100
#: How much of a server message goes into an error (after redaction).
_MAX_SERVER_TEXT = 300
#: Go gRPC servers (ZITADEL) answer pings more often than every 5 minutes
#: with GOAWAY "too_many_pings"; pinging at exactly that rate is the most
#: we may do to notice a dead connection.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Calls fail fast while the channel is down (a retryable ZitadelUnavailable
    # naming the connection error); capping the reconnect backoff (default
    # 120 s) lets a restarted ZITADEL be reached again within seconds.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)
#: A page loop that never ends means the server lies about totals; stop.
_MAX_PAGES = 10_000

TokenSource = Callable[[], str]
_Resp = TypeVar("_Resp")


@dataclass(frozen=True)
class Endpoint:
    """Where the gRPC API lives: ``host:port`` and whether to speak TLS."""

    address: str
    tls: bool


def parse_endpoint(url: str) -> Endpoint:
    """Accept ``https://host[:port]``, ``grpcs://host[:port]`` (TLS, default port 443),
    ``http://host:port``, ``grpc://host:port`` (plaintext) or a bare ``host:port``
    (TLS unless the caller asks for plaintext)."""
    text = url.strip()
    if "://" not in text:
        parts = urlsplit("//" + text)
        scheme = ""
    else:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
    if scheme not in ("", "https", "grpcs", "http", "grpc"):
        raise ConfigError(
            f"unsupported scheme {scheme!r} in gRPC endpoint", field="zitadel.grpc_target"
        )
    if not parts.hostname:
        raise ConfigError("gRPC endpoint has no host", field="zitadel.grpc_target")
    if parts.path not in ("", "/"):
        raise ConfigError("gRPC endpoint must not have a path", field="zitadel.grpc_target")
    tls = scheme in ("", "https", "grpcs")
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise ConfigError("gRPC endpoint has an invalid port", field="zitadel.grpc_target") from exc
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return Endpoint(address=f"{host}:{port}", tls=tls)


def _system_roots() -> bytes | None:
    """The operating system's CA bundle.  grpcio otherwise trusts only its own
    bundled roots; ``None`` falls back to those when no system bundle is found."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return None


def channel_credentials(ca_file: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS credentials trusting ``ca_file`` if given, else the system CAs."""
    if ca_file is not None:
        try:
            roots: bytes | None = Path(ca_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read CA file {ca_file}: {exc.strerror}", field="zitadel.tls.ca_file"
            ) from exc
    else:
        roots = _system_roots()
    return grpc.ssl_channel_credentials(root_certificates=roots)


def _timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    if instant.tzinfo is None:
        raise ValueError("expiration must be a timezone-aware datetime")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(instant.astimezone(UTC))
    return ts


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _user(message: Any) -> User:
    machine = message.WhichOneof("type") == "machine"
    return User(
        id=message.id,
        org_id=message.details.resource_owner,
        username=message.user_name,
        active=message.state == user_pb.USER_STATE_ACTIVE,
        machine=machine,
        has_secret=bool(message.machine.has_secret) if machine else False,
    )


def _created(details: Any) -> datetime | None:
    return _datetime(details.creation_date) if details.HasField("creation_date") else None


def _credential(message: Any, kind: CredentialKind, user_id: str) -> Credential:
    return Credential(
        id=message.id,
        kind=kind,
        user_id=user_id,
        expires_at=_datetime(message.expiration_date),
        created_at=_created(message.details),
    )


class ManagementTransport:
    """:class:`rotator.ports.ZitadelTransport` over ManagementService v1.

    ``endpoint`` is the gRPC address (see :func:`parse_endpoint`); ZITADEL
    serves gRPC on its HTTP port, so that is usually the issuer URL.
    ``insecure=True`` forces plaintext (local use only); ``ca_file`` trusts a
    private CA instead of the system CAs.
    """

    api = "v1"

    def __init__(
        self,
        endpoint: str,
        token_source: TokenSource,
        *,
        insecure: bool = False,
        ca_file: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout <= 0:
            raise ConfigError("timeout must be positive", field="zitadel.timeout")
        if not 0 < page_size <= 1000:  # a programming error: no setting sets it
            raise ValueError("page_size must be between 1 and 1000")
        target = parse_endpoint(endpoint)
        options = [*CHANNEL_OPTIONS, *channel_options]
        if insecure or not target.tls:
            if ca_file is not None:
                raise ConfigError("a CA file needs TLS; drop insecure", field="zitadel.tls.ca_file")
            self._channel = grpc.insecure_channel(target.address, options=options)
        else:
            creds = channel_credentials(ca_file)
            self._channel = grpc.secure_channel(target.address, creds, options=options)
        self.endpoint = target
        self._stub = mgmt_grpc.ManagementServiceStub(self._channel)
        self._token_source = token_source
        self._timeout = timeout
        self._page_size = page_size

    # -- plumbing -----------------------------------------------------------

    def _token(self, method: str) -> str:
        try:
            return self._token_source()
        except RotatorError:
            raise
        except Exception as exc:
            # The source's own message might quote a response body: name only the type.
            raise error_for(
                "unauthenticated", f"token source failed ({type(exc).__name__})", method=method
            ) from None

    def _call(self, method: str, request: Any, org_id: str | None) -> Any:
        # A token the server no longer accepts (revoked, instance restored) is
        # replaced once if the source can forget it; the refused call did nothing.
        invalidate: Callable[[], object] | None = getattr(self._token_source, "invalidate", None)
        attempts = 2 if invalidate is not None else 1
        for attempt in range(attempts):
            token = self._token(method)
            metadata = [("authorization", f"Bearer {token}")]
            if org_id:
                metadata.append((ORG_HEADER, org_id))
            try:
                return getattr(self._stub, method)(
                    request, timeout=self._timeout, metadata=metadata
                )
            except grpc.RpcError as exc:
                error = self._translate(exc, method, token)
                if invalidate is None or error.code != "unauthenticated" or attempt + 1 == attempts:
                    raise error from None
                invalidate()
        raise AssertionError("unreachable")

    @staticmethod
    def _translate(exc: grpc.RpcError, method: str, token: str) -> ZitadelError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else None
        # A front that echoes the request could quote our bearer token.
        message = server_text(details, (token,), limit=_MAX_SERVER_TEXT) if details else ""
        message = message or code.name.lower()
        return error_for(code.name, message, method=method)

    def _pages(
        self,
        method: str,
        make_request: Callable[[Any], Any],
        org_id: str | None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Any]:
        """Every result of a v1 list call, page by page (v1 sends all without a limit,
        but an explicit limit keeps each answer small)."""
        size = page_size or self._page_size
        offset = 0
        for page in range(_MAX_PAGES):
            if page:
                ratelimit.further_request()  # within the rate budget, one more request
            query = object_pb.ListQuery(offset=offset, limit=size, asc=True)
            response = self._call(method, make_request(query), org_id)
            yield from response.result
            offset += len(response.result)
            if len(response.result) < size or offset >= response.details.total_result:
                return
        raise ZitadelRejected(f"more than {_MAX_PAGES} pages", code="out_of_range", method=method)

    # -- users and orgs -----------------------------------------------------

    def resolve_user(self, user: str, org_id: str | None = None) -> User:
        """:meth:`_resolve_user`; a refusal or "not found" says what to grant where.

        v1 checks ``user.read`` in the org before it lists (§3): an empty
        ListUsers answer there means the user does not exist in that org."""
        try:
            return self._resolve_user(user, org_id)
        except ZitadelPermissionDenied as exc:
            identity = visibility.identity_of(self._token_source)
            raise visibility.refused(user, org_id, exc, identity=identity) from None
        except ZitadelNotFound as exc:
            if exc.method != "ListUsers":
                raise
            identity = visibility.identity_of(self._token_source)
            raise visibility.not_found(
                user.strip(), org_id, identity=identity, probe=lambda: 1, method="ListUsers"
            ) from None

    def _resolve_user(self, user: str, org_id: str | None = None) -> User:
        """A numeric id (GetUserByID in ``org_id``), a login name containing ``@``
        (GetUserByLoginNameGlobal) or a user name (ListUsers in ``org_id``)."""
        name = user.strip()
        if not name:
            raise ZitadelRejected("empty user reference", code="invalid_argument")
        if name.isascii() and name.isdigit():  # ZITADEL ids are decimal snowflakes
            response = self._call("GetUserByID", mgmt_pb.GetUserByIDRequest(id=name), org_id)
            return _user(response.user)
        if "@" in name:
            request = mgmt_pb.GetUserByLoginNameGlobalRequest(login_name=name)
            return _user(self._call("GetUserByLoginNameGlobal", request, org_id).user)
        query = user_pb.SearchQuery(
            user_name_query=user_pb.UserNameQuery(
                user_name=name, method=object_pb.TEXT_QUERY_METHOD_EQUALS
            )
        )
        found = list(
            self._pages(
                "ListUsers",
                lambda page: mgmt_pb.ListUsersRequest(query=page, queries=[query]),
                org_id,
            )
        )
        if not found:
            where = f" in org {org_id}" if org_id else ""
            raise ZitadelNotFound(
                f"no user named {name!r}{where}", code="not_found", method="ListUsers"
            )
        if len(found) > 1:
            raise ZitadelRejected(
                f"user name {name!r} is ambiguous ({len(found)} users)",
                code="failed_precondition",
                method="ListUsers",
            )
        return _user(found[0])

    # -- machine keys -------------------------------------------------------

    def add_key(self, user: User, public_key_pem: bytes, expires_at: datetime) -> Credential:
        # The expiry is always explicit: omitted, v1 stores year 9999 (§6.1).
        request = mgmt_pb.AddMachineKeyRequest(
            user_id=user.id,
            type=authn_pb.KEY_TYPE_JSON,
            expiration_date=_timestamp(expires_at),
            public_key=public_key_pem,
        )
        response = self._call("AddMachineKey", request, user.org_id)
        if response.key_details:
            self._discard_foreign_key(user, response.key_id)
        return Credential(
            id=response.key_id,
            kind=CredentialKind.KEY,
            user_id=user.id,
            expires_at=expires_at.astimezone(UTC),
            created_at=_created(response.details),
        )

    def _discard_foreign_key(self, user: User, key_id: str) -> NoReturn:
        """A server that answers with key content ignored ``public_key`` (a ZITADEL
        too old to know the field) and generated the pair itself: the registered
        key is not the rotator's.  Remove it and refuse; the private key it sent
        is dropped unread."""
        outcome = "removed"
        try:
            self.remove_key(user, key_id)
        except ZitadelError as exc:
            outcome = f"NOT removed ({exc.code}); remove it by hand"
        raise ZitadelRejected(
            f"ZITADEL generated key {key_id} of user {user.id} itself instead of registering "
            f"the public key (AddMachineKey.public_key unsupported by this version); "
            f"key {outcome}",
            code="failed_precondition",
            method="AddMachineKey",
        )

    def list_keys(self, user: User) -> list[Credential]:
        return [
            _credential(key, CredentialKind.KEY, user.id)
            for key in self._pages(
                "ListMachineKeys",
                lambda page: mgmt_pb.ListMachineKeysRequest(user_id=user.id, query=page),
                user.org_id,
            )
        ]

    def remove_key(self, user: User, key_id: str) -> None:
        request = mgmt_pb.RemoveMachineKeyRequest(user_id=user.id, key_id=key_id)
        self._call("RemoveMachineKey", request, user.org_id)

    # -- personal access tokens ---------------------------------------------

    def add_pat(self, user: User, expires_at: datetime) -> IssuedPat:
        request = mgmt_pb.AddPersonalAccessTokenRequest(
            user_id=user.id, expiration_date=_timestamp(expires_at)
        )
        response = self._call("AddPersonalAccessToken", request, user.org_id)
        credential = Credential(
            id=response.token_id,
            kind=CredentialKind.PAT,
            user_id=user.id,
            expires_at=expires_at.astimezone(UTC),
            created_at=_created(response.details),
        )
        return IssuedPat(credential=credential, token=response.token)

    def list_pats(self, user: User) -> list[Credential]:
        return [
            _credential(pat, CredentialKind.PAT, user.id)
            for pat in self._pages(
                "ListPersonalAccessTokens",
                lambda page: mgmt_pb.ListPersonalAccessTokensRequest(user_id=user.id, query=page),
                user.org_id,
            )
        ]

    def remove_pat(self, user: User, pat_id: str) -> None:
        request = mgmt_pb.RemovePersonalAccessTokenRequest(user_id=user.id, token_id=pat_id)
        self._call("RemovePersonalAccessToken", request, user.org_id)

    # -- client secret --------------------------------------------------------

    def add_secret(self, user: User) -> IssuedSecret:
        """GenerateMachineSecret: regenerates (overwrites) the user's one secret."""
        request = mgmt_pb.GenerateMachineSecretRequest(user_id=user.id)
        response = self._call("GenerateMachineSecret", request, user.org_id)
        if not response.client_secret:
            raise error_for(
                "unimplemented",
                f"GenerateMachineSecret for user {user.id} returned no secret",
                method="GenerateMachineSecret",
            )
        return IssuedSecret(
            user_id=user.id,
            client_id=response.client_id or user.username,
            secret=response.client_secret,
            created_at=_created(response.details),
        )

    def remove_secret(self, user: User) -> bool:
        request = mgmt_pb.RemoveMachineSecretRequest(user_id=user.id)
        try:
            self._call("RemoveMachineSecret", request, user.org_id)
        except ZitadelRejected as exc:
            if is_secret_not_existing(exc):
                return False
            raise
        return True

    def list_org_credentials(self, kind: CredentialKind, org_id: str) -> list[Credential] | None:
        """The Management API lists keys and PATs per user only; secrets show as
        ``Machine.has_secret`` in one ListUsers of the org's machine users."""
        if kind is not CredentialKind.SECRET:
            return None
        return [secret_credential(u.id) for u in self.list_machine_users(org_id) if u.has_secret]

    # -- inventory ------------------------------------------------------------

    def list_machine_users(self, org_id: str | None) -> list[User]:
        """ListUsers in ``org_id`` with a machine type query, 1,000 a page.  The
        interceptor checks ``user.read`` in that org, so an unreadable org raises."""
        if not org_id:
            raise ZitadelRejected(
                "the v1 Management API lists users per organization only: name the orgs "
                "(--org) or use the v2 API",
                code="unimplemented",
                method="ListUsers",
            )
        query = user_pb.SearchQuery(type_query=user_pb.TypeQuery(type=user_pb.TYPE_MACHINE))
        users = self._pages(
            "ListUsers",
            lambda page: mgmt_pb.ListUsersRequest(query=page, queries=[query]),
            org_id,
            page_size=1000,
        )
        return [replace(_user(u), has_secret=u.machine.has_secret) for u in users]

    def org_has_readable_users(self, org_id: str) -> bool:
        found = self._call(
            "ListUsers",
            mgmt_pb.ListUsersRequest(query=object_pb.ListQuery(offset=0, limit=1, asc=True)),
            org_id,
        )
        return bool(found.result)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ManagementTransport:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _conforms(transport: ManagementTransport) -> ZitadelTransport:
    """mypy proves here that the class satisfies the engine's Protocol."""
    return transport
