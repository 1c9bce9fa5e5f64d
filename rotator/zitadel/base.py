"""The narrow interface between the rotation engine and ZITADEL.

Two implementations exist: :mod:`rotator.zitadel.v2` (UserService through the
official ``zitadel-client`` SDK, ZITADEL >= 4.0) and :mod:`rotator.zitadel.v1`
(ManagementService over gRPC, every version).  Both raise only
:class:`rotator.errors.ZitadelError` subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class CredentialKind(StrEnum):
    KEY = "key"
    PAT = "pat"


@dataclass(frozen=True)
class User:
    id: str
    org_id: str
    username: str
    active: bool = True
    machine: bool = True


@dataclass(frozen=True)
class Credential:
    """What ZITADEL tells about a key or PAT: never secret."""

    id: str
    kind: CredentialKind
    user_id: str
    expires_at: datetime
    created_at: datetime | None = None


@dataclass(frozen=True)
class IssuedPat:
    """A PAT as returned once by ZITADEL.  ``token`` is secret: kept out of repr."""

    credential: Credential
    token: str = field(repr=False)


class ZitadelTransport(Protocol):
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

    def close(self) -> None: ...
