"""``targets[].org``: an organization by name or domain instead of its id,
resolved once through ZITADEL's OrganizationService (rotator/zitadel/orgs.py),
over both APIs against the emulator and OpenBao."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.config import load_config
from rotator.errors import ConfigError, ZitadelNotFound, ZitadelRejected
from rotator.model import Trigger
from rotator.report import Outcome
from rotator.zitadel.orgs import Org, decide
from tests.test_daemon import Setup, setup  # noqa: F401 - the fixture


def identity_in_both_orgs(setup: Setup) -> Path:  # noqa: F811
    """A rotator identity with ORG_USER_MANAGER in acme and globex."""
    added = setup.emulator.add_user(
        f"svc-rotator-{uuid.uuid4().hex[:8]}",
        org="acme",
        roles=["ORG_USER_MANAGER"],
        key=True,
        memberships=[{"org": "globex", "roles": ["ORG_USER_MANAGER"]}],
    )
    path = setup.tmp / "both-key.json"
    path.write_text(json.dumps(added["key_file"]))
    return path


def configure(setup: Setup, targets: list[dict[str, Any]], *, api: str, key: Path | None) -> Path:  # noqa: F811
    path = setup.config(f"org-{api}", targets)
    raw = yaml.safe_load(path.read_text())
    raw["zitadel"]["api"] = api
    if key is not None:
        raw["zitadel"]["credentials"] = {"key_file": str(key)}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_targets_name_their_org_by_name_or_domain_and_it_is_asked_once(
    setup: Setup,  # noqa: F811 - the fixture
    api: str,
) -> None:
    ledger = setup.emulator.add_user(f"svc-ledger-{uuid.uuid4().hex[:6]}", org="globex")
    billing = setup.emulator.add_user(f"svc-billing-{uuid.uuid4().hex[:6]}", org="acme")
    config = configure(
        setup,
        [
            {
                "name": "ledger",
                "user": ledger["login_name"].split("@")[0],
                "org": "globex",
                "kind": "key",
                "vault_path": "apps/ledger",
            },
            {
                "name": "ledger-pat",
                "user": ledger["login_name"].split("@")[0],
                "org": "globex",
                "kind": "pat",
                "vault_path": "apps/ledger-pat",
            },
            {
                "name": "billing",
                "user": billing["login_name"].split("@")[0],
                "org": "ACME.localhost",
                "kind": "pat",
                "vault_path": "apps/billing",
            },
        ],
        api=api,
        key=identity_in_both_orgs(setup),
    )
    app = setup.app(config)
    setup.emulator.reset_counters()
    try:
        results = {t.name: app.engine.reconcile(t, trigger=Trigger.CLI) for t in app.config.targets}
        status = {t.name: app.engine.status(t) for t in app.config.targets}
    finally:
        app.close()
    assert {n: r.outcome for n, r in results.items()} == dict.fromkeys(results, Outcome.ROTATED)
    assert status["ledger"].user_id == ledger["id"]
    assert status["billing"].user_id == billing["id"]
    calls = setup.emulator.counters()["calls"]
    # two references, each asked once by name and once by domain
    assert calls.get("ListOrganizations") == 4


def test_an_org_the_identity_cannot_see_says_so(setup: Setup) -> None:  # noqa: F811
    """The seeded rotator-admin is ORG_OWNER of acme only: globex is invisible to it."""
    config = configure(
        setup,
        [
            {
                "name": "ledger",
                "user": "svc-ledger",
                "org": "globex",
                "kind": "key",
                "vault_path": "apps/ledger",
            }
        ],
        api="v2",
        key=None,
    )
    app = setup.app(config)
    admin_id = json.loads(setup.emulator.admin_key_file.read_text())["userId"]
    try:
        result = app.engine.reconcile(app.config.targets[0], trigger=Trigger.CLI)
    finally:
        app.close()
    assert result.outcome is Outcome.FAILED
    assert result.error == (
        "ZITADEL OrganizationService.ListOrganizations: no organization named 'globex' or "
        f"with that domain is visible to the rotator's identity (user {admin_id}): it does "
        "not exist, or the identity has no role there (grant it ORG_USER_MANAGER in that org), "
        "or give the target's org_id (not_found)"
    )


def test_a_name_that_is_one_orgs_name_and_anothers_domain_is_ambiguous() -> None:
    a, b = Org("1", "shop.example", "a.example"), Org("2", "b", "shop.example")
    with pytest.raises(ZitadelRejected) as caught:
        decide("shop.example", [a], [b], identity=None)
    assert str(caught.value) == (
        "ZITADEL OrganizationService.ListOrganizations: organization 'shop.example' is "
        "ambiguous: it is the name or a domain of 2 orgs: 1 (name 'shop.example', domain "
        "'a.example'), 2 (name 'b', domain 'shop.example'); give the target's org_id "
        "(failed_precondition)"
    )
    assert decide("a", [a], [a], identity=None) == a  # its name and its domain: one org
    with pytest.raises(ZitadelNotFound):
        decide("nope", [], [], identity=None)


def test_org_and_org_id_are_mutually_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    raw = {
        "zitadel": {"url": "http://127.0.0.1:1", "credentials": {"key_file": "k.json"}},
        "vault": {"url": "http://127.0.0.1:2"},
        "targets": [{"name": "b", "user": "svc-b", "kind": "key", "org": "acme", "org_id": "1"}],
    }
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: targets[0].org: give org (a name or domain) or org_id, not both"
    )


def test_a_throttled_org_lookup_is_retried_and_slows_the_shared_limiter(
    setup: Setup,  # noqa: F811 - the fixture
) -> None:
    """ListOrganizations answered 429 (ZITADEL's quota) goes through the rotator's
    rate limiter like every other call: retried after the rate is cut, not an error."""
    from rotator.ratelimit import RateLimiter
    from rotator.zitadel.oidc import OidcClient, TokenSource
    from rotator.zitadel.orgs import sdk_lookup

    emu = setup.emulator
    key_file = json.loads(emu.admin_key_file.read_text())
    limiter = RateLimiter(50)
    with OidcClient(emu.issuer) as oidc:
        token = TokenSource(oidc, lambda: key_file)
        token()  # the OAuth token first: the faults are for the lookup
        lookup = sdk_lookup(emu.issuer, token, timeout=5, call=limiter.call)
        emu.set_faults(rules=[{"method": "ListOrganizations", "code": "resource_exhausted",
                               "count": 2}])
        try:
            by_name, _ = lookup("acme")
        finally:
            emu.clear_faults()
    assert [org.name for org in by_name] == ["acme"]
    assert limiter.throttled == 2
    assert limiter.rate < 50
