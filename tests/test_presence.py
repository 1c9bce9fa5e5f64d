"""The presence check: idle targets cost pages, not calls per target, and a
stale listing never reports a live credential missing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from rotator.clock import OffsetClock
from rotator.model import Credential, CredentialKind, User
from rotator.presence import Presence
from rotator.state import CredentialRef

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
EXPIRES = datetime(2027, 1, 1, tzinfo=UTC)


class Listing:
    """Answers the transport's listing calls from a dict, counting them."""

    def __init__(self, keys: dict[str, list[str]], *, org_wide: bool) -> None:
        self.keys, self.org_wide = keys, org_wide
        self.calls: Counter[str] = Counter()

    def _creds(self, user_id: str) -> list[Credential]:
        return [
            Credential(id=k, kind=CredentialKind.KEY, user_id=user_id, expires_at=EXPIRES)
            for k in self.keys.get(user_id, [])
        ]

    def list_keys(self, user: User) -> list[Credential]:
        self.calls["list_keys"] += 1
        return self._creds(user.id)

    def list_pats(self, user: User) -> list[Credential]:
        self.calls["list_pats"] += 1
        return []

    def list_org_credentials(self, kind: CredentialKind, org_id: str) -> list[Credential] | None:
        self.calls["list_org"] += 1
        if not self.org_wide:
            return None
        return [c for user_id in self.keys for c in self._creds(user_id)]


def users(n: int) -> list[User]:
    return [User(id=f"u{i}", org_id="org", username=f"svc-{i}") for i in range(n)]


def ref(credential_id: str, created: datetime = LONG_AGO) -> CredentialRef:
    return CredentialRef(id=credential_id, expires_at=EXPIRES, created_at=created)


def presence(listing: Listing, clock: OffsetClock | None = None, **kw: Any) -> Presence:
    return Presence(listing, clock or OffsetClock(), **kw)  # type: ignore[arg-type]


def test_with_an_org_wide_listing_a_pass_over_many_targets_costs_one_call() -> None:
    people = users(500)
    listing = Listing({u.id: [f"k-{u.id}"] for u in people}, org_wide=True)
    check = presence(listing)
    assert all(check.contains(CredentialKind.KEY, u, ref(f"k-{u.id}")) for u in people)
    assert listing.calls == {"list_org": 1}


def test_without_one_each_user_is_listed_once_per_max_age() -> None:
    people = users(20)
    listing = Listing({u.id: [f"k-{u.id}"] for u in people}, org_wide=False)
    clock = OffsetClock()
    check = presence(listing, clock, max_age=timedelta(hours=1))
    for _ in range(3):  # three passes within the hour
        assert all(check.contains(CredentialKind.KEY, u, ref(f"k-{u.id}")) for u in people)
    assert listing.calls["list_keys"] == 20
    clock.advance(timedelta(hours=1, seconds=1))
    assert all(check.contains(CredentialKind.KEY, u, ref(f"k-{u.id}")) for u in people)
    assert listing.calls["list_keys"] == 40
    assert listing.calls["list_org"] == 1  # asked once whether the API lists whole orgs


def test_a_credential_missing_from_a_cached_listing_is_looked_up_fresh_first() -> None:
    [user] = users(1)
    listing = Listing({user.id: ["old"]}, org_wide=True)
    check = presence(listing)
    assert check.contains(CredentialKind.KEY, user, ref("old"))
    listing.keys[user.id] = ["old", "new"]  # created after the org listing was taken
    assert check.contains(CredentialKind.KEY, user, ref("new"))
    assert listing.calls == {"list_org": 1, "list_keys": 1}


def test_a_removed_credential_is_reported_missing() -> None:
    [user] = users(1)
    listing = Listing({user.id: []}, org_wide=True)
    assert not presence(listing).contains(CredentialKind.KEY, user, ref("gone"))


def test_a_credential_younger_than_the_list_lag_counts_as_present() -> None:
    [user] = users(1)
    listing = Listing({user.id: []}, org_wide=False)  # ZITADEL's list does not show it yet
    clock = OffsetClock()
    check = presence(listing, clock, list_lag=timedelta(minutes=5))
    just_made = ref("new", created=clock.now() - timedelta(seconds=30))
    assert check.contains(CredentialKind.KEY, user, just_made)
