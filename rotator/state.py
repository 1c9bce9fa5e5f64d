"""The engine's bookkeeping for one target, as kept in Vault.

It lives in the same KV v2 mount as the consumer secret, under
``<state_prefix>/targets/<target>``, and is only ever written with
check-and-set.  It is the write-ahead log of the rotation protocol: the
intent to create a credential is recorded here *before* ZITADEL is called, so
a rotator that dies at any point finds on restart exactly what it was doing.

Only the ``pending`` record holds secret material (the new private key or
PAT between creation and promotion); Vault is the one place allowed to hold it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


class Phase(StrEnum):
    #: Intent recorded; ZITADEL may or may not have created the credential.
    CREATING = "creating"
    #: Credential exists in ZITADEL and its secret is held in ``pending.secret``.
    CREATED = "created"
    #: Proven to work at ZITADEL's token endpoint; next is promotion.
    VERIFIED = "verified"
    #: Given up (never verified, or found unfinished in phase CREATING): the
    #: credential is being removed from ZITADEL; the record goes once it is gone.
    ABANDONED = "abandoned"


@dataclass
class CredentialRef:
    id: str
    expires_at: datetime
    created_at: datetime | None = None
    #: False for a credential adopted from an existing secret (``adopt: true``).
    created_by_rotator: bool = True
    #: The identity (machine user) it belongs to; "" = the target's only user
    #: (state written before two-identity targets existed).
    user_id: str = ""


@dataclass
class PreviousCredential:
    id: str
    expires_at: datetime
    retire_at: datetime
    created_by_rotator: bool = True
    user_id: str = ""


@dataclass
class Pending:
    rotation_id: str
    trigger: str
    phase: Phase
    started_at: datetime
    expires_at: datetime
    credential_id: str | None = None
    #: The consumer payload (key file or PAT record). Secret: never logged.
    secret: dict[str, str] | None = field(default=None, repr=False)
    #: The process that runs this rotation; no other one touches it before ``deadline``.
    owner: str = ""
    deadline: datetime | None = None
    #: The first version of the state secret that holds ``secret``: once the
    #: rotation ends, the versions from there on are destroyed, so the KV
    #: history keeps no private key or token.
    secret_since: int | None = None
    #: The identity the new credential is created on (the one not in use).
    user_id: str = ""


@dataclass
class Orphan:
    """A credential this rotator may have created and must remove.

    Recorded when a rotation is given up.  ``credential_id`` is known when
    ZITADEL answered the create; otherwise the credential is recognised by
    its ``expires_at``, an instant unique to its rotation.  ZITADEL may still
    carry out a create whose answer was lost, and its lists lag behind its
    writes: the record is kept until ``watch_until`` even when nothing matches.
    """

    rotation_id: str
    expires_at: datetime
    created_after: datetime
    watch_until: datetime
    credential_id: str | None = None
    user_id: str = ""


@dataclass
class Identity:
    """One machine user of a two-identity target, as resolved in ZITADEL."""

    id: str
    org_id: str
    #: Its user name (a secret's ``client_id`` at the token endpoint).
    username: str = ""


@dataclass
class Removal:
    """A client secret being removed.  RemoveSecret names only the user, so it
    would also take a secret regenerated on that user since: while the claim
    is live (``owner`` until ``deadline``) no rotation regenerates there."""

    user_id: str
    owner: str
    deadline: datetime


@dataclass
class TargetState:
    target: str
    kind: str
    user_id: str
    current: CredentialRef | None = None
    previous: PreviousCredential | None = None
    pending: Pending | None = None
    orphans: list[Orphan] = field(default_factory=list)
    #: Failed attempts in a row; ``permanent_failures`` of them count toward ``stuck``.
    failures: int = 0
    permanent_failures: int = 0
    stuck: bool = False
    last_error: str | None = None
    last_error_class: str | None = None
    next_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    #: Fingerprint of the target's configuration when it last failed.
    target_digest: str | None = None
    #: The user as configured (``org_id/user``) when ``user_id`` was resolved,
    #: and its org: while the target names the same user, no lookup is needed.
    user_ref: str = ""
    org_id: str = ""
    #: The consumer secret's version after the rotator's last write to it.
    consumer_version: int | None = None
    #: The target's users as resolved in ZITADEL, in configured order: one,
    #: or two for a two-identity target (``users: [a, b]``).  Empty in state
    #: written by older rotators (``user_id`` is then the only user).
    identities: list[Identity] = field(default_factory=list)
    #: A retired client secret whose removal is under way (see Removal).
    removing: Removal | None = None

    #: Changed since read and worth writing back (not stored).
    dirty: bool = field(default=False, compare=False, repr=False, metadata={"transient": True})

    def is_blank(self) -> bool:
        """Nothing but failures recorded: no credential was ever handled."""
        return (
            self.current is None
            and self.previous is None
            and self.pending is None
            and not self.orphans
            and self.last_success_at is None
        )

    @property
    def active_user_id(self) -> str:
        """The identity consumers use now: the current credential's ("" = none yet)."""
        if self.current is None:
            return ""
        return self.current.user_id or self.user_id

    @property
    def next_user_id(self) -> str:
        """The identity the next rotation creates its credential on: with two
        identities the one not in use (the one under way, if a rotation is),
        else the only one."""
        if len(self.identities) < 2:
            return self.identities[0].id if self.identities else self.user_id
        if self.pending is not None and self.pending.user_id:
            return self.pending.user_id
        active = self.active_user_id
        return next((i.id for i in self.identities if i.id != active), self.identities[0].id)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for f in fields(self):
            if f.metadata.get("transient"):
                data.pop(f.name)
        # derived, written for people reading the state in Vault (ignored on read)
        data["active_user_id"], data["next_user_id"] = self.active_user_id, self.next_user_id
        # one string each: OpenBao refuses a request of more than 1,000 JSON strings,
        # and a long outage near an expiry leaves one orphan record per attempt
        data["orphans"] = [_orphan_text(o) for o in self.orphans]
        return {"schema": SCHEMA_VERSION, **_encode(data)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TargetState:
        data = {k: v for k, v in raw.items() if k != "schema"}
        state = cls(**_decode_fields(cls, data))
        if isinstance(state.current, dict):
            state.current = CredentialRef(**_decode_fields(CredentialRef, state.current))
        if isinstance(state.previous, dict):
            state.previous = PreviousCredential(
                **_decode_fields(PreviousCredential, state.previous)
            )
        if isinstance(state.pending, dict):
            pending = _decode_fields(Pending, state.pending)
            pending["phase"] = Phase(pending["phase"])
            state.pending = Pending(**pending)
        if isinstance(state.removing, dict):
            state.removing = Removal(**_decode_fields(Removal, state.removing))
        state.orphans = [
            _orphan_of(o) if isinstance(o, str)
            else Orphan(**_decode_fields(Orphan, o)) if isinstance(o, dict)  # before 0.1 (dicts)
            else o
            for o in state.orphans
        ]
        state.identities = [
            Identity(**_decode_fields(Identity, i)) if isinstance(i, dict) else i
            for i in state.identities
        ]
        return state


def _orphan_text(orphan: Orphan) -> str:
    """``rotation_id expires_at created_after watch_until credential_id user_id``
    ("-" for an empty field): no field holds a space."""
    return " ".join((
        orphan.rotation_id, orphan.expires_at.isoformat(), orphan.created_after.isoformat(),
        orphan.watch_until.isoformat(), orphan.credential_id or "-", orphan.user_id or "-",
    ))


def _orphan_of(text: str) -> Orphan:
    rotation_id, expires_at, created_after, watch_until, credential_id, user_id = text.split(" ")
    return Orphan(
        rotation_id=rotation_id,
        expires_at=datetime.fromisoformat(expires_at),
        created_after=datetime.fromisoformat(created_after),
        watch_until=datetime.fromisoformat(watch_until),
        credential_id=None if credential_id == "-" else credential_id,
        user_id="" if user_id == "-" else user_id,
    )


_DATETIME_FIELDS = {
    "expires_at",
    "created_at",
    "retire_at",
    "started_at",
    "next_attempt_at",
    "last_success_at",
    "deadline",
    "created_after",
    "watch_until",
}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _decode_fields(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    known = _field_names(cls)  # `fields()` each time was a tenth of reading 10,000 states
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            continue  # written by a newer rotator: ignore rather than fail
        is_instant = name in _DATETIME_FIELDS and isinstance(value, str)
        out[name] = datetime.fromisoformat(value) if is_instant else value
    return out
