"""Is a target's current credential still in ZITADEL?  Asked of every idle
target on every pass, so it must cost pages, not calls per target.

With v2, one paged listing per organization and kind (1,000 credentials a
page) answers every target in that org; with v1 (no org-wide listing) one
listing per user.  A listing is reused for ``max_age``.  A credential
missing from a cached listing is looked up once more, fresh, before it is
reported missing: a stale cache must never start a rotation.  A credential
created within ``list_lag`` of the listing counts as present (ZITADEL's lists
lag behind its writes).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.kinds import ops_for
from rotator.model import Credential, CredentialKind, User
from rotator.ports import Clock, ZitadelTransport
from rotator.state import CredentialRef


@dataclass(frozen=True)
class _Listing:
    fetched_at: datetime
    #: user id -> credential ids (a tuple: a user has a few; a frozenset costs ~4x)
    ids: dict[str, tuple[str, ...]]


class Presence:
    def __init__(
        self,
        transport: ZitadelTransport,
        clock: Clock,
        *,
        max_age: timedelta = timedelta(minutes=5),
        list_lag: timedelta = timedelta(minutes=5),
    ) -> None:
        self.transport, self.clock = transport, clock
        self.max_age, self.list_lag = max_age, list_lag
        self._orgs: dict[tuple[CredentialKind, str], _Listing] = {}
        #: The API lists per user only (v1): asked once, remembered.
        self._per_user_only = False
        self._users: dict[tuple[CredentialKind, str], _Listing] = {}
        self._lock = threading.Lock()
        # one fetch per key at a time: the other threads of a pass wait for it
        self._fetching: dict[tuple[CredentialKind, str], threading.Lock] = {}

    def contains(self, kind: CredentialKind, user: User, credential: CredentialRef) -> bool:
        """Whether ZITADEL lists ``credential`` for ``user``."""
        listing = self._org_listing(kind, user.org_id) or self._user_listing(kind, user)
        if self._listed(listing, user, credential):
            return True
        # missing from a listing that may be stale: ask once more, fresh
        fresh = self._user_listing(kind, user, refresh=True)
        return self._listed(fresh, user, credential)

    def forget(self, kind: CredentialKind, user: User) -> None:
        """This user's credentials changed (we created or removed one)."""
        with self._lock:
            self._users.pop((kind, user.id), None)

    # ---------------------------------------------------------------- listings

    def _listed(self, listing: _Listing, user: User, credential: CredentialRef) -> bool:
        if credential.id in listing.ids.get(user.id, ()):
            return True
        created = credential.created_at
        return created is not None and listing.fetched_at - created < self.list_lag

    def _org_listing(self, kind: CredentialKind, org_id: str) -> _Listing | None:
        if self._per_user_only:
            return None
        key = (kind, org_id)
        with self._fetch_lock(key):
            with self._lock:
                cached = self._orgs.get(key)
            if cached is not None and self._fresh(cached):
                return cached
            now = self.clock.now()
            listed = self.transport.list_org_credentials(kind, org_id)
            if listed is None:
                self._per_user_only = True
                return None
            listing = _Listing(now, _by_user(listed))
            with self._lock:
                self._orgs[key] = listing
            return listing

    def _user_listing(self, kind: CredentialKind, user: User, *, refresh: bool = False) -> _Listing:
        key = (kind, user.id)
        with self._lock:
            cached = self._users.get(key)
        if cached is not None and not refresh and self._fresh(cached):
            return cached
        now = self.clock.now()
        listed = ops_for(kind).list(self.transport, user)
        listing = _Listing(now, {user.id: tuple(c.id for c in listed)})
        with self._lock:
            self._users[key] = listing
        return listing

    def _fresh(self, listing: _Listing) -> bool:
        return self.clock.now() - listing.fetched_at < self.max_age

    def _fetch_lock(self, key: tuple[CredentialKind, str]) -> threading.Lock:
        with self._lock:
            return self._fetching.setdefault(key, threading.Lock())


def _by_user(credentials: list[Credential]) -> dict[str, tuple[str, ...]]:
    by_user: dict[str, list[str]] = {}
    for credential in credentials:
        by_user.setdefault(credential.user_id, []).append(credential.id)
    return {user: tuple(ids) for user, ids in by_user.items()}
