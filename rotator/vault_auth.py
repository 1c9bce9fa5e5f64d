"""How the rotator obtains, renews and replaces its Vault token.

Three methods, each a small class with ``login(client) -> VaultToken``:

- :class:`TokenMethod`: a token from a file (re-read on every login, so a
  Vault Agent sink works) or from an environment variable (``VAULT_TOKEN``);
- :class:`AppRoleMethod`: ``role_id`` + ``secret_id`` (each literal, from a
  file or from an environment variable);
- :class:`KubernetesMethod`: a Vault role + the pod's service-account JWT
  (re-read on every login: projected tokens rotate).

The :class:`Authenticator` keeps the current token and is called by
:class:`rotator.vault.VaultStore` before every request.  Once a token is
past ``renew_fraction`` (default half) of its TTL it is renewed
(``renew-self``) when renewable; when it is not renewable, the renewal fails,
or Vault grants less than that fraction again (its max TTL is near), the
method logs in afresh.  The store also calls :meth:`Authenticator.relogin`
when Vault answers 403, then retries once: a token that expired or was
revoked early is replaced without failing the operation in flight.

Tokens live in memory only (``repr=False``); no message names them.  A
token needs ``read`` on ``auth/token/lookup-self`` and ``update`` on
``auth/token/renew-self``: Vault's ``default`` policy grants both, and so does
the shipped ``config/vault/rotator.hcl``, which is enough on its own.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hvac
from hvac.adapters import Adapter
from hvac.api.auth_methods import AppRole, Kubernetes
from hvac.api.auth_methods.token import Token

from rotator.clock import SystemClock
from rotator.errors import ConfigError, VaultError, VaultPermissionDenied, VaultUnavailable
from rotator.ports import Clock, VaultAuthMethod
from rotator.vault import LOOKUP_SELF_DENIED, RetryPolicy, VaultStore, call_vault

if TYPE_CHECKING:
    from rotator.config import VaultAuthConfig, VaultConfig

log = logging.getLogger(__name__)

DEFAULT_K8S_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class VaultToken:
    """A token and what Vault told us about its lifetime."""

    token: str = field(repr=False)
    #: Seconds the token was valid for when obtained; 0 = it never expires.
    ttl: float
    renewable: bool
    obtained_at: datetime

    @property
    def expires_at(self) -> datetime | None:
        return None if self.ttl <= 0 else self.obtained_at + timedelta(seconds=self.ttl)


@dataclass(frozen=True)
class SecretSource:
    """Where a credential comes from: a literal value, a file, or an environment variable.

    Read at every login, never cached; ``describe()`` names the source, not the value.
    """

    value: str | None = field(default=None, repr=False)
    file: str | None = None
    env: str | None = None
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        if self.file:
            return f"file {self.file}"
        if self.env:
            return f"environment variable {self.env}"
        return "configured value"

    def read(self, what: str) -> str:
        if self.value is not None:
            text = self.value
        elif self.file:
            try:
                text = Path(self.file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read {what} from {self.file}: {exc.strerror or type(exc).__name__}"
                ) from None
        elif self.env:
            environ = os.environ if self.environ is None else self.environ
            text = environ.get(self.env, "")
        else:
            raise ConfigError(f"no source configured for {what}")
        text = text.strip()
        if not text:
            raise ConfigError(f"{what} from {self.describe()} is empty or not set")
        return text


def _adapter_with(client: hvac.Client, token: str | None) -> Adapter:
    """``client``'s connection settings with another token (None: anonymous).

    Logins run on this copy, so requests that other threads are sending on
    ``client`` at the same moment keep the current token.
    """
    adapter = copy.copy(client.adapter)
    adapter.token = token
    return adapter


def _from_auth(auth: Mapping[str, Any], now: datetime) -> VaultToken:
    return VaultToken(
        token=str(auth["client_token"]),
        ttl=float(auth.get("lease_duration") or 0),
        renewable=bool(auth.get("renewable")),
        obtained_at=now,
    )



def _refused(exc: VaultError, method: str, source: str) -> VaultError:
    """A login refusal names the method and where the credential came from."""
    if isinstance(exc, VaultUnavailable):
        return exc
    if method == "token" and exc.status == 403:
        # "Login" with a token is a lookup-self: a refusal may be the policy's, not the token's.
        return VaultPermissionDenied(
            f"token lookup-self refused (403): {LOOKUP_SELF_DENIED}; the token comes from {source}",
            path=exc.path,
            status=exc.status,
        )
    return VaultPermissionDenied(
        f"{method} login refused ({exc.status or 'no status'}); check the credential in {source}",
        path=exc.path,
        status=exc.status,
    )


@dataclass(frozen=True)
class TokenMethod:
    """A token handed to us (env var or file); "login" means re-read it and look it up."""

    source: SecretSource = field(default_factory=lambda: SecretSource(env="VAULT_TOKEN"))
    name: str = "token"

    def login(self, client: hvac.Client, now: datetime) -> VaultToken:
        token = self.source.read("Vault token")
        try:
            info = call_vault(
                "token lookup-self",
                "auth/token/lookup-self",
                Token(_adapter_with(client, token)).lookup_self,
            )
        except VaultError as exc:
            # a network failure (the only chained cause) stays chained for --debug
            raise _refused(exc, self.name, self.source.describe()) from exc.__cause__
        data = info.get("data") or {}
        return VaultToken(
            token=token,
            ttl=float(data.get("ttl") or 0),
            renewable=bool(data.get("renewable")),
            obtained_at=now,
        )


@dataclass(frozen=True)
class AppRoleMethod:
    role_id: SecretSource
    secret_id: SecretSource
    mount_path: str = "approle"
    name: str = "approle"

    def login(self, client: hvac.Client, now: datetime) -> VaultToken:
        role_id = self.role_id.read("AppRole role_id")
        secret_id = self.secret_id.read("AppRole secret_id")
        try:
            response = call_vault(
                "AppRole login",
                f"auth/{self.mount_path}/login",
                lambda: AppRole(_adapter_with(client, None)).login(
                    role_id=role_id,
                    secret_id=secret_id,
                    use_token=False,
                    mount_point=self.mount_path,
                ),
            )
        except VaultError as exc:
            raise _refused(exc, self.name, self.secret_id.describe()) from exc.__cause__
        return _from_auth(response["auth"], now)


@dataclass(frozen=True)
class KubernetesMethod:
    role: str
    jwt_file: str = DEFAULT_K8S_JWT_FILE
    mount_path: str = "kubernetes"
    name: str = "kubernetes"

    def login(self, client: hvac.Client, now: datetime) -> VaultToken:
        jwt = SecretSource(file=self.jwt_file).read("service-account token")
        try:
            response = call_vault(
                "Kubernetes login",
                f"auth/{self.mount_path}/login",
                lambda: Kubernetes(_adapter_with(client, None)).login(
                    role=self.role, jwt=jwt, use_token=False, mount_point=self.mount_path
                ),
            )
        except VaultError as exc:
            source = f"role {self.role!r}, {self.jwt_file}"
            raise _refused(exc, self.name, source) from exc.__cause__
        return _from_auth(response["auth"], now)


class Authenticator:
    """Keeps one Vault token valid: login, renew-self past ``renew_fraction`` of its TTL, re-login.

    Thread-safe: the scheduler and the health endpoint may share it.
    """

    def __init__(
        self,
        method: VaultAuthMethod,
        *,
        clock: Clock | None = None,
        renew_fraction: float = 0.5,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self.method = method
        self._clock = clock or SystemClock()
        self._renew_fraction = renew_fraction
        self._token: VaultToken | None = None
        self._lock = threading.RLock()
        #: How often each thing happened; for tests and metrics.
        self.logins = 0
        self.renewals = 0

    @property
    def token_looked_up(self) -> bool:
        """The current token was obtained by a lookup-self (the token method's
        login), so it is known valid and allowed ``auth/token/lookup-self``."""
        return self._token is not None and self.method.name == "token"

    @property
    def expires_at(self) -> datetime | None:
        """When the current token expires (None: no token yet, or it never expires)."""
        token = self._token
        return token.expires_at if token else None

    def ensure_valid(self, client: hvac.Client) -> None:
        with self._lock:
            token = self._token
            if token is None:
                self._login(client)
                return
            if client.token != token.token:
                client.token = token.token
            expires_at = token.expires_at
            if expires_at is None:
                return
            now = self._clock.now()
            remaining = (expires_at - now).total_seconds()
            if remaining > token.ttl * self._renew_fraction:
                return
            if token.renewable and remaining > 0 and self._renew(client, token, now):
                return
            self._login(client)

    def relogin(self, client: hvac.Client) -> None:
        with self._lock:
            self._login(client)

    def _renew(self, client: hvac.Client, token: VaultToken, now: datetime) -> bool:
        """Renew the token; False when a fresh login is the better answer."""
        try:
            response = call_vault(
                "token renew-self", "auth/token/renew-self", client.auth.token.renew_self
            )
        except VaultError as exc:
            # Whatever the reason (refused, revoked, "past the max TTL" which
            # Vault answers with a 500), a fresh login is the way on; if Vault
            # is really down, that login says so.
            log.info(
                "vault token renewal refused, logging in again",
                extra={"method": self.method.name, "status": exc.status},
            )
            return False
        renewed = _from_auth(response.get("auth") or {"client_token": token.token}, now)
        renewed = VaultToken(
            token=token.token, ttl=renewed.ttl, renewable=renewed.renewable, obtained_at=now
        )
        self.renewals += 1
        if renewed.ttl > token.ttl * self._renew_fraction:
            self._token = renewed
            log.info(
                "vault token renewed",
                extra={"method": self.method.name, "ttl_seconds": renewed.ttl},
            )
            return True
        # Vault granted little: the token is near its max TTL.  Log in afresh;
        # if that yields the same token (token method), keep the renewed one.
        self._token = renewed
        return False

    def _login(self, client: hvac.Client) -> None:
        token = self.method.login(client, self._clock.now())
        self._token = token
        client.token = token.token
        self.logins += 1
        log.info(
            "vault login",
            extra={
                "method": self.method.name,
                "ttl_seconds": token.ttl,
                "renewable": token.renewable,
            },
        )


def method_from_config(
    config: VaultAuthConfig, environ: Mapping[str, str] | None = None
) -> VaultAuthMethod:
    """The :class:`VaultAuthMethod` for the ``vault.auth`` section of the configuration."""
    method = config.method
    if method == "token":
        if config.token_file:
            return TokenMethod(SecretSource(file=config.token_file))
        return TokenMethod(SecretSource(env=config.token_env, environ=environ))
    if method == "approle":
        return AppRoleMethod(
            role_id=SecretSource(value=config.role_id, file=config.role_id_file),
            secret_id=SecretSource(
                file=config.secret_id_file, env=config.secret_id_env, environ=environ
            ),
            mount_path=config.mount_path or "approle",
        )
    if method == "kubernetes":
        if not config.role:
            raise ConfigError("is required for the kubernetes method", field="vault.auth.role")
        return KubernetesMethod(
            role=config.role,
            jwt_file=config.jwt_file or DEFAULT_K8S_JWT_FILE,
            mount_path=config.mount_path or "kubernetes",
        )
    raise ConfigError(f"unknown method {method!r}", field="vault.auth.method")


def connect(
    config: VaultConfig,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    retry: RetryPolicy | None = None,
) -> VaultStore:
    """A :class:`VaultStore` for the ``vault`` section, authenticated by its ``auth`` method.

    Nothing is sent to Vault yet: the first request logs in (call ``check()``
    to fail fast).  ``clock`` paces the retries only: token lifetimes are
    Vault's real time, so the authenticator always runs on the system clock
    (an engine clock moved forward in tests must not age the token).
    """
    auth = Authenticator(method_from_config(config.auth, environ), clock=SystemClock())
    return VaultStore.connect(
        config.url,
        config.mount,
        auth=auth,
        timeout=config.timeout.total_seconds(),
        ca_file=config.ca_file,
        namespace=config.namespace,
        retry=retry,
        clock=clock,
    )
