"""The web key protocol: rotating the instance's token-signing keys
(``kind: webkey``; zitadel-api.md §12).

A cycle goes, one step per reconcile when its time has come::

    create     intent (step ``creating``, its instant) in the state secret (CAS),
               then CreateWebKey: the new key is INITIAL and published
    publish    the new kid is confirmed at /oauth/v2/keys; activation is due
               ``publish_ahead`` later (relying parties refresh their JWKS cache)
    activate   intent (step ``activating``, the previous active kid), then
               ActivateWebKey (the previous key becomes INACTIVE, still published)
    confirm    a real id_token from the token endpoint names the new kid; if it
               does not (or the key was never served), the previous key is
               activated again and the cycle is reported ``rolled_back``
    retire     ``retain`` after activation the previous key is deleted - only
               if the rotator created it, or the target says ``adopt: true``, or
               it is the key an emergency declared compromised

Every side effect is preceded by a CAS write of the state saying what is about
to happen, so a crash at any point resumes: a ``creating`` intent looks for an
INITIAL key that was not listed when the intent was written before creating another; ``activating``
re-activates (ActivateWebKey on the active key is a no-op); deletions are
idempotent in ZITADEL (an unknown or removed key deletes fine).

``emergency`` creates and activates at once (no ``publish_ahead``) and deletes
the compromised key (the one active when it was declared, whoever created it:
``adopt`` does not protect a compromised key) right after activation: relying
parties with a cached JWKS reject new tokens until they refresh, and every token
the old key signed stops verifying.  The state, the audit trail and ``status`` say so.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from rotator import windows
from rotator.errors import (
    CasConflict,
    ConfigError,
    RotationInFlight,
    RotatorError,
    ZitadelError,
)
from rotator.model import Algorithm, Schedule, WebKeyInfo
from rotator.ports import Clock, SecretStore

#: ZITADEL's JWKS cache max-age (OIDC.JWKSCacheControlMaxAge)
JWKS_MAX_AGE = timedelta(minutes=5)
#: ZITADEL's default longest token lifetime (access and id tokens)
TOKEN_LIFETIME = timedelta(hours=12)

EMERGENCY_WARNING = ("emergency rotation: the new key signs at once; relying parties with a "
                     "cached JWKS reject new tokens until they refresh it (up to 5 min), and "
                     "every token the compromised key signed stops verifying")


def compromised_kept_warning(kid: str, error: str) -> str:
    """The emergency warning when the compromised key could not be deleted (yet)."""
    return ("emergency rotation: the new key signs at once; relying parties with a cached "
            "JWKS reject new tokens until they refresh it (up to 5 min); the compromised key "
            f"{kid} could NOT be deleted yet ({error}): tokens it signed still verify until "
            "a later pass deletes it")


@dataclass(frozen=True)
class WebKeyTarget:
    name: str
    every: timedelta = timedelta(days=90)
    publish_ahead: timedelta = timedelta(days=1)
    retain: timedelta = timedelta(days=90)
    algorithm: Algorithm = field(default_factory=Algorithm)
    #: Delete keys the rotator did not create (e.g. a fresh instance's) when they retire.
    adopt: bool = False
    #: Windows and freezes hold back activation (never deletion).
    schedule: Schedule = field(default_factory=Schedule)


def check_target(target: WebKeyTarget, *, file: str | None = None,
                 force: bool = False, where: str | None = None) -> list[str]:
    """Warnings for a web key target; raises ConfigError (naming ``file`` and
    the field under ``where``, default ``targets.<name>``) for what is refused.
    ``force`` (``force_short_retain: true``) accepts a ``retain`` below 12h."""
    where = where or f"targets.{target.name}"
    warnings = []
    if target.publish_ahead < JWKS_MAX_AGE:
        warnings.append(f"{where}.publish_ahead ({_dur(target.publish_ahead)}) is below the "
                        "JWKS cache max-age of 5m: relying parties with a cached JWKS may "
                        "reject tokens signed by the new key")
    if target.retain < TOKEN_LIFETIME and not force:
        raise ConfigError(f"must be at least 12h, ZITADEL's longest token lifetime "
                          f"(got {_dur(target.retain)}): tokens the previous key signed would "
                          "stop verifying; set force_short_retain: true to accept that",
                          file=file, field=f"{where}.retain")
    if target.every <= target.publish_ahead:
        raise ConfigError(f"must be longer than publish_ahead ({_dur(target.every)} <= "
                          f"{_dur(target.publish_ahead)})", file=file, field=f"{where}.every")
    return warnings


def _dur(value: timedelta) -> str:
    total, parts = int(value.total_seconds()), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


class WebKeyApi(Protocol):
    """What :class:`rotator.zitadel.webkeys.WebKeyClient` offers."""

    def list(self) -> list[WebKeyInfo]: ...

    def create(self, algorithm: Algorithm) -> str: ...

    def activate(self, key_id: str) -> None: ...

    def delete(self, key_id: str) -> None: ...

    def published(self) -> set[str]: ...

    def signing_kid(self) -> str: ...


# --- state ---------------------------------------------------------------------------------


@dataclass
class Retiring:
    kid: str
    delete_at: str  # ISO instant
    owned: bool
    #: the last failed deletion (retried on the next pass)
    error: str | None = None
    #: the active key when the operator declared an emergency: deleted whoever
    #: created it (``adopt`` protects keys from routine retirement, not this)
    compromised: bool = False


@dataclass
class WebKeyState:
    #: idle | creating | created | published | activating
    step: str = "idle"
    rotation_id: str | None = None
    #: when the step's intent was written (creating: look for a key created since)
    intent_at: str | None = None
    #: the key this cycle created, and the one that was active before it
    new: str | None = None
    previous: str | None = None
    #: when the next step is due (activation after publish_ahead)
    next_at: str | None = None
    emergency: bool = False
    current: str | None = None
    active_since: str | None = None
    owned: list[str] = field(default_factory=list)
    #: the keys listed when the ``creating`` intent was written
    known: list[str] = field(default_factory=list)
    retiring: list[Retiring] = field(default_factory=list)
    last_result: str | None = None
    last_error: str | None = None
    #: failed passes in a row (reset when a step succeeds)
    attempts: int = 0
    #: cycles rolled back in a row (reset by an activation that takes), and when the
    #: last one was: the next cycle waits (backoff), then none starts by itself
    rollbacks: int = 0
    rolled_back_at: str | None = None
    warning: str | None = None
    #: the process running this target's side-effect steps, until ``deadline``
    #: (ISO): no other process acts on the target before then
    owner: str | None = None
    deadline: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "webkey", **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WebKeyState:
        data = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        data["retiring"] = [Retiring(**r) for r in data.get("retiring", [])]
        return cls(**data)


def _iso(instant: datetime) -> str:
    return instant.isoformat()


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class WebKeyResult:
    target: str
    #: up_to_date | created | published | waiting | activated | rolled_back | retired | failed
    outcome: str
    state: WebKeyState
    detail: str | None = None
    warnings: list[str] = field(default_factory=list)


class StepFailed(RotatorError):
    pass


@dataclass
class _Pass:
    """One reconcile of one target: the state as last written and its version."""

    target: WebKeyTarget
    state: WebKeyState
    version: int
    now: datetime
    emit: Callable[..., None]


class WebKeyRotation:
    """Runs the web key cycle for targets; one :meth:`reconcile` advances one target."""

    def __init__(self, api: WebKeyApi, store: SecretStore, *, clock: Clock,
                 state_path: Callable[[WebKeyTarget], str],
                 emit: Callable[..., Any] = lambda *a, **k: None,
                 confirm_attempts: int = 5, confirm_delay: float = 1.0,
                 window_open: Callable[[WebKeyTarget, datetime], bool] | None = None,
                 retry_base: timedelta = timedelta(minutes=1),
                 retry_cap: timedelta = timedelta(hours=1),
                 max_rollbacks: int = 5,
                 identity: str | None = None,
                 claim_timeout: timedelta = timedelta(minutes=5),
                 ) -> None:
        self.api, self.store, self.clock, self.state_path = api, store, clock, state_path
        #: a rolled-back cycle is retried after these (see :func:`cycle_due`)
        self.retry_base, self.retry_cap, self.max_rollbacks = retry_base, retry_cap, max_rollbacks
        self.emit = emit
        self.confirm_attempts, self.confirm_delay = confirm_attempts, confirm_delay
        self.window_open = window_open or _schedule_open
        #: owner of the claims written here (as rotation intents: host and pid by default)
        self.identity = identity or f"{os.environ.get('HOSTNAME') or socket.gethostname()}" \
            f"-{os.getpid()}"
        #: how long a claim holds without a state write renewing it
        self.claim_timeout = claim_timeout

    # -- state I/O (CAS)

    def load(self, target: WebKeyTarget) -> tuple[WebKeyState, int]:
        raw = self.store.read(self.state_path(target))
        if raw is None:
            return WebKeyState(), 0
        return WebKeyState.from_dict(dict(raw.data)), raw.version

    def _save(self, target: WebKeyTarget, state: WebKeyState, version: int) -> int:
        return self.store.write(self.state_path(target), state.to_dict(), cas=version)

    # -- the cycle

    def reconcile(self, target: WebKeyTarget, *, rotate_now: bool = False,
                  emergency: bool = False, trigger: str = "schedule") -> WebKeyResult:
        state, version = self.load(target)
        now = self.clock.now()

        def emit(event: str, **fields: Any) -> None:
            self.emit(event, target=target.name, kind="webkey",
                      rotation_id=state.rotation_id, trigger=trigger, **fields)

        run = _Pass(target, state, version, now, emit)
        try:
            result = self._advance(run, rotate_now=rotate_now, emergency=emergency)
            self._release(run)
            return result
        except CasConflict as exc:
            # another process acts on the target (its claim, or a write that won):
            # it owns the step; recording a failure would only disturb it
            emit("rotation.yielded", outcome="conflict", error=str(exc))
            raise
        except RotatorError as exc:
            state, version = self.load(target)
            state.last_error = str(exc)
            state.attempts += 1
            if state.owner == self.identity:
                state.owner = state.deadline = None
            self._save(target, state, version)
            emit("rotation.failed", outcome="failure", error=str(exc),
                 error_type=type(exc).__name__, attempt=state.attempts)
            return WebKeyResult(target.name, "failed", state, detail=str(exc))

    def _write(self, run: _Pass) -> None:
        run.state.attempts = 0
        if run.state.owner == self.identity:  # each step written renews the claim
            run.state.deadline = _iso(self.clock.now() + self.claim_timeout)
        run.version = self._save(run.target, run.state, run.version)

    def _claim(self, run: _Pass) -> None:
        """Before any side effect: the target is ours (CAS), or this raises
        :class:`RotationInFlight` while another process's claim is live (a
        second process, e.g. ``rotate --emergency`` beside the daemon, stops
        here: two activations at once roll each other back)."""
        state = run.state
        if state.owner == self.identity:
            return
        self._yield_to_owner(run)
        state.owner = self.identity
        self._write(run)  # a CasConflict here: another process claimed it first

    def _yield_to_owner(self, run: _Pass) -> None:
        """Raise :class:`RotationInFlight` while another process's claim is live:
        not even a state write (it would make the owner's next CAS write lose)."""
        state = run.state
        deadline = _at(state.deadline)
        if state.owner and state.owner != self.identity and deadline is not None \
                and self.clock.now() < deadline:
            raise RotationInFlight(f"web key target {run.target.name} is run by {state.owner} "
                                   f"until {state.deadline}",
                                   path=self.state_path(run.target))

    def _release(self, run: _Pass) -> None:
        if run.state.owner == self.identity:
            run.state.owner = run.state.deadline = None
            run.version = self._save(run.target, run.state, run.version)

    def _advance(self, run: _Pass, *, rotate_now: bool, emergency: bool) -> WebKeyResult:
        state = run.state
        self._yield_to_owner(run)
        if state.current is None:  # first run: learn the active key
            active = [k.id for k in self.api.list() if k.state == "ACTIVE"]
            state.current = active[0] if active else None
            state.active_since = _iso(run.now)
            self._write(run)
        self._retire(run)
        if emergency and state.step in ("creating", "created", "published", "activating") \
                and not state.emergency:
            # a normal cycle is under way: its new key is activated now, as an emergency
            state.emergency, state.warning = True, EMERGENCY_WARNING
            if state.next_at is not None:
                state.next_at = _iso(run.now)
            self._write(run)
        if state.step == "idle":
            due = cycle_due(run.target, state, run.now, retry_base=self.retry_base,
                            retry_cap=self.retry_cap, max_rollbacks=self.max_rollbacks)
            if not (rotate_now or emergency or (due.at is not None and due.at <= run.now)):
                return WebKeyResult(run.target.name, "up_to_date", state, detail=due.note)
            self._start(run, "emergency" if emergency else "requested" if rotate_now else "due")
        if state.step == "creating":
            self._create(run)
        if state.step == "created":
            self._publish(run)
        if state.step == "published":
            held = self._prepare_activation(run)
            if held is not None:
                return WebKeyResult(run.target.name, "waiting", state, detail=held)
        if state.step == "activating":
            return self._activate(run)
        return WebKeyResult(run.target.name, "up_to_date", state)

    def _start(self, run: _Pass, reason: str) -> None:
        state = run.state
        self._claim(run)
        state.step, state.intent_at = "creating", _iso(run.now)
        # what exists before the create: a key beyond these after a crash is ours
        state.known = [k.id for k in self.api.list()]
        state.rotation_id = str(uuid.uuid4())
        state.emergency = reason == "emergency"
        state.warning = EMERGENCY_WARNING if state.emergency else None
        state.last_error = None
        self._write(run)
        run.emit("rotation.started", outcome=None, reason=reason, warning=state.warning)

    def _create(self, run: _Pass) -> None:
        state = run.state
        self._claim(run)
        found = self._created_since(state)
        kid = found if found is not None else self.api.create(run.target.algorithm)
        state.new, state.step = kid, "created"
        state.owned = [*state.owned, kid]
        self._write(run)
        run.emit("webkey.created", outcome="success", key_id=kid,
                 algorithm=run.target.algorithm.describe())

    def _publish(self, run: _Pass) -> None:
        state = run.state
        if state.new not in self._poll(self.api.published, state.new):
            raise StepFailed(f"web key {state.new} is not served at /oauth/v2/keys yet")
        state.step = "published"
        wait = timedelta(0) if state.emergency else run.target.publish_ahead
        state.next_at = _iso(run.now + wait)
        self._write(run)
        run.emit("webkey.published", outcome="success", key_id=state.new,
                 activate_at=state.next_at)

    def _prepare_activation(self, run: _Pass) -> str | None:
        """Why activation must wait, or None once the intent is written."""
        state = run.state
        due_at = _at(state.next_at)
        if not state.emergency:
            if due_at is not None and run.now < due_at:
                return f"activation due at {state.next_at}"
            if not self.window_open(run.target, run.now):
                return "activation held: outside windows or in a freeze"
        self._claim(run)
        active = [k.id for k in self.api.list() if k.state == "ACTIVE"]
        state.previous = next((k for k in active if k != state.new), state.current)
        state.step = "activating"
        self._write(run)
        return None

    def _activate(self, run: _Pass) -> WebKeyResult:
        state, target = run.state, run.target
        assert state.new is not None
        self._claim(run)
        self.api.activate(state.new)
        signing = self._confirm_signing(state.new)
        if signing != state.new:
            return self._roll_back(run, signing)
        previous = state.previous
        retain = timedelta(0) if state.emergency else target.retain
        if previous and previous != state.new:
            owned = previous in state.owned or target.adopt
            state.retiring = [*state.retiring, Retiring(previous, _iso(run.now + retain),
                                                        bool(owned), compromised=state.emergency)]
        state.current, state.active_since = state.new, _iso(run.now)
        state.step, state.new, state.previous, state.next_at = "idle", None, None, None
        state.rollbacks, state.rolled_back_at = 0, None
        state.last_result, state.last_error = "activated", None
        self._write(run)
        run.emit("webkey.activated", outcome="success", key_id=state.current,
                 previous_key_id=previous, warning=state.warning)
        if state.emergency:
            self._retire(run)
            kept = next((r for r in state.retiring if r.kid == previous and r.compromised), None)
            if kept is not None:  # the warning says what happened, not what was meant to
                state.warning = compromised_kept_warning(kept.kid, kept.error or "not deleted")
                self._write(run)
        run.emit("rotation.completed", outcome="success", key_id=state.current)
        return WebKeyResult(target.name, "activated", state,
                            warnings=[state.warning] if state.warning else [])

    def _poll(self, probe: Callable[[], Any], want: Any) -> Any:
        got = probe()
        for _ in range(self.confirm_attempts - 1):
            if want in got if isinstance(got, set) else got == want:
                break
            self.clock.sleep(self.confirm_delay)
            got = probe()
        return got

    def _confirm_signing(self, kid: str) -> str:
        try:
            return str(self._poll(self.api.signing_kid, kid))
        except ZitadelError as exc:
            return f"(no token: {exc})"

    def _created_since(self, state: WebKeyState) -> str | None:
        """After a crash (or a lost answer) between CreateWebKey and the state
        write: an INITIAL key that was not there when the intent was written."""
        for key in self.api.list():
            if key.state == "INITIAL" and key.id not in state.known \
                    and key.id not in state.owned:
                return key.id
        return None

    def _roll_back(self, run: _Pass, signing: str) -> WebKeyResult:
        """Tokens are not signed with the new key: the previous key signs again."""
        state, target, now, emit = run.state, run.target, run.now, run.emit
        detail = (f"tokens are not signed with the new web key {state.new} "
                  f"(the token endpoint's id_token names {signing or 'no kid'})")
        if state.previous:
            self.api.activate(state.previous)
        failed = state.new
        # it may have signed tokens meanwhile: keep it published for retain, then delete it
        if failed:
            state.retiring = [*state.retiring, Retiring(failed, _iso(now + target.retain), True)]
        state.step, state.new, state.next_at = "idle", None, None
        state.active_since = state.active_since or _iso(now)
        state.last_result, state.last_error = "rolled_back", detail
        # without a cool-down the next cycle would start at once (active_since is
        # unchanged), leaving one more key published for retain per cycle
        state.rollbacks, state.rolled_back_at = state.rollbacks + 1, _iso(now)
        self._write(run)
        emit("rotation.rolled_back", outcome="failure", error=detail, key_id=failed,
             previous_key_id=state.previous)
        return WebKeyResult(target.name, "rolled_back", state, detail=detail)

    def _retire(self, run: _Pass) -> None:
        """Delete the retiring keys whose ``retain`` is over (never earlier);
        deletion is not held by windows.  Keys not ours stay unless ``adopt``.
        A key ZITADEL lists as ACTIVE is skipped (it signs); a failed deletion
        is recorded on the key and retried next pass, the pass goes on."""
        state, target, emit = run.state, run.target, run.emit
        now = self.clock.now()  # an emergency retires right after activation
        due = [r for r in state.retiring if (_at(r.delete_at) or now) <= now]
        if not due:
            return
        listed: dict[str, str] | None = None
        for item in due:
            if item.kid == state.current:
                state.retiring.remove(item)  # rolled back onto it: it signs again
            elif item.owned or item.compromised or target.adopt:
                self._claim(run)
                try:
                    if listed is None:
                        listed = {k.id: k.state for k in self.api.list()}
                    if listed.get(item.kid) == "ACTIVE":
                        emit("webkey.kept", outcome=None, key_id=item.kid,
                             reason="ZITADEL lists it as ACTIVE (it signs tokens): not "
                             "deleted; retried once another key is active")
                        continue
                    self.api.delete(item.kid)
                except ZitadelError as exc:
                    item.error = str(exc)
                    state.last_error = f"deleting web key {item.kid} failed: {exc}"
                    self._write(run)
                    emit("webkey.delete_failed", outcome="failure", key_id=item.kid,
                         error=str(exc), error_type=type(exc).__name__)
                    continue
                state.retiring.remove(item)
                emit("webkey.deleted", outcome="success", key_id=item.kid,
                     reason="compromised" if item.compromised else "retained")
            else:
                state.retiring.remove(item)
                emit("webkey.kept", outcome=None, key_id=item.kid,
                     reason="not created by the rotator (adopt: false)")
            self._write(run)


# --- what comes next (status, plan, the daemon's schedule): pure -----------------------------


@dataclass(frozen=True)
class NextStep:
    """The next thing reconcile will do for a target, and when."""

    #: create | confirm | activate | resume | delete
    step: str
    at: datetime | None
    key_id: str | None = None
    #: why it waits (a window, a retry), for status and plan
    note: str | None = None


def _retry_at(state: WebKeyState, now: datetime, base: timedelta, cap: timedelta) -> datetime:
    delay: timedelta = min(cap, base * 2 ** max(0, state.attempts - 1))
    return now + delay


def cycle_due(target: WebKeyTarget, state: WebKeyState, now: datetime, *,
              retry_base: timedelta = timedelta(minutes=1),
              retry_cap: timedelta = timedelta(hours=1),
              max_rollbacks: int | None = None) -> NextStep:
    """When an idle target's next cycle starts by itself: ``every`` after the
    current key became active; after a rollback not before ``retry_base``
    (doubling per rollback in a row, at most ``retry_cap``) has passed, and
    after ``max_rollbacks`` in a row never (``rotator rotate TARGET`` starts one)."""
    since = _at(state.active_since) or now
    at: datetime | None = since + target.every
    rolled_back = _at(state.rolled_back_at)
    if not state.rollbacks or rolled_back is None:
        return NextStep("create", at)
    if max_rollbacks is not None and state.rollbacks >= max_rollbacks:
        return NextStep("create", None, note=f"held: {state.rollbacks} rollbacks in a row; "
                        f"fix the cause, then `rotator rotate {target.name}` starts a cycle")
    delay: timedelta = min(retry_cap, retry_base * 2 ** (state.rollbacks - 1))
    cooled = rolled_back + delay
    if at is None or cooled > at:
        return NextStep("create", cooled, note=f"cool-down after {state.rollbacks} "
                        f"rollback{'s' if state.rollbacks > 1 else ''} in a row")
    return NextStep("create", at)


def _activation_at(target: WebKeyTarget, due: datetime) -> datetime | None:
    return windows.next_allowed(due, target.schedule.windows, target.schedule.freeze)


def next_steps(target: WebKeyTarget, state: WebKeyState, now: datetime, *,
               retry_base: timedelta = timedelta(minutes=1),
               retry_cap: timedelta = timedelta(hours=1),
               max_rollbacks: int | None = None) -> list[NextStep]:
    """The cycle step and the deletions to come, soonest first.  A failed
    step is retried after a doubling delay (``retry_base`` .. ``retry_cap``),
    and so is a rolled-back cycle (:func:`cycle_due`)."""
    steps: list[NextStep] = []
    at: datetime | None
    if state.current is None and state.step == "idle":
        steps.append(NextStep("create", now, note="first run: learns the active key"))
    elif state.step in ("creating", "created", "activating"):
        what = {"creating": "create", "created": "confirm", "activating": "activate"}[state.step]
        at = _retry_at(state, now, retry_base, retry_cap) if state.attempts else now
        steps.append(NextStep(what, at, state.new,
                              note=f"retry after: {state.last_error}" if state.attempts else None))
    elif state.step == "published":
        due = _at(state.next_at) or now
        at = due if state.emergency else _activation_at(target, due)
        if state.attempts:
            at = max(at or now, _retry_at(state, now, retry_base, retry_cap))
        steps.append(NextStep("activate", at, state.new,
                              note=None if at == due else "held by windows or a freeze"))
    else:
        steps.append(cycle_due(target, state, now, retry_base=retry_base, retry_cap=retry_cap,
                               max_rollbacks=max_rollbacks))
    steps += [NextStep("delete", _at(r.delete_at), r.kid,
                       note=None if r.owned or r.compromised or target.adopt
                       else "kept: not created by the rotator (adopt: false)")
              for r in state.retiring]
    return sorted(steps, key=lambda s: s.at or datetime.max.replace(tzinfo=now.tzinfo))


def next_run_at(target: WebKeyTarget, state: WebKeyState, now: datetime, **retry: Any
                ) -> datetime | None:
    """When reconcile has something to do next: the daemon's time for the target."""
    times = [s.at for s in next_steps(target, state, now, **retry) if s.at is not None]
    return min(times) if times else None


def project(target: WebKeyTarget, state: WebKeyState, now: datetime, horizon: timedelta,
            **retry: Any) -> list[NextStep]:
    """Every step of the coming cycles up to ``now + horizon`` (plan --horizon),
    assuming each step succeeds on time (``retry``: as for :func:`next_steps`)."""
    end = now + horizon
    out = [s for s in next_steps(target, state, now, **retry)
           if s.at is not None and s.at <= end]
    cycle = next((s for s in out if s.step in ("create", "confirm", "activate")), None)
    at = cycle.at if cycle is not None else None
    step = cycle.step if cycle is not None else None
    while at is not None and at <= end and len(out) < 100:
        if step in ("create", "confirm"):
            activate = _activation_at(target, at + target.publish_ahead)
            if activate is None or activate > end:
                break
            out.append(NextStep("activate", activate, note="new key signs"))
            at = activate
        out.append(NextStep("delete", at + target.retain, note="previous key, after retain"))
        at, step = at + target.every, "create"
        out.append(NextStep("create", at, note="new key published"))
    return sorted((s for s in out if s.at is not None and s.at <= end),
                  key=lambda s: s.at or now)


def emergency_applies(state: WebKeyState, now: datetime) -> bool:
    """An emergency activation whose cached-JWKS danger may still hold."""
    since = _at(state.active_since)
    return state.emergency and since is not None and now < since + JWKS_MAX_AGE \
        and state.step == "idle"


def _schedule_open(target: WebKeyTarget, now: datetime) -> bool:
    return windows.is_allowed(now, target.schedule.windows, target.schedule.freeze)


__all__ = [
    "EMERGENCY_WARNING",
    "NextStep",
    "Retiring",
    "WebKeyResult",
    "WebKeyRotation",
    "WebKeyState",
    "WebKeyTarget",
    "check_target",
    "cycle_due",
    "emergency_applies",
    "next_run_at",
    "next_steps",
    "project",
]
