"""The rotation protocol end to end: the real engine against the ZITADEL
emulator and a real OpenBao, over both ZITADEL transports (v2 Connect JSON
through the official SDK, v1 gRPC)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from rotator.errors import RotatorError
from rotator.model import Schedule, Trigger
from rotator.report import Outcome
from rotator.windows import RotationWindow
from rotator.zitadel.base import CredentialKind
from rotator.zitadel.oidc import OidcClient
from tests.enginekit import TEST_POLICY, Kit, KitSpec, build_kit

DAY = 24 * 3600
HOUR = timedelta(hours=1)
#: For tests where verification must give up fast.
QUICK_VERIFY = replace(TEST_POLICY, verify_timeout=timedelta(seconds=1))


@pytest.fixture(params=["v2", "v1"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spec(emulator: Any, openbao: Any, kv_mount: str, api: str) -> Iterator[KitSpec]:
    emulator.set_clock_offset(0)
    suffix = uuid.uuid4().hex[:8]
    yield KitSpec(
        key_user=emulator.add_user(f"svc-key-{suffix}")["login_name"],
        pat_user=emulator.add_user(f"svc-pat-{suffix}")["login_name"],
        issuer=emulator.issuer,
        grpc_target=emulator.grpc_target,
        admin_key_file=str(emulator.admin_key_file),
        vault_url=openbao.url,
        vault_token=openbao.root_token,
        mount=kv_mount,
        api=api,
    )
    emulator.clear_faults()
    emulator.set_clock_offset(0)


@pytest.fixture
def kit(spec: KitSpec) -> Iterator[Kit]:
    with build_kit(spec) as kit:
        yield kit


def advance(kit: Kit, emulator: Any, seconds: float) -> None:
    """Move both clocks: the rotator's and ZITADEL's."""
    kit.clock.advance(timedelta(seconds=seconds))
    emulator.set_clock_offset(kit.clock.offset.total_seconds())


def live_ids(kit: Kit, kind: CredentialKind, user: str) -> set[str]:
    resolved = kit.transport.resolve_user(user)
    creds = (
        kit.transport.list_keys(resolved)
        if kind is CredentialKind.KEY
        else kit.transport.list_pats(resolved)
    )
    return {c.id for c in creds}


def consumer_can_authenticate(kit: Kit, data: dict[str, Any]) -> None:
    """What a consumer does with the secret it reads from Vault."""
    if "keyId" in data:
        kit.oidc.exchange_jwt_bearer(data, "openid")
    else:
        kit.oidc.userinfo(data["token"])


def secret(kit: Kit, path: str) -> dict[str, Any]:
    stored = kit.store.read(path)
    assert stored is not None, path
    return dict(stored.data)


# --------------------------------------------------------------- full cycle


def test_a_key_is_created_stored_verified_promoted_and_later_retired(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.outcome is Outcome.ROTATED, first.error

    data = secret(kit, target.vault_path)
    # Vault returns fields sorted (a Go map): the set is ZITADEL's key-file format
    assert set(data) == {"type", "keyId", "key", "expirationDate", "userId"}
    assert data["type"] == "serviceaccount"
    assert data["keyId"] == first.credential_id
    assert first.expires_at is not None
    assert (first.expires_at.hour, first.expires_at.minute) == (0, 0)
    consumer_can_authenticate(kit, data)
    assert live_ids(kit, target.kind, target.user) == {first.credential_id}

    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.UP_TO_DATE
    assert kit.engine.status(target).state == "ready"

    # 21 days on, the key is within renew_before (10 d) of its 30-day expiry
    advance(kit, emulator, 21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED, second.error
    assert second.previous_credential_id == first.credential_id
    data = secret(kit, target.vault_path)
    assert data["keyId"] == second.credential_id
    assert data["previous"]["keyId"] == first.credential_id
    consumer_can_authenticate(kit, data)
    consumer_can_authenticate(kit, data["previous"])  # the old key still works in grace
    assert live_ids(kit, target.kind, target.user) == {first.credential_id, second.credential_id}
    assert kit.engine.status(target).state == "grace"

    advance(kit, emulator, DAY + 60)
    third = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert third.outcome is Outcome.RETIRED
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    assert "previous" not in secret(kit, target.vault_path)
    assert kit.engine.status(target).state == "ready"

    names = kit.event_names()
    for step in [
        "rotation.started",
        "credential.created",
        "credential.stored",
        "credential.verified",
        "credential.promoted",
        "rotation.completed",
        "credential.removed",
        "credential.retired",
    ]:
        assert step in names


def test_a_pat_goes_through_the_same_cycle(kit: Kit, spec: KitSpec, emulator: Any) -> None:
    target = spec.pat_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.outcome is Outcome.ROTATED, first.error
    data = secret(kit, target.vault_path)
    assert set(data) == {"token", "token_id", "user_id", "expires_at"}
    assert data["token_id"] == first.credential_id
    consumer_can_authenticate(kit, data)

    advance(kit, emulator, 21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED, second.error
    data = secret(kit, target.vault_path)
    assert data["previous"]["token_id"] == first.credential_id
    consumer_can_authenticate(kit, data["previous"])

    advance(kit, emulator, DAY + 60)
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.RETIRED
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    with pytest.raises(RotatorError):
        consumer_can_authenticate(kit, {"token": data["previous"]["token"]})


def test_the_old_credential_is_retired_before_its_midnight_expiry(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    long_grace = replace(TEST_POLICY, grace=timedelta(days=5))
    target = spec.key_target(policy=long_grace)
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.expires_at is not None
    # the daemon was down: it comes back 2 days before the old key expires
    until_two_days_left = (first.expires_at - kit.clock.now()).total_seconds() - 2 * DAY
    advance(kit, emulator, until_two_days_left)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED
    status = kit.engine.status(target)
    assert status.retire_at == first.expires_at - timedelta(hours=1)  # not promoted + 5 d

    advance(kit, emulator, (status.retire_at - kit.clock.now()).total_seconds() + 1)
    assert kit.clock.now() < first.expires_at
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.RETIRED
    assert first.credential_id not in live_ids(kit, target.kind, target.user)


def test_an_expired_credential_rotates_at_once_and_is_flagged(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.expires_at is not None
    advance(kit, emulator, (first.expires_at - kit.clock.now()).total_seconds() + 3600)
    assert kit.engine.status(target).state == "expired"
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED
    started = [e for e in kit.events() if e["event"] == "rotation.started"][-1]
    assert started["expired"] is True
    assert started["reason"] == "expired"


# ----------------------------------------------------------- dry run / plan


def test_plan_and_dry_run_change_nothing(kit: Kit, spec: KitSpec, emulator: Any) -> None:
    target = spec.key_target()
    before_zitadel = emulator.state()
    plan = kit.engine.plan(target)
    assert plan.outcome is Outcome.DRY_RUN
    assert any(a.startswith("rotate now") for a in plan.actions)
    assert kit.store.read(target.vault_path) is None
    assert kit.store.read(kit.engine.state_path(target)) is None
    assert emulator.state() == before_zitadel

    kit.engine.reconcile(target, trigger=Trigger.CLI)
    versions = (
        kit.store.read(target.vault_path).version,  # type: ignore[union-attr]
        kit.store.read(kit.engine.state_path(target)).version,  # type: ignore[union-attr]
    )
    snapshot = emulator.state()
    dry = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, dry_run=True)
    assert dry.outcome is Outcome.DRY_RUN
    # rotate_now: the dry run of `rotator rotate` rotates now, not when due
    assert any(a.startswith("rotate now (requested)") for a in dry.actions)
    assert any(a.startswith("rotate at") for a in kit.engine.plan(target).actions)
    assert emulator.state() == snapshot
    assert (
        kit.store.read(target.vault_path).version,  # type: ignore[union-attr]
        kit.store.read(kit.engine.state_path(target)).version,  # type: ignore[union-attr]
    ) == versions


def test_a_credential_in_grace_is_superseded_only_by_force_and_the_plan_says_so(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
    second = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
    assert second.previous_credential_id == first.credential_id  # in grace now
    retire_at = second.status.retire_at  # type: ignore[union-attr]
    assert retire_at is not None
    assert retire_at > kit.clock.now()

    # What the schedule's plan and `rotate --dry-run --force` say: removed now, in grace.
    forced = kit.engine.reconcile(
        target, trigger=Trigger.CLI, rotate_now=True, supersede=True, dry_run=True
    )
    assert forced.actions[0] == (
        f"removes key {first.credential_id} now; it is still in grace until "
        f"{retire_at.isoformat()}"
    )
    # `rotate --dry-run` without --force: it would be refused.
    dry = kit.engine.reconcile(
        target, trigger=Trigger.CLI, rotate_now=True, supersede=False, dry_run=True
    )
    assert dry.actions == (
        f"refuse to rotate: previous key {first.credential_id} is still in grace until "
        f"{retire_at.isoformat()}; `rotator rotate --force {target.name}` removes it now",
    )

    snapshot, events = emulator.state(), len(kit.events())
    refused = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, supersede=False)
    assert refused.outcome is Outcome.REFUSED
    assert refused.error == (
        f"{target.name}: previous key {first.credential_id} is still in grace until "
        f"{retire_at.isoformat()} (consumers may still use it); rotating now would remove "
        f"it at once: `rotator rotate --force {target.name}` to do it anyway"
    )
    assert emulator.state() == snapshot
    assert kit.events()[events:] == []  # not a failure: nothing recorded, nothing audited
    assert kit.engine.status(target).failures == 0

    forced_run = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
    assert forced_run.outcome is Outcome.ROTATED
    removed = [e for e in kit.events() if e["event"] == "credential.retired"]
    assert removed[-1]["reason"] == "superseded"
    assert removed[-1]["old_credential_id"] == first.credential_id


# ------------------------------------------------------ failures / rollback


def test_when_vault_refuses_the_write_the_new_key_is_removed_again(
    kit: Kit, spec: KitSpec, emulator: Any, openbao: Any
) -> None:
    target = spec.key_target()
    created: list[str] = []

    def seal_vault_after_create(event: dict[str, Any]) -> None:
        if event["event"] == "credential.created":
            created.append(event["new_credential_id"])
            openbao.seal()

    kit.engine.audit.subscribe(seal_vault_after_create)
    try:
        result = kit.engine.reconcile(target, trigger=Trigger.CLI)
    finally:
        openbao.unseal()
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "sealed" in result.error.lower() or "unavailable" in result.error.lower()
    assert created
    assert created[0] not in live_ids(kit, target.kind, target.user)
    assert "rotation.rolled_back" in kit.event_names()


def test_a_credential_that_never_verifies_is_rolled_back(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target(policy=QUICK_VERIFY)
    emulator.set_faults(rules=[{"method": "token", "code": "internal", "rate": 1.0}])
    result = kit.engine.reconcile(target, trigger=Trigger.CLI)
    emulator.clear_faults()
    assert result.outcome is Outcome.FAILED
    assert live_ids(kit, target.kind, target.user) == set()
    assert kit.store.read(target.vault_path) is None


def test_an_unreachable_zitadel_during_verification_leaves_the_rotation_resumable(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target(policy=QUICK_VERIFY)
    assert live_ids(kit, target.kind, target.user) == set()  # the rotator's own token is cached
    emulator.set_faults(rules=[{"method": "token", "code": "unavailable", "rate": 1.0}])
    failed = kit.engine.reconcile(target, trigger=Trigger.CLI)
    emulator.clear_faults()
    assert failed.outcome is Outcome.FAILED
    created = [e["new_credential_id"] for e in kit.events() if e["event"] == "credential.created"]
    assert len(created) == 1
    # kept, not rolled back: it is recorded as pending, with its secret, in Vault
    assert live_ids(kit, target.kind, target.user) == set(created)
    assert kit.engine.status(target).state == "failing"
    # the schedule respects the backoff ...
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.FAILED
    assert failed.next_run_at is not None
    advance(kit, emulator, (failed.next_run_at - kit.clock.now()).total_seconds() + 1)

    # ... then resumes the same credential: nothing new is created
    resumed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert resumed.outcome is Outcome.ROTATED, resumed.error
    assert resumed.credential_id == created[0]
    assert "rotation.resumed" in kit.event_names()
    assert secret(kit, target.vault_path)["keyId"] == created[0]


def test_a_rollback_that_zitadel_refuses_is_retried_until_the_key_is_gone(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target(policy=QUICK_VERIFY)
    assert live_ids(kit, target.kind, target.user) == set()  # the rotator's own token is cached
    emulator.set_faults(
        rules=[
            {"method": "token", "code": "internal", "rate": 1.0},  # the new key never works
            {"method": "RemoveKey", "code": "unavailable", "rate": 1.0},
            {"method": "RemoveMachineKey", "code": "unavailable", "rate": 1.0},
        ]
    )
    failed = kit.engine.reconcile(target, trigger=Trigger.CLI)
    emulator.clear_faults()
    assert failed.outcome is Outcome.FAILED
    created = [e["new_credential_id"] for e in kit.events() if e["event"] == "credential.created"]
    assert live_ids(kit, target.kind, target.user) == set(created)  # could not be removed yet
    raw = kit.store.read(kit.engine.state_path(target))
    assert raw is not None
    # ... but it is not forgotten: an orphan record holds it until ZITADEL removed it
    assert raw.data["pending"] is None
    assert [o["credential_id"] for o in raw.data["orphans"]] == created

    assert failed.next_run_at is not None
    advance(kit, emulator, (failed.next_run_at - kit.clock.now()).total_seconds() + 1)
    again = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert again.outcome is Outcome.ROTATED, again.error
    assert created[0] not in live_ids(kit, target.kind, target.user)
    assert again.credential_id != created[0]


def test_a_failing_target_waits_for_its_backoff_instead_of_retrying_at_once(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    advance(kit, emulator, 21 * DAY)  # due
    emulator.set_faults(
        rules=[
            {"method": m, "code": "unavailable", "rate": 1.0} for m in ("AddKey", "AddMachineKey")
        ]
    )
    failed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    emulator.clear_faults()
    waiting = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert waiting.outcome is Outcome.FAILED
    # due long ago, yet the next run is the retry time, not "now": no busy loop
    assert waiting.next_run_at == failed.next_run_at
    assert waiting.next_run_at is not None
    assert waiting.next_run_at > kit.clock.now()
    assert [e["event"] for e in kit.events()].count("rotation.started") == 2


def test_a_stuck_target_still_retires_its_previous_credential_before_expiry(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    advance(kit, emulator, 21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.previous_credential_id == first.credential_id
    # the target then got stuck (set up directly in its state secret)
    raw = kit.store.read(kit.engine.state_path(target))
    assert raw is not None
    kit.store.write(
        kit.engine.state_path(target),
        {**raw.data, "stuck": True, "failures": 5, "last_error": "test"},
        cas=raw.version,
    )
    status = kit.engine.status(target)
    assert status.state == "stuck"
    assert status.retire_at is not None
    advance(kit, emulator, (status.retire_at - kit.clock.now()).total_seconds() + 1)
    result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert result.outcome is Outcome.STUCK
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    assert "previous" not in secret(kit, target.vault_path)


def test_each_rotation_expires_at_midnight_at_an_instant_of_its_own(
    kit: Kit, spec: KitSpec
) -> None:
    one = kit.engine.reconcile(spec.key_target(), trigger=Trigger.CLI)
    two = kit.engine.reconcile(spec.pat_target(), trigger=Trigger.CLI)
    assert one.expires_at is not None
    assert two.expires_at is not None
    for expiry in (one.expires_at, two.expires_at):
        assert (expiry.hour, expiry.minute, expiry.second) == (0, 0, 0)
        assert expiry.microsecond > 0
    assert one.expires_at != two.expires_at


def test_the_rotators_own_key_from_a_file_is_never_retired(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    # the rotator signs in with this very key, read from a file it cannot update
    kit.engine.rotation.own_key_id = lambda: first.credential_id
    advance(kit, emulator, 21 * DAY)
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    advance(kit, emulator, DAY + 60)
    refused = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert refused.outcome is Outcome.FAILED
    assert refused.error is not None
    assert "own identity" in refused.error
    assert first.credential_id in live_ids(kit, target.kind, target.user)


def test_a_sealed_vault_is_reported_plainly_and_retried_with_growing_backoff(
    kit: Kit, spec: KitSpec, emulator: Any, openbao: Any
) -> None:
    target = spec.key_target()
    delays = []
    with openbao.sealed():
        for _ in range(3):
            result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
            assert result.outcome is Outcome.FAILED
            assert result.error is not None
            assert "sealed" in result.error
            assert result.next_run_at is not None
            delays.append((result.next_run_at - kit.clock.now()).total_seconds())
            # before its retry time, a scheduled run does not even try (no event, no call)
            waiting = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
            assert waiting.outcome is Outcome.FAILED
            assert waiting.next_run_at == result.next_run_at
            advance(kit, emulator, (result.next_run_at - kit.clock.now()).total_seconds() + 1)
    attempts = [e["attempt"] for e in kit.events() if e["event"] == "rotation.failed"]
    assert attempts == [1, 2, 3]
    assert delays[2] >= 2.0 > delays[0]  # base 1 s doubling, with jitter in [d/2, d]
    # nothing was half-applied: no credential was created
    assert live_ids(kit, target.kind, target.user) == set()
    ok = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert ok.outcome is Outcome.ROTATED, ok.error


def test_a_closed_window_holds_back_a_rotation_but_not_a_retirement(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    advance(kit, emulator, 21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    # the operator shortened the lifetime: the new key is due again already
    shorter = replace(TEST_POLICY, renew_before=timedelta(days=29, hours=12))
    new_year_only = Schedule(windows=(RotationWindow(cron="0 2 1 1 *", duration=HOUR),))
    target = spec.key_target(policy=shorter, schedule=new_year_only)
    advance(kit, emulator, DAY + 60)  # the previous key's grace is over
    held = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert held.outcome is Outcome.RETIRED
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    assert first.credential_id != second.credential_id
    assert kit.engine.status(target).state == "due"  # still due: waits for its window


def test_repeated_failures_make_a_target_stuck_until_forced(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    kit.engine.failures.backoff = replace(kit.engine.backoff, max_attempts=2)
    target = spec.pat_target()
    method = "AddPersonalAccessToken"
    emulator.set_faults(rules=[{"method": method, "code": "permission_denied", "rate": 1.0}])
    first = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert first.outcome is Outcome.FAILED
    assert first.next_run_at is not None
    advance(kit, emulator, 10)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.STUCK
    assert kit.engine.status(target).state == "stuck"
    emulator.clear_faults()
    # stuck stays stuck for the schedule ...
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.STUCK
    assert "target.stuck" in kit.event_names()
    # ... until a person forces it
    forced = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, unstick=True)
    assert forced.outcome is Outcome.ROTATED
    assert kit.engine.status(target).state == "ready"


def test_transient_zitadel_errors_are_reported_plainly(
    kit: Kit, spec: KitSpec, emulator: Any
) -> None:
    emulator.set_faults(
        rules=[
            {"method": "AddKey", "code": "resource_exhausted", "rate": 1.0},
            {"method": "AddMachineKey", "code": "resource_exhausted", "rate": 1.0},
        ]
    )
    result = kit.engine.reconcile(spec.key_target(), trigger=Trigger.CLI)
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "resource_exhausted" in result.error
    failed = [e for e in kit.events() if e["event"] == "rotation.failed"][-1]
    assert failed["error_type"] == "ZitadelUnavailable"


# ------------------------------------------------- ownership / concurrency


def test_an_unmanaged_secret_is_not_overwritten_unless_adopted(kit: Kit, spec: KitSpec) -> None:
    target = spec.key_target()
    kit.store.write(target.vault_path, {"keyId": "123", "key": "not-ours"}, cas=0)
    refused = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert refused.outcome is Outcome.FAILED
    assert refused.error is not None
    assert "adopt" in refused.error
    adopted = kit.engine.reconcile(spec.key_target(adopt=True), trigger=Trigger.CLI)
    assert adopted.outcome is Outcome.ROTATED, adopted.error


def test_two_engines_racing_on_a_due_target_rotate_it_once(spec: KitSpec) -> None:
    target = spec.key_target()
    results = []
    with build_kit(spec) as one, build_kit(spec) as two:
        barrier = threading.Barrier(2)

        def run(kit: Kit) -> None:
            barrier.wait()
            try:
                results.append(kit.engine.reconcile(target, trigger=Trigger.SCHEDULE))
            except Exception as exc:  # surfaced by the assertion below
                results.append(exc)  # type: ignore[arg-type]

        threads = [threading.Thread(target=run, args=(k,)) for k in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rotated = [r for r in results if r.outcome is Outcome.ROTATED]
        assert len(rotated) == 1, results
        assert live_ids(one, target.kind, target.user) == {rotated[0].credential_id}
        assert secret(one, target.vault_path)["keyId"] == rotated[0].credential_id


# --------------------------------------------------------- crash convergence

KILL_POINTS = [
    "rotation.started",  # intent recorded, nothing created yet
    "credential.created",  # exists in ZITADEL, id known only in memory
    "credential.stored",  # secret kept in the state secret, not verified
    "credential.verified",  # verified, not promoted
    "credential.promoted",  # consumer secret written, state not updated
    "rotation.completed",  # all done, process dies before exiting
]


@pytest.mark.parametrize("kill_after", KILL_POINTS)
@pytest.mark.parametrize("kind", ["key", "pat"])
def test_a_rotator_killed_between_any_two_steps_converges_on_restart(
    spec: KitSpec, kill_after: str, kind: str
) -> None:
    target = spec.key_target() if kind == "key" else spec.pat_target()
    with build_kit(spec) as kit:
        first = kit.engine.reconcile(target, trigger=Trigger.CLI)
        assert first.outcome is Outcome.ROTATED
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.crash_runner", spec.dumps(), kind, kill_after],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    with build_kit(spec) as kit:
        # the consumer still has a working credential right after the crash
        consumer_can_authenticate(kit, secret(kit, target.vault_path))
        again = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert again.outcome in (Outcome.ROTATED, Outcome.UP_TO_DATE), again.error
        status = kit.engine.status(target)
        data = secret(kit, target.vault_path)
        current_id = data.get("keyId") or data.get("token_id")
        assert status.credential_id == current_id
        consumer_can_authenticate(kit, data)
        expected = {current_id}
        if status.previous_credential_id:
            expected.add(status.previous_credential_id)
            assert data["previous"].get("keyId", data["previous"].get("token_id")) == (
                status.previous_credential_id
            )
        # no orphan left in ZITADEL: only the current and the one in grace
        assert live_ids(kit, target.kind, target.user) == expected
        raw_state = kit.store.read(kit.engine.state_path(target))
        assert raw_state is not None
        assert raw_state.data.get("pending") is None


def test_a_rotator_killed_during_retirement_finishes_it_on_restart(
    spec: KitSpec, emulator: Any
) -> None:
    target = spec.key_target()
    with build_kit(spec) as kit:
        kit.engine.reconcile(target, trigger=Trigger.CLI)
        advance(kit, emulator, 21 * DAY)
        second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        advance(kit, emulator, DAY + 60)
    spec.clock_offset_s = kit.clock.offset.total_seconds()
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.crash_runner", spec.dumps(), "key", "credential.removed"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    with build_kit(spec) as kit:
        kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        data = secret(kit, target.vault_path)
        assert "previous" not in data
        assert live_ids(kit, target.kind, target.user) == {data["keyId"]}
        assert kit.engine.status(target).previous_credential_id is None
        assert second.credential_id is not None


# --------------------------------------------------------- consumer's view


def test_a_consumer_can_authenticate_at_every_moment_of_a_rotation(
    emulator_factory: Any, openbao: Any, kv_mount: str
) -> None:
    lagging = emulator_factory(lag_ms=800)
    spec = KitSpec(
        issuer=lagging.issuer,
        grpc_target=lagging.grpc_target,
        admin_key_file=str(lagging.admin_key_file),
        vault_url=openbao.url,
        vault_token=openbao.root_token,
        mount=kv_mount,
    )
    target = spec.key_target()
    failures: list[str] = []
    attempts = 0
    stop = threading.Event()
    with build_kit(spec) as kit:
        kit.engine.reconcile(target, trigger=Trigger.CLI)
        consumer = OidcClient(spec.issuer, clock=kit.clock)

        def consume() -> None:
            nonlocal attempts
            while not stop.is_set():
                data = secret(kit, target.vault_path)
                attempts += 1
                try:
                    consumer.exchange_jwt_bearer(data, "openid")
                except Exception as exc:
                    failures.append(f"{data['keyId']}: {type(exc).__name__}")

        reader = threading.Thread(target=consume)
        reader.start()
        try:
            for _ in range(2):
                assert (
                    kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True).outcome
                    is Outcome.ROTATED
                )
        finally:
            stop.set()
            reader.join()
            consumer.close()
    assert attempts > 5
    assert failures == []
