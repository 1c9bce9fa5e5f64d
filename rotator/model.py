"""Plain data: what a target is, which policy applies, and the state the
engine keeps for it in Vault.  No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from rotator.zitadel.base import CredentialKind


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
class Target:
    name: str
    user: str
    kind: CredentialKind
    vault_path: str
    org_id: str | None = None
    policy: Policy = field(default_factory=Policy)
    #: Take over a credential found in ``vault_path`` that the rotator did not create.
    adopt: bool = False
