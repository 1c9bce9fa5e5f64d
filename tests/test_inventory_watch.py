"""The daemon's periodic inventory: metrics with a cardinality cap, and one
webhook notice per unmanaged credential entering the expiring window.

On the in-memory ZITADEL (tests/fakes) with a real HTTP webhook receiver.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest

from rotator.config import InventoryConfig
from rotator.inventory import ManagedIndex
from rotator.inventory_watch import NOTICE_EVENT, InventoryWatch
from rotator.keys import generate_key_pair
from tests.fakes.fixtures import zitadel as zitadel  # noqa: PLC0414 (a fixture)
from tests.fakes.zitadel import FakeZitadel
from tests.test_notify import Receiver, receiver, webhook  # noqa: F401 - the fixture

PEM = generate_key_pair().public_key_pem


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_and_one_notice_per_credential_entering_the_window(
    zitadel: FakeZitadel, receiver: Receiver  # noqa: F811
) -> None:
    t = zitadel.transport()
    billing = t.resolve_user("svc-billing")
    acme = billing.org_id
    now = zitadel.clock.now()
    managed = t.add_key(billing, PEM, now + timedelta(days=3))
    soon = t.add_key(billing, PEM, now + timedelta(days=3))
    later = t.add_pat(billing, now + timedelta(days=20)).credential
    registry = CollectorRegistry()
    hook = webhook(receiver.url)
    watch = InventoryWatch(
        t, zitadel.clock,
        InventoryConfig(interval=timedelta(hours=1), orgs=(acme, zitadel.org_ids["globex"]),
                        expiring=timedelta(days=14), max_series=10),
        registry=registry,
        managed=lambda: ManagedIndex(credentials={("key", managed.id): "billing"}),
        own_org=lambda: acme, webhook=hook,
    )
    try:
        watch.run()
        text = generate_latest(registry).decode()
        assert _sample(text, "rotator_inventory_credentials", org_id=acme, kind="key",
                       managed="true", flag="expiring") == 1
        assert _sample(text, "rotator_inventory_credentials", org_id=acme, kind="key",
                       managed="false", flag="expiring") == 1
        assert _sample(text, "rotator_inventory_credentials", org_id=acme, kind="pat",
                       managed="false", flag="ok") == 1
        expiry = _sample(text, "rotator_inventory_credential_expiration_timestamp_seconds",
                         credential_id=soon.id)
        assert expiry == soon.expires_at.timestamp()
        # only unmanaged credentials get a series
        assert f'credential_id="{managed.id}"' not in text
        assert f'credential_id="{later.id}"' not in text
        assert _sample(text, "rotator_inventory_org_readable", org_id=acme) == 1
        assert _sample(text, "rotator_inventory_org_readable",
                       org_id=zitadel.org_ids["globex"]) == 0

        [notice] = receiver.wait(1)
        assert notice["event"] == NOTICE_EVENT
        assert notice["credential_id"] == soon.id
        assert "svc-billing" in notice["message"]

        watch.run()  # same credential, still in the window: no second notice
        zitadel.clock.advance(timedelta(days=7))  # the PAT enters the window now
        watch.run()
        bodies = receiver.wait(2)
        assert [b["credential_id"] for b in bodies] == [soon.id, later.id]
        hook.flush()
        assert len(receiver.bodies) == 2
    finally:
        hook.close()


def test_the_expiration_series_are_capped_soonest_first(zitadel: FakeZitadel) -> None:
    t = zitadel.transport()
    billing = t.resolve_user("svc-billing")
    now = zitadel.clock.now()
    pats = [t.add_pat(billing, now + timedelta(days=1 + i)).credential for i in range(5)]
    registry = CollectorRegistry()
    watch = InventoryWatch(
        t, zitadel.clock, InventoryConfig(interval=timedelta(hours=1), max_series=2),
        registry=registry, managed=ManagedIndex, own_org=lambda: billing.org_id,
    )
    watch.run()
    text = generate_latest(registry).decode()
    shown = [p.id for p in pats if f'credential_id="{p.id}"' in text]
    assert shown == [pats[0].id, pats[1].id]
    assert _sample(text.replace("rotator_inventory_series_dropped ",
                                "rotator_inventory_series_dropped{} "),
                   "rotator_inventory_series_dropped") == 3
