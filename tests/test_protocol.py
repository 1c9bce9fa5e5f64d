"""The rotation protocol, step by step, on the in-process fakes.

The real Engine runs against ZITADEL's domain model in process (the
emulator's rules without its wire) and an in-memory KV v2 store, sharing one
clock with ZITADEL (tests/enginekit.py ``build_fast_kit``); both fakes pass the
contract suites in tests/contract/ together with the real backends.  What
needs real processes (kill -9 between two steps, a lagging ZITADEL over the
wire, a really sealed OpenBao) is in tests/test_rotation.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rotator import consumer
from rotator.errors import RotatorError, ZitadelUnavailable
from rotator.failures import Backoff
from rotator.kinds import ops_for
from rotator.model import CredentialKind, IssuedSecret, Schedule, Target, Trigger, User
from rotator.ratelimit import LimitedTransport, RateLimiter
from rotator.report import Outcome
from rotator.state import Removal, TargetState
from rotator.windows import RotationWindow
from tests.enginekit import TEST_POLICY, FastKit, build_fast_kit, key_target, pat_target
from tests.fakes.fixtures import kit as kit  # noqa: PLC0414 (fixtures)
from tests.fakes.fixtures import store as store  # noqa: PLC0414
from tests.fakes.fixtures import zitadel as zitadel  # noqa: PLC0414
from tests.fakes.store import MemoryStore
from tests.fakes.zitadel import FakeZitadel

DAY = 24 * 3600
HOUR = timedelta(hours=1)
#: For tests where verification must give up fast.
QUICK_VERIFY = replace(TEST_POLICY, verify_timeout=timedelta(seconds=1))


def target_of(kind: str, **kw: Any) -> Target:
    return key_target(**kw) if kind == "key" else pat_target(**kw)


def live_ids(kit: FastKit, kind: CredentialKind, user: str) -> set[str]:
    resolved = kit.transport.resolve_user(user)
    creds = (
        kit.transport.list_keys(resolved)
        if kind is CredentialKind.KEY
        else kit.transport.list_pats(resolved)
    )
    return {c.id for c in creds}


def consumer_can_authenticate(kit: FastKit, data: dict[str, Any]) -> None:
    """What a consumer does with the secret it reads from Vault."""
    if "keyId" in data:
        kit.oidc.exchange_jwt_bearer(data, "openid")
    else:
        kit.oidc.userinfo(data["token"])


def secret(kit: FastKit, path: str) -> dict[str, Any]:
    stored = kit.store.read(path)
    assert stored is not None, path
    return dict(stored.data)


def created_ids(kit: FastKit) -> list[str]:
    return [e["new_credential_id"] for e in kit.events() if e["event"] == "credential.created"]


# --------------------------------------------------------------- full cycle

SECRET_FIELDS = {
    "key": {"type", "keyId", "key", "expirationDate", "userId"},  # ZITADEL's key-file format
    "pat": {"token", "token_id", "user_id", "expires_at"},
}
ID_FIELD = {"key": "keyId", "pat": "token_id"}


@pytest.mark.parametrize("kind", ["key", "pat"])
def test_a_credential_is_created_stored_verified_promoted_and_later_retired(
    kit: FastKit, kind: str
) -> None:
    target = target_of(kind)
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.outcome is Outcome.ROTATED, first.error

    data = secret(kit, target.vault_path)
    assert set(data) == SECRET_FIELDS[kind]
    assert data[ID_FIELD[kind]] == first.credential_id
    if kind == "key":
        assert data["type"] == "serviceaccount"
    assert first.expires_at is not None
    assert (first.expires_at.hour, first.expires_at.minute) == (0, 0)
    consumer_can_authenticate(kit, data)
    assert live_ids(kit, target.kind, target.user) == {first.credential_id}

    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.UP_TO_DATE
    assert kit.engine.status(target).state == "ready"

    # 21 days on, the credential is within renew_before (10 d) of its 30-day expiry
    kit.advance(21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED, second.error
    assert second.previous_credential_id == first.credential_id
    data = secret(kit, target.vault_path)
    assert data[ID_FIELD[kind]] == second.credential_id
    assert data["previous"][ID_FIELD[kind]] == first.credential_id
    consumer_can_authenticate(kit, data)
    consumer_can_authenticate(kit, data["previous"])  # the old one still works in grace
    assert live_ids(kit, target.kind, target.user) == {first.credential_id, second.credential_id}
    assert kit.engine.status(target).state == "grace"

    kit.advance(DAY + 60)
    third = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert third.outcome is Outcome.RETIRED
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    assert "previous" not in secret(kit, target.vault_path)
    assert kit.engine.status(target).state == "ready"
    with pytest.raises(RotatorError):  # the retired credential no longer works
        consumer_can_authenticate(kit, data["previous"])

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


def test_the_old_credential_is_retired_before_its_midnight_expiry(kit: FastKit) -> None:
    long_grace = replace(TEST_POLICY, grace=timedelta(days=5))
    target = key_target(policy=long_grace)
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.expires_at is not None
    # the daemon was down: it comes back 2 days before the old key expires
    kit.advance((first.expires_at - kit.clock.now()).total_seconds() - 2 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED
    status = kit.engine.status(target)
    assert status.retire_at == first.expires_at - timedelta(hours=1)  # not promoted + 5 d

    assert status.retire_at is not None
    kit.advance((status.retire_at - kit.clock.now()).total_seconds() + 1)
    assert kit.clock.now() < first.expires_at
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.RETIRED
    assert first.credential_id not in live_ids(kit, target.kind, target.user)


def test_an_expired_credential_rotates_at_once_and_is_flagged(kit: FastKit) -> None:
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.expires_at is not None
    kit.advance((first.expires_at - kit.clock.now()).total_seconds() + 3600)
    assert kit.engine.status(target).state == "expired"
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED
    started = [e for e in kit.events() if e["event"] == "rotation.started"][-1]
    assert started["expired"] is True
    assert started["reason"] == "expired"


def test_each_rotation_expires_at_midnight_at_an_instant_of_its_own(kit: FastKit) -> None:
    one = kit.engine.reconcile(key_target(), trigger=Trigger.CLI)
    two = kit.engine.reconcile(pat_target(), trigger=Trigger.CLI)
    assert one.expires_at is not None
    assert two.expires_at is not None
    for expiry in (one.expires_at, two.expires_at):
        assert (expiry.hour, expiry.minute, expiry.second) == (0, 0, 0)
        assert expiry.microsecond > 0
    assert one.expires_at != two.expires_at


# ----------------------------------------------------------- dry run / plan


def test_plan_and_dry_run_change_nothing(kit: FastKit) -> None:
    target = key_target()
    before_zitadel = kit.zitadel.state()
    plan = kit.engine.plan(target)
    assert plan.outcome is Outcome.DRY_RUN
    assert any(a.startswith("rotate now") for a in plan.actions)
    assert kit.store.read(target.vault_path) is None
    assert kit.store.read(kit.engine.state_path(target)) is None
    assert kit.zitadel.state() == before_zitadel
    assert kit.store.calls["write"] == 0

    kit.engine.reconcile(target, trigger=Trigger.CLI)
    versions = (
        kit.store.read(target.vault_path).version,  # type: ignore[union-attr]
        kit.store.read(kit.engine.state_path(target)).version,  # type: ignore[union-attr]
    )
    snapshot = kit.zitadel.state()
    writes = kit.store.calls["write"]
    dry = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, dry_run=True)
    assert dry.outcome is Outcome.DRY_RUN
    # rotate_now: the dry run of `rotator rotate` rotates now, not when due
    assert any(a.startswith("rotate now (requested)") for a in dry.actions)
    assert any(a.startswith("rotate at") for a in kit.engine.plan(target).actions)
    assert kit.zitadel.state() == snapshot
    assert kit.store.calls["write"] == writes
    assert (
        kit.store.read(target.vault_path).version,  # type: ignore[union-attr]
        kit.store.read(kit.engine.state_path(target)).version,  # type: ignore[union-attr]
    ) == versions


def test_a_credential_in_grace_is_superseded_only_by_force_and_the_plan_says_so(
    kit: FastKit,
) -> None:
    target = key_target()
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

    snapshot, events = kit.zitadel.state(), len(kit.events())
    refused = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, supersede=False)
    assert refused.outcome is Outcome.REFUSED
    assert refused.error == (
        f"{target.name}: previous key {first.credential_id} is still in grace until "
        f"{retire_at.isoformat()} (consumers may still use it); rotating now would remove "
        f"it at once: `rotator rotate --force {target.name}` to do it anyway"
    )
    assert kit.zitadel.state() == snapshot
    assert kit.events()[events:] == []  # not a failure: nothing recorded, nothing audited
    assert kit.engine.status(target).failures == 0

    forced_run = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
    assert forced_run.outcome is Outcome.ROTATED
    removed = [e for e in kit.events() if e["event"] == "credential.retired"]
    assert removed[-1]["reason"] == "superseded"
    assert removed[-1]["old_credential_id"] == first.credential_id


# ------------------------------------------------------ failures / rollback


def test_when_vault_refuses_the_write_the_new_key_is_removed_again(kit: FastKit) -> None:
    target = key_target()
    created: list[str] = []

    def seal_vault_after_create(event: dict[str, Any]) -> None:
        if event["event"] == "credential.created":
            created.append(event["new_credential_id"])
            kit.store.sealed = True

    kit.engine.audit.subscribe(seal_vault_after_create)
    try:
        result = kit.engine.reconcile(target, trigger=Trigger.CLI)
    finally:
        kit.store.sealed = False
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "sealed" in result.error.lower() or "unavailable" in result.error.lower()
    assert created
    assert created[0] not in live_ids(kit, target.kind, target.user)
    assert "rotation.rolled_back" in kit.event_names()


def test_a_credential_that_never_verifies_is_rolled_back(kit: FastKit) -> None:
    target = key_target(policy=QUICK_VERIFY)
    kit.zitadel.set_faults(rules=[{"method": "token", "code": "internal", "rate": 1.0}])
    result = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.zitadel.clear_faults()
    assert result.outcome is Outcome.FAILED
    assert live_ids(kit, target.kind, target.user) == set()
    assert kit.store.read(target.vault_path) is None


def test_an_unreachable_zitadel_during_verification_leaves_the_rotation_resumable(
    kit: FastKit,
) -> None:
    target = key_target(policy=QUICK_VERIFY)
    kit.zitadel.set_faults(rules=[{"method": "token", "code": "unavailable", "rate": 1.0}])
    failed = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.zitadel.clear_faults()
    assert failed.outcome is Outcome.FAILED
    created = created_ids(kit)
    assert len(created) == 1
    # kept, not rolled back: it is recorded as pending, with its secret, in Vault
    assert live_ids(kit, target.kind, target.user) == set(created)
    assert kit.engine.status(target).state == "failing"
    # the schedule respects the backoff ...
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.FAILED
    assert failed.next_run_at is not None
    kit.advance((failed.next_run_at - kit.clock.now()).total_seconds() + 1)

    # ... then resumes the same credential: nothing new is created
    resumed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert resumed.outcome is Outcome.ROTATED, resumed.error
    assert resumed.credential_id == created[0]
    assert "rotation.resumed" in kit.event_names()
    assert secret(kit, target.vault_path)["keyId"] == created[0]


def test_a_rollback_that_zitadel_refuses_is_retried_until_the_key_is_gone(kit: FastKit) -> None:
    target = key_target(policy=QUICK_VERIFY)
    kit.zitadel.set_faults(
        rules=[
            {"method": "token", "code": "internal", "rate": 1.0},  # the new key never works
            {"method": "RemoveKey", "code": "unavailable", "rate": 1.0},
        ]
    )
    failed = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.zitadel.clear_faults()
    assert failed.outcome is Outcome.FAILED
    created = created_ids(kit)
    assert live_ids(kit, target.kind, target.user) == set(created)  # could not be removed yet
    raw = kit.store.read(kit.engine.state_path(target))
    assert raw is not None
    # ... but it is not forgotten: orphan records hold it until ZITADEL removed it
    # (by its id, and by its rotation's expiry instant, for a twin a retried create left)
    assert raw.data["pending"] is None
    orphans = TargetState.from_dict(dict(raw.data)).orphans
    assert {o.credential_id for o in orphans} == {None, *created}

    assert failed.next_run_at is not None
    kit.advance((failed.next_run_at - kit.clock.now()).total_seconds() + 1)
    again = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert again.outcome is Outcome.ROTATED, again.error
    assert created[0] not in live_ids(kit, target.kind, target.user)
    assert again.credential_id != created[0]


def test_a_failing_target_waits_for_its_backoff_instead_of_retrying_at_once(
    kit: FastKit,
) -> None:
    target = key_target()
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(21 * DAY)  # due
    kit.zitadel.set_faults(rules=[{"method": "AddKey", "code": "unavailable", "rate": 1.0}])
    failed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    kit.zitadel.clear_faults()
    waiting = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert waiting.outcome is Outcome.FAILED
    # due long ago, yet the next run is the retry time, not "now": no busy loop
    assert waiting.next_run_at == failed.next_run_at
    assert waiting.next_run_at is not None
    assert waiting.next_run_at > kit.clock.now()
    assert [e["event"] for e in kit.events()].count("rotation.started") == 2


def test_a_stuck_target_still_retires_its_previous_credential_before_expiry(
    kit: FastKit,
) -> None:
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(21 * DAY)
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
    kit.advance((status.retire_at - kit.clock.now()).total_seconds() + 1)
    result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert result.outcome is Outcome.STUCK
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    assert "previous" not in secret(kit, target.vault_path)


def test_the_rotators_own_key_from_a_file_is_never_retired(kit: FastKit) -> None:
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    # the rotator signs in with this very key, read from a file it cannot update
    kit.engine.rotation.own_key_id = lambda: first.credential_id
    kit.advance(21 * DAY)
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    kit.advance(DAY + 60)
    refused = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert refused.outcome is Outcome.FAILED
    assert refused.error is not None
    assert "own identity" in refused.error
    assert first.credential_id in live_ids(kit, target.kind, target.user)


def test_a_sealed_vault_is_retried_with_growing_backoff_and_nothing_half_applied(
    kit: FastKit,
) -> None:
    target = key_target()
    delays = []
    kit.store.sealed = True
    for _ in range(3):
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert result.outcome is Outcome.FAILED
        assert result.error is not None
        assert "sealed" in result.error
        assert result.next_run_at is not None
        delays.append((result.next_run_at - kit.clock.now()).total_seconds())
        # before its retry time, a scheduled run does not even try (no event, no call)
        calls = sum(kit.store.calls.values())
        waiting = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert waiting.outcome is Outcome.FAILED
        assert waiting.next_run_at == result.next_run_at
        assert sum(kit.store.calls.values()) == calls
        kit.advance((result.next_run_at - kit.clock.now()).total_seconds() + 1)
    kit.store.sealed = False
    attempts = [e["attempt"] for e in kit.events() if e["event"] == "rotation.failed"]
    assert attempts == [1, 2, 3]
    assert delays[2] >= 2.0 > delays[0]  # base 1 s doubling, with jitter in [d/2, d]
    assert live_ids(kit, target.kind, target.user) == set()  # no credential was created
    ok = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert ok.outcome is Outcome.ROTATED, ok.error


def test_a_closed_window_holds_back_a_rotation_but_not_a_retirement(kit: FastKit) -> None:
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    # the operator shortened the lifetime: the new key is due again already
    shorter = replace(TEST_POLICY, renew_before=timedelta(days=29, hours=12))
    new_year_only = Schedule(windows=(RotationWindow(cron="0 2 1 1 *", duration=HOUR),))
    target = key_target(policy=shorter, schedule=new_year_only)
    kit.advance(DAY + 60)  # the previous key's grace is over
    held = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert held.outcome is Outcome.RETIRED
    assert live_ids(kit, target.kind, target.user) == {second.credential_id}
    assert first.credential_id != second.credential_id
    assert kit.engine.status(target).state == "due"  # still due: waits for its window


def test_repeated_failures_make_a_target_stuck_until_forced(kit: FastKit) -> None:
    kit.engine.failures.backoff = replace(kit.engine.backoff, max_attempts=2)
    target = pat_target()
    kit.zitadel.set_faults(  # a permanent cause: the rotator's identity lost its grant
        rules=[{"method": "AddPersonalAccessToken", "code": "permission_denied", "rate": 1.0}]
    )
    first = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert first.outcome is Outcome.FAILED
    assert first.next_run_at is not None
    kit.advance(10)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.STUCK
    assert kit.engine.status(target).state == "stuck"
    kit.zitadel.clear_faults()
    # stuck stays stuck for the schedule ...
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.STUCK
    assert "target.stuck" in kit.event_names()
    # ... until a person forces it
    forced = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, unstick=True)
    assert forced.outcome is Outcome.ROTATED
    assert kit.engine.status(target).state == "ready"


@pytest.mark.parametrize(
    ("method", "kind"), [("AddKey", "key"), ("AddPersonalAccessToken", "pat")]
)
def test_transient_zitadel_errors_are_reported_plainly(
    kit: FastKit, method: str, kind: str
) -> None:
    kit.zitadel.set_faults(rules=[{"method": method, "code": "resource_exhausted", "rate": 1.0}])
    result = kit.engine.reconcile(target_of(kind), trigger=Trigger.CLI)
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "resource_exhausted" in result.error
    failed = [e for e in kit.events() if e["event"] == "rotation.failed"][-1]
    assert failed["error_type"] == "ZitadelUnavailable"


# ------------------------------------------------- ownership / concurrency


def test_an_unmanaged_secret_is_not_overwritten_unless_adopted(kit: FastKit) -> None:
    target = key_target()
    kit.store.write(target.vault_path, {"keyId": "123", "key": "not-ours"}, cas=0)
    refused = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert refused.outcome is Outcome.FAILED
    assert refused.error is not None
    assert "adopt" in refused.error
    adopted = kit.engine.reconcile(key_target(adopt=True), trigger=Trigger.CLI)
    assert adopted.outcome is Outcome.ROTATED, adopted.error


@pytest.mark.parametrize("kind", ["key", "pat"])
def test_two_engines_racing_on_a_due_target_rotate_it_once(
    zitadel: FakeZitadel, store: MemoryStore, kind: str
) -> None:
    target = target_of(kind)
    results: list[Any] = []
    with build_fast_kit(zitadel, store) as one, build_fast_kit(zitadel, store) as two:
        barrier = threading.Barrier(2)

        def run(kit: FastKit) -> None:
            barrier.wait()
            try:
                results.append(kit.engine.reconcile(target, trigger=Trigger.SCHEDULE))
            except Exception as exc:  # surfaced by the assertion below
                results.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rotated = [r for r in results if r.outcome is Outcome.ROTATED]
        assert len(rotated) == 1, results
        assert live_ids(one, target.kind, target.user) == {rotated[0].credential_id}
        assert secret(one, target.vault_path)[ID_FIELD[kind]] == rotated[0].credential_id


# ------------------------------------------------------------------ cost at scale


def test_an_idle_target_costs_one_vault_read_and_no_zitadel_call_per_pass(kit: FastKit) -> None:
    """After the first pass the user comes from the state, the presence check from
    a listing reused for presence_interval, the status from the run itself."""
    targets = [key_target(), pat_target()]
    for target in targets:
        kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(3600)  # past orphan_watch: no rotation's twin left to look for
    for target in targets:  # first idle pass: one presence listing per org and kind
        kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    kit.zitadel.domain.faults.reset_counters()
    before = dict(kit.store.calls)
    for target in targets:
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert result.outcome is Outcome.UP_TO_DATE
        assert result.status is not None
        assert result.status.state == "ready"
    assert kit.zitadel.domain.faults.counters()["total"] == 0
    spent = {k: v - before.get(k, 0) for k, v in kit.store.calls.items() if v != before.get(k, 0)}
    assert spent == {"read": 2}


def test_an_adopted_credential_is_recorded_so_later_passes_need_not_adopt_again(
    kit: FastKit,
) -> None:
    target = key_target()
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.store.delete_all(kit.engine.state_path(target))  # the state is lost
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)  # adopts from the consumer secret
    assert kit.store.read(kit.engine.state_path(target)) is not None
    before = dict(kit.store.calls)
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert kit.store.calls["read"] - before.get("read", 0) == 1


# ------------------------------------------------------------------ outages


def _daemon_loop(kit: FastKit, target: Target, minutes: float) -> list[Outcome]:
    """Run the target whenever the engine asks to be run next, for ``minutes``."""
    end = kit.clock.now() + timedelta(minutes=minutes)
    outcomes = []
    while kit.clock.now() < end:
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        outcomes.append(result.outcome)
        wait = (result.next_run_at - kit.clock.now()).total_seconds() if result.next_run_at else 60
        kit.advance(min(max(wait, 1), (end - kit.clock.now()).total_seconds() + 1))
    return outcomes


@pytest.mark.parametrize("method", ["*", "token", "AddKey", "ListKeys"])
def test_a_30_minute_zitadel_outage_leaves_nothing_stuck_and_nothing_expired(
    kit: FastKit, method: str
) -> None:
    kit.engine.failures.backoff = Backoff(  # the daemon's defaults
        max_attempts=5, base=timedelta(minutes=1), cap=timedelta(hours=1)
    )
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(21 * DAY)  # due
    kit.zitadel.set_faults(rules=[{"method": method, "code": "unavailable", "rate": 1.0}])
    outcomes = _daemon_loop(kit, target, minutes=30)
    kit.zitadel.clear_faults()
    assert Outcome.STUCK not in outcomes
    assert kit.engine.status(target).state != "stuck"
    recovered = _daemon_loop(kit, target, minutes=90)
    assert Outcome.ROTATED in outcomes + recovered  # (a ListKeys outage does not hold it up)
    status = kit.engine.status(target)
    assert status.state in ("grace", "ready")
    assert status.credential_id != first.credential_id
    assert status.failures == 0


def test_close_to_expiry_the_expiry_wins_over_the_backoff(kit: FastKit) -> None:
    """A two-day outage has pushed the backoff to waits of many hours; with two
    hours left before the retire margin, attempts still come often enough that
    the new credential exists in time once ZITADEL is back (the plain backoff
    would wait past it: this test fails without the expiry bound)."""
    kit.engine.failures.backoff = Backoff(  # a long cap: the plain backoff would miss it
        max_attempts=5, base=timedelta(minutes=1), cap=timedelta(hours=12)
    )
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.expires_at is not None
    kit.advance((first.expires_at - kit.clock.now()).total_seconds() - 48 * 3600)
    kit.zitadel.set_faults(rules=[{"method": "*", "code": "unavailable", "rate": 1.0}])
    _daemon_loop(kit, target, minutes=45 * 60)  # waits of many hours by now; 3 h remain
    deadline = first.expires_at - target.policy.retire_margin
    assert kit.clock.now() < deadline
    kit.zitadel.clear_faults()
    result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    if result.outcome is not Outcome.ROTATED:  # still backing off: its retry comes in time
        assert result.next_run_at is not None
        assert result.next_run_at < deadline
        kit.advance((result.next_run_at - kit.clock.now()).total_seconds() + 1)
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert result.outcome is Outcome.ROTATED
    assert kit.clock.now() < deadline
    assert kit.engine.status(target).state != "stuck"


def test_a_first_rotation_writes_vault_no_more_than_the_protocol_needs(kit: FastKit) -> None:
    """Intent, stored secret, consumer secret (data with its metadata), final state:
    four writes; plus the destroy of the versions that held the secret."""
    kit.engine.reconcile(key_target(), trigger=Trigger.CLI)
    assert kit.store.calls["write"] == 4
    assert kit.store.calls["destroy_versions"] == 1


def test_a_create_retried_below_the_engine_leaves_no_twin(kit: FastKit) -> None:
    """A create that ZITADEL performed but answered with an error, retried by a
    layer below the engine (here: the rate limiter after a 429), makes two
    credentials with the rotation's expiry instant; the one not promoted is
    removed as an orphan and audited."""
    target = pat_target()
    real_add = kit.transport.add_pat

    def add_twice(user: Any, expires_at: Any) -> Any:
        real_add(user, expires_at)  # acted, answer lost; the retry:
        return real_add(user, expires_at)

    kit.transport.add_pat = add_twice  # type: ignore[method-assign]
    result = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert result.outcome is Outcome.ROTATED
    kit.transport.add_pat = real_add  # type: ignore[method-assign]
    assert len(live_ids(kit, target.kind, target.user)) == 2
    kit.advance(60)
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert live_ids(kit, target.kind, target.user) == {result.credential_id}
    removed = [e for e in kit.events() if e["event"] == "orphan.removed"]
    assert [e["found_by"] for e in removed] == ["expiry_instant"]


def test_an_orphan_whose_removal_answer_was_lost_is_audited_by_its_id(kit: FastKit) -> None:
    """ZITADEL removed the orphan but the answer was lost, and the retry below the
    engine met NotFound: the removal is in the audit trail all the same."""
    target = pat_target()
    real_add, real_remove = kit.transport.add_pat, kit.transport.remove_pat

    def add_twice(user: Any, expires_at: Any) -> Any:
        real_add(user, expires_at)  # acted, answer lost; the retry:
        return real_add(user, expires_at)

    def removed_answer_lost(user: Any, pat_id: str) -> None:
        real_remove(user, pat_id)  # acted, answer lost; the retry:
        real_remove(user, pat_id)  # NotFound

    kit.transport.add_pat = add_twice  # type: ignore[method-assign]
    result = kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.transport.add_pat = real_add  # type: ignore[method-assign]
    twin = live_ids(kit, target.kind, target.user) - {result.credential_id}
    kit.transport.remove_pat = removed_answer_lost  # type: ignore[method-assign]
    kit.advance(60)
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    kit.transport.remove_pat = real_remove  # type: ignore[method-assign]
    assert live_ids(kit, target.kind, target.user) == {result.credential_id}
    removed = [e for e in kit.events() if e["event"] == "orphan.removed"]
    assert [(e["credential_id"], e["already_gone"]) for e in removed] == [(twin.pop(), True)]


# --------------------------------------------------------------- two identities


def two_identity_target(kit: FastKit, kind: str, **kw: Any) -> Target:
    """A target over two fresh machine users (same org), ``svc-<kind>-a`` and ``-b``."""
    names = (f"svc-{kind}-a", f"svc-{kind}-b")
    for name in names:
        if name not in kit.zitadel.user_ids:
            kit.zitadel.add_user(name)
    return replace(target_of(kind, name=f"twin-{kind}", **kw), user=names[0], users=names)


def owner_of(kit: FastKit, data: dict[str, Any]) -> str:
    return str(data.get("userId") or data.get("user_id"))


@pytest.mark.parametrize("kind", ["key", "pat"])
def test_two_identities_take_turns_and_the_one_in_use_is_never_touched(
    kit: FastKit, kind: str
) -> None:
    target = two_identity_target(kit, kind)
    a, b = (kit.zitadel.user_ids[name] for name in target.users)
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.outcome is Outcome.ROTATED, first.error
    assert owner_of(kit, secret(kit, target.vault_path)) == a
    status = kit.engine.status(target)
    assert (status.active_user_id, status.next_user_id) == (a, b)
    assert any("active svc-" in note and f"on svc-{kind}-b" in note for note in status.notes)

    holders = [a]
    for _ in range(4):
        in_use = secret(kit, target.vault_path)
        live_before = live_ids(kit, target.kind, target.identities[holders[-1] == b])
        kit.advance(21 * DAY)
        rotated = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert rotated.outcome is Outcome.ROTATED, rotated.error
        data = secret(kit, target.vault_path)
        holders.append(owner_of(kit, data))
        assert holders[-1] != holders[-2]  # the new credential is on the other identity
        # the identity in use kept exactly what it had: nothing created or removed there
        assert live_ids(kit, target.kind, target.identities[holders[-2] == b]) == live_before
        consumer_can_authenticate(kit, data)
        consumer_can_authenticate(kit, in_use)  # consumers not yet re-read: still fine
        assert data["previous"][ID_FIELD[kind]] == in_use[ID_FIELD[kind]]
        status = kit.engine.status(target)
        assert (status.active_user_id, status.next_user_id) == (holders[-1], holders[-2])

        kit.advance(DAY + 60)
        assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.RETIRED
        # after grace the other identity holds nothing; the one in use holds one credential
        assert live_ids(kit, target.kind, target.identities[holders[-2] == b]) == set()
        assert live_ids(kit, target.kind, target.identities[holders[-1] == b]) == {
            data[ID_FIELD[kind]]
        }
        with pytest.raises(RotatorError):
            consumer_can_authenticate(kit, in_use)
    assert holders == [a, b, a, b, a]
    removed = [e for e in kit.events() if e["event"] == "credential.removed"]
    assert [e["user_id"] for e in removed] == holders[:-1]  # audited on the identity it was on


def test_a_two_identity_rotation_interrupted_in_verification_resumes_on_the_same_identity(
    kit: FastKit,
) -> None:
    target = two_identity_target(kit, "key", policy=QUICK_VERIFY)
    _a, b = (kit.zitadel.user_ids[name] for name in target.users)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)
    kit.zitadel.set_faults(rules=[{"method": "token", "code": "unavailable", "rate": 1.0}])
    failed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    kit.zitadel.clear_faults()
    assert failed.outcome is Outcome.FAILED
    assert kit.engine.status(target).next_user_id == b  # the pending rotation's identity
    assert failed.next_run_at is not None
    kit.advance((failed.next_run_at - kit.clock.now()).total_seconds() + 1)
    resumed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert resumed.outcome is Outcome.ROTATED, resumed.error
    assert owner_of(kit, secret(kit, target.vault_path)) == b
    assert created_ids(kit)[-1] == resumed.credential_id  # the same credential, not a new one
    assert kit.engine.status(target).active_user_id == b


def test_a_twin_created_on_the_spare_identity_is_swept_there(kit: FastKit) -> None:
    target = two_identity_target(kit, "pat")
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    real_add = kit.transport.add_pat

    def add_twice(user: Any, expires_at: Any) -> Any:
        real_add(user, expires_at)
        return real_add(user, expires_at)

    kit.transport.add_pat = add_twice  # type: ignore[method-assign]
    rotated = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
    kit.transport.add_pat = real_add  # type: ignore[method-assign]
    assert rotated.outcome is Outcome.ROTATED
    spare = target.users[1]
    assert len(live_ids(kit, target.kind, spare)) == 2
    kit.advance(60)
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert live_ids(kit, target.kind, spare) == {rotated.credential_id}
    removed = [e for e in kit.events() if e["event"] == "orphan.removed"]
    assert [e["user_id"] for e in removed] == [kit.zitadel.user_ids[spare]]


def test_a_lost_state_of_a_two_identity_target_adopts_what_vault_holds(kit: FastKit) -> None:
    target = two_identity_target(kit, "key")
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(21 * DAY)
    second = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    kit.advance(DAY + 60)
    kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    kit.store.delete_all(kit.engine.state_path(target))
    again = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert again.outcome is Outcome.UP_TO_DATE, again.error
    status = kit.engine.status(target)
    b = kit.zitadel.user_ids[target.users[1]]
    assert (status.credential_id, status.active_user_id) == (second.credential_id, b)
    assert status.next_user_id == kit.zitadel.user_ids[target.users[0]]


def test_plan_names_the_identity_a_two_identity_rotation_uses(kit: FastKit) -> None:
    target = two_identity_target(kit, "key")
    plan = kit.engine.plan(target)
    assert any(f"on {target.users[0]}" in action for action in plan.actions), plan.actions
    kit.engine.reconcile(target, trigger=Trigger.CLI)
    kit.advance(21 * DAY)
    actions = kit.engine.plan(target).actions
    rotate = next(action for action in actions if action.startswith("rotate now"))
    assert f"on {target.users[1]} (" in rotate
    assert f"not on {target.users[0]} (" in rotate


# --------------------------------------------------------------- client secrets


def secret_target(**kw: Any) -> Target:
    return Target(
        name=kw.pop("name", "ledger"),
        user=kw.pop("user", "svc-payroll"),
        kind=CredentialKind.SECRET,
        vault_path=kw.pop("vault_path", "zitadel/ledger"),
        policy=kw.pop("policy", TEST_POLICY),
        **kw,
    )


@pytest.fixture
def ledger(kit: FastKit) -> Target:
    kit.zitadel.add_user("svc-payroll")
    return secret_target()


def client_works(kit: FastKit, data: dict[str, Any]) -> None:
    """A consumer's client_credentials request with what it read (raises if refused)."""
    kit.oidc.verify_secret(data["client_id"], data["client_secret"], user_id=data["user_id"])


def test_a_secret_is_regenerated_stored_verified_and_promoted_without_previous(
    kit: FastKit, ledger: Target
) -> None:
    first = kit.engine.reconcile(ledger, trigger=Trigger.CLI)
    assert first.outcome is Outcome.ROTATED, first.error
    data = secret(kit, ledger.vault_path)
    user_id = kit.zitadel.user_ids["svc-payroll"]
    assert set(data) == {"client_id", "client_secret", "user_id"}
    assert data["user_id"] == user_id
    assert data["client_id"] == kit.transport.resolve_user(user_id).username
    client_works(kit, data)
    stored = kit.store.read(ledger.vault_path)
    assert stored is not None
    assert stored.custom_metadata["kind"] == "secret"
    assert stored.custom_metadata["managed-by"] == "zitadel-rotator"
    status = kit.engine.status(ledger)
    assert status.state == "ready"
    assert any("one identity" in note for note in status.notes)

    kit.advance(21 * DAY)
    plan = kit.engine.plan(ledger)
    assert any(a.startswith("caveat: one identity") for a in plan.actions), plan.actions
    second = kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    assert second.outcome is Outcome.ROTATED, second.error
    assert second.previous_credential_id is None  # replaced in place: nothing in grace
    new = secret(kit, ledger.vault_path)
    assert "previous" not in new
    assert new["client_secret"] != data["client_secret"]
    client_works(kit, new)
    with pytest.raises(RotatorError):  # the old one died with the regeneration
        client_works(kit, data)
    assert "credential.retired" not in kit.event_names()
    assert kit.engine.status(ledger).state == "ready"


def test_a_regenerated_secret_lost_before_it_was_stored_is_regenerated_at_once(
    kit: FastKit, ledger: Target
) -> None:
    assert kit.engine.reconcile(ledger, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    before = secret(kit, ledger.vault_path)
    kit.advance(21 * DAY)

    def seal_after_regenerate(event: dict[str, Any]) -> None:
        if event["event"] == "credential.created":
            kit.store.sealed = True

    kit.engine.audit.subscribe(seal_after_regenerate)
    try:
        failed = kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    finally:
        kit.store.sealed = False
        kit.engine.audit.unsubscribe(seal_after_regenerate)
    assert failed.outcome is Outcome.FAILED
    with pytest.raises(RotatorError):  # Vault's secret is dead: the gap this bounds
        client_works(kit, before)
    assert "rotation.rolled_back" not in kit.event_names()
    assert failed.next_run_at is not None
    kit.advance((failed.next_run_at - kit.clock.now()).total_seconds() + 1)
    state_path = kit.engine.state_path(ledger)
    first = kit.store.read(state_path).version + 1  # type: ignore[union-attr]
    resumed = kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    assert resumed.outcome is Outcome.ROTATED, resumed.error
    assert "secret.regenerated_after_loss" in kit.event_names()
    client_works(kit, secret(kit, ledger.vault_path))
    # taken over and moved to `creating` in one check-and-set write, then created
    phases = [
        (data["pending"] or {}).get("phase")
        for version in range(first, kit.store.read(state_path).version + 1)  # type: ignore[union-attr]
        if (data := kit.store.version_data(state_path, version)) is not None
    ]
    assert phases.count("creating") == 1, phases


def test_a_secret_that_does_not_verify_is_kept_and_retried_never_stuck(
    zitadel: FakeZitadel, store: MemoryStore
) -> None:
    zitadel.add_user("svc-payroll")
    target = secret_target(policy=QUICK_VERIFY)
    with build_fast_kit(zitadel, store, max_attempts=2) as kit:
        kit.zitadel.set_faults(rules=[{"method": "token", "code": "internal", "rate": 1.0}])
        outcomes = []
        for _ in range(4):  # twice max_attempts: a key would be stuck by now
            result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
            outcomes.append(result.outcome)
            kit.advance(10)  # past the backoff (cap 4 s)
        kit.zitadel.clear_faults()
        assert outcomes == [Outcome.FAILED] * 4
        failed = [e for e in kit.events() if e["event"] == "rotation.failed"]
        assert {e["failure_class"] for e in failed} == {"transient"}
        assert "target.stuck" not in kit.event_names()
        assert "rotation.rolled_back" not in kit.event_names()
        assert len(created_ids(kit)) == 1  # regenerated once; the same secret is retried
        kit.advance(10)
        done = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert done.outcome is Outcome.ROTATED, done.error
        assert len(created_ids(kit)) == 1
        client_works(kit, secret(kit, target.vault_path))


def test_projection_lag_after_regeneration_is_absorbed_by_verification(
    tmp_path: Path, store: MemoryStore
) -> None:
    lagging = FakeZitadel(tmp_path / "lagging", lag_ms=1500)
    try:
        lagging.add_user("svc-payroll")
        with build_fast_kit(lagging, store) as kit:
            target = secret_target()
            assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
            kit.advance(21 * DAY)
            result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
            assert result.outcome is Outcome.ROTATED, result.error
            client_works(kit, secret(kit, target.vault_path))
    finally:
        lagging.close()


def test_two_identity_secrets_keep_every_consumer_working_and_leave_no_old_secret_valid(
    kit: FastKit,
) -> None:
    names = ("svc-payroll-a", "svc-payroll-b")
    for name in names:
        kit.zitadel.add_user(name)
    target = secret_target(user=names[0], users=names)
    ids = [kit.zitadel.user_ids[n] for n in names]
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    assert not kit.engine.status(target).notes[0].startswith("ledger: one identity")
    holders = [secret(kit, target.vault_path)["user_id"]]
    for _ in range(4):
        held = secret(kit, target.vault_path)  # what a consumer read before the rotation
        kit.advance(21 * DAY)
        assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
        new = secret(kit, target.vault_path)
        assert "previous" not in new
        holders.append(new["user_id"])
        client_works(kit, new)
        client_works(kit, held)  # the identity in use was not touched: still valid in grace
        kit.advance(DAY + 60)
        assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.RETIRED
        with pytest.raises(RotatorError):  # removed, not left valid
            client_works(kit, held)
        spare = kit.transport.resolve_user(held["user_id"])
        assert spare.has_secret is False
    assert holders == [ids[0], ids[1], ids[0], ids[1], ids[0]]


def test_no_secret_is_regenerated_on_a_user_whose_old_secret_another_rotator_is_removing(
    kit: FastKit,
) -> None:
    """RemoveSecret names only the user: a removal claimed in the state keeps every
    rotator from regenerating there, or the removal would take the new secret."""
    names = ("svc-claim-a", "svc-claim-b")
    for name in names:
        kit.zitadel.add_user(name)
    target = secret_target(user=names[0], users=names)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    held = secret(kit, target.vault_path)  # b's; a's old secret is in grace
    path = kit.engine.state_path(target)
    raw = kit.store.read(path)
    assert raw is not None
    state = TargetState.from_dict(dict(raw.data))
    spare = state.previous.user_id if state.previous else ""
    # another rotator retired a's secret: its claim is in Vault, its RemoveSecret still to come
    state.previous = None
    state.removing = Removal(user_id=spare, owner="elsewhere-1", deadline=kit.clock.now()
                             + timedelta(minutes=5))
    kit.store.write(path, state.to_dict(), cas=raw.version)

    refused = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
    assert refused.outcome is not Outcome.ROTATED
    assert secret(kit, target.vault_path) == held  # nothing regenerated on a
    kit.advance(6 * 60)  # the claimant died: its claim has expired
    assert kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True).outcome is (
        Outcome.ROTATED)
    new = secret(kit, target.vault_path)
    assert new["user_id"] == spare
    client_works(kit, new)  # the expired claim's removal came first, then the regeneration
    client_works(kit, held)  # b, now in grace


def test_identity_problems_name_a_missing_a_human_and_a_repeated_user(kit: FastKit) -> None:
    kit.zitadel.add_user("svc-ok")
    kit.zitadel.add_user("alice", type="human")
    login = kit.zitadel.add_user("svc-twice")["login_name"]
    good = replace(key_target(name="good"), user="svc-ok")
    assert kit.engine.identity_problems(good) == []
    bad = replace(key_target(name="bad"), user="svc-nobody", users=("svc-nobody", "alice"))
    problems = kit.engine.identity_problems(bad)
    assert len(problems) == 2
    assert "'svc-nobody' not found" in problems[0]
    assert "'alice'" in problems[1]
    assert "human user" in problems[1]
    same = replace(key_target(name="same"), user="svc-twice", users=("svc-twice", login))
    assert "same user" in kit.engine.identity_problems(same)[0]
    # and the engine refuses to rotate it: the new key would land on the one in use
    result = kit.engine.reconcile(same, trigger=Trigger.CLI)
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "same ZITADEL user" in result.error


def test_a_pending_secret_that_does_not_verify_is_regenerated_when_a_person_forces_it(
    kit: FastKit, ledger: Target
) -> None:
    target = replace(ledger, policy=QUICK_VERIFY)
    kit.zitadel.set_faults(rules=[{"method": "token", "code": "internal", "rate": 1.0}])
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.FAILED
    kit.zitadel.clear_faults()
    stuck_secret = kit.store.read(kit.engine.state_path(target))
    assert stuck_secret is not None
    assert stuck_secret.data["pending"]["phase"] == "created"
    forced = kit.engine.reconcile(
        target, trigger=Trigger.CLI, rotate_now=True, unstick=True, supersede=True
    )  # what `rotator rotate --force` asks
    assert forced.outcome is Outcome.ROTATED, forced.error
    assert len(created_ids(kit)) >= 2  # regenerated, not verified once more
    assert "secret.regenerated_after_loss" not in kit.event_names()  # nothing was lost
    client_works(kit, secret(kit, target.vault_path))
    # no version of the state keeps either pending secret: KV history holds none
    path = kit.engine.state_path(target)
    latest = kit.store.read(path)
    assert latest is not None
    assert latest.data.get("pending") is None
    kept = [kit.store.version_data(path, v) for v in range(1, latest.version + 1)]
    assert not [d for d in kept if d and (d.get("pending") or {}).get("secret")]


class _Crash(BaseException):
    """The process dies here (not an error the engine could catch)."""


def crash_after_promotion(kit: FastKit, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation dies right after writing the consumer secret, before its state save."""
    real = consumer.promote

    def promote_then_die(*args: Any, **kwargs: Any) -> int:
        real(*args, **kwargs)
        raise _Crash()

    with monkeypatch.context() as patched:
        patched.setattr(consumer, "promote", promote_then_die)
        with pytest.raises(_Crash):
            kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)


@pytest.mark.parametrize(
    ("identities", "force"), [(1, False), (2, False), (2, True)], ids=["one", "two", "two-force"]
)
def test_a_rotate_after_a_crash_past_promotion_keeps_the_secret_consumers_already_read(
    kit: FastKit, monkeypatch: pytest.MonkeyPatch, identities: int, force: bool
) -> None:
    names = ("svc-payroll-a", "svc-payroll-b")[:identities]
    for name in names:
        kit.zitadel.add_user(name)
    target = secret_target(user=names[0], users=names if identities == 2 else ())
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)
    crash_after_promotion(kit, target, monkeypatch)
    held = secret(kit, target.vault_path)  # consumers read the new secret already
    client_works(kit, held)
    created = len(created_ids(kit))

    kit.engine.reconcile(
        target, trigger=Trigger.CLI, rotate_now=True, unstick=force, supersede=force
    )
    client_works(kit, held)  # finished, not regenerated under the consumers
    regenerated = [e for e in kit.events() if e["event"] == "credential.created"][created:]
    assert [e for e in regenerated if e["user_id"] == held["user_id"]] == []
    assert "secret.regenerated_after_loss" not in kit.event_names()
    state = kit.store.read(kit.engine.state_path(target))
    assert state is not None
    assert state.data.get("pending") is None


@pytest.mark.parametrize("identities", [1, 2], ids=["one", "two"])
def test_a_rotate_with_a_rotation_under_way_finishes_it_and_starts_no_second(
    kit: FastKit, identities: int
) -> None:
    names = ("svc-payroll-a", "svc-payroll-b")[:identities]
    for name in names:
        kit.zitadel.add_user(name)
    users = names if identities == 2 else ()
    target = secret_target(user=names[0], users=users, policy=QUICK_VERIFY)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)
    kit.zitadel.set_faults(rules=[{"method": "token", "code": "internal", "rate": 1.0}])
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.FAILED
    kit.zitadel.clear_faults()
    created = len(created_ids(kit))

    done = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True, supersede=False)
    assert done.outcome is Outcome.ROTATED, done.error  # not refused for the grace it began
    assert len(created_ids(kit)) == created  # the pending secret, verified: none regenerated
    assert kit.event_names().count("rotation.completed") == 2
    client_works(kit, secret(kit, target.vault_path))


@pytest.mark.parametrize("kind", ["key", "secret"])
def test_a_credential_in_grace_on_an_identity_taken_out_of_users_is_removed_from_that_identity(
    kit: FastKit, kind: str
) -> None:
    for name in ("svc-a", "svc-b", "svc-c"):
        kit.zitadel.add_user(name)
    if kind == "key":
        base = replace(key_target(name="twin"), user="svc-a", users=("svc-a", "svc-b"))
    else:
        base = secret_target(user="svc-a", users=("svc-a", "svc-b"))
    assert kit.engine.reconcile(base, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)
    assert kit.engine.reconcile(base, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    held_by_a = live_ids(kit, base.kind, "svc-a") if kind == "key" else set()
    # svc-a, whose credential is in grace, is replaced by svc-c
    changed = replace(base, user="svc-b", users=("svc-b", "svc-c"))
    kit.advance(DAY + 60)
    retired = kit.engine.reconcile(changed, trigger=Trigger.SCHEDULE)
    assert retired.outcome is Outcome.RETIRED, retired.error
    a = kit.transport.resolve_user("svc-a")
    if kind == "key":
        assert held_by_a
        assert live_ids(kit, base.kind, "svc-a") == set()
    else:
        assert a.has_secret is False
    removed = [e for e in kit.events() if e["event"] == "credential.removed"]
    assert [e["user_id"] for e in removed] == [a.id]


def test_state_from_before_two_identities_keeps_its_user_in_use_when_users_are_listed(
    kit: FastKit,
) -> None:
    for name in ("svc-a", "svc-b"):
        kit.zitadel.add_user(name)
    single = replace(key_target(name="twin"), user="svc-a")
    assert kit.engine.reconcile(single, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    a, b = (kit.zitadel.user_ids[n] for n in ("svc-a", "svc-b"))
    # as an older rotator wrote it: no identities, records naming no user
    path = kit.engine.state_path(single)
    old = kit.store.read(path)
    assert old is not None
    legacy = {**old.data, "identities": [], "current": {**old.data["current"], "user_id": ""}}
    kit.store.write(path, legacy, cas=old.version)
    first_key = live_ids(kit, single.kind, "svc-a")

    twin = replace(single, user="svc-b", users=("svc-b", "svc-a"))  # a is listed second
    assert kit.engine.reconcile(twin, trigger=Trigger.SCHEDULE).outcome is Outcome.UP_TO_DATE
    status = kit.engine.status(twin)
    assert (status.active_user_id, status.next_user_id) == (a, b)
    kit.advance(21 * DAY)
    assert kit.engine.reconcile(twin, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    kit.advance(DAY + 60)
    assert kit.engine.reconcile(twin, trigger=Trigger.SCHEDULE).outcome is Outcome.RETIRED
    assert first_key
    assert live_ids(kit, single.kind, "svc-a") == set()
    assert len(live_ids(kit, single.kind, "svc-b")) == 1


def test_removing_a_secret_by_another_users_id_is_a_rotator_error(kit: FastKit) -> None:
    kit.zitadel.add_user("svc-a")
    a = kit.transport.resolve_user("svc-a")
    with pytest.raises(RotatorError, match=f"does not belong to user {a.id}"):
        ops_for(CredentialKind.SECRET).remove(kit.transport, a, "12345")


def test_one_identitys_new_secret_reaches_vault_before_verification_which_keeps_alerting(
    kit: FastKit, ledger: Target
) -> None:
    target = replace(ledger, policy=QUICK_VERIFY)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    held = secret(kit, target.vault_path)
    kit.advance(21 * DAY)
    # the token endpoint works, userinfo does not: the new secret cannot be proven
    kit.zitadel.set_faults(rules=[{"method": "userinfo", "code": "internal", "rate": 1.0}])
    outcomes = []
    for _ in range(3):
        outcomes.append(kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome)
        kit.advance(10)  # past the backoff
    in_vault = secret(kit, target.vault_path)
    kit.zitadel.clear_faults()

    assert outcomes == [Outcome.FAILED] * 3
    assert in_vault != held  # the regenerated secret, not the dead one
    client_works(kit, in_vault)
    with pytest.raises(RotatorError):
        client_works(kit, held)
    promoted = [e for e in kit.events() if e["event"] == "credential.promoted"][1:]
    assert len(promoted) == 1  # once, not at every retry
    assert promoted[0]["before_verification"] is True
    assert "one identity" in promoted[0]["reason"]
    failed = [e for e in kit.events() if e["event"] == "rotation.failed"]
    assert len(failed) == 3
    assert all("userinfo" in e["error"] for e in failed)
    assert "rotation.rolled_back" not in kit.event_names()
    assert "target.stuck" not in kit.event_names()

    done = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert done.outcome is Outcome.ROTATED, done.error
    assert len(created_ids(kit)) == 2  # verified at last, never regenerated
    assert secret(kit, target.vault_path) == in_vault
    assert kit.event_names()[-3:] == [
        "rotation.resumed", "credential.verified", "rotation.completed"
    ]


def test_two_identities_promote_a_secret_only_once_it_verified(kit: FastKit) -> None:
    names = ("svc-payroll-a", "svc-payroll-b")
    for name in names:
        kit.zitadel.add_user(name)
    target = secret_target(user=names[0], users=names, policy=QUICK_VERIFY)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    held = secret(kit, target.vault_path)
    kit.advance(21 * DAY)
    kit.zitadel.set_faults(rules=[{"method": "userinfo", "code": "internal", "rate": 1.0}])
    assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.FAILED
    kit.zitadel.clear_faults()
    assert secret(kit, target.vault_path) == held  # the other identity's: it still works
    client_works(kit, held)
    assert kit.event_names().count("credential.promoted") == 1  # the first rotation's only


# ----------------------------------------------- a claim that lapsed, a late regeneration


@contextmanager
def regenerated_behind_its_back(kit: FastKit, *, only_the_first: bool = False) -> Iterator[None]:
    """Each time (or only the first time) the engine has stored a new secret,
    a regeneration another rotator sent before its claim lapsed lands in ZITADEL."""
    landed: list[str] = []

    def land(event: dict[str, Any]) -> None:
        if event["event"] == "credential.stored" and not (only_the_first and landed):
            landed.append(event["user_id"])
            kit.zitadel.domain.generate_machine_secret(event["user_id"])

    kit.engine.audit.subscribe(land)
    try:
        yield
    finally:
        kit.engine.audit.unsubscribe(land)


@pytest.mark.parametrize("identities", [1, 2], ids=["one", "two"])
def test_a_pending_secret_replaced_by_a_late_regeneration_is_regenerated_and_completes(
    kit: FastKit, identities: int
) -> None:
    names = ("svc-payroll-a", "svc-payroll-b")[:identities]
    for name in names:
        kit.zitadel.add_user(name)
    target = secret_target(
        user=names[0], users=names if identities == 2 else (), policy=QUICK_VERIFY
    )
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)

    with regenerated_behind_its_back(kit, only_the_first=True):
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert result.outcome is Outcome.ROTATED, result.error
    lost = [e for e in kit.events() if e["event"] == "secret.regenerated_after_loss"]
    assert [e["cause"] for e in lost] == ["refused"]
    assert len(created_ids(kit)) == 3  # the first, the one replaced, its replacement
    client_works(kit, secret(kit, target.vault_path))  # what consumers read works
    assert "rotation.rolled_back" not in kit.event_names()


def test_a_secret_refused_again_after_its_regeneration_is_not_regenerated_twice_in_a_run(
    kit: FastKit, ledger: Target
) -> None:
    target = replace(ledger, policy=QUICK_VERIFY)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)

    with regenerated_behind_its_back(kit):
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert result.outcome is Outcome.FAILED
    assert len(created_ids(kit)) == 3  # one rotation, one regeneration, then it alerts
    state = kit.store.read(kit.engine.state_path(target))
    assert state is not None
    assert state.data["pending"]["phase"] == "created"  # kept, tried again next run
    assert "target.stuck" not in kit.event_names()

    kit.advance(10)
    done = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert done.outcome is Outcome.ROTATED, done.error
    client_works(kit, secret(kit, target.vault_path))


def test_no_regeneration_is_sent_once_the_claim_on_the_rotation_may_have_lapsed(
    kit: FastKit, ledger: Target
) -> None:
    assert kit.engine.reconcile(ledger, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    held = secret(kit, ledger.vault_path)
    kit.advance(21 * DAY)

    def pause_after_the_intent(event: dict[str, Any]) -> None:
        # the process stalls between its intent and the regeneration (a GC pause,
        # a throttled retry, a frozen VM) for longer than its claim
        if event["event"] == "rotation.started":
            kit.advance(3600)

    kit.engine.audit.subscribe(pause_after_the_intent)
    try:
        stalled = kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    finally:
        kit.engine.audit.unsubscribe(pause_after_the_intent)
    assert stalled.outcome is not Outcome.ROTATED
    assert "claim on the rotation lapsed" in (stalled.error or "")
    assert len(created_ids(kit)) == 1  # nothing was sent
    client_works(kit, held)  # so the secret consumers hold still works
    state = kit.store.read(kit.engine.state_path(ledger))
    assert state is not None
    assert state.data["pending"] is None  # given up, not left for a "lost" regeneration
    assert state.data["failures"] == 1  # a failure that backs off and alerts if it lasts

    assert stalled.next_run_at is not None
    kit.advance((stalled.next_run_at - kit.clock.now()).total_seconds() + 1)
    resumed = kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    assert resumed.outcome is Outcome.ROTATED, resumed.error
    assert "secret.regenerated_after_loss" not in kit.event_names()
    client_works(kit, secret(kit, ledger.vault_path))


def test_a_lost_regeneration_whose_claim_lapses_before_it_is_redone_is_not_forgotten(
    kit: FastKit, ledger: Target
) -> None:
    """A fresh rotation whose claim lapses before anything is sent gives its intent
    up: the old secret still works.  A regeneration redone after a lost one keeps
    it: the old secret died with the lost regeneration, and the next run must
    regenerate at once rather than wait until the secret falls due."""
    assert kit.engine.reconcile(ledger, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(DAY)  # not due: only a person's `rotate` rotates it now

    def seal_after_regenerate(event: dict[str, Any]) -> None:
        if event["event"] == "credential.created":
            kit.store.sealed = True

    kit.engine.audit.subscribe(seal_after_regenerate)
    try:
        failed = kit.engine.reconcile(ledger, trigger=Trigger.CLI, rotate_now=True)
    finally:
        kit.store.sealed = False
        kit.engine.audit.unsubscribe(seal_after_regenerate)
    assert failed.outcome is Outcome.FAILED
    held = secret(kit, ledger.vault_path)
    with pytest.raises(RotatorError):  # dead: the lost regeneration landed
        client_works(kit, held)

    def stall_before_the_regeneration(event: dict[str, Any]) -> None:
        # a throttled retry or a slow token exchange outlasts the claim
        if event["event"] == "secret.regenerated_after_loss":
            kit.advance(3600)

    assert failed.next_run_at is not None
    kit.advance((failed.next_run_at - kit.clock.now()).total_seconds() + 1)
    kit.engine.audit.subscribe(stall_before_the_regeneration)
    try:
        stalled = kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    finally:
        kit.engine.audit.unsubscribe(stall_before_the_regeneration)
    assert "claim on the rotation lapsed" in (stalled.error or "")
    assert len(created_ids(kit)) == 2  # the first secret and the lost regeneration

    # the next run (after the backoff) must regenerate: what consumers hold is
    # dead; giving the intent up leaves it dead until it falls due (~20 days)
    assert stalled.next_run_at is not None
    kit.advance((stalled.next_run_at - kit.clock.now()).total_seconds() + 1)
    kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE)
    client_works(kit, secret(kit, ledger.vault_path))


def test_a_regeneration_answered_429_whose_claim_lapses_before_the_retry_is_not_forgotten(
    kit: FastKit, ledger: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZITADEL may carry out a call it answers 429: when the claim lapses while
    the retry waits for the rate budget, the intent stays `creating` and the
    next run regenerates (the old secret may have died with the first call)."""
    assert kit.engine.reconcile(ledger, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    held = secret(kit, ledger.vault_path)
    kit.advance(DAY)  # not due: only a person's `rotate` rotates it now
    inner, real = kit.transport, kit.transport.add_secret
    answers = iter(["acted, then 429"])

    def acted_then_throttled(user: User) -> IssuedSecret:
        issued = real(user)
        if next(answers, None):
            raise ZitadelUnavailable("quota", code="resource_exhausted")
        return issued

    waited = [0.0]

    def throttled_wait(seconds: float) -> None:  # the wait for a token outlasts the claim
        waited[0] += seconds
        kit.advance(3600)

    limiter = RateLimiter(10, burst=10, clock=lambda: waited[0], sleep=throttled_wait)
    monkeypatch.setattr(inner, "add_secret", acted_then_throttled)
    monkeypatch.setattr(kit.engine.rotation, "transport", LimitedTransport(inner, limiter))
    stalled = kit.engine.reconcile(ledger, trigger=Trigger.CLI, rotate_now=True)
    monkeypatch.undo()
    assert stalled.outcome is Outcome.FAILED
    with pytest.raises(RotatorError):  # the throttled regeneration happened
        client_works(kit, held)
    pending = kit.store.read(kit.engine.state_path(ledger)).data["pending"]  # type: ignore[union-attr]
    assert pending is not None
    assert pending["phase"] == "creating"
    assert stalled.next_run_at is not None
    kit.advance((stalled.next_run_at - kit.clock.now()).total_seconds() + 1)
    assert kit.engine.reconcile(ledger, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
    client_works(kit, secret(kit, ledger.vault_path))


@pytest.mark.parametrize("kind", ["key", "pat"])
def test_a_credential_consumers_hold_after_a_crash_is_neither_verified_nor_given_up_again(
    kit: FastKit, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = target_of(kind, policy=QUICK_VERIFY)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)
    crash_after_promotion(kit, target, monkeypatch)
    held = secret(kit, target.vault_path)  # consumers read the new credential already
    # ZITADEL cannot prove it now (the next run's verification would fail)...
    method = "token" if kind == "key" else "userinfo"
    kit.zitadel.set_faults(rules=[{"method": method, "code": "internal", "rate": 1.0}])
    try:
        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    finally:
        kit.zitadel.clear_faults()
    # ...and it was verified before its promotion: the rotation completes, keeping it
    assert result.outcome is Outcome.ROTATED, result.error
    assert "rotation.rolled_back" not in kit.event_names()
    assert held[ID_FIELD[kind]] in live_ids(kit, target.kind, target.user)
    assert secret(kit, target.vault_path)[ID_FIELD[kind]] == held[ID_FIELD[kind]]
    consumer_can_authenticate(kit, secret(kit, target.vault_path))


def test_a_long_outage_at_expiry_leaves_a_state_vault_still_accepts(kit: FastKit) -> None:
    """Each attempt that cannot create leaves an orphan record, kept while
    ZITADEL cannot list; close to the expiry attempts come every 30 s.  OpenBao
    refuses a request of more than 1,000 JSON strings (tests/fakes/store.py): the
    state must stay writable, and the target converge once ZITADEL is back."""
    kit.engine.failures.backoff = Backoff(  # the daemon's defaults
        max_attempts=5, base=timedelta(minutes=1), cap=timedelta(hours=1)
    )
    target = key_target()
    first = kit.engine.reconcile(target, trigger=Trigger.CLI)
    assert first.expires_at is not None
    kit.advance((first.expires_at - kit.clock.now()).total_seconds() - 3600)
    kit.zitadel.set_faults(rules=[{"method": "*", "code": "unavailable", "rate": 1.0}])
    outcomes = _daemon_loop(kit, target, minutes=3 * 60)
    state = kit.store.read(kit.engine.state_path(target))
    assert state is not None
    orphans = len(state.data.get("orphans") or ())
    kit.zitadel.clear_faults()
    recovered = _daemon_loop(kit, target, minutes=120)
    errors = {r for r in [kit.engine.status(target).last_error] if r}
    assert Outcome.STUCK not in outcomes + recovered, (orphans, errors)
    assert Outcome.ROTATED in recovered, (orphans, errors)


def test_a_secret_promoted_before_verification_is_not_taken_as_verified_after_a_second_identity_is_added(  # noqa: E501
    kit: FastKit, ledger: Target
) -> None:
    """One identity promotes a secret before verifying it; should the target get a
    second identity while that secret is pending, the resume must not take "the
    consumer holds it" as "it was verified" (true only of two identities)."""
    target = replace(ledger, policy=QUICK_VERIFY)
    assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
    kit.advance(21 * DAY)

    with regenerated_behind_its_back(kit):
        failed = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    assert failed.outcome is Outcome.FAILED  # pending, promoted early, refused: dead
    kit.zitadel.add_user("svc-payroll-b")
    two = replace(target, users=("svc-payroll", "svc-payroll-b"))
    kit.advance(10)
    result = kit.engine.reconcile(two, trigger=Trigger.SCHEDULE)
    if result.outcome is Outcome.ROTATED:
        client_works(kit, secret(kit, two.vault_path))  # a rotation done is one that works


class StaleStateStore(MemoryStore):
    """A store whose next read of ``path`` answers ``stale``: what a rotator saw
    just before another one wrote again (a read is never a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: dict[str, Any] = {}

    def read(self, path: str) -> Any:
        return self.stale.pop(path, None) or super().read(path)


def test_a_removal_claim_read_stale_is_taken_over_before_anything_is_removed(
    zitadel: FakeZitadel,
) -> None:
    """The claimant of a removal finished it and another rotator regenerated that
    user's secret since; a rotator that read the old (expired) claim must not
    remove the new secret: it takes the claim over with check-and-set first."""
    names = ("svc-stale-a", "svc-stale-b")
    for name in names:
        zitadel.add_user(name)
    target = secret_target(user=names[0], users=names)
    store = StaleStateStore()
    with build_fast_kit(zitadel, store) as kit:
        assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
        kit.advance(21 * DAY)
        assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is Outcome.ROTATED
        path = kit.engine.state_path(target)
        raw = store.read(path)
        assert raw is not None
        state = TargetState.from_dict(dict(raw.data))
        spare = state.previous.user_id if state.previous else ""
        # another rotator's claim on a's old secret, read by us once it had expired...
        state.previous = None
        state.removing = Removal(user_id=spare, owner="elsewhere-1",
                                 deadline=kit.clock.now() - timedelta(minutes=1))
        store.write(path, state.to_dict(), cas=raw.version)
        store.stale[path] = store.read(path)
        # ...while, in fact, it removed it and a's secret was regenerated since
        state.removing = None
        store.write(path, state.to_dict(), cas=raw.version + 1)
        user = zitadel.domain.get_user(spare)
        assert user is not None
        regenerated = zitadel.domain.generate_machine_secret(spare)

        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)

        assert result.outcome is not Outcome.ROTATED
        assert "credential.removed" not in kit.event_names()[-3:]
        client_works(kit, {"client_id": user.username, "client_secret": regenerated,
                           "user_id": spare})


def test_a_rotation_read_stale_after_its_claim_lapsed_is_taken_over_before_any_promotion(
    zitadel: FakeZitadel,
) -> None:
    """A rotator that read an interrupted rotation (its claim since expired) must
    not promote it if that rotation, and a newer one, completed meanwhile: it
    takes the rotation over with check-and-set first, and loses."""
    store = StaleStateStore()
    target = key_target()
    with build_fast_kit(zitadel, store) as kit:
        path = kit.engine.state_path(target)
        assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
        kit.advance(21 * DAY)
        snapshots: list[Any] = []

        def keep_stored_state(event: dict[str, Any]) -> None:
            if event["event"] == "credential.stored":
                snapshots.append(store.read(path))  # the rotation, created and stored

        kit.engine.audit.subscribe(keep_stored_state)
        try:
            assert kit.engine.reconcile(target, trigger=Trigger.SCHEDULE).outcome is (
                Outcome.ROTATED)
        finally:
            kit.engine.audit.unsubscribe(keep_stored_state)
        kit.advance(2 * DAY)  # past grace: the next rotation supersedes nothing in use
        assert kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True).outcome is (
            Outcome.ROTATED)
        held = secret(kit, target.vault_path)

        stale = snapshots[0]
        pending = dict(stale.data["pending"])
        pending.update(owner="elsewhere-1", deadline=kit.clock.now().isoformat())
        # (its twin watch long over, as another rotator's sweep would have left it)
        store.stale[path] = replace(stale, data={**stale.data, "pending": pending, "orphans": []})
        kit.advance(60)
        promoted = kit.event_names().count("credential.promoted")

        result = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)

        assert result.outcome is not Outcome.ROTATED
        assert kit.event_names().count("credential.promoted") == promoted
        assert secret(kit, target.vault_path) == held  # consumers keep the newest
        consumer_can_authenticate(kit, held)
