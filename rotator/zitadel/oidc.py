"""Talking OAuth to ZITADEL: discovery, the jwt-bearer grant, userinfo.

Used twice: :class:`TokenSource` gives the rotator's own identity a bearer
token for the management calls, and :meth:`OidcClient.verify_key` /
:meth:`OidcClient.verify_pat` / :meth:`OidcClient.verify_secret` prove a
freshly created credential really works before it is promoted.

ZITADEL answers *every* refused assertion (unknown, expired, removed or not yet
propagated key, bad signature, wrong ``aud``) with HTTP 500
``{"error":"server_error"}`` (zitadel-api.md §7.2), so "refused" and "broken"
cannot be told apart from the status alone; the mapping below treats a JSON
``server_error`` from the token endpoint as a refusal and any other 5xx as an
outage.

No message built here contains an assertion, a token or key material: server
text is put through :func:`rotator.redact.server_text` with what was sent.

The discovery document's ``issuer`` must equal ``zitadel.url`` (OpenID
Connect Discovery §4.3; only a trailing slash may differ): the assertion's
``aud`` is that issuer, and a document that names another one did not come
from the instance we were configured for.
"""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from rotator import fence, netcause
from rotator.clock import Clock, SystemClock
from rotator.errors import (
    ConfigError,
    VerificationError,
    VerificationReason,
    ZitadelError,
    ZitadelUnauthenticated,
)
from rotator.keys import sign_assertion
from rotator.ratelimit import RateLimiter
from rotator.redact import server_text
from rotator.zitadel.codes import error_for, http_status_code_name

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_CREDENTIALS_GRANT = "client_credentials"
#: Makes the token acceptable to ZITADEL's own APIs (adds the ZITADEL project to ``aud``).
ZITADEL_API_SCOPE = "openid urn:zitadel:iam:org:project:id:zitadel:aud"
#: Refresh a cached token this long before it expires (as the official SDK does).
REFRESH_BEFORE = timedelta(minutes=5)
DEFAULT_TIMEOUT = 10.0

#: OAuth error names (RFC 6749 §5.2) meaning "this credential was refused".
_REFUSALS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "access_denied"})
#: How ZITADEL refuses a client_credentials request (§7.3): ``invalid_client``
#: (unknown client) or ``invalid_request`` (no secret / wrong secret).
_SECRET_REFUSALS = frozenset({"invalid_client", "invalid_request"})
_MAX_SERVER_TEXT = 200
_MAX_ERROR_NAME = 60


@dataclass(frozen=True)
class AccessToken:
    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    token_endpoint: str
    userinfo_endpoint: str


def _oauth_error(response: httpx.Response, sent: Sequence[str]) -> tuple[str, str]:
    """``(error, error_description)`` of an OAuth error body, or ``("", "")``,
    redacted of ``sent`` (what our request carried)."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    description = body.get("error_description")
    return (
        server_text(error, sent, limit=_MAX_ERROR_NAME) if isinstance(error, str) else "",
        server_text(description, sent, limit=_MAX_SERVER_TEXT)
        if isinstance(description, str)
        else "",
    )


def http_error(
    response: httpx.Response,
    what: str,
    *,
    token_endpoint: bool = False,
    client_credentials: bool = False,
    sent: Sequence[str] = (),
) -> ZitadelError:
    """The error for a failed OAuth/OIDC call (token endpoint, userinfo, discovery).

    ``sent``: the secrets the request carried (assertion, bearer token, client
    secret), scrubbed from the server's text should it echo them.
    """
    error, description = _oauth_error(response, sent)
    status = response.status_code
    if token_endpoint and error == "server_error" and status == 500:
        # ZITADEL's answer to any refused assertion (§7.2), not an outage.
        code = "unauthenticated"
        description += (
            " (ZITADEL's answer to an unknown, expired, removed or not yet propagated key,"
            " a wrong audience or clock skew)"
        )
    elif client_credentials and status == 400 and error in _SECRET_REFUSALS:
        # ZITADEL's answer to an unknown client, a user without a secret or a
        # wrong secret (§7.3): a refusal of what was sent, not a malformed request.
        code = "unauthenticated"
    elif error in _REFUSALS or status == 401:
        code = "unauthenticated"
    else:
        code = http_status_code_name(status)
    detail = f"HTTP {status}"
    if error:
        detail += f" {error}"
    if description:
        detail += f": {description}"
    return error_for(code, detail, status=status, method=what)


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the server's TLS certificate was refused, if that is what ``exc``
    (an httpx or urllib3 error) comes down to; else None.

    OpenSSL's verify message names only the check that failed (and at most a
    host name), never request data.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "certificate verify failed")
        # urllib3 keeps the cause in ``reason`` (MaxRetryError) or ``args`` (SSLError).
        reason = getattr(current, "reason", None)
        nested = [a for a in current.args if isinstance(a, BaseException)]
        pending += [current.__cause__, current.__context__, *nested]
        if isinstance(reason, BaseException):
            pending.append(reason)
    return None


def untrusted_detail(why: str) -> str:
    """Unknown CA or wrong name: either way the URL or the CA setting is what to check."""
    return f"TLS certificate refused: {why.rstrip('.')} (check zitadel.url and zitadel.tls.ca_file)"


def connection_error(exc: httpx.HTTPError, what: str) -> ZitadelError:
    """The retryable error for a call that got no HTTP answer."""
    why = untrusted_certificate(exc)
    if why is not None:
        # Not "unreachable": the server answered, and the fix is trust, not the network.
        return error_for("unavailable", untrusted_detail(why), method=what)
    where = netcause.address(_url_of(exc))
    if isinstance(exc, httpx.TimeoutException):
        return error_for("unavailable", f"timed out at {where}", method=what)
    return error_for("unavailable", f"unreachable at {where}: {netcause.cause(exc)}", method=what)


def _url_of(exc: httpx.HTTPError) -> str | None:
    try:
        return str(exc.request.url)
    except RuntimeError:  # httpx raises when the error has no request
        return None


def tls_verify(verify_tls: bool | str) -> bool | ssl.SSLContext:
    """httpx's ``verify`` for a config's TLS setting: on/off, or a CA file."""
    if not isinstance(verify_tls, str):
        return verify_tls
    # httpx wants an SSLContext for a custom CA (a path is deprecated).
    try:
        return ssl.create_default_context(cafile=verify_tls)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use CA file {verify_tls} ({type(exc).__name__})", field="zitadel.tls.ca_file"
        ) from None


def same_issuer(announced: str, configured: str) -> bool:
    """Discovery's ``issuer`` is the configured URL (a trailing slash aside)."""
    return announced.rstrip("/") == configured.rstrip("/")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _access_token(response: httpx.Response, what: str, now: datetime) -> AccessToken:
    """The access token of a token endpoint's 200 answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        # (The body itself is not quoted: it may hold a token under another name.)
        raise error_for("unknown", "token response without access_token", method=what)
    expires_in = body.get("expires_in") if isinstance(body, dict) else None
    lifetime = expires_in if isinstance(expires_in, int | float) and expires_in > 0 else 3600
    return AccessToken(token=token, expires_at=now + timedelta(seconds=lifetime))


def _key_secrets(key_file: Mapping[str, Any], assertion: str) -> tuple[str, ...]:
    """What a jwt-bearer request could leak: the assertion, and the key itself."""
    key = key_file.get("key")
    return (assertion, key) if isinstance(key, str) else (assertion,)


class OidcClient:
    """OAuth/OIDC calls against one ZITADEL instance (``issuer``).

    Every request has a timeout; the discovery document is fetched once.
    """

    def __init__(
        self,
        issuer: str,
        *,
        clock: Clock | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify_tls: bool | str = True,
        limiter: RateLimiter | None = None,
    ) -> None:
        """``verify_tls``: True (system CAs), False (no verification) or a CA file path.
        ``limiter``: the request budget shared with the management API."""
        self.issuer = issuer.rstrip("/")
        self.clock: Clock = clock or SystemClock()
        hooks: dict[str, list[Callable[[Any], None]]] = {}
        if limiter is not None:
            hooks = {
                "request": [lambda _request: limiter.acquire()],
                "response": [
                    lambda response: limiter.throttled_by_server()
                    if response.status_code == 429
                    else limiter.answered()
                ],
            }
        verify = tls_verify(verify_tls)
        if verify is True and _origin(self.issuer)[0] == "http":
            # No TLS to an http:// issuer (discovery keeps every endpoint on its
            # origin): spare loading the system CAs, ~30-70 ms of CPU at start.
            verify = False
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            event_hooks=hooks,
            # one kept-alive connection per worker thread (httpx keeps 20; concurrency <= 256)
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self._endpoints: Endpoints | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OidcClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------

    def _request(self, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise connection_error(exc, what) from exc  # no answer: --debug may show why

    def endpoints(self) -> Endpoints:
        """The discovery document's endpoints (fetched on first use)."""
        with self._lock:
            if self._endpoints is None:
                self._endpoints = self._discover()
            return self._endpoints

    def _discover(self) -> Endpoints:
        what = "discovery"
        response = self._request(what, "GET", f"{self.issuer}/.well-known/openid-configuration")
        if response.status_code != 200:
            raise http_error(response, what)
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise error_for("failed_precondition", "discovery document is not JSON", method=what)
        missing = [
            name
            for name in ("issuer", "token_endpoint", "userinfo_endpoint")
            if not isinstance(document.get(name), str) or not document[name]
        ]
        if missing:
            raise error_for(
                "failed_precondition", f"discovery document lacks {', '.join(missing)}", method=what
            )
        issuer = document["issuer"]
        if not same_issuer(issuer, self.issuer):
            # Nothing is signed for an issuer we were not configured for: the
            # assertion's audience would be whatever the document says.
            raise error_for(
                "failed_precondition",
                f"discovery document names issuer {issuer[:_MAX_SERVER_TEXT]!r}, but zitadel.url "
                f"is {self.issuer!r}; they must be equal (OpenID Connect Discovery 4.3): set "
                "zitadel.url to ZITADEL's issuer (its ExternalDomain, ExternalPort and "
                "ExternalSecure)",
                method=what,
            )
        foreign = [
            name
            for name in ("token_endpoint", "userinfo_endpoint")
            if _origin(document[name]) != _origin(self.issuer)
        ]
        if foreign:
            # Assertions, new PATs and tokens go to these endpoints: never to
            # another host or scheme than the configured issuer's.
            raise error_for(
                "failed_precondition",
                f"discovery document points {', '.join(foreign)} away from {self.issuer}",
                method=what,
            )
        return Endpoints(
            # ZITADEL checks that ``aud`` contains its issuer string exactly (§7.2).
            issuer=issuer,
            token_endpoint=document["token_endpoint"],
            userinfo_endpoint=document["userinfo_endpoint"],
        )

    # -- grants -----------------------------------------------------------------

    def exchange_jwt_bearer(
        self,
        key_file: Mapping[str, Any],
        scope: str = ZITADEL_API_SCOPE,
        *,
        now: datetime | None = None,
    ) -> AccessToken:
        """Trade a key file for an access token (RFC 7523 jwt-bearer grant).

        Raises ZitadelUnauthenticated when ZITADEL refuses the assertion (for
        ZITADEL: HTTP 500 ``server_error``), ZitadelUnavailable when it cannot
        be reached or is overloaded.  ``now`` (default: this client's clock)
        dates the assertion and the token's expiry.
        """
        endpoints = self.endpoints()
        now = now or self.clock.now()
        assertion = sign_assertion(key_file, endpoints.issuer, now)
        what = f"token exchange (key {key_file.get('keyId')}, user {key_file.get('userId')})"
        response = self._request(
            what,
            "POST",
            endpoints.token_endpoint,
            data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion, "scope": scope},
        )
        if response.status_code != 200:
            raise http_error(
                response, what, token_endpoint=True, sent=_key_secrets(key_file, assertion)
            )
        return _access_token(response, what, now)

    def exchange_client_credentials(
        self,
        client_id: str,
        client_secret: str,
        scope: str = ZITADEL_API_SCOPE,
        *,
        now: datetime | None = None,
    ) -> AccessToken:
        """Trade a machine user's client id and secret for an access token
        (``client_credentials`` grant, ``client_secret_basic``: zitadel-api.md §7.3).

        Raises ZitadelUnauthenticated when ZITADEL refuses the client (an
        unknown client, a wrong or missing secret: HTTP 400), ZitadelUnavailable
        when it cannot be reached or is overloaded.
        """
        endpoints = self.endpoints()
        now = now or self.clock.now()
        # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding
        # (ZITADEL URL-unescapes them, §7.3).
        pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        basic = base64.b64encode(pair.encode()).decode("ascii")
        what = f"token request (client credentials of {client_id})"
        response = self._request(
            what,
            "POST",
            endpoints.token_endpoint,
            headers={"Authorization": f"Basic {basic}"},
            data={"grant_type": CLIENT_CREDENTIALS_GRANT, "scope": scope},
        )
        if response.status_code != 200:
            raise http_error(
                response, what, client_credentials=True, sent=(client_secret, basic)
            )
        return _access_token(response, what, now)

    def userinfo(self, token: str, what: str = "userinfo") -> dict[str, Any]:
        """The userinfo claims for a bearer token (access token or PAT)."""
        endpoints = self.endpoints()
        response = self._request(
            what, "GET", endpoints.userinfo_endpoint, headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code != 200:
            raise http_error(response, what, sent=(token,))
        try:
            claims = response.json()
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise error_for("unknown", "userinfo answer is not a JSON object", method=what)
        return claims

    # -- verification -------------------------------------------------------------

    def verify_key(self, key_file: Mapping[str, Any]) -> None:
        """Prove a key works: a real jwt-bearer exchange, then a userinfo call
        with the token.  Raises VerificationError (retryable: a new key becomes
        usable only once ZITADEL's projection caught up) when the key is
        refused, ZitadelUnavailable when ZITADEL cannot answer."""
        key_id, user_id = key_file.get("keyId"), key_file.get("userId")
        try:
            access = self.exchange_jwt_bearer(key_file, ZITADEL_API_SCOPE)
        except ZitadelUnauthenticated as exc:
            raise VerificationError(
                f"key {key_id} of user {user_id} refused at the token endpoint "
                f"(HTTP {exc.status}; ZITADEL answers 500 server_error until a new key "
                "has propagated)",
                credential_id=_text(key_id),
                reason=VerificationReason.TOKEN_REFUSED,
            ) from None
        self._check_userinfo(
            access.token, user_id, f"key {key_id} of user {user_id}", credential_id=_text(key_id)
        )

    def verify_pat(
        self, token: str, user_id: str | None = None, *, pat_id: str | None = None
    ) -> None:
        """Prove a PAT works: userinfo answers 200 (for ``user_id`` if given).
        Raises VerificationError (naming ``pat_id``) when the PAT is refused."""
        self._check_userinfo(token, user_id, f"PAT of user {user_id or '?'}", credential_id=pat_id)

    def verify_secret(self, client_id: str, client_secret: str, *, user_id: str) -> None:
        """Prove a client secret works: one real ``client_credentials`` token
        request, then userinfo with the token must name ``user_id``.  Raises
        VerificationError when the secret is refused (retryable: right after a
        regeneration ZITADEL's projection may still hold the old one),
        ZitadelUnavailable when ZITADEL cannot answer."""
        subject = f"client secret of user {user_id}"
        try:
            access = self.exchange_client_credentials(client_id, client_secret)
        except ZitadelUnauthenticated as exc:
            raise VerificationError(
                f"{subject} refused at the token endpoint ({exc}; right after a regeneration "
                "ZITADEL may still accept only the previous secret)",
                credential_id=user_id,
                reason=VerificationReason.TOKEN_REFUSED,
            ) from None
        self._check_userinfo(access.token, user_id, subject, credential_id=user_id)

    def _check_userinfo(
        self, token: str, user_id: object, subject: str, *, credential_id: str | None
    ) -> None:
        try:
            claims = self.userinfo(token, what=f"userinfo ({subject})")
        except ZitadelUnauthenticated as exc:
            raise VerificationError(
                f"{subject}: token refused at userinfo (HTTP {exc.status})",
                credential_id=credential_id,
                reason=VerificationReason.USERINFO_REFUSED,
            ) from None
        if user_id and claims.get("sub") != user_id:
            raise VerificationError(
                f"{subject}: userinfo names another subject",
                credential_id=credential_id,
                reason=VerificationReason.SUBJECT_MISMATCH,
            )


def _text(value: object) -> str | None:
    """A key file field as an id, if it is one."""
    return value if isinstance(value, str) and value else None


KeyFileProvider = Callable[[], Mapping[str, Any]]


class TokenSource:
    """The rotator's own bearer token, from its key file.

    Callable: returns a token string, exchanging a new one when none is cached,
    when the cached one expires within ``refresh_before`` (on ``clock``) or
    after :meth:`invalidate`.  The key file comes from ``key_file_provider`` at
    every exchange, so after the rotator rotated its own key the new one is
    read (e.g. from Vault) instead of a stale copy.  Thread-safe.
    """

    def __init__(
        self,
        oidc: OidcClient,
        key_file_provider: KeyFileProvider,
        *,
        clock: Clock | None = None,
        scope: str = ZITADEL_API_SCOPE,
        refresh_before: timedelta = REFRESH_BEFORE,
    ) -> None:
        self._oidc = oidc
        self._provider = key_file_provider
        #: The key file's provider, for naming the identity in an error (visibility.py).
        self.key_file = key_file_provider
        self._clock: Clock = clock or oidc.clock
        self._scope = scope
        self._refresh_before = refresh_before
        self._token: AccessToken | None = None
        self._lock = threading.Lock()
        #: How many exchanges this source made (for tests and metrics).
        self.exchanges = 0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock.now() >= (
                self._token.expires_at - self._refresh_before
            ):
                self._token = self._oidc.exchange_jwt_bearer(
                    self._provider(), self._scope, now=self._clock.now()
                )
                self.exchanges += 1
                fence.check()  # the exchange may have outlasted the claim of the call it is for
            return self._token.token

    @property
    def expires_at(self) -> datetime | None:
        token = self._token
        return token.expires_at if token else None

    def invalidate(self) -> None:
        """Forget the cached token: the next call exchanges a new one."""
        with self._lock:
            self._token = None
