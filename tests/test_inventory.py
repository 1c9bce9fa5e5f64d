"""`rotator inventory`'s classification and listing, on the in-memory ZITADEL.

The fake is the emulator's domain model (tests/fakes/zitadel.py); the wire
(v1 and v2 over the emulator) is tested in tests/test_inventory_cli.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator.inventory import (
    Expiry,
    ManagedIndex,
    Thresholds,
    expiry_of,
    managed_index,
    stanza,
    suggestions,
    take_inventory,
)
from rotator.keys import generate_key_pair
from rotator.model import NEVER_EXPIRES, CredentialKind, Target, User
from rotator.state import CredentialRef, PreviousCredential, TargetState
from tests.fakes.fixtures import zitadel as zitadel  # noqa: PLC0414 (a fixture)
from tests.fakes.zitadel import FakeTransport, FakeZitadel

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T = Thresholds(expiring=timedelta(days=14), horizon=timedelta(days=1825))


@pytest.mark.parametrize(
    ("expires", "expected"),
    [
        (NEVER_EXPIRES, Expiry.NEVER_EXPIRES),
        (NOW + timedelta(days=3650), Expiry.NEVER_EXPIRES),  # a "10-year" PAT
        (NOW + timedelta(days=1825), Expiry.OK),  # exactly the horizon: still an expiry
        (NOW + timedelta(days=15), Expiry.OK),
        (NOW + timedelta(days=14), Expiry.EXPIRING),
        (NOW + timedelta(minutes=1), Expiry.EXPIRING),
        (NOW, Expiry.EXPIRED),
        (NOW - timedelta(days=1), Expiry.EXPIRED),
    ],
)
def test_each_credential_has_exactly_one_expiry_class(expires: datetime, expected: Expiry) -> None:
    assert expiry_of(expires, NOW, T) is expected


def test_the_managed_index_knows_current_previous_pending_and_secret_targets() -> None:
    key = Target(name="billing", user="svc-billing", kind=CredentialKind.KEY, vault_path="b")
    pat = Target(name="reports", user="svc-reports", kind=CredentialKind.PAT, vault_path="r")
    never = Target(name="new", user="svc-x", kind=CredentialKind.KEY, vault_path="n")
    state = TargetState(target="billing", kind="key", user_id="u1",
                        current=CredentialRef("k2", NOW),
                        previous=PreviousCredential("k1", NOW, NOW))
    index = managed_index([(key, state), (pat, TargetState(target="reports", kind="pat",
                                                            user_id="u2")), (never, None)])
    assert index.target_of("key", "k2", "u1") == "billing"
    assert index.target_of("key", "k1", "u1") == "billing"
    assert index.target_of("pat", "k2", "u1") is None  # same id, other kind
    assert index.target_of("secret", "u1", "u1") is None


# --------------------------------------------------------------------------- on the fake


def _user(transport: FakeTransport, name: str) -> User:
    return transport.resolve_user(name)


def test_an_org_is_listed_with_every_kind_and_flag(zitadel: FakeZitadel) -> None:
    t = zitadel.transport()
    now = zitadel.clock.now()
    billing, reports = _user(t, "svc-billing"), _user(t, "svc-reports")
    managed_key = t.add_key(billing, _pem(), now + timedelta(days=30))
    stray_key = t.add_key(billing, _pem(), now + timedelta(days=3))
    ten_years = t.add_pat(reports, now + timedelta(days=3650)).credential
    dying = t.add_pat(reports, now + timedelta(hours=1)).credential
    zitadel.domain.generate_machine_secret(reports.id)
    zitadel.clock.advance(timedelta(hours=2))
    index = ManagedIndex(credentials={("key", managed_key.id): "billing"})

    inv = take_inventory(t, [billing.org_id], index, zitadel.clock.now(), T)

    by_id = {i.id: i for i in inv.items}
    assert by_id[managed_key.id].flags == ("managed",)
    assert by_id[managed_key.id].managed_by == "billing"
    assert by_id[stray_key.id].flags == ("unmanaged", "expiring")
    assert by_id[ten_years.id].flags == ("unmanaged", "never-expires")
    assert by_id[dying.id].flags == ("unmanaged", "expired")  # expired, still listed
    secret = by_id[reports.id]
    assert (secret.kind, secret.expires_at, secret.flags) == (
        "secret", NEVER_EXPIRES, ("unmanaged", "never-expires"))
    [org] = inv.orgs
    assert org.readable
    assert org.machine_users == 4
    assert all(inv.present(c) for c in ("unmanaged", "never-expires", "expiring", "expired"))


def test_an_org_the_identity_cannot_read_is_reported_not_empty(zitadel: FakeZitadel) -> None:
    t = zitadel.transport()
    globex = zitadel.org_ids["globex"]  # rotator-admin is ORG_OWNER of acme only
    inv = take_inventory(t, [globex, zitadel.org_ids["acme"]], ManagedIndex(),
                         zitadel.clock.now(), T)
    by_org = {o.org_id: o for o in inv.orgs}
    assert not by_org[globex].readable
    assert "user.read" in (by_org[globex].error or "")
    assert by_org[zitadel.org_ids["acme"]].readable
    assert not any(i.org_id == globex for i in inv.items)


def test_all_orgs_covers_every_org_whose_users_it_can_read(zitadel: FakeZitadel) -> None:
    zitadel.add_user("auditor", roles=["ORG_OWNER_VIEWER"],
                     memberships=[{"org": "globex", "roles": ["ORG_OWNER_VIEWER"]}])
    t = zitadel.transport("auditor")
    ledger = zitadel.domain.get_user(zitadel.user_ids["svc-ledger"])
    assert ledger is not None
    key = zitadel.domain.create_machine_key(ledger.id).key  # v1 default: 9999-12-31
    inv = take_inventory(t, None, ManagedIndex(), zitadel.clock.now(), T)
    assert {o.org_id for o in inv.orgs} == set(zitadel.org_ids.values())
    [item] = [i for i in inv.items if i.id == key.id]
    assert (item.username, item.flags) == ("svc-ledger", ("unmanaged", "never-expires"))


def test_suggestions_name_one_target_per_user_and_kind(zitadel: FakeZitadel) -> None:
    t = zitadel.transport()
    billing = _user(t, "svc-billing")
    now = zitadel.clock.now()
    first = t.add_key(billing, _pem(), now + timedelta(days=30))
    second = t.add_key(billing, _pem(), now + timedelta(days=40))
    inv = take_inventory(t, [billing.org_id], ManagedIndex(), now, T)
    [s] = suggestions(inv)
    assert (s.name, s.kind, set(s.credential_ids)) == ("svc-billing-key", "key",
                                                       {first.id, second.id})
    text = stanza(s)
    assert "- name: svc-billing-key" in text
    assert "user: svc-billing" in text
    assert f'org_id: "{billing.org_id}"' in text
    assert "adopt" not in text


_PAIR = generate_key_pair()


def _pem() -> bytes:
    return _PAIR.public_key_pem


# --------------------------------------------------------------------------- configuration


def _config(inventory: object) -> dict[str, object]:
    import yaml

    raw = yaml.safe_load((Path(__file__).parent.parent / "config/rotator.example.yaml").read_text())
    raw["inventory"] = inventory
    return dict(raw)


def test_the_inventory_section_is_off_by_default_and_validated() -> None:
    from rotator.config import parse_config
    from rotator.errors import ConfigError

    assert parse_config(_config(None), source="r.yaml").inventory.interval is None
    on = parse_config(_config({"interval": "6h", "orgs": ["42", 43], "expiring": "7d"}),
                      source="r.yaml").inventory
    assert (on.interval, on.orgs, on.expiring) == (timedelta(hours=6), ("42", "43"),
                                                   timedelta(days=7))
    with pytest.raises(ConfigError, match=r"r.yaml: inventory.interval: must be at least 1m"):
        parse_config(_config({"interval": "5s"}), source="r.yaml")
    with pytest.raises(ConfigError, match=r"inventory.orgs\[0\]: must be an organization id"):
        parse_config(_config({"interval": "1h", "orgs": [{"a": 1}]}), source="r.yaml")
