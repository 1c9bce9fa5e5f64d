"""The Vault-kept leader lease: one leader at a time, takeover only after
expiry (or release), and a bounded takeover time, against real OpenBao."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from rotator.clock import OffsetClock, SystemClock
from rotator.errors import VaultUnavailable
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


def test_the_first_contender_leads_and_the_second_stays_standby(
    make_lease, openbao: OpenBao, kv_mount: str, clock: OffsetClock
) -> None:
    a, b = make_lease("replica-a"), make_lease("replica-b")

    assert a.try_acquire() is True
    assert b.try_acquire() is False

    assert a.is_held
    assert not b.is_held
    data = stored(openbao, kv_mount)
    assert data["data"]["holder"] == "replica-a"  # type: ignore[index]
    assert datetime.fromisoformat(data["data"]["expires_at"]) == a.expires_at  # type: ignore[index]
    assert data["metadata"]["custom_metadata"] == {  # type: ignore[index]
        "managed-by": "zitadel-rotator",
        "kind": "leader-lease",
    }


def test_renewal_extends_the_lease_and_keeps_acquired_at(
    make_lease, openbao: OpenBao, kv_mount: str, clock: OffsetClock
) -> None:
    a, b = make_lease("replica-a"), make_lease("replica-b")
    a.try_acquire()
    acquired_at = stored(openbao, kv_mount)["data"]["acquired_at"]  # type: ignore[index]

    for _ in range(5):  # 5 x 20 s: well past one TTL, but renewed every time
        clock.advance(timedelta(seconds=20))
        assert a.renew() is True
        assert b.try_acquire() is False

    data = stored(openbao, kv_mount)["data"]
    renewed_at = datetime.fromisoformat(data["renewed_at"])  # type: ignore[index]
    assert data["acquired_at"] == acquired_at  # type: ignore[index]
    assert renewed_at - datetime.fromisoformat(acquired_at) >= timedelta(seconds=100)  # type: ignore[arg-type]
    assert a.is_held


def test_an_expired_lease_is_taken_over_and_the_old_leader_learns_it_lost(
    make_lease, clock: OffsetClock
) -> None:
    a, b = make_lease("replica-a"), make_lease("replica-b")
    a.try_acquire()

    clock.advance(TTL - timedelta(seconds=1))
    assert b.try_acquire() is False  # not yet
    clock.advance(timedelta(seconds=1))
    assert not a.is_held  # the silent leader gives up by itself at expiry
    assert b.try_acquire() is True

    assert a.renew() is False
    assert not a.is_held
    assert a.try_acquire() is False
    assert b.is_held


def test_release_on_shutdown_lets_a_standby_take_over_at_once(
    make_lease, openbao: OpenBao, kv_mount: str
) -> None:
    a, b = make_lease("replica-a"), make_lease("replica-b")
    a.try_acquire()

    a.release()

    assert not a.is_held
    assert stored(openbao, kv_mount)["data"]["holder"] == ""  # type: ignore[index]
    assert b.try_acquire() is True
    a.release()  # releasing what we no longer hold changes nothing
    assert stored(openbao, kv_mount)["data"]["holder"] == "replica-b"  # type: ignore[index]


def test_a_stale_leader_cannot_release_the_new_leaders_lease(
    make_lease, openbao: OpenBao, kv_mount: str, clock: OffsetClock
) -> None:
    a, b = make_lease("replica-a"), make_lease("replica-b")
    a.try_acquire()
    clock.advance(TTL)
    b.try_acquire()

    a.release()  # a still thinks it holds version 1

    assert stored(openbao, kv_mount)["data"]["holder"] == "replica-b"  # type: ignore[index]
    assert b.renew() is True


def contend_all(contenders: list[VaultLease]) -> dict[str, bool]:
    """Every contender calls try_acquire at the same moment."""
    barrier = threading.Barrier(len(contenders))
    results: dict[str, bool] = {}

    def contend(lease: VaultLease) -> None:
        barrier.wait()
        results[lease.holder_id] = lease.try_acquire()

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_many_contenders_at_once_exactly_one_wins(make_lease, clock: OffsetClock) -> None:
    for round_ in range(2):  # an empty lease, then an expired one
        contenders = [make_lease(f"replica-{round_}-{i}") for i in range(8)]

        results = contend_all(contenders)

        assert sum(results.values()) == 1
        assert sum(lease.is_held for lease in contenders) == 1
        clock.advance(TTL)


def test_a_restarted_replica_with_the_same_id_resumes_its_lease(
    make_lease, openbao: OpenBao, kv_mount: str, clock: OffsetClock
) -> None:
    make_lease("replica-a").try_acquire()
    acquired_at = stored(openbao, kv_mount)["data"]["acquired_at"]  # type: ignore[index]
    clock.advance(timedelta(seconds=5))

    again = make_lease("replica-a")

    assert again.try_acquire() is True
    assert stored(openbao, kv_mount)["data"]["acquired_at"] == acquired_at  # type: ignore[index]


def test_a_record_that_is_not_a_lease_counts_as_free(
    make_lease, openbao: OpenBao, kv_mount: str
) -> None:
    openbao.client().secrets.kv.v2.create_or_update_secret(
        PATH, {"something": "else"}, mount_point=kv_mount
    )

    assert make_lease("replica-a").try_acquire() is True


def test_while_vault_is_down_the_leader_keeps_the_lease_until_it_expires(
    make_lease, openbao: OpenBao, clock: OffsetClock
) -> None:
    a = make_lease("replica-a")
    a.try_acquire()

    with openbao.sealed():
        clock.advance(timedelta(seconds=10))
        with pytest.raises(VaultUnavailable):
            a.renew()
        assert a.is_held
        clock.advance(TTL)
        assert not a.is_held


def test_skew_makes_the_leader_step_down_early(
    make_lease, clock: OffsetClock, kv_mount: str
) -> None:
    a = make_lease("replica-a")
    lease = VaultLease(a.store, PATH, "replica-s", TTL, clock, skew=timedelta(seconds=5))
    lease.try_acquire()

    clock.advance(TTL - timedelta(seconds=6))
    assert lease.is_held
    clock.advance(timedelta(seconds=2))
    assert not lease.is_held


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
