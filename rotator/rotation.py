"""The rotation protocol, top to bottom.

For one target the engine converges, on every call to :meth:`Engine.reconcile`,
towards: exactly one current credential in ZITADEL, stored in Vault at the
target's ``vault_path``, not yet due; plus at most one previous credential in
its grace period.  A rotation goes through these steps::

    plan      due?  (expiry - renew_before, or forced, or current missing)
    intent    record {rotation id, expiry, phase=creating} in the state secret (CAS)
    create    new key pair generated locally, public key registered in ZITADEL
              (or a PAT issued)
    store     the new credential's secret kept in the state secret (CAS);
              if that write fails the new credential is removed again
    verify    a real jwt-bearer exchange (key) or userinfo call (PAT),
              retried with backoff to absorb ZITADEL's propagation lag;
              if it never works the new credential is removed again
    promote   consumer secret gets a new version: new credential, plus the
              old one under ``previous`` (CAS); state: current=new, previous=old
    retire    after ``grace`` (and always before the old expiry) the old
              credential is removed from ZITADEL and dropped from the secret

Every state write is check-and-set, so two rotators acting on one target at
once cannot both succeed; the loser rolls back what it created.  Crash
recovery needs no extra code path: ``reconcile`` first looks at the recorded
phase and finishes (or cleans up) whatever was under way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from rotator import policy as rules
from rotator.audit import AuditLog
from rotator.clock import Clock
from rotator.errors import (
    CasConflict,
    RotatorError,
    VaultError,
    VerificationError,
    ZitadelNotFound,
)
from rotator.keys import build_key_file, generate_key_pair
from rotator.model import Target, Trigger
from rotator.state import CredentialRef, Pending, Phase, PreviousCredential, TargetState
from rotator.store import SecretStore, StoredSecret
from rotator.zitadel.base import Credential, CredentialKind, User, ZitadelTransport

MANAGED_BY = "zitadel-rotator"
#: Clock skew tolerated when matching an orphan's creation time to our intent.
_ORPHAN_SKEW = timedelta(minutes=5)


class Verifier(Protocol):
    def verify_key(self, key_file: Mapping[str, str]) -> None: ...

    def verify_pat(self, token: str, user_id: str | None = None) -> None: ...


class Outcome(StrEnum):
    ROTATED = "rotated"
    RETIRED = "retired"
    UP_TO_DATE = "up_to_date"
    DRY_RUN = "dry_run"
    FAILED = "failed"
    STUCK = "stuck"


@dataclass(frozen=True)
class RotationResult:
    target: str
    outcome: Outcome
    rotation_id: str | None = None
    credential_id: str | None = None
    previous_credential_id: str | None = None
    expires_at: datetime | None = None
    next_run_at: datetime | None = None
    error: str | None = None
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetStatus:
    target: str
    kind: str
    user_id: str | None
    credential_id: str | None
    expires_at: datetime | None
    next_rotation_at: datetime | None
    previous_credential_id: str | None
    retire_at: datetime | None
    vault_path: str
    vault_version: int | None
    state: str
    failures: int
    last_error: str | None
    last_success_at: datetime | None


@dataclass
class _Run:
    """What one reconcile call did, for the result and the audit trail."""

    target: Target
    trigger: Trigger
    user: User
    started: float = field(default_factory=time.monotonic)
    rotated: bool = False
    retired: bool = False
    rotation_id: str | None = None


class Engine:
    def __init__(
        self,
        transport: ZitadelTransport,
        store: SecretStore,
        verifier: Verifier,
        *,
        clock: Clock,
        audit: AuditLog,
        state_prefix: str = "zitadel-rotator",
        max_attempts: int = 5,
        retry_base: timedelta = timedelta(minutes=1),
        retry_cap: timedelta = timedelta(hours=1),
        own_key_id: Callable[[], str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.store = store
        self.verifier = verifier
        self.clock = clock
        self.audit = audit
        self.state_prefix = state_prefix.strip("/")
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        #: The key the rotator itself signs in with, read afresh each time.
        self.own_key_id = own_key_id
        self._users: dict[str, User] = {}
        #: Failures before a target's state could be read: (attempts, retry at,
        #: error), keyed by the target as configured, so a changed target (a
        #: fixed user name, `adopt: true`) is tried afresh at once.
        self._unrecorded_failures: dict[Target, tuple[int, datetime, str]] = {}

    # ------------------------------------------------------------------ API

    def state_path(self, target: Target) -> str:
        return f"{self.state_prefix}/targets/{target.name}"

    def reconcile(
        self,
        target: Target,
        *,
        trigger: Trigger,
        force: bool = False,
        dry_run: bool = False,
        rotate: bool = True,
    ) -> RotationResult:
        """Bring ``target`` to its desired state; see the module docstring.

        Errors from ZITADEL or Vault do not propagate: they are recorded in the
        target's state (failure count, next attempt, ``stuck`` after
        ``max_attempts``) and returned as ``Outcome.FAILED`` / ``STUCK``.
        ``rotate=False`` does everything but start a new rotation (a rotation
        window is closed): retirements and interrupted rotations still finish.
        """
        early = self._unrecorded_failures.get(target)
        if early is not None and not force and not dry_run and self.clock.now() < early[1]:
            return RotationResult(
                target=target.name, outcome=Outcome.FAILED, next_run_at=early[1], error=early[2]
            )
        try:
            user = self._user(target)
            state, version = self._load(target, user)
        except RotatorError as exc:
            return self._result_for_error(target, exc)
        self._unrecorded_failures.pop(target, None)

        if dry_run:
            return self._plan(target, state)

        run = _Run(target=target, trigger=trigger, user=user)
        try:
            # Retiring the previous credential is never held back: not by a
            # stuck target, not by a backoff.  It must leave before it expires.
            state, version = self._retire_if_due(run, state, version)
            if state.stuck and not force:
                return self._result(run, state, Outcome.STUCK, error=state.last_error)
            if force and state.stuck:
                state.stuck, state.failures = False, 0
            waiting = state.next_attempt_at and self.clock.now() < state.next_attempt_at
            if waiting and not force:
                return self._result(run, state, Outcome.FAILED, error=state.last_error)

            state, version = self._resume(run, state, version)
            reason = self._rotation_reason(target, state, force) if rotate or force else None
            if reason is not None:
                state, version = self._rotate(run, state, version, reason)
        except RotatorError as exc:
            return self._record_failure(run, exc)

        if state.failures or state.last_error:
            state.failures, state.last_error, state.next_attempt_at = 0, None, None
            state, version = self._save(target, state, version)
        outcome = Outcome.UP_TO_DATE
        if run.rotated:
            outcome = Outcome.ROTATED
        elif run.retired:
            outcome = Outcome.RETIRED
        return self._result(run, state, outcome)

    def plan(self, target: Target) -> RotationResult:
        return self.reconcile(target, trigger=Trigger.CLI, dry_run=True)

    def status(self, target: Target) -> TargetStatus:
        raw = self.store.read(self.state_path(target))
        secret = self.store.read(target.vault_path)
        state = TargetState.from_dict(dict(raw.data)) if raw else None
        now = self.clock.now()
        current = state.current if state else None
        next_rotation = (
            rules.due_at(current.expires_at, target.policy) if current is not None else None
        )
        label = _state_label(state, now, next_rotation)
        return TargetStatus(
            target=target.name,
            kind=target.kind.value,
            user_id=state.user_id if state else None,
            credential_id=current.id if current else None,
            expires_at=current.expires_at if current else None,
            next_rotation_at=next_rotation,
            previous_credential_id=state.previous.id if state and state.previous else None,
            retire_at=state.previous.retire_at if state and state.previous else None,
            vault_path=target.vault_path,
            vault_version=secret.version if secret else None,
            state=label,
            failures=state.failures if state else 0,
            last_error=state.last_error if state else None,
            last_success_at=state.last_success_at if state else None,
        )

    # ------------------------------------------------------- the decisions

    def _rotation_reason(self, target: Target, state: TargetState, force: bool) -> str | None:
        now = self.clock.now()
        if force:
            return "forced"
        if state.current is None:
            return "no current credential"
        if state.current.expires_at <= now:
            return "expired"
        if now >= rules.due_at(state.current.expires_at, target.policy):
            return "due"
        if not any(c.id == state.current.id for c in self._list(target, self._user(target))):
            return "current credential missing in ZITADEL"
        return None

    def _plan(self, target: Target, state: TargetState) -> RotationResult:
        now = self.clock.now()
        actions: list[str] = []
        if state.pending is not None:
            resumable = state.pending.phase in (Phase.CREATED, Phase.VERIFIED)
            verb = "finish" if resumable else "clean up"
            actions.append(f"{verb} interrupted rotation {state.pending.rotation_id}")
        if state.previous is not None:
            retire = state.previous.retire_at
            when = "now" if now >= retire else retire.isoformat()
            actions.append(f"retire {target.kind.value} {state.previous.id} at {when}")
        if state.stuck:
            actions.append("stuck: waits for `rotator rotate --force`")
        else:
            reason = self._rotation_reason(target, state, force=False)
            if reason is not None:
                expiry = rules.new_expiry(now, target.policy.lifetime)
                actions.append(
                    f"rotate now ({reason}): new {target.kind.value} expiring {expiry.isoformat()}"
                )
            elif state.current is not None:
                due = rules.due_at(state.current.expires_at, target.policy)
                actions.append(f"rotate at {due.isoformat()}")
        return RotationResult(
            target=target.name,
            outcome=Outcome.DRY_RUN,
            credential_id=state.current.id if state.current else None,
            previous_credential_id=state.previous.id if state.previous else None,
            expires_at=state.current.expires_at if state.current else None,
            next_run_at=self._next_run_at(target, state),
            actions=tuple(actions),
        )

    def _next_run_at(self, target: Target, state: TargetState) -> datetime | None:
        """When reconcile has something to do next: a retirement, a retry or a rotation."""
        # retirement happens whatever else is going on, even when stuck
        candidates = [state.previous.retire_at] if state.previous is not None else []
        if state.stuck:
            pass  # nothing else until a person runs `rotate --force`
        elif state.next_attempt_at is not None:
            # backing off: nothing before the retry time, even if due long ago
            candidates.append(state.next_attempt_at)
        elif state.pending is not None or state.current is None:
            candidates.append(self.clock.now())
        else:
            candidates.append(rules.due_at(state.current.expires_at, target.policy))
        return min(candidates, default=None)

    # ------------------------------------------------------- the protocol

    def _rotate(
        self, run: _Run, state: TargetState, version: int, reason: str
    ) -> tuple[TargetState, int]:
        target, user = run.target, run.user
        if state.previous is not None:
            # Still in grace from an earlier rotation, and two generations old
            # once this one is promoted: consumers have had `current` since.
            state, version = self._retire(run, state, version, reason="superseded")
        now = self.clock.now()
        old = state.current
        rotation = uuid.uuid4()
        run.rotation_id = rotation.hex
        # Midnight, plus a few microseconds drawn from the rotation id: ZITADEL
        # stores the instant exactly and lists have no other field we control,
        # so this is how a credential created before a crash is recognised as
        # this rotation's, and nobody else's, on restart.
        expires_at = rules.new_expiry(now, target.policy.lifetime) + timedelta(
            microseconds=1 + rotation.int % 999_999
        )

        # intent: written before any side effect, so a crash is recoverable
        state.pending = Pending(
            rotation_id=run.rotation_id,
            trigger=run.trigger.value,
            phase=Phase.CREATING,
            started_at=now,
            expires_at=expires_at,
        )
        state, version = self._save(target, state, version)
        self._emit(
            run,
            "rotation.started",
            reason=reason,
            old_credential_id=old.id if old else None,
            expired=bool(old and old.expires_at <= now),
            new_expires_at=expires_at.isoformat(),
        )

        # create
        credential, secret = self._create(target, user, expires_at)
        self._emit(run, "credential.created", new_credential_id=credential.id)

        # store: the secret is safe in Vault before anything depends on it
        pending = state.pending
        assert pending is not None
        pending.phase = Phase.CREATED
        pending.credential_id = credential.id
        pending.secret = secret
        try:
            state, version = self._save(target, state, version)
        except VaultError as exc:
            self._remove_quietly(run, target, credential.id)
            self._emit(
                run,
                "rotation.rolled_back",
                new_credential_id=credential.id,
                outcome="failure",
                error=str(exc),
            )
            raise
        self._emit(
            run,
            "credential.stored",
            new_credential_id=credential.id,
            vault_path=self.state_path(target),
            vault_version=version,
        )
        return self._verify_and_promote(run, state, version)

    def _create(
        self, target: Target, user: User, expires_at: datetime
    ) -> tuple[Credential, dict[str, str]]:
        if target.kind is CredentialKind.KEY:
            pair = generate_key_pair()
            credential = self.transport.add_key(user, pair.public_key_pem, expires_at)
            key_file = build_key_file(credential.id, user.id, pair.private_key_pem, expires_at)
            return credential, dict(key_file)
        issued = self.transport.add_pat(user, expires_at)
        payload = {
            "token": issued.token,
            "token_id": issued.credential.id,
            "user_id": user.id,
            "expires_at": expires_at.isoformat(),
        }
        return issued.credential, payload

    def _verify_and_promote(
        self, run: _Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        target = run.target
        pending = state.pending
        assert pending is not None
        assert pending.credential_id is not None
        assert pending.secret is not None
        run.rotation_id = pending.rotation_id

        if pending.phase is Phase.CREATED:
            try:
                self._verify(target, pending.secret)
            except VerificationError as exc:
                self._abandon(run, state, version, error=str(exc))
                raise
            pending.phase = Phase.VERIFIED
            state, version = self._save(target, state, version)
            self._emit(run, "credential.verified", new_credential_id=pending.credential_id)

        # promote
        now = self.clock.now()
        old = state.current
        secret_version = self._promote(target, pending, old)
        self._emit(
            run,
            "credential.promoted",
            old_credential_id=old.id if old else None,
            new_credential_id=pending.credential_id,
            vault_path=target.vault_path,
            vault_version=secret_version,
        )
        if old is not None:
            state.previous = PreviousCredential(
                id=old.id,
                expires_at=old.expires_at,
                retire_at=rules.retire_at(now, old.expires_at, target.policy),
                created_by_rotator=old.created_by_rotator,
            )
        state.current = CredentialRef(
            id=pending.credential_id, expires_at=pending.expires_at, created_at=pending.started_at
        )
        new = state.current
        state.pending = None
        state.failures, state.last_error, state.next_attempt_at = 0, None, None
        state.last_success_at = now
        state, version = self._save(target, state, version)
        run.rotated = True
        self._emit(
            run,
            "rotation.completed",
            outcome="success",
            old_credential_id=old.id if old else None,
            new_credential_id=new.id,
            vault_path=target.vault_path,
            vault_version=secret_version,
            expires_at=new.expires_at.isoformat(),
            retire_at=state.previous.retire_at.isoformat() if state.previous else None,
            duration_ms=round((time.monotonic() - run.started) * 1000),
        )
        # a grace of zero means the old credential goes right away
        return self._retire_if_due(run, state, version)

    def _verify(self, target: Target, secret: Mapping[str, str]) -> None:
        """Retry until the new credential works or ``verify_timeout`` is spent.

        ZITADEL serves a new key from a projection, so the first exchanges
        after creation may fail; only a credential that never works is wrong
        (VerificationError: the caller rolls it back).  When ZITADEL stays
        unreachable the credential is kept pending and the next run resumes.
        """
        deadline = time.monotonic() + target.policy.verify_timeout.total_seconds()
        delay = 0.2
        while True:
            try:
                if target.kind is CredentialKind.KEY:
                    self.verifier.verify_key(secret)
                else:
                    self.verifier.verify_pat(secret["token"], secret.get("user_id"))
                return
            except RotatorError as exc:
                # a refused credential (not propagated yet) and an unreachable
                # ZITADEL are both worth another try within the deadline
                if not exc.retryable or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _promote(self, target: Target, pending: Pending, old: CredentialRef | None) -> int:
        """Write the consumer secret: the new credential, the old one as ``previous``."""
        assert pending.secret is not None
        assert pending.credential_id is not None
        existing = self.store.read(target.vault_path)
        metadata = {
            "managed-by": MANAGED_BY,
            "credential_id": pending.credential_id,
            "kind": target.kind.value,
            "expires_at": pending.expires_at.isoformat(),
            "rotation_id": pending.rotation_id,
            "rotated_at": self.clock.now().isoformat(),
            "previous_credential_id": old.id if old else "",
        }
        if existing is not None and _credential_id(existing) == pending.credential_id:
            # Promoted before a crash.  The data is right; the metadata (a
            # separate write in KV v2) may not have made it, and without
            # `managed-by` a later state loss would look like a foreign secret.
            if existing.custom_metadata.get("rotation_id") == pending.rotation_id:
                return existing.version
            return self.store.write(
                target.vault_path, existing.data, cas=existing.version, custom_metadata=metadata
            )
        data: dict[str, Any] = dict(pending.secret)
        if existing is not None and old is not None and _credential_id(existing) == old.id:
            data["previous"] = {k: v for k, v in existing.data.items() if k != "previous"}
        return self.store.write(
            target.vault_path,
            data,
            cas=existing.version if existing else 0,
            custom_metadata=metadata,
        )

    def _retire_if_due(
        self, run: _Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        previous = state.previous
        if previous is None or self.clock.now() < previous.retire_at:
            return state, version
        return self._retire(run, state, version, reason="grace over")

    def _retire(
        self, run: _Run, state: TargetState, version: int, *, reason: str
    ) -> tuple[TargetState, int]:
        previous = state.previous
        assert previous is not None
        now = self.clock.now()
        target = run.target
        own = self.own_key_id
        if own is not None and target.kind is CredentialKind.KEY and previous.id == own():
            # Self-rotation with the key in a file: the file still holds the old
            # key, and removing it would lock the rotator out for good.
            raise RotatorError(
                f"{target.name}: refusing to remove key {previous.id}, the rotator's own "
                "identity; for self-rotation read it from Vault "
                "(zitadel.credentials.vault_path = this target's vault_path)"
            )
        if previous.created_by_rotator or target.adopt:
            # NotFound: removed before a crash, or by a person; the goal is reached
            with suppress(ZitadelNotFound):
                self._remove(target, run.user, previous.id)
            self._emit(run, "credential.removed", old_credential_id=previous.id)
        self._drop_previous_from_secret(target, previous.id)
        state.previous = None
        state, version = self._save(target, state, version)
        run.retired = True
        self._emit(
            run,
            "credential.retired",
            old_credential_id=previous.id,
            expired=previous.expires_at <= now,
            vault_path=target.vault_path,
            reason=reason,
            outcome="success",
        )
        return state, version

    def _drop_previous_from_secret(self, target: Target, previous_id: str) -> None:
        existing = self.store.read(target.vault_path)
        if existing is None or "previous" not in existing.data:
            return
        data = {k: v for k, v in existing.data.items() if k != "previous"}
        metadata = {**existing.custom_metadata, "previous_credential_id": ""}
        self.store.write(target.vault_path, data, cas=existing.version, custom_metadata=metadata)

    def _abandon(
        self, run: _Run, state: TargetState, version: int, *, error: str
    ) -> tuple[TargetState, int]:
        """Give up a pending credential: claim the decision in Vault, then remove it.

        The claim comes first (CAS): a rotator that lost the race to another
        one, which may already have promoted this credential, must not remove
        it.  The record is dropped only once ZITADEL confirmed the removal; if
        that fails, the next run tries again (phase ABANDONED).
        """
        pending = state.pending
        assert pending is not None
        pending.phase = Phase.ABANDONED
        state, version = self._save(run.target, state, version)
        self._remove_pending(run, pending)
        state.pending = None
        state, version = self._save(run.target, state, version)
        self._emit(
            run,
            "rotation.rolled_back",
            new_credential_id=pending.credential_id,
            outcome="failure",
            error=error,
        )
        return state, version

    def _remove_pending(self, run: _Run, pending: Pending) -> None:
        """Remove what a pending rotation created (NotFound: never created or gone)."""
        if pending.credential_id is not None:
            with suppress(ZitadelNotFound):
                self._remove(run.target, run.user, pending.credential_id)
            return
        # Created before a crash, id never recorded: it is the one that
        # expires at the instant this rotation chose (unique per rotation).
        for credential in self._list(run.target, run.user):
            if credential.expires_at != pending.expires_at:
                continue
            created = credential.created_at
            if created is not None and created < pending.started_at - _ORPHAN_SKEW:
                continue
            with suppress(ZitadelNotFound):
                self._remove(run.target, run.user, credential.id)
            self._emit(run, "orphan.removed", new_credential_id=credential.id)

    # ------------------------------------------------------ crash recovery

    def _resume(self, run: _Run, state: TargetState, version: int) -> tuple[TargetState, int]:
        pending = state.pending
        if pending is None:
            return state, version
        run.rotation_id = pending.rotation_id
        self._emit(run, "rotation.resumed", phase=pending.phase.value)
        if pending.phase in (Phase.CREATING, Phase.ABANDONED):
            return self._abandon(run, state, version, error=f"resumed in phase {pending.phase}")
        return self._verify_and_promote(run, state, version)

    # ------------------------------------------------------------ helpers

    def _user(self, target: Target) -> User:
        key = f"{target.org_id or ''}/{target.user}"
        if key not in self._users:
            self._users[key] = self.transport.resolve_user(target.user, target.org_id)
        return self._users[key]

    def _load(self, target: Target, user: User) -> tuple[TargetState, int]:
        raw = self.store.read(self.state_path(target))
        if raw is not None:
            return TargetState.from_dict(dict(raw.data)), raw.version
        state = TargetState(target=target.name, kind=target.kind.value, user_id=user.id)
        existing = self.store.read(target.vault_path)
        if existing is not None:
            state.current = self._adopt(target, user, existing)
        return state, 0

    def _adopt(self, target: Target, user: User, existing: StoredSecret) -> CredentialRef | None:
        """A secret we have no state for: ours (state lost) or someone else's.

        Returns None when the credential it names no longer exists in ZITADEL:
        the target then rotates at once, and the stale value stays in the
        secret's version history.
        """
        credential_id = _credential_id(existing)
        ours = existing.custom_metadata.get("managed-by") == MANAGED_BY
        if not (ours or target.adopt):
            raise VaultError(
                "holds a credential the rotator did not create; "
                "set `adopt: true` on the target to take it over",
                path=target.vault_path,
            )
        match = next((c for c in self._list(target, user) if c.id == credential_id), None)
        if match is None:
            return None
        return CredentialRef(
            id=match.id,
            expires_at=match.expires_at,
            created_at=match.created_at,
            created_by_rotator=ours,
        )

    def _save(self, target: Target, state: TargetState, version: int) -> tuple[TargetState, int]:
        new_version = self.store.write(self.state_path(target), state.to_dict(), cas=version)
        return state, new_version

    def _list(self, target: Target, user: User) -> list[Credential]:
        if target.kind is CredentialKind.KEY:
            return self.transport.list_keys(user)
        return self.transport.list_pats(user)

    def _remove(self, target: Target, user: User, credential_id: str) -> None:
        if target.kind is CredentialKind.KEY:
            self.transport.remove_key(user, credential_id)
        else:
            self.transport.remove_pat(user, credential_id)

    def _remove_quietly(self, run: _Run, target: Target, credential_id: str) -> None:
        """Best-effort rollback; a failure here leaves an orphan the next run removes."""
        try:
            self._remove(target, run.user, credential_id)
        except ZitadelNotFound:
            pass
        except RotatorError as exc:
            self._emit(run, "rollback.failed", new_credential_id=credential_id, error=str(exc))

    def _record_failure(self, run: _Run, exc: RotatorError) -> RotationResult:
        target = run.target
        if isinstance(exc, CasConflict):
            # Another rotator (a second replica, a person's CLI run) is acting on
            # this target.  Writing our failure count would only make it fail
            # too; it owns the rotation, we look again later.
            self._emit(run, "rotation.yielded", outcome="conflict", error=str(exc))
            return RotationResult(
                target=target.name,
                outcome=Outcome.FAILED,
                rotation_id=run.rotation_id,
                next_run_at=self.clock.now() + self.retry_base,
                error=str(exc),
            )
        try:
            raw = self.store.read(self.state_path(target))
            state = (
                TargetState.from_dict(dict(raw.data))
                if raw
                else TargetState(target=target.name, kind=target.kind.value, user_id=run.user.id)
            )
            version = raw.version if raw else 0
        except RotatorError:
            state, version = None, None

        failures = (state.failures if state else 0) + 1
        stuck = failures >= self.max_attempts
        delay = rules.retry_delay(failures, base=self.retry_base, cap=self.retry_cap)
        next_attempt = None if stuck else self.clock.now() + delay
        self._emit(
            run,
            "rotation.failed",
            outcome="failure",
            error=str(exc),
            error_type=type(exc).__name__,
            attempt=failures,
            next_attempt_at=next_attempt.isoformat() if next_attempt else None,
        )
        if stuck:
            self._emit(run, "target.stuck", outcome="stuck", attempt=failures, error=str(exc))
        if state is not None and version is not None:
            state.failures, state.stuck, state.last_error = failures, stuck, str(exc)
            state.next_attempt_at = next_attempt
            # Vault may be what failed, or another replica moved on: nothing to record then
            with suppress(VaultError):
                self._save(target, state, version)
        return RotationResult(
            target=target.name,
            outcome=Outcome.STUCK if stuck else Outcome.FAILED,
            rotation_id=run.rotation_id,
            credential_id=state.current.id if state and state.current else None,
            # stuck: nothing until a person acts, but a retirement still has its time
            next_run_at=next_attempt
            or (state.previous.retire_at if state and state.previous else None),
            error=str(exc),
        )

    def _result_for_error(self, target: Target, exc: RotatorError) -> RotationResult:
        """A failure before the target's state could be read (Vault down, user
        unknown): nothing to record in Vault, so the backoff is kept here."""
        earlier = self._unrecorded_failures.get(target)
        attempt = earlier[0] + 1 if earlier else 1
        self.audit.emit(
            "rotation.failed",
            target=target.name,
            kind=target.kind.value,
            outcome="failure",
            error=str(exc),
            error_type=type(exc).__name__,
            vault_path=target.vault_path,
            attempt=attempt,
        )
        delay = rules.retry_delay(attempt, base=self.retry_base, cap=self.retry_cap)
        retry = self.clock.now() + delay
        self._unrecorded_failures[target] = (attempt, retry, str(exc))
        return RotationResult(
            target=target.name, outcome=Outcome.FAILED, next_run_at=retry, error=str(exc)
        )

    def _result(
        self, run: _Run, state: TargetState, outcome: Outcome, *, error: str | None = None
    ) -> RotationResult:
        return RotationResult(
            target=run.target.name,
            outcome=outcome,
            rotation_id=run.rotation_id,
            credential_id=state.current.id if state.current else None,
            previous_credential_id=state.previous.id if state.previous else None,
            expires_at=state.current.expires_at if state.current else None,
            next_run_at=self._next_run_at(run.target, state),
            error=error,
        )

    def _emit(self, run: _Run, event: str, **fields: Any) -> None:
        self.audit.emit(
            event,
            target=run.target.name,
            kind=run.target.kind.value,
            user_id=run.user.id,
            org=run.user.org_id,
            rotation_id=run.rotation_id,
            trigger=run.trigger.value,
            **fields,
        )


def _credential_id(secret: StoredSecret) -> str | None:
    """The credential id a consumer secret holds (key file ``keyId`` or PAT ``token_id``)."""
    data = secret.data
    value = data.get("keyId") or data.get("token_id") or secret.custom_metadata.get("credential_id")
    return str(value) if value else None


def _state_label(state: TargetState | None, now: datetime, next_rotation: datetime | None) -> str:
    if state is None:
        return "missing"
    if state.stuck:
        return "stuck"
    if state.failures:
        return "failing"
    if state.pending is not None:
        return "rotating"
    if state.current is None:
        return "missing"
    if state.current.expires_at <= now:
        return "expired"
    if next_rotation is not None and now >= next_rotation:
        return "due"
    if state.previous is not None:
        return "grace"
    return "ready"
