"""The daemon's periodic inventory: metrics and one notice per credential.

Every ``inventory.interval`` the leader takes an inventory
(:func:`rotator.inventory.take_inventory`) and exports

* ``rotator_inventory_credentials{org_id,kind,managed,flag}``: how many
  credentials of each kind, managed or not, are ``ok``, ``never-expires``,
  ``expiring`` or ``expired`` (``flag``), per org;
* ``rotator_inventory_credential_expiration_timestamp_seconds{org_id,user_id,kind,credential_id}``
  for the *unmanaged* credentials expiring within ``inventory.expiring``
  (expired ones included), the soonest first, at most ``inventory.max_series``
  series (``rotator_inventory_series_dropped`` counts the rest);
* ``rotator_inventory_org_readable{org_id}`` (0: the identity cannot read it)
  and ``rotator_inventory_last_success_timestamp_seconds``.

A webhook notice (``credential.unmanaged_expiring``) goes out once per
credential when an unmanaged credential enters the expiring window; the set
of credentials already announced is this process's (a restart announces them
again, once).  Labels are ids only: never a secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from rotator.config import InventoryConfig
from rotator.errors import RotatorError
from rotator.inventory import (
    Expiry,
    Inventory,
    InventoryItem,
    ManagedIndex,
    Thresholds,
    take_inventory,
)
from rotator.notify import Notification, Webhook
from rotator.ports import Clock, InventoryTransport

log = logging.getLogger("rotator.inventory")

NOTICE_EVENT = "credential.unmanaged_expiring"
_EXPIRY_FLAGS = tuple(e.value for e in Expiry)


class InventoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.credentials = Gauge(
            "rotator_inventory_credentials",
            "Credentials of machine users by org, kind, managed or not, and expiry flag "
            "(ok, never-expires, expiring, expired), from the last inventory.",
            ["org_id", "kind", "managed", "flag"],
            registry=registry,
        )
        self.expiration = Gauge(
            "rotator_inventory_credential_expiration_timestamp_seconds",
            "When an unmanaged credential expiring within inventory.expiring expires "
            "(Unix time; at most inventory.max_series series, the soonest first).",
            ["org_id", "user_id", "kind", "credential_id"],
            registry=registry,
        )
        self.dropped = Gauge(
            "rotator_inventory_series_dropped",
            "Unmanaged expiring credentials left out of the expiration series by the cap.",
            registry=registry,
        )
        self.readable = Gauge(
            "rotator_inventory_org_readable",
            "1 when the last inventory could read the org's users, 0 when it could not.",
            ["org_id"],
            registry=registry,
        )
        self.last_success = Gauge(
            "rotator_inventory_last_success_timestamp_seconds",
            "When the last inventory completed (Unix time).",
            registry=registry,
        )

    def observe(self, inventory: Inventory, max_series: int) -> None:
        self.credentials.clear()
        counts = inventory.counts()
        for org in inventory.orgs:
            self.readable.labels(org_id=org.org_id).set(1 if org.readable else 0)
            if not org.readable:
                continue
            for kind in ("key", "pat", "secret"):  # zeros too: an alert sees the drop
                for managed in (True, False):
                    for flag in _EXPIRY_FLAGS:
                        n = counts.get((org.org_id, kind, managed, flag), 0)
                        self.credentials.labels(
                            org_id=org.org_id, kind=kind, managed=str(managed).lower(), flag=flag
                        ).set(n)
        watched = sorted(expiring_unmanaged(inventory), key=lambda i: i.expires_at)
        self.expiration.clear()
        for item in watched[:max_series]:
            self.expiration.labels(
                org_id=item.org_id, user_id=item.user_id, kind=item.kind, credential_id=item.id
            ).set(item.expires_at.timestamp())
        self.dropped.set(max(0, len(watched) - max_series))
        self.last_success.set(inventory.taken_at.timestamp())


def expiring_unmanaged(inventory: Inventory) -> list[InventoryItem]:
    return [
        i
        for i in inventory.items
        if not i.managed and i.expiry in (Expiry.EXPIRING, Expiry.EXPIRED)
    ]


def notices(inventory: Inventory, seen: set[tuple[str, str]]) -> list[Notification]:
    """A notice per unmanaged credential that entered the expiring window since the
    last call (``seen`` is updated; a credential that left the window is forgotten,
    so it is announced again if it comes back, e.g. a reused id)."""
    out = []
    now = inventory.taken_at
    current = {
        (i.kind, i.id): i for i in expiring_unmanaged(inventory) if i.expiry is Expiry.EXPIRING
    }
    for key, item in current.items():
        if key in seen:
            continue
        seen.add(key)
        days = max(0, int((item.expires_at - now).total_seconds() // 86400))
        out.append(
            Notification(
                event=NOTICE_EVENT,
                target="",
                severity="warning",
                message=(
                    f"unmanaged {item.kind} {item.id} of machine user "
                    f"{item.username or item.user_id} (org {item.org_id}) expires in {days}d "
                    f"({item.expires_at.isoformat(timespec='seconds')}); no rotator target "
                    "manages it (`rotator inventory --suggest`)"
                ),
                fields={
                    "kind": item.kind,
                    "user_id": item.user_id,
                    "org": item.org_id,
                    "credential_id": item.id,
                    "expires_at": item.expires_at.isoformat(),
                },
                timestamp=now,
            )
        )
    seen.intersection_update(current)
    return out


class InventoryWatch:
    """One periodic inventory job (the daemon schedules :meth:`run`)."""

    def __init__(
        self,
        transport: InventoryTransport,
        clock: Clock,
        config: InventoryConfig,
        *,
        registry: CollectorRegistry,
        managed: Callable[[], ManagedIndex],
        own_org: Callable[[], str],
        webhook: Webhook | None = None,
    ) -> None:
        self.transport, self.clock, self.config = transport, clock, config
        self.metrics = InventoryMetrics(registry)
        self._managed, self._own_org, self.webhook = managed, own_org, webhook
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def run(self) -> Inventory | None:
        """Take an inventory, export it, announce new expiring unmanaged credentials.
        Failures are logged (the next interval tries again), never raised."""
        with self._lock:
            try:
                orgs = list(self.config.orgs) or [self._own_org()]
                thresholds = Thresholds(expiring=self.config.expiring, horizon=self.config.horizon)
                inventory = take_inventory(
                    self.transport, orgs, self._managed(), self.clock.now(), thresholds
                )
            except RotatorError as exc:
                log.warning("inventory failed: %s", exc)
                return None
            self.metrics.observe(inventory, self.config.max_series)
            for org in inventory.orgs:
                if not org.readable:
                    log.warning("inventory: org %s cannot be read: %s", org.org_id, org.error)
            for notice in notices(inventory, self._seen):
                if self.webhook is not None:
                    self.webhook.submit(notice)
            return inventory
