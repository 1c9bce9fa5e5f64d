"""The secret store on HashiCorp Vault / OpenBao KV v2 (hvac).

Every hvac and requests exception is translated here into :mod:`rotator.errors`;
nothing above this module sees a transport exception.  Messages are built
from the mount, the path, the operation and the HTTP status, plus a few
well-known Vault phrases ("Vault is sealed", "permission denied"...) chosen
from a fixed list: the response body itself is never copied, and neither the
data nor the token ever appears.

``custom_metadata`` replaces the secret's custom metadata after the data
write; keys whose value is empty are left out, since KV v2 refuses empty
values (so ``{"previous_credential_id": ""}`` clears that key).

Writes are always check-and-set.  ``cas=0`` means "no live version": a path
whose latest version was soft-deleted or destroyed (``vault kv delete``) counts
as absent, and is written over with the version KV v2 actually expects, still
under check-and-set.

Retries.  A :class:`VaultUnavailable` (unreachable, timeout, sealed, 429, 5xx)
is retried a few times with exponential backoff (:class:`RetryPolicy`); every
other error is final.  A write whose attempt failed that way has an *unknown*
outcome: Vault may have stored it before the connection broke.  The retry
sends the same check-and-set version, so it cannot overwrite anything; if it
then loses with :class:`CasConflict`, the store reads the secret once and
accepts the write as its own when the latest version is exactly ``cas + 1``
and holds exactly the data we sent (rotated credentials are fresh random
material, so equal data means our write).  Otherwise the conflict stands.
Nothing else is retried behind the caller's back.

Authentication.  Before each request the store asks its :class:`VaultAuth`
to make the token valid (renew or log in again when it nears expiry).  On a
403 the store logs in again once and repeats the request, so a token that
expired or was revoked between two checks costs a round-trip, not a failed
rotation; a second 403 is a real :class:`VaultPermissionDenied`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests

from rotator import netcause
from rotator.clock import Clock, SystemClock
from rotator.errors import (
    CasConflict,
    RotatorError,
    VaultError,
    VaultPermissionDenied,
    VaultUnavailable,
)
from rotator.model import StoredSecret
from rotator.vault_http import VaultSession

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Vault's own words that are safe and useful to repeat in an error message.
_KNOWN_PHRASES = (
    "Vault is sealed",
    "permission denied",
    "check-and-set parameter did not match the current version",
    "check-and-set parameter required for this call",
    "invalid role or secret ID",
    "invalid role ID",
    "invalid secret id",
    "role not found",
    "service account name not authorized",
    "namespace not authorized",
    "no handler for route",
    "rate limit quota exceeded",
    # OpenBao's JSON limits (a request with more than 1,000 strings, keys included)
    "refused JSON input due to high complexity",
    "custom_metadata validation failed",
    "past the max TTL, cannot renew",
    "local node not active but active cluster node not found",
)

#: Vault answers 403 both for a token it does not know and for one whose
#: policies do not grant lookup-self: the message must name both causes.
LOOKUP_SELF_DENIED = (
    "the token is invalid or expired, or its policies do not grant `read` on "
    "auth/token/lookup-self (Vault's `default` policy and config/vault/rotator.hcl do)"
)

_STATUS_OF: dict[type[hvac.exceptions.VaultError], int] = {
    hvac.exceptions.InvalidRequest: 400,
    hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.PreconditionFailed: 412,
    hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500,
    hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502,
    hvac.exceptions.VaultDown: 503,
}


def _phrase(exc: hvac.exceptions.VaultError) -> str | None:
    """The first well-known Vault phrase in the error list, or None."""
    for error in exc.errors or ():
        for phrase in _KNOWN_PHRASES:
            if phrase.lower() in str(error).lower():
                return phrase
    return None


def translate(exc: BaseException, *, action: str, path: str | None) -> RotatorError:
    """Map an hvac/requests exception to a :mod:`rotator.errors` one, safely worded.

    ``action`` says what we tried ("read", "write", "AppRole login"...);
    ``path`` is the full Vault path (mount included), never the data.
    """
    if isinstance(exc, RotatorError):
        return exc
    if isinstance(exc, requests.exceptions.Timeout):
        return _network(VaultUnavailable(f"{action}: Vault{_at(exc)} timed out", path=path), exc)
    if isinstance(exc, requests.exceptions.ConnectionError):
        # the address and the cause: refused, DNS, TLS (which problem), reset
        return _network(
            VaultUnavailable(
                f"{action}: cannot connect to Vault{_at(exc)}: {netcause.cause(exc)}", path=path
            ),
            exc,
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultUnavailable(f"{action}: {type(exc).__name__}", path=path)
    if isinstance(exc, hvac.exceptions.VaultError):
        status = _STATUS_OF.get(type(exc))
        phrase = _phrase(exc)
        detail = f"{action}: {phrase or type(exc).__name__}" + (f" ({status})" if status else "")
        if phrase == "check-and-set parameter did not match the current version":
            return CasConflict(detail, path=path, status=status)
        if status in (401, 403):
            return VaultPermissionDenied(detail, path=path, status=status)
        if (
            status is None  # UnexpectedError: a status hvac has no class for (504, 409...)
            or status >= 500
            or status in (412, 429)
        ):
            return VaultUnavailable(detail, path=path, status=status)
        return VaultError(detail, path=path, status=status)
    return VaultError(f"{action}: unexpected {type(exc).__name__}", path=path)


def _at(exc: requests.exceptions.RequestException) -> str:
    """`` at scheme://host:port`` of the request that failed (never its path or query)."""
    url = getattr(getattr(exc, "request", None), "url", None)
    return f" at {netcause.address(url)}" if url else ""


def _network(error: RotatorError, exc: BaseException) -> RotatorError:
    """``error`` caused by ``exc``: a failure below HTTP carries no answer from
    Vault, so ``--debug`` may show it (scrubbed, :mod:`rotator.causes`)."""
    error.__cause__ = exc
    return error


def call_vault(action: str, path: str | None, fn: Callable[[], T]) -> T:
    """Run one hvac call, translating whatever it raises."""
    try:
        return fn()
    except Exception as exc:
        error = translate(exc, action=action, path=path)
    raise error  # outside the except block: the hvac exception is not chained


class VaultAuth(Protocol):
    """What the store needs from an authenticator (see :mod:`rotator.vault_auth`)."""

    def ensure_valid(self, client: hvac.Client) -> None:
        """Give ``client`` a token that is valid for a while yet."""
        ...

    def relogin(self, client: hvac.Client) -> None:
        """The token was refused: obtain a new one, whatever the bookkeeping says."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for :class:`VaultUnavailable`."""

    attempts: int = 3
    initial_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 2.0

    def delays(self) -> list[float]:
        """The waits between attempts (``attempts - 1`` of them)."""
        out, delay = [], self.initial_delay
        for _ in range(max(self.attempts - 1, 0)):
            out.append(min(delay, self.max_delay))
            delay *= self.multiplier
        return out


NO_RETRY = RetryPolicy(attempts=1)


def _normalise(path: str) -> str:
    clean = path.strip("/")
    if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
        raise ValueError(f"invalid Vault secret path {path!r}")
    return clean


def _as_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as it will read back from Vault (tuples become lists, ...)."""
    result: dict[str, Any] = json.loads(json.dumps(dict(data)))
    return result


def _metadata_payload(custom_metadata: Mapping[str, str]) -> dict[str, str]:
    """KV v2 refuses empty values (1..512 characters): an empty value means "no such key"."""
    return {key: str(value) for key, value in custom_metadata.items() if value not in ("", None)}


class VaultStore:
    """:class:`rotator.ports.SecretStore` on one KV v2 mount."""

    def __init__(
        self,
        client: hvac.Client,
        mount: str,
        *,
        auth: VaultAuth | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self.mount = mount.strip("/")
        self._auth = auth
        self._retry = retry or RetryPolicy()
        self._clock = clock or SystemClock()

    @classmethod
    def connect(
        cls,
        url: str,
        mount: str,
        *,
        auth: VaultAuth | None = None,
        timeout: float = 10.0,
        ca_file: str | None = None,
        namespace: str | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> VaultStore:
        """A store with its own hvac client; ``timeout`` bounds every request (seconds)."""
        session = VaultSession(url, ca_file)
        client = hvac.Client(
            url=url,
            timeout=timeout,
            verify=session.verify,
            namespace=namespace,
            session=session,
        )
        return cls(client, mount, auth=auth, retry=retry, clock=clock)

    @property
    def client(self) -> hvac.Client:
        """The hvac client (with the current token), for other Vault-backed helpers."""
        return self._client

    def full_path(self, path: str) -> str:
        return f"{self.mount}/{_normalise(path)}"

    # -- the SecretStore protocol ---------------------------------------------

    def read(self, path: str) -> StoredSecret | None:
        path = _normalise(path)
        try:
            response = self._call(
                "read",
                path,
                lambda: self._client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=self.mount, raise_on_deleted_version=False
                ),
            )
        except VaultError as exc:
            if exc.status == 404:
                return None
            raise
        body = response.get("data") or {}
        data = body.get("data")
        metadata = body.get("metadata") or {}
        if data is None:  # the latest version is deleted or destroyed
            return None
        return StoredSecret(
            path=path,
            version=int(metadata["version"]),
            data=data,
            custom_metadata=dict(metadata.get("custom_metadata") or {}),
        )

    def write(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        path = _normalise(path)
        if cas < 0:
            raise ValueError("cas must be >= 0")
        payload = _as_json(data)
        try:
            version = self._cas_write(path, payload, cas)
        except CasConflict:
            if cas != 0:
                raise
            # cas=0 means "no live version"; KV v2 wants the current (deleted) one.
            current = self._current_version_if_dead(path)
            if current is None:
                raise
            version = self._cas_write(path, payload, current)
        if custom_metadata is not None:
            try:
                self._call(
                    "write custom_metadata",
                    path,
                    lambda: self._client.adapter.post(
                        f"/v1/{self.mount}/metadata/{path}",
                        json={"custom_metadata": _metadata_payload(custom_metadata)},
                    ),
                )
            except VaultError as exc:
                # The data is stored; say so, so the caller can tell what happened.
                raise type(exc)(
                    f"data written as version {version} but custom_metadata not updated: "
                    f"{str(exc).split(': ', 1)[-1]}",
                    path=exc.path,
                    status=exc.status,
                ) from None
        return version

    def delete_all(self, path: str) -> None:
        path = _normalise(path)
        try:
            self._call(
                "delete",
                path,
                lambda: self._client.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=path, mount_point=self.mount
                ),
            )
        except VaultError as exc:
            if exc.status != 404:
                raise

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        """Destroy ``versions`` of ``path`` for good (KV v2 ``destroy``): their data
        is gone, their metadata and every other version stay.

        Used so the KV history does not keep secret material (a pending private
        key) once it is no longer needed.  Versions that do not exist, or are
        already destroyed, are no error (KV v2 ignores them); nothing to do
        sends nothing.
        """
        path = _normalise(path)
        chosen = sorted({int(v) for v in versions})
        if any(v < 1 for v in chosen):
            raise ValueError("KV v2 versions start at 1")
        if not chosen:
            return
        self._call(
            "destroy versions " + ",".join(map(str, chosen)),
            path,
            lambda: self._client.secrets.kv.v2.destroy_secret_versions(
                path=path, versions=chosen, mount_point=self.mount
            ),
        )

    def check(self) -> None:
        """Reachable, unsealed, our token valid, and the mount a KV v2 engine we can use."""
        logins = getattr(self._auth, "logins", None)
        if self._auth is not None:
            # Log in first: a token "login" is a lookup-self itself, and a second
            # one a moment later would tell nothing new (a round trip at every start).
            self._call("token lookup-self", None, lambda: None, full_path="auth/token/lookup-self")
        just_looked_up = getattr(self._auth, "token_looked_up", False) and (
            getattr(self._auth, "logins", None) != logins
        )
        if not just_looked_up:
            self._call(
                "token lookup-self",
                None,
                self._lookup_self,
                full_path="auth/token/lookup-self",
            )

        def probe() -> None:
            mount = self._client.adapter.get(f"/v1/sys/internal/ui/mounts/{self.mount}")
            info = mount.get("data") or {}
            if (
                info.get("type") not in ("kv", "generic")
                or (info.get("options") or {}).get("version") != "2"
            ):
                raise VaultError(f"mount {self.mount!r} is not a KV v2 secrets engine")

        self._call("check", None, probe, full_path=f"{self.mount}/")

    # -- internals -------------------------------------------------------------

    def _lookup_self(self) -> None:
        try:
            self._client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            raise VaultPermissionDenied(
                f"token lookup-self refused (403): {LOOKUP_SELF_DENIED}",
                path="auth/token/lookup-self",
                status=403,
            ) from None

    def _cas_write(self, path: str, payload: dict[str, Any], cas: int) -> int:
        """One logical CAS write, retried on unavailability (see the module docstring)."""
        uncertain = False
        delays = self._retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                response = self._call(
                    "write",
                    path,
                    lambda: self._client.secrets.kv.v2.create_or_update_secret(
                        path=path, secret=payload, cas=cas, mount_point=self.mount
                    ),
                    retry=NO_RETRY,
                )
                return int(response["data"]["version"])
            except CasConflict:
                if uncertain and self._is_our_write(path, payload, cas):
                    log.info(
                        "vault write confirmed after retry",
                        extra={"vault_path": self.full_path(path), "version": cas + 1},
                    )
                    return cas + 1
                raise
            except VaultUnavailable as exc:
                uncertain = True
                if attempt == len(delays):
                    raise
                self._log_retry("write", path, exc, attempt, delays[attempt])
                self._clock.sleep(delays[attempt])
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_our_write(self, path: str, payload: dict[str, Any], cas: int) -> bool:
        current = self.read(path)
        return current is not None and current.version == cas + 1 and current.data == payload

    def _current_version_if_dead(self, path: str) -> int | None:
        """The current version number when it is deleted or destroyed, else None."""
        try:
            response = self._call(
                "read metadata",
                path,
                lambda: self._client.secrets.kv.v2.read_secret_metadata(
                    path=path, mount_point=self.mount
                ),
            )
        except VaultError as exc:
            if exc.status == 404:
                return None
            raise
        meta = response.get("data") or {}
        current = int(meta.get("current_version") or 0)
        version = (meta.get("versions") or {}).get(str(current)) or {}
        if current and (version.get("deletion_time") or version.get("destroyed")):
            return current
        return None

    def _call(
        self,
        action: str,
        path: str | None,
        fn: Callable[[], T],
        *,
        retry: RetryPolicy | None = None,
        full_path: str | None = None,
    ) -> T:
        """Authenticate, run ``fn``, translate errors; re-login once on 403, back off on 5xx."""
        where = full_path or (self.full_path(path) if path else None)
        delays = (retry or self._retry).delays()
        relogged = False
        attempt = 0
        while True:
            try:
                if self._auth is not None:
                    # A refused login is final here: re-trying it would be refused again.
                    self._auth.ensure_valid(self._client)
                return fn()
            except Exception as raw:
                exc = translate(raw, action=action, path=where)
                came_from_request = not isinstance(raw, RotatorError)
            # Outside the except block, so no hvac exception (whose text quotes
            # Vault's response) is chained to what we raise next.
            if (
                isinstance(exc, VaultPermissionDenied)
                and came_from_request
                and self._auth is not None
                and not relogged
            ):
                # Maybe our token expired or was revoked: one fresh login, then retry.
                relogged = True
                log.info(
                    "vault refused the token, logging in again",
                    extra={"vault_path": where, "action": action},
                )
                self._auth.relogin(self._client)
                continue
            if isinstance(exc, VaultUnavailable) and attempt < len(delays):
                self._log_retry(action, path, exc, attempt, delays[attempt])
                self._clock.sleep(delays[attempt])
                attempt += 1
                continue
            raise exc

    def _log_retry(
        self, action: str, path: str | None, exc: VaultError, attempt: int, delay: float
    ) -> None:
        log.warning(
            "vault unavailable, retrying",
            extra={
                "vault_path": self.full_path(path) if path else self.mount,
                "action": action,
                "status": exc.status,
                "attempt": attempt + 1,
                "delay_seconds": delay,
            },
        )
