"""The Vault-kept leader lease, against real OpenBao: what is VaultLease's own
(the record in KV v2, renew(), the takeover bound on the real clock).  One
leader at a time, expiry, release, races and skew are asserted for every lease
backend in tests/contract/test_lease.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from rotator.clock import OffsetClock, SystemClock
from rotator.lease import LeaseRecord, VaultLease, may_take
from rotator.vault import RetryPolicy, VaultStore
from tests.harness.openbao import OpenBao

TTL = timedelta(seconds=30)
PATH = "zitadel-rotator/leader"
NO_WAIT = RetryPolicy(attempts=1)


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def make_lease(openbao: OpenBao, kv_mount: str, clock: OffsetClock):  # type: ignore[no-untyped-def]
    """A lease for one replica: its own Vault client, the shared (movable) clock."""

    def make(holder: str, ttl: timedelta = TTL) -> VaultLease:
        store = VaultStore(openbao.client(), kv_mount, retry=NO_WAIT)
        return VaultLease(store, PATH, holder, ttl, clock)

    return make


def stored(openbao: OpenBao, mount: str) -> dict[str, object]:
    data: dict[str, object] = openbao.client().secrets.kv.v2.read_secret_version(
        PATH, mount_point=mount, raise_on_deleted_version=True
    )["data"]
    return data


# -- the decision -----------------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def record(holder: str, expires_in: timedelta) -> LeaseRecord:
    return LeaseRecord(holder, NOW - TTL, NOW - TTL, NOW + expires_in)


@pytest.mark.parametrize(
    ("current", "allowed"),
    [
        (None, True),  # nobody ever held it
        (record("", timedelta(seconds=10)), True),  # released
        (record("me", timedelta(seconds=10)), True),  # ours: renew
        (record("other", timedelta(seconds=10)), False),  # someone else's, still valid
        (record("other", timedelta(0)), True),  # expires exactly now
        (record("other", -timedelta(seconds=1)), True),  # expired
    ],
)
def test_who_may_take_the_lease(current: LeaseRecord | None, allowed: bool) -> None:
    assert may_take(current, "me", NOW) is allowed


# -- against Vault ----------------------------------------------------------------------------


def test_the_lease_secret_holds_the_record_and_says_what_it_is(
    make_lease, openbao: OpenBao, kv_mount: str
) -> None:
    a = make_lease("replica-a")
    assert a.try_acquire() is True
    data = stored(openbao, kv_mount)
    assert data["data"]["holder"] == "replica-a"  # type: ignore[index]
    assert datetime.fromisoformat(data["data"]["expires_at"]) == a.expires_at  # type: ignore[index]
    assert data["metadata"]["custom_metadata"] == {  # type: ignore[index]
        "managed-by": "zitadel-rotator",
        "kind": "leader-lease",
    }


def test_renew_extends_our_lease_and_says_false_once_another_replica_took_it(
    make_lease, openbao: OpenBao, kv_mount: str, clock: OffsetClock
) -> None:
    a, b = make_lease("replica-a"), make_lease("replica-b")
    assert a.renew() is False  # nothing to renew yet
    a.try_acquire()
    clock.advance(timedelta(seconds=20))
    renewed_from = clock.now()
    assert a.renew() is True
    data = stored(openbao, kv_mount)["data"]
    assert datetime.fromisoformat(data["expires_at"]) == a.expires_at  # type: ignore[index]
    assert a.expires_at is not None
    assert a.expires_at >= renewed_from + TTL  # counted from the renewal

    clock.advance(TTL)
    assert b.try_acquire() is True
    assert a.renew() is False
    assert not a.is_held
    assert a.try_acquire() is False


def test_a_record_that_is_not_a_lease_counts_as_free(
    make_lease, openbao: OpenBao, kv_mount: str
) -> None:
    openbao.client().secrets.kv.v2.create_or_update_secret(
        PATH, {"something": "else"}, mount_point=kv_mount
    )

    assert make_lease("replica-a").try_acquire() is True


def test_invalid_parameters_are_refused(make_lease) -> None:
    store = make_lease("x").store
    with pytest.raises(ValueError, match="ttl"):
        VaultLease(store, PATH, "x", timedelta(0))
    with pytest.raises(ValueError, match="holder_id"):
        VaultLease(store, PATH, "", TTL)
    with pytest.raises(ValueError, match="skew"):
        VaultLease(store, PATH, "x", TTL, skew=TTL)


def test_a_standby_takes_over_within_ttl_plus_one_poll_of_the_leaders_death(
    openbao: OpenBao, kv_mount: str
) -> None:
    """The documented bound, measured on the real clock with a 1 s lease."""
    ttl, poll = timedelta(seconds=1), 0.1
    leader = VaultLease(VaultStore(openbao.client(), kv_mount), PATH, "leader", ttl, SystemClock())
    standby = VaultLease(
        VaultStore(openbao.client(), kv_mount), PATH, "standby", ttl, SystemClock()
    )
    assert leader.try_acquire()
    assert leader.renew()
    died_at = time.monotonic()  # the leader stops renewing: it "died" right after renewing

    while not standby.try_acquire():
        time.sleep(poll)
        assert time.monotonic() - died_at < 5, "standby never took over"
    took = time.monotonic() - died_at

    # Slack for the Vault round trips themselves (the suite may run on a busy machine).
    assert ttl.total_seconds() - 0.2 <= took <= ttl.total_seconds() + poll + 0.5
