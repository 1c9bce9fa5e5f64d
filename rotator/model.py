"""Plain data: what a target is, which policy and schedule apply, and what
ZITADEL and Vault tell about credentials and secrets.  No I/O here.

The interfaces that produce and consume these values are in
:mod:`rotator.ports`; the engine's own bookkeeping is in :mod:`rotator.state`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # windows.py imports this module at run time
    from rotator.windows import FreezeWindow, RotationWindow


class CredentialKind(StrEnum):
    KEY = "key"
    PAT = "pat"
    SECRET = "secret"  # noqa: S105 (a kind name, not a password)


#: ZITADEL's v1 "no expiry" default.  A client secret has no expiration date;
#: a :class:`Credential` describing one carries this expiry.
NEVER_EXPIRES = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    CLI = "cli"


@dataclass(frozen=True)
class Policy:
    #: Validity of a new credential; its expiry is 00:00 UTC of the day this far ahead.
    lifetime: timedelta = timedelta(days=30)
    #: Rotate when the current credential expires within this.
    renew_before: timedelta = timedelta(days=10)
    #: The old credential stays valid this long after the new one is promoted.
    grace: timedelta = timedelta(days=1)
    #: The old credential is removed at least this long before its own expiry.
    retire_margin: timedelta = timedelta(hours=1)
    #: How long verification of a new credential may keep retrying
    #: (ZITADEL's projections make a new key usable only after a moment).
    verify_timeout: timedelta = timedelta(minutes=2)


@dataclass(frozen=True)
class Schedule:
    #: Rotations (not retirements) start only inside one of these; empty = any time.
    windows: tuple[RotationWindow, ...] = ()
    #: Rotations are held back inside any of these.
    freeze: tuple[FreezeWindow, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    user: str
    kind: CredentialKind
    vault_path: str
    org_id: str | None = None
    policy: Policy = field(default_factory=Policy)
    #: Take over a credential found in ``vault_path`` that the rotator did not create.
    adopt: bool = False
    #: When a fresh rotation may start (windows and freezes).
    schedule: Schedule = field(default_factory=Schedule)
    #: The user's organization by name or domain instead of ``org_id`` (resolved
    #: once through ZITADEL: rotator/zitadel/orgs.py).  Out of ``repr`` so that
    #: fingerprints of targets without it stay as they were (failures.digest).
    org: str | None = field(default=None, repr=False)
    #: Two-identity target (``users: [a, b]``): two machine users with the same
    #: grants, used in turn, so a rotation never touches the credential in use.
    #: Empty for a single-identity target; ``user`` is then the only user (and
    #: with two, the first of them).
    users: tuple[str, ...] = ()

    @property
    def identities(self) -> tuple[str, ...]:
        """Every user this target rotates, as configured."""
        return self.users or (self.user,)

    @property
    def two_identities(self) -> bool:
        return len(self.users) == 2


# --------------------------------------------------------------------------- ZITADEL


@dataclass(frozen=True)
class User:
    id: str
    org_id: str
    username: str
    active: bool = True
    machine: bool = True
    #: Whether the user has a client secret; None when the call that produced
    #: this User did not say.
    has_secret: bool | None = None


@dataclass(frozen=True)
class Credential:
    """What ZITADEL tells about a key or PAT: never secret."""

    id: str
    kind: CredentialKind
    user_id: str
    expires_at: datetime
    created_at: datetime | None = None


def secret_credential(user_id: str) -> Credential:
    """A user's client secret as a Credential: one per user, so the user id names
    it; it never expires."""
    return Credential(
        id=user_id, kind=CredentialKind.SECRET, user_id=user_id, expires_at=NEVER_EXPIRES
    )


@dataclass(frozen=True)
class IssuedPat:
    """A PAT as returned once by ZITADEL.  ``token`` is secret: kept out of repr."""

    credential: Credential
    token: str = field(repr=False)


@dataclass(frozen=True)
class IssuedSecret:
    """A client secret as returned once by ZITADEL.  ``secret`` is secret: kept out of repr."""

    user_id: str
    #: The user's login name / user name, as the token endpoint wants it (zitadel-api.md §7.3).
    client_id: str
    secret: str = field(repr=False)
    created_at: datetime | None = None


# --------------------------------------------------------------------------- Vault


@dataclass(frozen=True)
class StoredSecret:
    """One KV v2 secret as read.  ``data`` may hold secret material: never log it."""

    path: str
    version: int
    data: Mapping[str, Any] = field(repr=False)
    custom_metadata: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- web keys


@dataclass(frozen=True)
class Algorithm:
    """``rsa`` (bits 2048/3072/4096, hasher sha256/384/512), ``ecdsa`` (curve
    P256/P384/P521) or ``ed25519``."""

    kind: str = "rsa"
    bits: int = 2048
    hasher: str = "sha256"
    curve: str = "P256"

    def request(self) -> dict[str, Any]:
        """The CreateWebKeyRequest ``key`` oneof (protojson)."""
        if self.kind == "ecdsa":
            # ZITADEL's enum calls P-521 "P512" (§12)
            name = {"P256": "P256", "P384": "P384", "P521": "P512"}[self.curve]
            return {"ecdsa": {"curve": f"ECDSA_CURVE_{name}"}}
        if self.kind == "ed25519":
            return {"ed25519": {}}
        return {"rsa": {"bits": f"RSA_BITS_{self.bits}",
                        "hasher": f"RSA_HASHER_{self.hasher.upper()}"}}

    def describe(self) -> str:
        if self.kind == "ecdsa":
            return f"ECDSA {self.curve}"
        if self.kind == "ed25519":
            return "Ed25519"
        return f"RSA-{self.bits}/{self.hasher.upper()}"


@dataclass(frozen=True)
class WebKeyInfo:
    id: str
    #: "INITIAL", "ACTIVE", "INACTIVE" (REMOVED keys are not listed)
    state: str
    created: datetime | None
