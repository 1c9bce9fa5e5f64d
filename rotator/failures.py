"""Failure bookkeeping: what a failed reconcile records, and when it retries.

Failures come in three classes:

* **transient** — ZITADEL or Vault unreachable, sealed, 5xx, 429, timeouts.
  They back off exponentially up to ``cap`` and never make a target stuck:
  an outage of any length must not leave a credential to expire.  The
  backoff is also bounded by the credential's expiry: attempts go on often
  enough that a new credential exists before the old one's retire margin.
* **permanent** — the user does not exist, the rotator may not act on it,
  the secret at ``vault_path`` is someone else's, a new credential never
  verifies.  After ``max_attempts`` of these the target is ``stuck`` until a
  person runs ``rotator rotate --force``; the state says why.
* **conflict** — another rotator won a check-and-set write: it owns the
  rotation, nothing is recorded, this one looks again later.

A success clears every count.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from rotator import policy as rules
from rotator.errors import CasConflict, RotatorError, VerificationError
from rotator.model import Target
from rotator.ports import Clock, SecretStore
from rotator.state import TargetState


class FailureClass(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFLICT = "conflict"


def classify(exc: RotatorError) -> FailureClass:
    if isinstance(exc, CasConflict):
        return FailureClass.CONFLICT
    if isinstance(exc, VerificationError):
        # the engine retried it for verify_timeout already: a credential that
        # never works is wrong, not unlucky
        return FailureClass.PERMANENT
    return FailureClass.TRANSIENT if exc.retryable else FailureClass.PERMANENT


@dataclass(frozen=True)
class Backoff:
    max_attempts: int = 5
    base: timedelta = timedelta(minutes=1)
    cap: timedelta = timedelta(hours=1)
    rng: random.Random | None = field(default=None, compare=False)

    def next_attempt(
        self, failures: int, now: datetime, *, deadline: datetime | None = None
    ) -> datetime:
        """When to try again after ``failures`` failures in a row.

        ``deadline`` is when a valid new credential must exist (the current
        one's expiry minus its retire margin): the wait never exceeds half the
        time left before it, so the expiry wins over the backoff.
        """
        delay = rules.retry_delay(failures, base=self.base, cap=self.cap, rng=self.rng)
        if deadline is not None:
            left = deadline - now
            delay = min(delay, max(left / 2, min(self.base, timedelta(seconds=30))))
        return now + delay


@dataclass(frozen=True)
class Failure:
    """What :func:`record` decided about one failure."""

    error: str
    cls: FailureClass
    attempt: int
    stuck: bool
    next_attempt_at: datetime | None


def record(
    state: TargetState, exc: RotatorError, target: Target, now: datetime, backoff: Backoff
) -> Failure:
    """Count ``exc`` in ``state`` (in place) and decide the retry."""
    cls = classify(exc)
    state.failures += 1
    if cls is FailureClass.PERMANENT:
        state.permanent_failures += 1
    stuck = state.permanent_failures >= backoff.max_attempts
    deadline = state.current.expires_at - target.policy.retire_margin if state.current else None
    retry = None if stuck else backoff.next_attempt(state.failures, now, deadline=deadline)
    state.stuck, state.last_error, state.next_attempt_at = stuck, str(exc), retry
    state.last_error_class, state.target_digest = cls.value, digest(target)
    return Failure(str(exc), cls, state.failures, stuck, retry)


def clear(state: TargetState) -> bool:
    """Forget every failure after a success; True when there was one to forget."""
    had = bool(state.failures or state.last_error or state.stuck)
    state.failures = state.permanent_failures = 0
    state.stuck, state.last_error, state.last_error_class = False, None, None
    state.next_attempt_at = None
    return had


class FailureBook:
    """Records failures in the target's state in Vault, where ``status``,
    metrics and other replicas see them; in memory while Vault cannot be
    written (sealed, unreachable), keyed by the target as configured."""

    def __init__(
        self,
        store: SecretStore,
        backoff: Backoff,
        state_path: Callable[[Target], str],
        clock: Clock,
    ) -> None:
        self.store, self.backoff, self.state_path, self.clock = store, backoff, state_path, clock
        self._memory: dict[Target, TargetState] = {}

    def waiting(self, target: Target, now: datetime) -> TargetState | None:
        """A failure remembered here that holds the target back: stuck, or its
        retry time has not come."""
        state = self._memory.get(target)
        if state is None:
            return None
        if state.stuck or (state.next_attempt_at and now < state.next_attempt_at):
            return state
        return None

    def remembered(self, target: Target) -> TargetState | None:
        return self._memory.get(target)

    def forget(self, target: Target) -> None:
        self._memory.pop(target, None)

    def record(
        self, target: Target, exc: RotatorError, *, early: bool = False
    ) -> tuple[TargetState, Failure]:
        """Count ``exc`` for ``target`` (not for a conflict: see :func:`classify`).

        ``early``: the target's state could not be read; the failure is also
        remembered here, so the retry gate works without reading Vault.
        """
        try:
            raw = self.store.read(self.state_path(target))
            state = TargetState.from_dict(dict(raw.data)) if raw else _blank(target)
            forgive_if_changed(state, target)
            failure = record(state, exc, target, self.clock.now(), self.backoff)
            version = raw.version if raw else 0
            self.store.write(self.state_path(target), state.to_dict(), cas=version)
        except RotatorError:
            # Vault is what failed, or another replica moved on: keep it here
            state = self._memory.get(target) or _blank(target)
            forgive_if_changed(state, target)
            # now, not before the Vault calls that just failed: their retries take time
            failure = record(state, exc, target, self.clock.now(), self.backoff)
            early = True
        if early:
            self._memory[target] = state
        return state, failure


def forgive_if_changed(state: TargetState, target: Target) -> None:
    """A target changed since it failed (user name fixed, ``adopt: true``) is tried afresh."""
    if state.failures and state.target_digest and state.target_digest != digest(target):
        clear(state)


def digest(target: Target) -> str:
    """A fingerprint of the target as configured."""
    text = repr(target) + (f" org={target.org!r}" if target.org else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _blank(target: Target) -> TargetState:
    return TargetState(target=target.name, kind=target.kind.value, user_id="")
