"""Every key, PAT and client secret of every machine user, managed or not.

Outages come from credentials nobody manages: a console-made key, a PAT with a
ten-year expiry.  :func:`take_inventory` lists them with the few paged calls
the API allows (v2: ListUsers, ListKeys and ListPersonalAccessTokens by org,
1,000 a page; v1: ListUsers per org and per-user lists), all through the
caller's transport (in the app: the shared rate limiter).  :func:`classify`
is the pure part: which target manages a credential, and whether it never
expires, expires soon or has expired.

An org the rotator's identity cannot read is reported as such
(:attr:`OrgReport.readable` False), never as an empty org: v1 refuses the
listing; v2 filters it to nothing, so an empty v2 answer is checked once more
with a one-item ListUsers over every user type of the org.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from rotator.errors import ZitadelError
from rotator.model import NEVER_EXPIRES, Credential, CredentialKind, Target, User
from rotator.ports import InventoryTransport
from rotator.state import TargetState

#: The kinds an inventory lists ("secret": the user's client secret, one per user).
KINDS = ("key", "pat", "secret")
#: Per-user listings running at once on v1 (all through the shared rate limiter).
V1_CONCURRENCY = 8
#: Error codes meaning "the identity may not read this org" (§6.4: no membership
#: at all is NotFound "membership not found", a membership without user.read is
#: PermissionDenied).
_NO_READ_CODES = frozenset({"permission_denied", "not_found", "unauthenticated"})


class Expiry(StrEnum):
    """Where a credential stands against the clock: exactly one per credential."""

    OK = "ok"
    NEVER_EXPIRES = "never-expires"
    EXPIRING = "expiring"
    EXPIRED = "expired"


#: The categories ``--fail-on`` accepts.
FAIL_CATEGORIES = ("unmanaged", "never-expires", "expiring", "expired")


@dataclass(frozen=True)
class Thresholds:
    #: ``expiring``: expires within this.
    expiring: timedelta = timedelta(days=14)
    #: ``never-expires``: ZITADEL's 9999-12-31 default, or an expiry further away than this.
    horizon: timedelta = timedelta(days=5 * 365)


@dataclass(frozen=True)
class InventoryItem:
    """One credential of one machine user.  Ids and dates only: never secret."""

    org_id: str
    user_id: str
    username: str
    kind: str
    id: str
    created_at: datetime | None
    expires_at: datetime
    expiry: Expiry
    #: The configured target that manages it, None when none does.
    managed_by: str | None = None

    @property
    def managed(self) -> bool:
        return self.managed_by is not None

    @property
    def flags(self) -> tuple[str, ...]:
        first = "managed" if self.managed else "unmanaged"
        return (first,) if self.expiry is Expiry.OK else (first, self.expiry.value)


@dataclass(frozen=True)
class OrgReport:
    org_id: str
    readable: bool
    machine_users: int = 0
    #: Why the org could not be read (only when not readable).
    error: str | None = None


@dataclass(frozen=True)
class Inventory:
    taken_at: datetime
    thresholds: Thresholds
    orgs: list[OrgReport]
    items: list[InventoryItem]
    #: Machine users seen, by id (for ``--suggest``: names and orgs).
    users: dict[str, User] = field(default_factory=dict)

    def present(self, category: str) -> bool:
        """Whether any credential falls into a ``--fail-on`` category."""
        if category == "unmanaged":
            return any(not i.managed for i in self.items)
        return any(i.expiry.value == category for i in self.items)

    def counts(self) -> dict[tuple[str, str, bool, str], int]:
        """(org_id, kind, managed, expiry) -> number of credentials."""
        out: dict[tuple[str, str, bool, str], int] = {}
        for i in self.items:
            key = (i.org_id, i.kind, i.managed, i.expiry.value)
            out[key] = out.get(key, 0) + 1
        return out


# --------------------------------------------------------------------------- managed


@dataclass(frozen=True)
class ManagedIndex:
    """Which target manages which credential, from the targets' Vault state."""

    #: (kind, credential id) -> target name: the current, previous, pending and
    #: orphaned credentials a target's state knows.
    credentials: Mapping[tuple[str, str], str] = field(default_factory=dict)
    #: user id -> target name, for ``secret`` targets (a user has one secret).
    secrets: Mapping[str, str] = field(default_factory=dict)

    def target_of(self, kind: str, credential_id: str, user_id: str) -> str | None:
        if kind == "secret":
            return self.secrets.get(user_id)
        return self.credentials.get((kind, credential_id))


def managed_index(states: Iterable[tuple[Target, TargetState | None]]) -> ManagedIndex:
    """The index for these targets and their states (None: never ran, manages nothing)."""
    credentials: dict[tuple[str, str], str] = {}
    secrets: dict[str, str] = {}
    for target, state in states:
        if state is None:
            continue
        kind = target.kind.value
        if kind == "secret":
            if state.user_id:
                secrets[state.user_id] = target.name
            continue
        ids = [
            state.current.id if state.current else None,
            state.previous.id if state.previous else None,
            state.pending.credential_id if state.pending else None,
            *(o.credential_id for o in state.orphans),
        ]
        for credential_id in ids:
            if credential_id:
                credentials[(kind, credential_id)] = target.name
    return ManagedIndex(credentials, secrets)


# --------------------------------------------------------------------------- classification


def expiry_of(expires_at: datetime, now: datetime, thresholds: Thresholds) -> Expiry:
    if expires_at >= NEVER_EXPIRES or expires_at - now > thresholds.horizon:
        return Expiry.NEVER_EXPIRES
    if expires_at <= now:
        return Expiry.EXPIRED
    if expires_at - now <= thresholds.expiring:
        return Expiry.EXPIRING
    return Expiry.OK


def classify(
    org_id: str,
    users: Sequence[User],
    credentials: Iterable[Credential],
    managed: ManagedIndex,
    *,
    now: datetime,
    thresholds: Thresholds,
) -> list[InventoryItem]:
    """The org's items: its listed keys and PATs, plus one ``secret`` per user that has one.

    Credentials of users not in ``users`` (not a machine user, or created after
    the user listing) are kept: a credential is never hidden.
    """
    names = {u.id: u.username for u in users}

    def item(
        user_id: str, kind: str, credential_id: str, created: datetime | None, expires: datetime
    ) -> InventoryItem:
        return InventoryItem(
            org_id=org_id,
            user_id=user_id,
            username=names.get(user_id, ""),
            kind=kind,
            id=credential_id,
            created_at=created,
            expires_at=expires,
            expiry=expiry_of(expires, now, thresholds),
            managed_by=managed.target_of(kind, credential_id, user_id),
        )

    items = [item(c.user_id, c.kind.value, c.id, c.created_at, c.expires_at) for c in credentials]
    items += [item(u.id, "secret", u.id, None, NEVER_EXPIRES) for u in users if u.has_secret]
    items.sort(key=lambda i: (i.username, i.user_id, KINDS.index(i.kind), i.expires_at, i.id))
    return items


# --------------------------------------------------------------------------- listing


def take_inventory(
    transport: InventoryTransport,
    orgs: Sequence[str] | None,
    managed: ManagedIndex,
    now: datetime,
    thresholds: Thresholds = Thresholds(),
) -> Inventory:
    """List and classify; ``orgs`` None means every org whose users the identity can read.

    Raises ZitadelError only for failures that are not about reading an org
    (ZITADEL unreachable, throttled beyond retries): a partial inventory
    would read as "nothing there".
    """
    reports: list[OrgReport] = []
    items: list[InventoryItem] = []
    seen: dict[str, User] = {}
    if orgs is None:
        everyone = transport.list_machine_users(None)
        by_org: dict[str, list[User]] = {}
        for user in everyone:
            by_org.setdefault(user.org_id, []).append(user)
        listed = [(org, by_org[org]) for org in sorted(by_org)]
    else:
        listed = []
        for org in dict.fromkeys(orgs):
            users, report = _org_users(transport, org)
            if report is not None:
                reports.append(report)
            else:
                listed.append((org, users))
    for org, users in listed:
        credentials = _credentials(transport, org, users)
        items += classify(org, users, credentials, managed, now=now, thresholds=thresholds)
        reports.append(OrgReport(org, readable=True, machine_users=len(users)))
        seen.update((u.id, u) for u in users)
    reports.sort(key=lambda r: r.org_id)
    items.sort(key=lambda i: i.org_id)  # stable: classify's order within an org
    return Inventory(now, thresholds, reports, items, seen)


def _org_users(transport: InventoryTransport, org: str) -> tuple[list[User], OrgReport | None]:
    """The org's machine users, or the report of an org that cannot be read."""
    try:
        users = transport.list_machine_users(org)
    except ZitadelError as exc:
        if exc.code not in _NO_READ_CODES:
            raise
        return [], OrgReport(org, readable=False, error=f"cannot read users: {exc}")
    if not users and transport.api != "v1" and not transport.org_has_readable_users(org):
        return [], OrgReport(
            org,
            readable=False,
            error="no user of this org is readable: the rotator's identity lacks user.read "
            "there, or the org does not exist or has no users (v2 filters what it may not "
            "show instead of refusing)",
        )
    return users, None


def _credentials(
    transport: InventoryTransport, org: str, users: Sequence[User]
) -> list[Credential]:
    out: list[Credential] = []
    per_user: list[CredentialKind] = []
    for kind in (CredentialKind.KEY, CredentialKind.PAT):
        listed = transport.list_org_credentials(kind, org) if users else []
        if listed is None:
            per_user.append(kind)
        else:
            out += listed
    if per_user:  # v1: one listing per user and kind, a few at once

        def one(job: tuple[CredentialKind, User]) -> list[Credential]:
            kind, user = job
            return (
                transport.list_keys(user)
                if kind is CredentialKind.KEY
                else transport.list_pats(user)
            )

        jobs = [(kind, user) for user in users for kind in per_user]
        with ThreadPoolExecutor(max_workers=V1_CONCURRENCY) as pool:
            for listed in pool.map(one, jobs):
                out += listed
    return out


# --------------------------------------------------------------------------- suggestions

_UNSAFE = re.compile(r"[^a-z0-9-]+")


def suggested_name(user: User, kind: str) -> str:
    return _UNSAFE.sub("-", f"{user.username}-{kind}".lower()).strip("-")


def suggested_path(user: User, kind: str, prefix: str = "zitadel") -> str:
    return f"{prefix}/{user.org_id}/{_UNSAFE.sub('-', user.username.lower()).strip('-')}/{kind}"


@dataclass(frozen=True)
class Suggestion:
    name: str
    user: User
    kind: str
    vault_path: str
    credential_ids: tuple[str, ...]
    adopt: bool = False


def suggestions(inventory: Inventory, *, prefix: str = "zitadel") -> list[Suggestion]:
    """One target per (machine user, kind) with unmanaged credentials (a target
    manages one credential of a user and kind; ``adopt`` is filled by the caller)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for item in inventory.items:
        if not item.managed and item.user_id in inventory.users:
            grouped.setdefault((item.user_id, item.kind), []).append(item.id)
    return [
        Suggestion(
            name=suggested_name(inventory.users[user_id], kind),
            user=inventory.users[user_id],
            kind=kind,
            vault_path=suggested_path(inventory.users[user_id], kind, prefix),
            credential_ids=tuple(ids),
        )
        for (user_id, kind), ids in grouped.items()
    ]


def stanza(s: Suggestion) -> str:
    """A ``targets:`` list entry in the configuration's YAML."""
    lines = [
        f"  # unmanaged {s.kind} {', '.join(s.credential_ids)} of {s.user.username} "
        f"(org {s.user.org_id})",
        f"  - name: {s.name}",
        f"    user: {s.user.username}",
        f'    org_id: "{s.user.org_id}"',
        f"    kind: {s.kind}",
        f"    vault_path: {s.vault_path}",
    ]
    if s.adopt:
        lines.append("    adopt: true")
    return "\n".join(lines) + "\n"
