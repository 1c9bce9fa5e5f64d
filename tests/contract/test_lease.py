"""What every leader lease does, asserted once over both backends:

- ``vault``: rotator.lease.VaultLease on a real OpenBao (CAS on a KV v2 secret);
- ``kubernetes``: rotator.kube_lease.KubernetesLease against the local
  coordination.k8s.io/v1 Lease endpoint of tests/test_kube_lease.py
  (resourceVersion optimistic concurrency, as the API server does it).

One leader at a time, takeover only after expiry or release, the holder renews
and keeps its acquisition time, a leader that cannot renew steps down at its
own expiry (early by ``skew``).  What is specific to one backend stays in
tests/test_lease.py and tests/test_kube_lease.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from rotator.clock import OffsetClock
from rotator.errors import RotatorError, VaultUnavailable
from rotator.kube_lease import KubernetesLease, LeaseError
from rotator.lease import VaultLease
from rotator.vault import RetryPolicy, VaultStore
from tests.test_kube_lease import NAME, NS, LeaseAPI, serve_lease_api

TTL = timedelta(seconds=15)
VAULT_PATH = "zitadel-rotator/leader"


class Lease(Protocol):
    holder_id: str

    @property
    def is_held(self) -> bool: ...

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class Backend(Protocol):
    clock: OffsetClock
    #: What a call raises while the backend cannot be reached.
    outage_error: type[RotatorError]

    def make(self, holder: str, skew: timedelta = timedelta(0)) -> Lease: ...

    def stored(self) -> tuple[str, datetime]:
        """(holder, acquired at) as the backend keeps them; holder "" after a release."""
        ...

    def outage(self) -> contextlib.AbstractContextManager[None]: ...


@dataclass
class VaultBackend:
    openbao: Any
    mount: str
    clock: OffsetClock
    outage_error: type[RotatorError] = VaultUnavailable

    def make(self, holder: str, skew: timedelta = timedelta(0)) -> Lease:
        # one client per replica, no retries: a sealed Vault answers at once
        store = VaultStore(self.openbao.client(), self.mount, retry=RetryPolicy(attempts=1))
        return VaultLease(store, VAULT_PATH, holder, TTL, self.clock, skew=skew)

    def stored(self) -> tuple[str, datetime]:
        data = self.openbao.client().secrets.kv.v2.read_secret_version(
            VAULT_PATH, mount_point=self.mount, raise_on_deleted_version=True
        )["data"]["data"]
        return data["holder"], datetime.fromisoformat(data["acquired_at"])

    def outage(self) -> contextlib.AbstractContextManager[None]:
        sealed: contextlib.AbstractContextManager[None] = self.openbao.sealed()
        return sealed


@dataclass
class KubernetesBackend:
    api: LeaseAPI
    token_file: Path
    clock: OffsetClock
    outage_error: type[RotatorError] = LeaseError

    def make(self, holder: str, skew: timedelta = timedelta(0)) -> Lease:
        return KubernetesLease(self.api.url, NS, NAME, holder, TTL, token_file=self.token_file,
                               ca_file=None, clock=self.clock, skew=skew)

    def stored(self) -> tuple[str, datetime]:
        spec = self.api.spec
        return spec["holderIdentity"], datetime.fromisoformat(spec["acquireTime"])

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.api.down = True
        try:
            yield
        finally:
            self.api.down = False


@pytest.fixture(params=["vault", "kubernetes"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    clock = OffsetClock()  # shared by every replica of a test, and movable
    if request.param == "vault":
        yield VaultBackend(request.getfixturevalue("openbao"),
                           request.getfixturevalue("kv_mount"), clock)
        return
    with serve_lease_api() as api:
        token_file = tmp_path / "token"
        token_file.write_text(api.token + "\n")
        yield KubernetesBackend(api, token_file, clock)


def test_the_first_contender_leads_and_the_second_stays_standby(backend: Backend) -> None:
    a, b = backend.make("replica-a"), backend.make("replica-b")
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    assert a.is_held
    assert not b.is_held
    assert backend.stored()[0] == "replica-a"


def test_the_holder_renews_past_its_ttl_and_keeps_its_acquisition_time(
    backend: Backend,
) -> None:
    a, b = backend.make("replica-a"), backend.make("replica-b")
    a.try_acquire()
    acquired_at = backend.stored()[1]
    for _ in range(5):  # 5 x 10 s: well past one TTL, but renewed every time
        backend.clock.advance(timedelta(seconds=10))
        assert a.try_acquire() is True
        assert b.try_acquire() is False
    assert backend.stored() == ("replica-a", acquired_at)
    assert a.is_held


def test_an_expired_lease_is_taken_over_and_the_old_leader_learns_it_lost(
    backend: Backend,
) -> None:
    a, b = backend.make("replica-a"), backend.make("replica-b")
    a.try_acquire()
    backend.clock.advance(TTL - timedelta(seconds=1))
    assert b.try_acquire() is False  # not yet
    backend.clock.advance(timedelta(seconds=1))
    assert not a.is_held  # the silent leader gives up by itself at expiry
    assert b.try_acquire() is True
    assert backend.stored()[0] == "replica-b"
    assert a.try_acquire() is False  # held by b now
    assert not a.is_held
    assert b.is_held


def test_release_lets_a_standby_take_over_at_once(backend: Backend) -> None:
    a, b = backend.make("replica-a"), backend.make("replica-b")
    a.try_acquire()
    a.release()
    assert not a.is_held
    assert backend.stored()[0] == ""
    assert b.try_acquire() is True
    a.release()  # releasing what we no longer hold changes nothing
    assert backend.stored()[0] == "replica-b"


def test_a_stale_leader_cannot_release_the_new_leaders_lease(backend: Backend) -> None:
    a, b = backend.make("replica-a"), backend.make("replica-b")
    a.try_acquire()
    backend.clock.advance(TTL)
    assert b.try_acquire()
    a.release()  # a still believes it holds the lease
    assert backend.stored()[0] == "replica-b"
    assert b.try_acquire() is True


def test_of_many_contenders_at_once_exactly_one_wins(backend: Backend) -> None:
    for round_ in range(2):  # an empty lease, then an expired one
        contenders = [backend.make(f"replica-{round_}-{i}") for i in range(6)]
        barrier = threading.Barrier(len(contenders))
        results: dict[str, bool] = {}

        def contend(lease: Lease, barrier: threading.Barrier, results: dict[str, bool]) -> None:
            barrier.wait()
            results[lease.holder_id] = lease.try_acquire()

        threads = [threading.Thread(target=contend, args=(lease, barrier, results))
                   for lease in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(results.values()) == 1, results
        assert sum(lease.is_held for lease in contenders) == 1
        winner = next(holder for holder, won in results.items() if won)
        assert backend.stored()[0] == winner
        backend.clock.advance(TTL)


def test_a_restarted_replica_with_the_same_id_resumes_its_lease(backend: Backend) -> None:
    backend.make("replica-a").try_acquire()
    acquired_at = backend.stored()[1]
    backend.clock.advance(timedelta(seconds=5))
    again = backend.make("replica-a")
    assert again.try_acquire() is True
    assert backend.stored() == ("replica-a", acquired_at)


def test_while_the_backend_is_down_the_leader_keeps_the_lease_until_it_expires(
    backend: Backend,
) -> None:
    a = backend.make("replica-a")
    a.try_acquire()
    with backend.outage():
        backend.clock.advance(timedelta(seconds=5))
        with pytest.raises(backend.outage_error):
            a.try_acquire()
        assert a.is_held
        backend.clock.advance(TTL)
        assert not a.is_held


def test_skew_makes_the_leader_step_down_early(backend: Backend) -> None:
    lease = backend.make("replica-s", skew=timedelta(seconds=5))
    lease.try_acquire()
    backend.clock.advance(TTL - timedelta(seconds=6))
    assert lease.is_held
    backend.clock.advance(timedelta(seconds=2))
    assert not lease.is_held
