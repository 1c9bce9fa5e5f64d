"""ZITADEL v2 ``UserService`` through the official ``zitadel-client`` SDK.

The SDK is built with :meth:`Zitadel.with_access_token` from a bearer-token
callable (usually :class:`rotator.zitadel.oidc.TokenSource`), never with
``with_private_key``: that one reads the key from a file, and the rotator's
own key lives only in memory and Vault.  The client is rebuilt whenever the
callable hands out a different token.

SDK quirks handled here (zitadel-api.md §5): ``publicKey`` must be a base64
``str`` (``bytes`` crash the SDK's JSON encoder); datetimes must be
timezone-aware (naive ones are sent without zone and rejected); every non-2xx
answer is a bare ``ApiError(code=<HTTP status>)`` whose body we read for the
Connect ``code`` ourselves; connection failures surface as raw ``urllib3``
exceptions; a timeout exists only per call (``_request_timeout``).
"""

from __future__ import annotations

import base64
import contextvars
import importlib
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3.exceptions
from pydantic import ValidationError

from rotator import netcause, ratelimit
from rotator.errors import (
    ConfigError,
    RotatorError,
    ZitadelError,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelRejected,
    ZitadelUnauthenticated,
)
from rotator.model import (
    Credential,
    CredentialKind,
    IssuedPat,
    IssuedSecret,
    User,
    secret_credential,
)
from rotator.redact import server_text
from rotator.zitadel import visibility
from rotator.zitadel.codes import error_for, http_status_code_name, is_secret_not_existing
from rotator.zitadel.oidc import untrusted_certificate, untrusted_detail

# Only the SDK modules used here: see rotator/zitadel/sdk.py.
from rotator.zitadel.sdk import (
    ApiClient,
    ApiError,
    Configuration,
    PersonalAccessTokenAuthenticator,
    TransportOptions,
    UserServiceAddKeyRequest,
    UserServiceAddPersonalAccessTokenRequest,
    UserServiceAddSecretRequest,
    UserServiceGetUserByIDRequest,
    UserServiceIDFilter,
    UserServiceKeyFieldName,
    UserServiceKeysSearchFilter,
    UserServiceListKeysRequest,
    UserServiceListPersonalAccessTokensRequest,
    UserServiceListQuery,
    UserServiceListUsersRequest,
    UserServiceLoginNameQuery,
    UserServiceOrganizationIdQuery,
    UserServicePaginationRequest,
    UserServicePersonalAccessTokenFieldName,
    UserServicePersonalAccessTokensSearchFilter,
    UserServiceRemoveKeyRequest,
    UserServiceRemovePersonalAccessTokenRequest,
    UserServiceRemoveSecretRequest,
    UserServiceSearchQuery,
    UserServiceTextQueryMethod,
    UserServiceType,
    UserServiceTypeQuery,
    UserServiceUser,
    UserServiceUserNameQuery,
    UserServiceUserState,
)

DEFAULT_TIMEOUT = 10.0
#: Page size for ListKeys / ListPersonalAccessTokens (ZITADEL's default limit).
PAGE_SIZE = 100
#: ZITADEL's ``MaxQueryLimit``; larger limits are refused (§4.2).
MAX_PAGE_SIZE = 1000
#: Pages of one listing in flight at once (after the first, which tells the total).
PAGES_AT_ONCE = 4
#: Connections kept open to ZITADEL: one per worker thread (daemon.concurrency <= 256).
CONNECTION_POOL_SIZE = 256
_MAX_SERVER_TEXT = 300

T = TypeVar("T")


def api_error(exc: ApiError, method: str, context: str, token: str | None = None) -> ZitadelError:
    """The rotator error for an SDK ``ApiError``.

    Reads only ``code`` and ``message`` of a Connect error body (or the HTTP
    status when the body is not Connect's, e.g. an edge proxy's 429/503);
    never the headers, never the request.
    """
    body = exc.response_body
    status = exc.code if isinstance(exc.code, int) else None
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code:
        code = http_status_code_name(status or 500)
    text = f"HTTP {status}"
    if isinstance(message, str) and message:
        # A front that echoes the request could quote our bearer token.
        text = server_text(message, (token,), limit=_MAX_SERVER_TEXT)
    if isinstance(code, str):
        code = server_text(code, (token,), limit=40)
    return error_for(code, f"{context}: {text}", status=status, method=method)


def _aware(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        # The SDK would send it without zone and ZITADEL would reject it.
        raise ValueError("expiry must be a timezone-aware datetime")
    return instant.astimezone(UTC)


def _credential(kind: CredentialKind, item: Any, user_id: str) -> Credential:
    if not item.id or item.expiration_date is None:
        raise error_for(
            "unimplemented", f"{kind} listing for user {user_id} lacks id or expiration date"
        )
    return Credential(
        id=item.id,
        kind=kind,
        user_id=item.user_id or user_id,
        expires_at=_aware(item.expiration_date),
        created_at=_aware(item.creation_date) if item.creation_date else None,
    )


def _to_user(found: UserServiceUser, asked: str) -> User:
    if found.machine is None:
        kind = "a human user" if found.human is not None else "not a machine user"
        raise ZitadelRejected(
            f"user {asked!r} ({found.user_id}) is {kind}; only machine users have keys and PATs",
            code="failed_precondition",
        )
    org_id = found.details.resource_owner if found.details else None
    if not found.user_id or not org_id:
        raise error_for("unimplemented", f"user {asked!r}: answer lacks user id or organization")
    return User(
        id=found.user_id,
        org_id=org_id,
        username=found.username or asked,
        active=found.state in (None, UserServiceUserState.USER_STATE_ACTIVE),
        machine=True,
        # proto3 JSON omits a false bool: absent means no secret
        has_secret=bool(found.machine.has_secret),
    )


_USER_SERVICE = "/zitadel.user.v2.UserService/"
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class _UserService:
    """The SDK's ``UserServiceApi`` methods, called as it names them
    (``add_key(request, _request_timeout=...)``), without importing that class:
    its module loads all ~200 UserService models and wraps ~150 methods in
    pydantic's ``validate_call``, about half a second of start-up.

    Each call is what the generated method does: the request model, POSTed as
    Connect JSON by the SDK's own :class:`ApiClient` (headers, auth, TLS,
    errors), to ``/zitadel.user.v2.UserService/<Rpc>``, where ``<Rpc>`` and the
    response model follow from the request's model (``UserServiceAddKeyRequest``
    -> ``AddKey``, ``UserServiceAddKeyResponse``).
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(request: Any, *, _request_timeout: Any = None) -> Any:
            rpc, response_model = _rpc_of(request)
            if _snake(rpc) != method:  # a mix-up, not a call ZITADEL should see
                raise TypeError(f"{method}() called with a {type(request).__name__}")
            return self._post(rpc, request, response_model, _request_timeout)

        return call

    def _post(self, rpc: str, request: Any, response_model: type, timeout: Any) -> Any:
        client = self._client
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        method, url, headers, body, post_params = client.param_serialize(
            method="POST",
            resource_path=_USER_SERVICE + rpc,
            header_params=headers,
            body=request,
            auth_settings=["zitadelAccessToken"],
        )
        response = client.call_api(
            method,
            url,
            header_params=headers,
            body=body,
            post_params=post_params,
            _request_timeout=timeout,
        )
        response.read()
        # Non-2xx: raises the SDK's ApiError (status and body), as the generated method does.
        return client.response_deserialize(
            response_data=response, response_types_map={"200": response_model}
        ).data


def _rpc_of(request: Any) -> tuple[str, type]:
    """``UserServiceAddKeyRequest`` -> (``"AddKey"``, ``UserServiceAddKeyResponse``)."""
    model = type(request)
    name, module = model.__name__, model.__module__
    if not (name.startswith("UserService") and name.endswith("Request")):
        raise TypeError(f"not a UserService request model: {name}")
    rpc = name.removeprefix("UserService").removesuffix("Request")
    responses = importlib.import_module(module.removesuffix("_request") + "_response")
    return rpc, getattr(responses, f"UserService{rpc}Response")


def _snake(rpc: str) -> str:
    """``GetUserByID`` -> ``get_user_by_id``, as the SDK names its methods."""
    return _CAMEL_BOUNDARY.sub("_", rpc).lower()


class _Sdk:
    """What the transport calls through: ``sdk.users.<method>(request, ...)``."""

    def __init__(self, issuer: str, token: str, options: Any) -> None:
        # What Zitadel.with_access_token builds, without the SDK's other 30 services.
        config = Configuration(PersonalAccessTokenAuthenticator(issuer, token))
        config.default_headers = dict(options.default_headers)
        # The SDK keeps 5 connections per CPU (10 on two cores): fewer than the
        # worker threads, and every request past them opens a new connection.
        config.connection_pool_maxsize = CONNECTION_POOL_SIZE
        if options.ca_cert_path:
            config.ssl_ca_cert = options.ca_cert_path
        if options.insecure:
            config.verify_ssl = False
        if options.proxy_url:
            config.proxy_url = options.proxy_url
        self.users = _UserService(ApiClient(configuration=config))


class UserServiceTransport:
    """:class:`rotator.ports.ZitadelTransport` on ZITADEL's v2 UserService.

    ``token`` returns the bearer token to use (called before every request;
    cache in the callable).  If it also has an ``invalidate()`` method, a call
    refused as ``unauthenticated`` is retried once with a fresh token.
    """

    api = "v2"

    def __init__(
        self,
        issuer: str,
        token: Callable[[], str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport_options: TransportOptions | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if timeout <= 0:
            raise ConfigError("timeout must be positive", field="zitadel.timeout")
        if not 0 < page_size <= MAX_PAGE_SIZE:  # a programming error: no setting sets it
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        self.issuer = issuer.rstrip("/")
        self._page_size = page_size
        self._token = token
        # Per-call (connect, read) timeout; the SDK has no client-wide one.
        self._timeout = (min(5.0, float(timeout)), float(timeout))
        self._options = transport_options or TransportOptions.defaults()
        self._client: _Sdk | None = None
        self._client_token: str | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client = None
        self._client_token = None

    # -- plumbing -----------------------------------------------------------------

    def _sdk(self) -> _Sdk:
        try:
            token = self._token()
        except RotatorError:
            raise
        except Exception as exc:
            # The source's own message might quote a response body: name only the type.
            raise error_for(
                "unauthenticated", f"token source failed ({type(exc).__name__})"
            ) from None
        with self._lock:  # scheduler jobs share one transport
            if self._client is None or token != self._client_token:
                self._client = _Sdk(self.issuer, token, self._options)
                self._client_token = token
            return self._client

    def _call(self, method: str, context: str, fn: Callable[[_Sdk], T]) -> T:
        client = self._sdk()
        try:
            return self._call_once(client, method, context, fn)
        except ZitadelUnauthenticated:
            invalidate = getattr(self._token, "invalidate", None)
            if not callable(invalidate):
                raise
            # The cached token may have been revoked or outlived a restart:
            # one more try with a freshly exchanged token.
            invalidate()
            return self._call_once(self._sdk(), method, context, fn)

    def _call_once(self, client: _Sdk, method: str, context: str, fn: Callable[[_Sdk], T]) -> T:
        where = f"UserService.{method}"
        try:
            return fn(client)
        except ApiError as exc:
            raise api_error(exc, where, context, self._client_token) from None
        except urllib3.exceptions.HTTPError as exc:
            raise no_answer(exc, where, context) from exc  # no answer: --debug may show why
        except ValidationError as exc:
            # Never str(exc): pydantic quotes input values, which may be a PAT.
            raise error_for(
                "unimplemented",
                f"{context}: unexpected answer ({exc.error_count()} validation errors)",
                method=where,
            ) from None

    # -- users ----------------------------------------------------------------------

    def resolve_user(self, user: str, org_id: str | None = None) -> User:
        """:meth:`_resolve_user`; "not found" says whether the identity may see the user."""
        try:
            return self._resolve_user(user, org_id)
        except ZitadelPermissionDenied as exc:
            raise visibility.refused(user, org_id, exc, identity=self._identity()) from None
        except ZitadelNotFound as exc:
            if exc.method != "ListUsers":
                raise
            raise visibility.not_found(
                user,
                org_id,
                identity=self._identity(),
                probe=lambda: self._others_visible(org_id),
                method="ListUsers",
            ) from None

    def _identity(self) -> str | None:
        return visibility.identity_of(self._token)

    def _others_visible(self, org_id: str | None) -> int | ZitadelPermissionDenied | None:
        """How many users other than the identity itself it may list in ``org_id``
        (ListUsers filters by ``user.read``, §4): 0 means it sees none there."""
        try:
            response = self._list_users(
                _in_org(org_id), limit=2, context="probe which users the identity may see"
            )
        except ZitadelPermissionDenied as exc:
            return exc
        except ZitadelError:
            return None
        own = self._identity()
        return sum(1 for u in response.result or [] if u.user_id != own)

    def _resolve_user(self, user: str, org_id: str | None = None) -> User:
        """Find a machine user by numeric id (GetUserByID), login name
        (``name@domain``: ListUsers by login name) or user name (ListUsers by
        user name, scoped to ``org_id`` if given).

        The answer covers only users the caller may read, so a user name is
        "ambiguous" only across orgs the rotator manages.  Raises
        ZitadelNotFound, or ZitadelRejected for a human user, an ambiguous
        name or an id outside ``org_id``.
        """
        if user.isdigit():
            return self._user_by_id(user, org_id)
        query: UserServiceSearchQuery
        if "@" in user:
            query = UserServiceSearchQuery(
                login_name_query=UserServiceLoginNameQuery(
                    login_name=user, method=UserServiceTextQueryMethod.TEXT_QUERY_METHOD_EQUALS
                )
            )
        else:
            query = UserServiceSearchQuery(
                user_name_query=UserServiceUserNameQuery(
                    user_name=user, method=UserServiceTextQueryMethod.TEXT_QUERY_METHOD_EQUALS
                )
            )
        where = f" in org {org_id}" if org_id else ""
        response = self._list_users(
            _in_org(org_id, query), limit=10, context=f"look up user {user!r}{where}"
        )
        found = response.result or []
        if not found:
            raise ZitadelNotFound(f"no user {user!r}{where}", code="not_found", method="ListUsers")
        if len(found) > 1:
            orgs = sorted({(u.details.resource_owner if u.details else None) or "?" for u in found})
            raise ZitadelRejected(
                f"user name {user!r} is ambiguous: {len(found)} users in orgs "
                f"{', '.join(orgs)}; set the target's org",
                code="failed_precondition",
                method="ListUsers",
            )
        return _to_user(found[0], user)

    def _user_by_id(self, user_id: str, org_id: str | None) -> User:
        request = UserServiceGetUserByIDRequest(user_id=user_id)
        response = self._call(
            "GetUserByID",
            f"look up user {user_id}",
            lambda z: z.users.get_user_by_id(request, _request_timeout=self._timeout),
        )
        if response.user is None:
            raise ZitadelNotFound(f"no user {user_id}", code="not_found", method="GetUserByID")
        resolved = _to_user(response.user, user_id)
        if org_id and resolved.org_id != org_id:
            raise ZitadelRejected(
                f"user {user_id} belongs to org {resolved.org_id}, not {org_id}",
                code="failed_precondition",
                method="GetUserByID",
            )
        return resolved

    # -- keys -----------------------------------------------------------------------

    def add_key(self, user: User, public_key_pem: bytes, expires_at: datetime) -> Credential:
        request = UserServiceAddKeyRequest(
            user_id=user.id,
            expiration_date=_aware(expires_at),
            # bytes would crash the SDK's json.dumps; protojson wants base64.
            public_key=base64.b64encode(public_key_pem).decode("ascii"),
        )
        response = self._call(
            "AddKey",
            f"add key for user {user.id}",
            lambda z: z.users.add_key(request, _request_timeout=self._timeout),
        )
        if not response.key_id:
            raise error_for("unimplemented", f"AddKey for user {user.id} returned no key id")
        return Credential(
            id=response.key_id,
            kind=CredentialKind.KEY,
            user_id=user.id,
            expires_at=_aware(expires_at),
            created_at=_aware(response.creation_date) if response.creation_date else None,
        )

    def list_keys(self, user: User) -> list[Credential]:
        return self._list(CredentialKind.KEY, f"keys of user {user.id}", user_id=user.id)

    def remove_key(self, user: User, key_id: str) -> None:
        request = UserServiceRemoveKeyRequest(user_id=user.id, key_id=key_id)
        self._call(
            "RemoveKey",
            f"remove key {key_id} of user {user.id}",
            lambda z: z.users.remove_key(request, _request_timeout=self._timeout),
        )

    # -- personal access tokens -------------------------------------------------------

    def add_pat(self, user: User, expires_at: datetime) -> IssuedPat:
        request = UserServiceAddPersonalAccessTokenRequest(
            user_id=user.id, expiration_date=_aware(expires_at)
        )
        response = self._call(
            "AddPersonalAccessToken",
            f"add PAT for user {user.id}",
            lambda z: z.users.add_personal_access_token(request, _request_timeout=self._timeout),
        )
        if not response.token_id or not response.token:
            raise error_for(
                "unimplemented", f"AddPersonalAccessToken for user {user.id} returned no token"
            )
        return IssuedPat(
            credential=Credential(
                id=response.token_id,
                kind=CredentialKind.PAT,
                user_id=user.id,
                expires_at=_aware(expires_at),
                created_at=_aware(response.creation_date) if response.creation_date else None,
            ),
            token=response.token,
        )

    def list_pats(self, user: User) -> list[Credential]:
        return self._list(CredentialKind.PAT, f"PATs of user {user.id}", user_id=user.id)

    def remove_pat(self, user: User, pat_id: str) -> None:
        request = UserServiceRemovePersonalAccessTokenRequest(user_id=user.id, token_id=pat_id)
        self._call(
            "RemovePersonalAccessToken",
            f"remove PAT {pat_id} of user {user.id}",
            lambda z: z.users.remove_personal_access_token(request, _request_timeout=self._timeout),
        )

    # -- client secrets ---------------------------------------------------------------

    def add_secret(self, user: User) -> IssuedSecret:
        """AddSecret: regenerates (overwrites) the user's one client secret."""
        request = UserServiceAddSecretRequest(user_id=user.id)
        response = self._call(
            "AddSecret",
            f"add secret for user {user.id}",
            lambda z: z.users.add_secret(request, _request_timeout=self._timeout),
        )
        if not response.client_secret:
            raise error_for("unimplemented", f"AddSecret for user {user.id} returned no secret")
        return IssuedSecret(
            user_id=user.id,
            # AddSecretResponse has no client_id: the token endpoint takes the user name (§7.3)
            client_id=user.username,
            secret=response.client_secret,
            created_at=_aware(response.creation_date) if response.creation_date else None,
        )

    def remove_secret(self, user: User) -> bool:
        request = UserServiceRemoveSecretRequest(user_id=user.id)
        try:
            self._call(
                "RemoveSecret",
                f"remove secret of user {user.id}",
                lambda z: z.users.remove_secret(request, _request_timeout=self._timeout),
            )
        except ZitadelRejected as exc:
            if is_secret_not_existing(exc):
                return False
            raise
        return True

    # -- listings ---------------------------------------------------------------------

    def list_org_credentials(self, kind: CredentialKind, org_id: str) -> list[Credential] | None:
        """One paged listing of a whole org (1,000 a page) instead of one per user."""
        if kind is CredentialKind.SECRET:
            return self._org_secrets(org_id)
        what = "keys" if kind is CredentialKind.KEY else "PATs"
        return self._list(kind, f"{what} of org {org_id}", org_id=org_id, page_size=MAX_PAGE_SIZE)

    def _list(
        self,
        kind: CredentialKind,
        context: str,
        *,
        user_id: str | None = None,
        org_id: str | None = None,
        page_size: int | None = None,
    ) -> list[Credential]:
        size = page_size or self._page_size
        key = kind is CredentialKind.KEY
        filter_type: Any = (
            UserServiceKeysSearchFilter if key else UserServicePersonalAccessTokensSearchFilter
        )
        filters = [filter_type(user_id_filter=UserServiceIDFilter(id=user_id))] if user_id else []
        if org_id:
            filters.append(filter_type(organization_id_filter=UserServiceIDFilter(id=org_id)))
        method = "ListKeys" if key else "ListPersonalAccessTokens"

        def page(offset: int) -> tuple[list[Any], int | None]:
            pagination = UserServicePaginationRequest(offset=offset, limit=size, asc=True)
            if key:
                request: Any = UserServiceListKeysRequest(
                    pagination=pagination,
                    sorting_column=UserServiceKeyFieldName.KEY_FIELD_NAME_CREATED_DATE,
                    filters=filters,
                )
            else:
                request = UserServiceListPersonalAccessTokensRequest(
                    pagination=pagination,
                    sorting_column=UserServicePersonalAccessTokenFieldName.PERSONAL_ACCESS_TOKEN_FIELD_NAME_CREATED_DATE,
                    filters=filters,
                )
            response = self._call(
                method,
                f"list {context}",
                lambda z: (z.users.list_keys if key else z.users.list_personal_access_tokens)(
                    request, _request_timeout=self._timeout
                ),
            )
            total = response.pagination.total_result if response.pagination else None
            return list(response.result or []), int(total) if total is not None else None

        return [_credential(kind, item, user_id or "") for item in _paginate(page, size)]

    def _org_secrets(self, org_id: str) -> list[Credential]:
        """The org's machine users that have a secret (ListUsers, ``machine.hasSecret``)."""
        return [secret_credential(u.id) for u in self.list_machine_users(org_id) if u.has_secret]

    # -- inventory ---------------------------------------------------------------------

    def list_machine_users(self, org_id: str | None) -> list[User]:
        """Machine users of ``org_id`` (or of every readable org), 1,000 a page."""
        queries = _in_org(
            org_id,
            UserServiceSearchQuery(
                type_query=UserServiceTypeQuery(type=UserServiceType.TYPE_MACHINE)
            ),
        )
        where = f"org {org_id}" if org_id else "every readable org"

        def page(offset: int) -> tuple[list[Any], int | None]:
            response = self._list_users(
                queries,
                offset=offset,
                limit=MAX_PAGE_SIZE,
                context=f"list machine users of {where}",
            )
            total = response.details.total_result if response.details else None
            return list(response.result or []), int(total) if total is not None else None

        return [
            replace(
                _to_user(found, found.user_id or "?"), has_secret=bool(found.machine.has_secret)
            )
            for found in _paginate(page, MAX_PAGE_SIZE)
            if found.machine is not None
        ]

    def org_has_readable_users(self, org_id: str) -> bool:
        """Whether the identity may list any user of ``org_id`` (itself included):
        ListUsers filters by ``user.read`` (§4), so none means "not readable"."""
        response = self._list_users(
            _in_org(org_id), limit=1, context=f"probe users of org {org_id}"
        )
        return bool(response.result)

    def _list_users(
        self, queries: list[UserServiceSearchQuery], *, limit: int, context: str, offset: int = 0
    ) -> Any:
        """One ListUsers page (what look-ups, probes and the inventory share)."""
        request = UserServiceListUsersRequest(
            query=UserServiceListQuery(offset=offset, limit=limit, asc=True), queries=queries
        )
        return self._call(
            "ListUsers",
            context,
            lambda z: z.users.list_users(request, _request_timeout=self._timeout),
        )


def _in_org(org_id: str | None, *queries: UserServiceSearchQuery) -> list[UserServiceSearchQuery]:
    """``queries``, and the organization query when ``org_id`` is given."""
    if not org_id:
        return list(queries)
    return [
        *queries,
        UserServiceSearchQuery(
            organization_id_query=UserServiceOrganizationIdQuery(organization_id=org_id)
        ),
    ]


def no_answer(exc: urllib3.exceptions.HTTPError, method: str, context: str) -> ZitadelError:
    """The error for a call that got no HTTP answer (refused, reset, timed out).

    Names only the exception type: ``str(exc)`` repeats the URL and OS error.
    """
    why = untrusted_certificate(exc)
    if why is not None:
        return error_for("unavailable", f"{context}: {untrusted_detail(why)}", method=method)
    cause = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the real failure
    # NewConnectionError ("refused") subclasses ConnectTimeoutError: test it first.
    if isinstance(cause, urllib3.exceptions.TimeoutError) and not isinstance(
        cause, urllib3.exceptions.NewConnectionError
    ):
        return error_for("deadline_exceeded", f"{context}: timed out", method=method)
    pool = getattr(exc, "pool", None)  # MaxRetryError knows the host it tried
    at = f" at {pool.scheme}://{pool.host}:{pool.port}" if pool is not None else ""
    return error_for(
        "unavailable", f"{context}: unreachable{at}: {netcause.cause(exc)}", method=method
    )


def _paginate(page: Callable[[int], tuple[list[Any], int | None]], page_size: int) -> Iterator[Any]:
    """Walk offset pages until a short page or ``total_result`` is reached.

    Once the first page has announced the total, the pages up to it are fetched
    :data:`PAGES_AT_ONCE` at a time (a 10,000-credential org is ten round trips:
    one after another they were a third of ``plan``); a full last page (the list
    grew meanwhile) goes on one page at a time.
    """
    items, total = page(0)
    yield from items
    offset, last = len(items), len(items)
    if total is not None and last == page_size and offset < total:
        offsets = range(offset, total, page_size)
        with ThreadPoolExecutor(PAGES_AT_ONCE, thread_name_prefix="zitadel-page") as pool:
            # each page in a copy of this context: the rotation's fence, the rate budget
            pages = [
                pool.submit(contextvars.copy_context().run, _further_page, page, o)
                for o in offsets
            ]
            try:
                for future in pages:
                    items, total = future.result()
                    yield from items
                    offset, last = offset + len(items), len(items)
            finally:
                for future in pages:
                    future.cancel()  # a page failed (or the caller stopped): send no more
    while last == page_size and (total is None or offset < total):
        items, total = _further_page(page, offset)
        yield from items
        offset, last = offset + len(items), len(items)


def _further_page(
    page: Callable[[int], tuple[list[Any], int | None]], offset: int
) -> tuple[list[Any], int | None]:
    """A page after the first: within the rate budget, one more request."""
    ratelimit.further_request()
    return page(offset)
