"""The leader lease for running several replicas outside Kubernetes, kept in Vault KV v2.

One secret (e.g. ``zitadel-rotator/leader``) holds who leads and until when::

    {"holder": "pod-a/4711/9f2c", "acquired_at": "...", "renewed_at": "...",
     "expires_at": "2026-11-23T18:00:30+00:00"}

Every change is a check-and-set write on the version just read, so of two
contenders at most one wins; the other gets :class:`CasConflict` and stays
standby.  A lease can be taken over only once ``expires_at`` has passed (or
after its holder released it); the holder itself may always renew.

Timing.  The leader renews every ``renew_interval`` (default ``ttl / 3``);
standbys poll ``try_acquire()`` every ``poll_interval``.  If the leader dies
right after a renewal, its lease expires ``ttl`` later, and a standby sees that
within one poll: **a standby takes over at most ``ttl + poll_interval`` after
the leader's last renewal**.  A leader that cannot renew (Vault down, lost the
lease) stops leading at its own ``expires_at`` (``is_held`` turns False), i.e.
no later than a standby could take over, provided the replicas' clocks agree
to better than ``skew`` (NTP); ``is_held`` gives up ``skew`` early to cover
that.  Even if two replicas did act at once, the CAS on every credential
write keeps one rotation from overwriting another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rotator.clock import Clock, SystemClock
from rotator.errors import CasConflict
from rotator.ports import SecretStore

log = logging.getLogger(__name__)

LEASE_METADATA = {"managed-by": "zitadel-rotator", "kind": "leader-lease"}


@dataclass(frozen=True)
class LeaseRecord:
    """The lease as stored.  ``holder`` is empty after a release."""

    holder: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    def to_data(self) -> dict[str, str]:
        return {
            "holder": self.holder,
            "acquired_at": self.acquired_at.isoformat(),
            "renewed_at": self.renewed_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> LeaseRecord | None:
        """The record, or None when the data is not a lease (treated as free)."""
        try:
            return cls(
                holder=str(data["holder"]),
                acquired_at=datetime.fromisoformat(data["acquired_at"]),
                renewed_at=datetime.fromisoformat(data["renewed_at"]),
                expires_at=datetime.fromisoformat(data["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def may_take(record: LeaseRecord | None, holder_id: str, now: datetime) -> bool:
    """Whether ``holder_id`` may write the lease now: free, expired, or already ours."""
    return record is None or record.holder in ("", holder_id) or record.expires_at <= now


class VaultLease:
    """A TTL lease with check-and-set on a :class:`SecretStore` path.

    ``try_acquire()`` (standbys, periodically) and ``renew()`` (the leader,
    every ``renew_interval``) return whether this replica holds the lease;
    ``release()`` on shutdown lets a standby take over at its next poll.
    Vault errors propagate (the caller retries on its next tick); while
    Vault is unreachable the leader keeps the lease until it expires.
    """

    def __init__(
        self,
        store: SecretStore,
        path: str,
        holder_id: str,
        ttl: timedelta,
        clock: Clock | None = None,
        *,
        skew: timedelta = timedelta(0),
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError("lease ttl must be positive")
        if not holder_id:
            raise ValueError("holder_id must not be empty")
        if skew >= ttl:
            raise ValueError("skew must be shorter than the lease ttl")
        self.store = store
        self.path = path
        self.holder_id = holder_id
        self.ttl = ttl
        self.skew = skew
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._version: int | None = None
        self._record: LeaseRecord | None = None

    @property
    def renew_interval(self) -> timedelta:
        """How often the leader should renew: three chances before the lease runs out."""
        return self.ttl / 3

    @property
    def is_held(self) -> bool:
        """True while this replica holds an unexpired lease (by its own clock, minus ``skew``)."""
        record = self._record
        return record is not None and self.clock.now() < record.expires_at - self.skew

    @property
    def expires_at(self) -> datetime | None:
        record = self._record
        return record.expires_at if record else None

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; True if we hold it afterwards."""
        with self._lock:
            current = self.store.read(self.path)
            record = LeaseRecord.from_data(current.data) if current else None
            now = self.clock.now()
            if not may_take(record, self.holder_id, now):
                self._forget()
                return False
            ours = record is not None and record.holder == self.holder_id
            acquired_at = record.acquired_at if ours and record else now
            return self._write(
                LeaseRecord(self.holder_id, acquired_at, now, now + self.ttl),
                cas=current.version if current else 0,
                event="acquired" if not ours else "renewed",
                previous=record.holder if record and not ours else None,
            )

    def renew(self) -> bool:
        """Extend our lease; False (and no longer leader) if someone else wrote it since."""
        with self._lock:
            if self._record is None or self._version is None:
                return False
            now = self.clock.now()
            return self._write(
                LeaseRecord(self.holder_id, self._record.acquired_at, now, now + self.ttl),
                cas=self._version,
                event="renewed",
            )

    def release(self) -> None:
        """Give the lease up (on shutdown) so a standby need not wait for it to expire."""
        with self._lock:
            if self._record is None or self._version is None:
                return
            now = self.clock.now()
            released = LeaseRecord("", self._record.acquired_at, now, now)
            try:
                self.store.write(
                    self.path, released.to_data(), cas=self._version, custom_metadata=LEASE_METADATA
                )
                log.info("leader lease released", extra={"holder": self.holder_id})
            except CasConflict:
                pass  # someone else holds it already: nothing of ours to release
            finally:
                self._forget()

    def _write(
        self, record: LeaseRecord, *, cas: int, event: str, previous: str | None = None
    ) -> bool:
        try:
            version = self.store.write(
                self.path, record.to_data(), cas=cas, custom_metadata=LEASE_METADATA
            )
        except CasConflict:
            if self._record is not None:
                log.warning("leader lease lost", extra={"holder": self.holder_id})
            self._forget()
            return False
        if event == "acquired":
            log.info(
                "leader lease acquired",
                extra={"holder": self.holder_id, "previous_holder": previous or None},
            )
        self._version = version
        self._record = record
        return True

    def _forget(self) -> None:
        self._version = None
        self._record = None
