"""The rotation protocol end to end, where real processes matter: the real
engine against the ZITADEL emulator process and a real OpenBao, over both
ZITADEL transports (v2 Connect JSON through the official SDK, v1 gRPC).

Here: a rotator killed (kill -9) between any two steps converges on restart (for
client secrets also while verification is retried, with the invariants a secret
rotation keeps: no needless regeneration, no secret left in the state history or
in any output); a
consumer reading Vault can authenticate at every moment of a rotation against a
ZITADEL with propagation lag; a really sealed OpenBao is reported and retried.
Every other protocol case (cycles, retirement timing, rollback, backoff, stuck,
adoption, racing engines, dry run) runs in milliseconds on the in-process fakes
in tests/test_protocol.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from rotator.kinds import ops_for
from rotator.model import CredentialKind, Target, Trigger
from rotator.report import Outcome
from rotator.zitadel.oidc import OidcClient
from tests.crash_runner import REFUSED
from tests.enginekit import Kit, KitSpec, build_kit
from tests.test_security import assert_clean

DAY = 24 * 3600


@pytest.fixture(params=["v2", "v1"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spec(emulator: Any, openbao: Any, kv_mount: str, api: str) -> Iterator[KitSpec]:
    emulator.set_clock_offset(0)
    suffix = uuid.uuid4().hex[:8]
    yield KitSpec.for_emulator(
        emulator,
        openbao,
        kv_mount,
        api=api,
        key_user=emulator.add_user(f"svc-key-{suffix}")["login_name"],
        pat_user=emulator.add_user(f"svc-pat-{suffix}")["login_name"],
        secret_user=emulator.add_user(f"svc-secret-{suffix}")["login_name"],
        twin_users=[emulator.add_user(f"svc-twin-{suffix}-{x}")["login_name"] for x in "ab"],
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


def live_ids(kit: Kit, kind: CredentialKind, *users: str) -> set[str]:
    """What ZITADEL holds for ``users`` (a secret's id is its user's)."""
    ops = ops_for(kind)
    resolved = [kit.transport.resolve_user(user) for user in users]
    return {c.id for user in resolved for c in ops.list(kit.transport, user)}


def consumer_can_authenticate(kit: Kit, data: dict[str, Any]) -> None:
    """What a consumer does with the secret it reads from Vault."""
    if "keyId" in data:
        kit.oidc.exchange_jwt_bearer(data, "openid")
    elif "client_secret" in data:
        kit.oidc.verify_secret(data["client_id"], data["client_secret"], user_id=data["user_id"])
    else:
        kit.oidc.userinfo(data["token"])


def held_id(data: dict[str, Any]) -> str | None:
    """The credential id a consumer payload holds (a secret's is its user's)."""
    return data.get("keyId") or data.get("token_id") or data.get("user_id")


def secret(kit: Kit, path: str) -> dict[str, Any]:
    stored = kit.store.read(path)
    assert stored is not None, path
    return dict(stored.data)


# ------------------------------------------------------- a really sealed Vault


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


# --------------------------------------------------------- crash convergence

KILL_POINTS = [
    "rotation.started",  # intent recorded, nothing created yet
    "credential.created",  # exists in ZITADEL, id known only in memory
    "credential.stored",  # secret kept in the state secret, not verified
    "credential.verified",  # verified, not promoted
    "credential.promoted",  # consumer secret written, state not updated
    "rotation.completed",  # all done, process dies before exiting
]


#: After these, a one-identity secret rotation has regenerated the secret: the one
#: Vault holds is dead until the restart regenerates (or promotes) it.  From the
#: early promotion on (``credential.promoted``, before verification) Vault holds the
#: new one, which works at once on an emulator without projection lag.
_SECRET_GAP = {"credential.created", "credential.stored"}

#: Killed before the new secret was kept in the state: the restart must regenerate.
_SECRET_LOST = {"rotation.started", "credential.created"}


def crash(spec: KitSpec, kind: str, kill_after: str) -> subprocess.CompletedProcess[str]:
    """One reconcile in another process, killed (exit 137) at ``kill_after``."""
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.crash_runner", spec.dumps(), kind, kill_after],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    return crashed


def audit_lines(text: str) -> list[dict[str, Any]]:
    """The audit events in a crashed process's stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def readable_versions(kit: Kit, path: str) -> list[dict[str, Any]]:
    """Every version of ``path`` KV v2 still serves (not destroyed, not deleted)."""
    client, mount = kit.store.client, kit.store.mount
    meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
    found = []
    for version, info in meta["data"]["versions"].items():
        if info["destroyed"] or info["deletion_time"]:
            continue
        answer = client.secrets.kv.v2.read_secret_version(
            path=path, version=int(version), mount_point=mount, raise_on_deleted_version=False
        )
        found.append(dict(answer["data"]["data"]))
    return found


def assert_secret_rotation_kept_its_invariants(
    kit: Kit,
    target: Target,
    kill_after: str,
    crashed: subprocess.CompletedProcess[str],
    output: str,
) -> None:
    """After a killed secret rotation and one reconcile: regenerated no more than
    needed, no state version keeps a secret, no secret in ``output`` (everything
    the processes printed and logged) or in the crashed process's output."""
    events = audit_lines(crashed.stdout) + kit.events()
    regenerated = [e for e in events if e["event"] == "secret.regenerated_after_loss"]
    created = [e for e in events if e["event"] == "credential.created"]
    lost = kill_after in _SECRET_LOST
    assert len(regenerated) == (1 if lost else 0)
    # one regeneration by the killed process (unless it died before), one more if lost
    assert len(created) == (kill_after != "rotation.started") + lost
    # every client secret the consumer path ever held (the first rotation's too)
    secrets = [v["client_secret"] for v in readable_versions(kit, target.vault_path) if v]
    assert len(secrets) >= 2
    for data in readable_versions(kit, kit.engine.state_path(target)):
        assert (data.get("pending") or {}).get("secret") is None, data.get("pending")
        assert_clean(json.dumps(data), secrets)
    assert_clean(output + crashed.stdout + crashed.stderr, secrets)


@pytest.mark.parametrize("kill_after", KILL_POINTS)
@pytest.mark.parametrize("kind", ["key", "pat", "secret", "twin-secret", "twin-key"])
def test_a_rotator_killed_between_any_two_steps_converges_on_restart(
    spec: KitSpec, kill_after: str, kind: str
) -> None:
    target = spec.target(kind)
    with build_kit(spec) as kit:
        first = kit.engine.reconcile(target, trigger=Trigger.CLI)
        assert first.outcome is Outcome.ROTATED
        before = kit.audit_stream.getvalue()
    crashed = crash(spec, kind, kill_after)
    if kind == "secret" and kill_after == "credential.promoted":
        # one identity: the promotion the process died after came before verification
        promoted = audit_lines(crashed.stdout)[-1]
        assert promoted["event"] == "credential.promoted"
        assert promoted["before_verification"] is True
    with build_kit(spec) as kit:
        # the consumer still has a working credential right after the crash
        # (not a one-identity secret: there is no overlap to keep it working)
        if not (kind == "secret" and kill_after in _SECRET_GAP):
            consumer_can_authenticate(kit, secret(kit, target.vault_path))
        again = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert again.outcome in (Outcome.ROTATED, Outcome.UP_TO_DATE), again.error
        status = kit.engine.status(target)
        data = secret(kit, target.vault_path)
        current_id = held_id(data)
        assert status.credential_id == current_id
        consumer_can_authenticate(kit, data)
        expected = {current_id}
        if status.previous_credential_id:
            expected.add(status.previous_credential_id)
            if target.kind is not CredentialKind.SECRET:  # a secret has no `previous`
                assert held_id(data["previous"]) == status.previous_credential_id
        if target.kind is CredentialKind.SECRET and kill_after == "credential.created":
            # the regenerated secret was never stored: the restart regenerates again
            assert "secret.regenerated_after_loss" in kit.event_names()
        # no orphan left in ZITADEL: only the current and the one in grace
        assert live_ids(kit, target.kind, *target.identities) == expected
        raw_state = kit.store.read(kit.engine.state_path(target))
        assert raw_state is not None
        assert raw_state.data.get("pending") is None
        if target.kind is CredentialKind.SECRET:
            output = before + kit.audit_stream.getvalue() + (again.error or "")
            assert_secret_rotation_kept_its_invariants(kit, target, kill_after, crashed, output)


@pytest.fixture
def lagging(emulator_factory: Any) -> Any:
    """ZITADEL whose token endpoint refuses a regenerated secret for 1 s (§6.3)."""
    return emulator_factory(lag_ms=1000)


def test_a_one_identity_secret_killed_while_its_verification_is_retried_converges(
    lagging: Any, openbao: Any, kv_mount: str, api: str
) -> None:
    user = lagging.add_user(f"svc-lag-{uuid.uuid4().hex[:8]}")["login_name"]
    spec = KitSpec.for_emulator(lagging, openbao, kv_mount, api=api, secret_user=user)
    target = spec.target("secret")
    with build_kit(spec) as kit:
        assert kit.engine.reconcile(target, trigger=Trigger.CLI).outcome is Outcome.ROTATED
        before = kit.audit_stream.getvalue()
    crashed = crash(spec, "secret", REFUSED)
    names = [e["event"] for e in audit_lines(crashed.stdout)]
    # killed after the early promotion, with the new secret not yet verified
    assert names[-2:] == ["credential.stored", "credential.promoted"], names
    with build_kit(spec) as kit:
        state = kit.store.read(kit.engine.state_path(target))
        assert state is not None
        pending = state.data["pending"]
        assert pending["phase"] == "created"
        # consumers already hold the secret whose verification was cut short
        assert secret(kit, target.vault_path)["client_secret"] == pending["secret"]["client_secret"]
        again = kit.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        assert again.outcome is Outcome.ROTATED, again.error
        data = secret(kit, target.vault_path)
        consumer_can_authenticate(kit, data)  # a client_credentials token request
        assert kit.engine.status(target).credential_id == data["user_id"]
        assert live_ids(kit, target.kind, target.user) == {data["user_id"]}
        # the restart verified the secret consumers hold: no second promotion
        assert "credential.promoted" not in kit.event_names()
        output = before + kit.audit_stream.getvalue()
        assert_secret_rotation_kept_its_invariants(kit, target, REFUSED, crashed, output)


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
    crash(spec, "key", "credential.removed")
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
    spec = KitSpec.for_emulator(lagging, openbao, kv_mount)
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
