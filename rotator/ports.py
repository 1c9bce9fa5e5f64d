"""Every interface between the rotation engine and the world, in one place.

The engine (:mod:`rotator.engine`) and the daemon (:mod:`rotator.daemon`)
depend on these protocols only; implementations live at the edges:

=================  ==========================================================
port               implementations
=================  ==========================================================
ZitadelTransport   :mod:`rotator.zitadel.v2` (UserService via zitadel-client),
                   :mod:`rotator.zitadel.v1` (ManagementService over gRPC)
Verifier           :class:`rotator.zitadel.oidc.OidcClient`
SecretStore        :class:`rotator.vault.VaultStore` (KV v2)
Clock              :class:`rotator.clock.SystemClock`, ``OffsetClock``
Lease              :class:`rotator.lease.VaultLease`,
                   :class:`rotator.kube_lease.KubernetesLease`
VaultAuthMethod    :mod:`rotator.vault_auth` (token, AppRole, Kubernetes)
=================  ==========================================================

Every implementation raises only :mod:`rotator.errors` exceptions, so the
protocol never depends on a library.  The contract suites in
``tests/contract/`` run one set of tests against every implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from rotator.model import (
    Credential,
    CredentialKind,
    IssuedPat,
    IssuedSecret,
    StoredSecret,
    User,
)

if TYPE_CHECKING:
    import hvac

    from rotator.vault_auth import VaultToken


class ZitadelTransport(Protocol):
    """ZITADEL's management API for one machine user's keys, PATs and client secret."""

    #: "v1" or "v2": which API this transport speaks (for logs and status).
    api: str

    def resolve_user(self, user: str, org_id: str | None = None) -> User:
        """Find a machine user by id, login name (``name@domain``) or user name.

        ``org_id`` scopes a user-name lookup (and is the ``x-zitadel-orgid`` for v1).
        Raises ZitadelNotFound when no such user exists.
        """
        ...

    def add_key(self, user: User, public_key_pem: bytes, expires_at: datetime) -> Credential:
        """Register a locally generated RSA public key (PEM SubjectPublicKeyInfo)."""
        ...

    def list_keys(self, user: User) -> list[Credential]: ...

    def remove_key(self, user: User, key_id: str) -> None:
        """Raises ZitadelNotFound if the key does not exist (ZITADEL is not idempotent)."""
        ...

    def add_pat(self, user: User, expires_at: datetime) -> IssuedPat: ...

    def list_pats(self, user: User) -> list[Credential]: ...

    def remove_pat(self, user: User, pat_id: str) -> None: ...

    def add_secret(self, user: User) -> IssuedSecret:
        """Regenerate the user's client secret (v2 AddSecret, v1 GenerateMachineSecret).

        A user has one secret: this overwrites the existing one, which stops
        working at once (modulo ZITADEL's projection lag).  ``client_id`` of the
        answer is the login name the token endpoint wants (v2's response has
        none: the transport fills in ``user.username``).
        """
        ...

    def remove_secret(self, user: User) -> bool:
        """Remove the user's client secret: True if one was removed, False if the
        user had none (ZITADEL's FailedPrecondition
        ``Errors.User.Machine.Secret.NotExisting``), so removal is idempotent."""
        ...

    def list_org_credentials(self, kind: CredentialKind, org_id: str) -> list[Credential] | None:
        """Every key (or PAT, or secret) of every user in the org, in a few paged calls.

        A secret is reported as ``Credential(id=user id, kind=SECRET,
        user_id=user id, expires_at=NEVER_EXPIRES)`` for each user whose
        ``has_secret`` is true (one secret per user).  None when the API has no
        such listing (v1 lists per user only): the caller then lists per user.
        """
        ...

    def close(self) -> None: ...


class Verifier(Protocol):
    """Proves a credential works at ZITADEL's token or userinfo endpoint.

    Raises VerificationError (retryable while ZITADEL's projections catch up)
    or ZitadelError when ZITADEL cannot be asked.
    """

    def verify_key(self, key_file: Mapping[str, Any]) -> None: ...

    def verify_pat(
        self, token: str, user_id: str | None = None, *, pat_id: str | None = None
    ) -> None: ...

    def verify_secret(self, client_id: str, client_secret: str, *, user_id: str) -> None:
        """One real ``client_credentials`` token request, then userinfo ``sub`` ==
        ``user_id``.  Retrying through projection lag is the caller's job."""
        ...


class SecretStore(Protocol):
    """KV v2 semantics; paths are relative to the configured mount."""

    def read(self, path: str) -> StoredSecret | None:
        """The latest version, or None when the path has no live version."""
        ...

    def write(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Write a new version if the current version is ``cas`` (0: must not exist).

        Returns the new version number.  Raises CasConflict when another writer
        won.  ``custom_metadata`` replaces the secret's custom metadata after the
        data write succeeded.
        """
        ...

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        """Destroy those versions' data for good (KV v2 ``destroy``); metadata stays."""
        ...

    def delete_all(self, path: str) -> None:
        """Remove every version and the metadata of ``path`` (absent is fine)."""
        ...

    def check(self) -> None:
        """Raise VaultError unless Vault is reachable, unsealed and our token is valid."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None: ...


class Lease(Protocol):
    """A lease that at most one replica holds."""

    def try_acquire(self) -> bool:
        """Take the lease if free or expired, renew it if ours; True while we hold it."""
        ...

    def release(self) -> None:
        """Give the lease up now (another replica may take it at its next poll)."""
        ...

    @property
    def is_held(self) -> bool:
        """Whether our last successful write is still unexpired (by our clock)."""
        ...


class VaultAuthMethod(Protocol):
    """One way of logging in to Vault."""

    @property
    def name(self) -> str:
        """The method's name ("token", "approle", "kubernetes"), used in messages."""
        ...

    def login(self, client: hvac.Client, now: datetime) -> VaultToken:
        """Obtain a token using ``client``'s connection; ``client`` itself is left as it is."""
        ...


__all__ = [
    "Clock",
    "Lease",
    "SecretStore",
    "VaultAuthMethod",
    "Verifier",
    "ZitadelTransport",
]
