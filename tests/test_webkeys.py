"""The web key protocol (rotator/webkeys.py) against the emulator and real
OpenBao, with ZITADEL's clock moved: full cycles, lost answers after each
side effect (the crash points), rollback, emergency, and a relying party that
caches the JWKS for its max-age and verifies a token every second."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from rotator.audit import AuditLog
from rotator.errors import ConfigError, RotationInFlight
from rotator.model import Algorithm
from rotator.vault import VaultStore
from rotator.webkeys import (
    EMERGENCY_WARNING,
    WebKeyRotation,
    WebKeyState,
    WebKeyTarget,
    check_target,
    next_steps,
)
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.webkeys import WebKeyClient
from tests.emulator.support import sign_assertion, token_request
from tests.harness.emulator import Emulator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class EmulatorClock:
    """ZITADEL's clock (real time + the emulator's offset); sleeping moves it."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.offset = timedelta(seconds=float(emu.clock()["offset_seconds"]))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def sleep(self, seconds: float) -> None:
        self.advance(timedelta(seconds=seconds))

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        self.emu.set_clock_offset(self.offset.total_seconds())


@dataclass
class World:
    emu: Emulator
    clock: EmulatorClock
    api: WebKeyClient
    store: VaultStore
    events: list[dict[str, Any]] = field(default_factory=list)
    _audit: AuditLog | None = None

    def rotation(self, **kwargs: Any) -> WebKeyRotation:
        def emit(event: str, **fields: Any) -> None:
            self.events.append({"event": event, **fields})
            self.audit.emit(event, **fields)

        return WebKeyRotation(self.api, self.store, clock=self.clock,
                              state_path=lambda t: f"zitadel-rotator/webkeys/{t.name}",
                              emit=emit, confirm_delay=0.01, **kwargs)

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog(io.StringIO())
        return self._audit

    def states(self) -> dict[str, str]:
        return {k.id: k.state for k in self.api.list()}

    def active(self) -> str:
        (kid,) = [k for k, s in self.states().items() if s == "ACTIVE"]
        return kid


@pytest.fixture
def world(emulator_factory: Callable[..., Emulator], store: VaultStore) -> Iterator[World]:
    emu = emulator_factory()
    owner = emu.add_user("webkey-rotator", roles=["IAM_OWNER"], key=True)
    key_file = owner["key_file"]
    clock = EmulatorClock(emu)
    oidc = OidcClient(emu.issuer, clock=clock)
    token = TokenSource(oidc, lambda: key_file, clock=clock)
    yield World(emu, clock, WebKeyClient(oidc, token, lambda: key_file), store)
    oidc.close()


@pytest.fixture
def store(openbao: Any, kv_mount: str) -> VaultStore:
    from rotator import vault_auth
    from rotator.config import VaultAuthConfig, VaultConfig
    from rotator.vault import NO_RETRY

    config = VaultConfig(url=openbao.url, mount=kv_mount, auth=VaultAuthConfig(token_env="T"))
    return vault_auth.connect(config, environ={"T": openbao.root_token}, retry=NO_RETRY)


TARGET = WebKeyTarget("instance-keys", publish_ahead=timedelta(days=1),
                      retain=timedelta(days=2), every=timedelta(days=30))


def id_token_kid(emu: Emulator, key_file: dict[str, Any] | None = None) -> str:
    answer = token_request(emu.issuer, sign_assertion(key_file or _admin(emu), emu.issuer),
                           scope="openid")
    return str(jwt.get_unverified_header(answer.json()["id_token"])["kid"])


def _admin(emu: Emulator) -> dict[str, Any]:
    return dict(json.loads(emu.admin_key_file.read_text()))


def test_a_full_cycle_publishes_then_activates_then_deletes_only_its_own_keys(
    world: World,
) -> None:
    rot = world.rotation()
    initial = world.active()
    assert rot.reconcile(TARGET).outcome == "up_to_date"  # learns the active key

    world.clock.advance(timedelta(days=31))
    first = rot.reconcile(TARGET)
    assert first.outcome == "waiting"
    new = first.state.new
    assert new is not None
    assert world.states()[new] == "INITIAL"
    assert new in world.api.published()
    assert id_token_kid(world.emu) == initial  # not signing before publish_ahead

    world.clock.advance(timedelta(hours=12))
    assert rot.reconcile(TARGET).outcome == "waiting"
    world.clock.advance(timedelta(hours=13))
    done = rot.reconcile(TARGET)
    assert done.outcome == "activated"
    assert world.states()[new] == "ACTIVE"
    assert world.states()[initial] == "INACTIVE"
    assert id_token_kid(world.emu) == new

    # retain: the previous key stays published; then it is left in place (not ours)
    world.clock.advance(timedelta(days=1))
    rot.reconcile(TARGET)
    assert initial in world.api.published()
    world.clock.advance(timedelta(days=1, minutes=1))
    rot.reconcile(TARGET)
    assert initial in world.states(), "a key the rotator did not create is never deleted"
    assert any(e["event"] == "webkey.kept" for e in world.events)

    # second cycle: the key the rotator created is deleted after retain
    world.clock.advance(timedelta(days=30))
    rot.reconcile(TARGET)
    world.clock.advance(timedelta(days=1, minutes=1))
    second = rot.reconcile(TARGET)
    assert second.outcome == "activated"
    world.clock.advance(timedelta(days=2, minutes=1))
    rot.reconcile(TARGET)
    assert new not in world.states()
    assert new not in world.api.published()
    assert id_token_kid(world.emu) == second.state.current


@pytest.mark.parametrize("method", ["CreateWebKey", "ActivateWebKey"])
def test_a_lost_answer_after_each_side_effect_resumes_without_a_twin(
    world: World, method: str
) -> None:
    """ZITADEL acted, the rotator never heard (= a crash right after the call):
    the next pass finishes from the state, creating nothing twice."""
    rot = world.rotation()
    rot.reconcile(TARGET)
    world.clock.advance(timedelta(days=31))
    if method == "ActivateWebKey":
        rot.reconcile(TARGET)
        world.clock.advance(timedelta(days=1, minutes=1))
    before = set(world.states())
    world.emu.set_faults(rules=[{"method": method, "mode": "lost", "count": 1}])
    assert rot.reconcile(TARGET).outcome == "failed"
    world.emu.clear_faults()
    resumed = rot.reconcile(TARGET)
    if method == "CreateWebKey":
        assert len(set(world.states()) - before) == 1, "exactly one key created"
        world.clock.advance(timedelta(days=1, minutes=1))
        resumed = rot.reconcile(TARGET)
    assert resumed.outcome == "activated"
    assert id_token_kid(world.emu) == resumed.state.current


def test_each_step_is_resumable_from_the_state_alone(world: World) -> None:
    """A new rotator object (a restarted process) per pass: the state in Vault
    says which step is next and when."""
    world.rotation().reconcile(TARGET)
    world.clock.advance(timedelta(days=31))
    steps = []
    for _ in range(3):
        result = world.rotation().reconcile(TARGET)
        steps.append((result.outcome, result.state.step))
        world.clock.advance(timedelta(hours=13))
    assert steps == [("waiting", "published"), ("waiting", "published"),
                     ("activated", "idle")]


def test_activation_that_does_not_take_is_rolled_back(world: World) -> None:
    rot = world.rotation(confirm_attempts=3)
    rot.reconcile(TARGET)
    initial = world.active()
    world.clock.advance(timedelta(days=31))
    new = rot.reconcile(TARGET).state.new
    world.clock.advance(timedelta(days=1, minutes=1))
    # no token proves the new key signs: every exchange fails while it is active
    world.api.list()  # (the rotator's own API token is fresh: the faults hit only the probes)
    world.emu.set_faults(rules=[{"method": "token", "code": "internal", "count": 3}])
    result = rot.reconcile(TARGET)
    world.emu.clear_faults()
    assert result.outcome == "rolled_back"
    assert "not signed with the new web key" in str(result.detail)
    assert world.active() == initial
    assert world.states()[str(new)] == "INACTIVE"
    assert id_token_kid(world.emu) == initial
    assert any(e["event"] == "rotation.rolled_back" for e in world.events)


def test_rolled_back_cycles_back_off_then_hold_until_rotated_by_hand(world: World) -> None:
    """A broken instance (activation never takes) must not get a new key per
    cycle: each rollback delays the next cycle (retry_base doubling, at most
    retry_cap), and after max_rollbacks in a row none starts by itself."""
    retry = {"retry_base": timedelta(hours=1), "retry_cap": timedelta(hours=2),
             "max_rollbacks": 3}
    rot = world.rotation(confirm_attempts=3, **retry)
    rot.reconcile(TARGET)
    initial = world.active()
    world.clock.advance(timedelta(days=31))

    def cycle_rolled_back() -> WebKeyState:
        assert rot.reconcile(TARGET).outcome == "waiting"  # created and published
        world.clock.advance(timedelta(days=1, minutes=1))
        world.api.list()  # a fresh API token: the faults hit only the probes
        world.emu.set_faults(rules=[{"method": "token", "code": "internal", "count": 3}])
        result = rot.reconcile(TARGET)
        world.emu.clear_faults()
        assert result.outcome == "rolled_back"
        return result.state

    for rollbacks, cool_down in [(1, timedelta(hours=1)), (2, timedelta(hours=2))]:
        state = cycle_rolled_back()
        assert state.rollbacks == rollbacks
        keys = set(world.states())
        (step,) = [s for s in next_steps(TARGET, state, world.clock.now(), **retry)
                   if s.step == "create"]
        assert step.at is not None
        assert abs(step.at - (world.clock.now() + cool_down)) < timedelta(minutes=1)
        assert f"after {rollbacks} rollback" in str(step.note)
        assert rot.reconcile(TARGET).outcome == "up_to_date"
        world.clock.advance(cool_down - timedelta(minutes=5))
        assert rot.reconcile(TARGET).outcome == "up_to_date"
        assert set(world.states()) == keys, "no key is created during the cool-down"
        world.clock.advance(timedelta(minutes=6))

    state = cycle_rolled_back()
    assert state.rollbacks == 3
    (held,) = [s for s in next_steps(TARGET, state, world.clock.now(), **retry)
               if s.step == "create"]
    assert held.at is None
    assert "3 rollbacks in a row" in str(held.note)
    assert "rotator rotate instance-keys" in str(held.note)
    keys = set(world.states())
    world.clock.advance(timedelta(days=40))
    assert rot.reconcile(TARGET).outcome == "up_to_date"
    assert len(set(world.states()) - keys) == 0, "held: no more keys pile up"
    assert world.active() == initial

    # by hand, once the cause is fixed: a cycle that takes resets the count
    assert rot.reconcile(TARGET, rotate_now=True, trigger="cli").outcome == "waiting"
    world.clock.advance(timedelta(days=1, minutes=1))
    done = rot.reconcile(TARGET)
    assert done.outcome == "activated"
    assert (done.state.rollbacks, done.state.rolled_back_at) == (0, None)
    (after,) = [s for s in next_steps(TARGET, done.state, world.clock.now(), **retry)
                if s.step == "create"]
    assert after.at == datetime.fromisoformat(str(done.state.active_since)) + TARGET.every


def test_lost_create_answers_in_a_row_leave_one_key(world: World) -> None:
    """CreateWebKey acts but the answer is lost (= a crash between create and
    the state write), pass after pass: the key found since the intent is the
    cycle's, so no second key is created."""
    rot = world.rotation()
    rot.reconcile(TARGET)
    world.clock.advance(timedelta(days=31))
    before = set(world.states())
    world.emu.set_faults(rules=[{"method": "CreateWebKey", "mode": "lost", "count": 3}])
    assert rot.reconcile(TARGET).outcome == "failed"
    for _ in range(2):
        world.clock.advance(timedelta(minutes=5))
        rot.reconcile(TARGET)
    world.emu.clear_faults()
    assert len(set(world.states()) - before) == 1


def test_emergency_activates_at_once_and_deletes_the_compromised_key(world: World) -> None:
    rot = world.rotation()
    target = WebKeyTarget("instance-keys", adopt=True, algorithm=Algorithm("ecdsa", curve="P384"))
    compromised = world.active()
    result = rot.reconcile(target, emergency=True, trigger="cli")
    assert result.outcome == "activated"
    assert result.warnings == [EMERGENCY_WARNING]
    assert result.state.warning == EMERGENCY_WARNING
    assert compromised not in world.states()
    assert compromised not in world.api.published()
    header = jwt.get_unverified_header(
        token_request(world.emu.issuer, sign_assertion(_admin(world.emu), world.emu.issuer),
                      scope="openid").json()["id_token"])
    assert header == {"alg": "ES384", "kid": result.state.current, "typ": "JWT"}
    started = [e for e in world.events if e["event"] == "rotation.started"]
    assert started[0]["warning"] == EMERGENCY_WARNING


class CachingRelyingParty:
    """Fetches the JWKS, keeps it for the Cache-Control max-age (on ZITADEL's
    clock), and verifies tokens with it; an unknown kid is a failure (no
    refetch): the strictest cache a relying party may have."""

    def __init__(self, emu: Emulator, clock: EmulatorClock) -> None:
        self.emu, self.clock = emu, clock
        self.keys: dict[str, jwt.PyJWK] = {}
        self.expires = datetime.min.replace(tzinfo=UTC)
        self.failures = 0
        self.fetches = 0

    def _refresh(self) -> None:
        if self.clock.now() < self.expires:
            return
        answer = httpx.get(f"{self.emu.issuer}/oauth/v2/keys")
        directives = dict(
            ([*d.strip().split("="), ""])[:2] for d in answer.headers["cache-control"].split(","))
        self.expires = self.clock.now() + timedelta(seconds=int(directives["max-age"]))
        self.keys = {k["kid"]: jwt.PyJWK(k) for k in answer.json()["keys"]}
        self.fetches += 1

    def verify(self, token: str) -> None:
        self._refresh()
        header = jwt.get_unverified_header(token)
        key = self.keys.get(header["kid"])
        try:
            if key is None:
                raise jwt.InvalidTokenError(f"unknown kid {header['kid']}")
            # the signature is what rotation can break; times are ZITADEL's (moved) clock
            jwt.decode(token, key, algorithms=[header["alg"]],
                       options={"verify_aud": False, "verify_exp": False,
                                "verify_iat": False, "verify_nbf": False})
        except jwt.InvalidTokenError:
            self.failures += 1


def test_a_caching_relying_party_never_fails_across_a_normal_rotation(world: World) -> None:
    target = WebKeyTarget("instance-keys", publish_ahead=timedelta(minutes=6),
                          retain=timedelta(hours=12), every=timedelta(days=30))
    rot = world.rotation()
    rot.reconcile(target)
    world.clock.advance(timedelta(days=30, seconds=1))
    rp = CachingRelyingParty(world.emu, world.clock)
    admin = _admin(world.emu)
    outcomes = []
    # the relying party caches the JWKS from just before the new key exists; then
    # a token every second: creation, 6 min published, activation, 2 min after
    for second in range(8 * 60 + 30):
        answer = token_request(world.emu.issuer, sign_assertion(admin, world.emu.issuer),
                               scope="openid")
        rp.verify(answer.json()["id_token"])
        if second % 30 == 0:  # the daemon's pass
            outcomes.append(rot.reconcile(target).outcome)
        world.clock.advance(timedelta(seconds=1))
    assert "activated" in outcomes
    assert rp.fetches >= 2
    assert rp.failures == 0
    # the same relying party across an emergency rotation: it may fail (the warning is true)
    rot.reconcile(WebKeyTarget("instance-keys"), emergency=True)
    rp.verify(token_request(world.emu.issuer, sign_assertion(admin, world.emu.issuer),
                            scope="openid").json()["id_token"])
    assert rp.failures == 1


def test_validate_rules() -> None:
    assert check_target(WebKeyTarget("t", publish_ahead=timedelta(minutes=1)))
    assert check_target(WebKeyTarget("t")) == []
    with pytest.raises(ConfigError, match="retain: must be at least 12h"):
        check_target(WebKeyTarget("t", retain=timedelta(hours=1)))
    check_target(WebKeyTarget("t", retain=timedelta(hours=1)), force=True)


def test_an_emergency_during_activation_activates_at_once_and_deletes_the_compromised_key(
    world: World,
) -> None:
    """An activation that failed leaves the cycle at step ``activating``; the
    operator then declares the active key compromised: the pass is an emergency
    (no ``retain`` for the compromised key), not a normal activation."""
    rot = world.rotation()
    target = WebKeyTarget("instance-keys", adopt=True, publish_ahead=timedelta(hours=1))
    compromised = world.active()
    assert rot.reconcile(target, rotate_now=True).outcome == "waiting"
    world.clock.advance(timedelta(hours=2))
    world.emu.set_faults(rules=[{"method": "ActivateWebKey", "code": "internal", "count": 1}])
    failed = rot.reconcile(target)
    world.emu.clear_faults()
    assert (failed.outcome, failed.state.step) == ("failed", "activating")

    result = rot.reconcile(target, rotate_now=True, emergency=True, trigger="cli")
    assert result.outcome == "activated"
    assert result.state.emergency
    assert result.warnings == [EMERGENCY_WARNING]
    assert compromised not in world.states()
    assert compromised not in world.api.published()


def test_an_emergency_deletes_the_compromised_key_even_one_the_rotator_did_not_create(
    world: World,
) -> None:
    """``adopt: false`` protects keys the rotator did not create from routine
    retirement, not a key the operator declared compromised: it is deleted as
    soon as the new key signs, and the audit trail says why."""
    rot = world.rotation()
    compromised = world.active()  # the instance's initial key: not the rotator's
    result = rot.reconcile(WebKeyTarget("instance-keys"), emergency=True, trigger="cli")
    assert result.outcome == "activated"
    assert compromised not in world.states()
    assert compromised not in world.api.published()
    assert result.warnings == [EMERGENCY_WARNING]
    (deleted,) = [e for e in world.events if e["event"] == "webkey.deleted"]
    assert (deleted["key_id"], deleted["reason"]) == (compromised, "compromised")
    assert not [e for e in world.events if e["event"] == "webkey.kept"]


def test_a_second_process_stops_before_any_side_effect_while_a_step_is_claimed(
    world: World,
) -> None:
    """``rotate --emergency`` beside the daemon: the daemon's activation holds
    the target's claim (owner and deadline in the state, written by CAS before
    ActivateWebKey), so the emergency yields instead of activating at the same
    time (where the loser's rollback would re-activate the compromised key)."""
    target = WebKeyTarget("instance-keys", adopt=True, publish_ahead=timedelta(hours=1))
    emergency = world.rotation(identity="operator-cli")
    seen: dict[str, Any] = {}

    class ActivationInterleaved(WebKeyClient):
        def activate(self, key_id: str) -> None:
            if not seen:  # the other process arrives while the daemon activates
                before = world.states()
                try:
                    emergency.reconcile(target, emergency=True, trigger="cli")
                except RotationInFlight as exc:
                    seen["error"] = str(exc)
                seen["unchanged"] = world.states() == before
            super().activate(key_id)

    api = world.api
    daemon = WebKeyRotation(
        ActivationInterleaved(api.oidc, api._token, api._key_file), world.store,
        clock=world.clock, state_path=lambda t: f"zitadel-rotator/webkeys/{t.name}",
        emit=lambda event, **fields: world.events.append({"event": event, **fields}),
        confirm_delay=0.01, identity="daemon-1")
    assert daemon.reconcile(target, rotate_now=True).outcome == "waiting"
    world.clock.advance(timedelta(hours=2))
    result = daemon.reconcile(target)
    assert result.outcome == "activated"
    assert "is run by daemon-1" in seen["error"]
    assert seen["unchanged"], "the second process changed no key"
    assert world.active() == result.state.current
    assert (result.state.owner, result.state.deadline) == (None, None), "claim released"
    assert any(e["event"] == "rotation.yielded" and e["outcome"] == "conflict"
               for e in world.events)
    # once the claim is released the operator's emergency runs
    assert emergency.reconcile(target, emergency=True, trigger="cli").outcome == "activated"


def test_a_claim_left_by_a_crashed_process_expires(world: World) -> None:
    target = WebKeyTarget("instance-keys", publish_ahead=timedelta(hours=1))
    crashed = world.rotation(identity="crashed", claim_timeout=timedelta(minutes=5))
    crashed.reconcile(target)
    state, version = crashed.load(target)
    state.owner, state.deadline = "crashed", (world.clock.now() + timedelta(minutes=5)).isoformat()
    world.store.write("zitadel-rotator/webkeys/instance-keys", state.to_dict(), cas=version)
    other = world.rotation(identity="other")
    keys = set(world.states())
    with pytest.raises(RotationInFlight):
        other.reconcile(target, rotate_now=True)
    assert set(world.states()) == keys
    world.clock.advance(timedelta(minutes=6))
    assert other.reconcile(target, rotate_now=True).outcome == "waiting"


def one_key_activated(world: World) -> tuple[WebKeyTarget, WebKeyRotation, str]:
    """A daily cycle (adopting ZITADEL's initial key) has published and activated
    its first key: the target, its rotation, and the key that was active before."""
    target = WebKeyTarget("instance-keys", adopt=True, publish_ahead=timedelta(hours=1),
                          retain=timedelta(hours=12), every=timedelta(days=1))
    rot = world.rotation()
    initial = world.active()
    rot.reconcile(target, rotate_now=True)
    world.clock.advance(timedelta(hours=2))
    assert rot.reconcile(target).outcome == "activated"
    return target, rot, initial


def test_retiring_skips_a_key_zitadel_lists_as_active_and_the_cycle_goes_on(
    world: World,
) -> None:
    """Someone re-activated the previous key by hand: it is not deleted (ZITADEL
    would refuse, and it signs), it is reported, and later steps still run."""
    target, rot, initial = one_key_activated(world)
    world.api.activate(initial)  # by hand
    world.clock.advance(timedelta(days=1))
    result = rot.reconcile(target)
    assert result.outcome == "waiting", "the next cycle created and published its key"
    assert initial in world.states()
    assert [r.kid for r in result.state.retiring] == [initial]
    (kept,) = [e for e in world.events if e["event"] == "webkey.kept"]
    assert kept["key_id"] == initial
    assert "ACTIVE" in kept["reason"]


def test_a_failed_deletion_is_retried_later_and_does_not_block_the_cycle(
    world: World,
) -> None:
    target, rot, initial = one_key_activated(world)
    world.clock.advance(timedelta(days=1))
    world.emu.set_faults(rules=[{"method": "DeleteWebKey", "code": "internal", "count": 1}])
    result = rot.reconcile(target)
    world.emu.clear_faults()
    assert result.outcome == "waiting", "the next cycle created and published its key"
    assert result.state.step == "published"
    (retiring,) = result.state.retiring
    assert (retiring.kid, bool(retiring.error)) == (initial, True)
    assert [e["key_id"] for e in world.events if e["event"] == "webkey.delete_failed"] \
        == [initial]
    rot.reconcile(target)
    assert initial not in world.states()


def test_an_emergency_whose_compromised_key_cannot_be_deleted_says_so(world: World) -> None:
    rot = world.rotation()
    compromised = world.active()
    world.api.list()  # a fresh API token: the fault hits only the deletion
    world.emu.set_faults(rules=[{"method": "DeleteWebKey", "code": "internal", "count": 1}])
    result = rot.reconcile(WebKeyTarget("instance-keys"), emergency=True, trigger="cli")
    world.emu.clear_faults()
    assert result.outcome == "activated"
    (warning,) = result.warnings
    assert f"compromised key {compromised} could NOT be deleted yet" in warning
    assert "still verify" in warning
    assert compromised in world.states()
    rot.reconcile(WebKeyTarget("instance-keys"))  # the next pass deletes it
    assert compromised not in world.states()
