"""The rotation protocol, top to bottom.

For one target the engine converges, on every call to :meth:`Engine.reconcile`,
towards: exactly one current credential in ZITADEL, stored in Vault at the
target's ``vault_path``, not yet due; at most one previous credential in its
grace period; nothing else the rotator created.  A rotation goes::

    intent    record {rotation id, exact expiry, owner, deadline} in the state
              secret (CAS) before any side effect
    create    a new key (key pair made locally) or PAT in ZITADEL
    store     its secret kept in the state secret (CAS)
    verify    a real jwt-bearer exchange (key) or userinfo call (PAT),
              retried within ``verify_timeout`` for ZITADEL's projection lag
    promote   the consumer secret gets the new credential, the old one under
              ``previous`` (CAS); state: current=new, previous=old
    retire    after ``grace`` (and always before the old expiry) the old
              credential is removed from ZITADEL and dropped from the secret

A rotation that is given up — never verified, found in ``creating`` after a
crash, or its create answered with an error — becomes an *orphan record*
in the same CAS write that ends it: the credential id if known, else the
expiry instant unique to that rotation.  Every reconcile sweeps the orphan
records, and keeps one until ZITADEL confirmed the removal or, for a create
that may yet land (a lost answer, a lagging list), until ``orphan_watch``
has passed.  No credential the rotator created is ever forgotten.

An intent has an owner and a deadline: no other rotator touches it before
the deadline, and after it any rotator may finish or give it up.  Every state
write is check-and-set, so of two rotators acting at once one wins; the other
yields.  Crash recovery is the same code: ``reconcile`` finishes, or gives
up, whatever the state says was under way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rotator import consumer, failures, planner
from rotator import policy as rules
from rotator.audit import AuditLog
from rotator.errors import (
    GraceNotOver,
    RotationInFlight,
    RotatorError,
    VaultError,
    VerificationError,
    ZitadelNotFound,
    ZitadelUnavailable,
)
from rotator.failures import FailureClass
from rotator.kinds import CredentialOps
from rotator.model import CredentialKind, Target, Trigger, User
from rotator.ports import Clock, SecretStore, Verifier, ZitadelTransport
from rotator.presence import Presence
from rotator.report import Outcome
from rotator.state import CredentialRef, Orphan, Pending, Phase, PreviousCredential, TargetState

#: Clock skew tolerated when matching an orphan's creation time to its intent.
_ORPHAN_SKEW = timedelta(minutes=5)


@dataclass
class Run:
    """One reconcile of one target: what it did, and its audit trail."""

    target: Target
    trigger: Trigger
    user: User
    ops: CredentialOps
    audit: AuditLog
    started: datetime
    rotated: bool = False
    retired: bool = False
    rotation_id: str | None = None

    def emit(self, event: str, **fields: Any) -> None:
        self.audit.emit(
            event,
            target=self.target.name,
            kind=self.target.kind.value,
            user_id=self.user.id,
            org=self.user.org_id,
            rotation_id=self.rotation_id,
            trigger=self.trigger.value,
            **fields,
        )


class Rotation:
    """The protocol's steps; :class:`rotator.engine.Engine` calls :meth:`converge`."""

    def __init__(
        self,
        transport: ZitadelTransport,
        store: SecretStore,
        verifier: Verifier,
        *,
        clock: Clock,
        state_path: Callable[[Target], str],
        identity: str,
        intent_timeout: timedelta,
        orphan_watch: timedelta,
        own_key_id: Callable[[], str | None] | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.transport, self.store, self.verifier = transport, store, verifier
        self.presence = presence or Presence(transport, clock)
        self.clock, self.state_path = clock, state_path
        #: Owner of the intents written here (host and pid by default).
        self.identity = identity
        #: How long one ZITADEL or Vault call of a rotation may take, at most.
        self.intent_timeout = intent_timeout
        #: How long a create whose answer was lost may still land.
        self.orphan_watch = orphan_watch
        #: The key the rotator itself signs in with, read afresh each time.
        self.own_key_id = own_key_id

    def converge(
        self,
        run: Run,
        state: TargetState,
        version: int,
        *,
        rotate_now: bool,
        unstick: bool,
        supersede: bool = True,
    ) -> tuple[TargetState, int, Outcome | None]:
        """One pass of the protocol; returns an outcome when it stopped early."""
        # Retiring and sweeping are never held back, not by a stuck target,
        # not by a backoff: both remove credentials before they outlive their use.
        state, version = self.retire_if_due(run, state, version)
        state, version = self.sweep(run, state, version)
        if state.stuck and not unstick:
            return state, version, Outcome.STUCK
        if unstick:
            state.stuck, state.permanent_failures = False, 0
        now = self.clock.now()
        backing_off = state.next_attempt_at is not None and now < state.next_attempt_at
        if backing_off and not (rotate_now or unstick):
            return state, version, Outcome.FAILED
        state, version = self.resume(run, state, version)
        reason = "forced" if rotate_now else self.rotation_reason(run.target, state, run.user)
        if reason is not None:
            state, version = self.rotate(run, state, version, reason, supersede=supersede)
        return state, version, None

    def rotation_reason(self, target: Target, state: TargetState, user: User) -> str | None:
        """Why a rotation should start now; None: it should not."""
        now = self.clock.now()
        if state.current is None:
            return "no current credential"
        if state.current.expires_at <= now:
            return "expired"
        if now >= rules.due_at(state.current.expires_at, target.policy):
            may = planner.rotation_may_start(state, target.policy, target.schedule, now)
            return "due" if may else None
        try:
            present = self.presence.contains(target.kind, user, state.current)
        except ZitadelUnavailable:
            return None  # an idle target accrues nothing from an outage: look again next time
        return None if present else "current credential missing in ZITADEL"

    # ------------------------------------------------------- the protocol

    def rotate(
        self, run: Run, state: TargetState, version: int, reason: str, *, supersede: bool = True
    ) -> tuple[TargetState, int]:
        """``supersede=False``: refuse (GraceNotOver) rather than remove a
        previous credential whose grace has not ended."""
        target = run.target
        previous = state.previous
        if previous is not None and not supersede and self.clock.now() < previous.retire_at:
            raise GraceNotOver(
                f"{target.name}: previous {target.kind.value} {previous.id} is still in grace "
                f"until {previous.retire_at.isoformat()} (consumers may still use it); "
                f"rotating now would remove it at once: `rotator rotate --force {target.name}` "
                "to do it anyway"
            )
        if state.previous is not None:
            # Still in grace from an earlier rotation, and two generations old
            # once this one is promoted: consumers have had `current` since.
            state, version = self.retire(run, state, version, reason="superseded")
        now = self.clock.now()
        old = state.current
        rotation = uuid.uuid4()
        run.rotation_id = rotation.hex
        # Midnight, plus microseconds drawn from the rotation id: ZITADEL stores
        # the instant exactly and lists have no other field we control, so this
        # is how a credential whose create answer was lost is recognised as
        # this rotation's, and nobody else's.
        expires_at = rules.new_expiry(now, target.policy.lifetime) + timedelta(
            microseconds=1 + rotation.int % 999_999
        )
        pending = state.pending = Pending(
            rotation_id=run.rotation_id,
            trigger=run.trigger.value,
            phase=Phase.CREATING,
            started_at=now,
            expires_at=expires_at,
            owner=self.identity,
            deadline=now + 2 * self.intent_timeout + target.policy.verify_timeout,
        )
        state, version = self.save(target, state, version)  # intent
        run.emit(
            "rotation.started",
            reason=reason,
            old_credential_id=old.id if old else None,
            expired=bool(old and old.expires_at <= now),
            new_expires_at=expires_at.isoformat(),
        )
        try:
            credential, secret = run.ops.create(self.transport, run.user, expires_at)
        except RotatorError as exc:
            # A lost answer may still mean a created credential: record it now
            # (orphan by expiry), so the next attempt need not wait for our
            # deadline.  If even that fails, the intent in Vault says the same.
            with suppress(RotatorError):
                self.abandon(run, state, version, error=str(exc))
            raise
        run.emit("credential.created", new_credential_id=credential.id)
        self.presence.forget(target.kind, run.user)

        pending.phase, pending.credential_id, pending.secret = Phase.CREATED, credential.id, secret
        pending.secret_since = version + 1  # check-and-set: this write makes exactly that one
        # A create retried below us (a 429 answered after ZITADEL acted, a
        # transparent transport retry) leaves a twin with this rotation's
        # expiry instant: watch for it like for any orphan.
        state.orphans.append(self._orphan(pending, credential_id=None))
        try:
            state, version = self.save(target, state, version)  # store
        except VaultError as exc:
            # The intent in Vault still names this rotation's expiry instant
            # (or, after a lost CAS, the winner recorded it as an orphan): if
            # this removal fails, a later sweep finds the credential.
            with suppress(RotatorError):
                run.ops.remove(self.transport, run.user, credential.id)
            run.emit(
                "rotation.rolled_back",
                new_credential_id=credential.id,
                outcome="failure",
                error=str(exc),
            )
            raise
        run.emit(
            "credential.stored",
            new_credential_id=credential.id,
            vault_path=self.state_path(target),
            vault_version=version,
        )
        return self.verify_and_promote(run, state, version)

    def verify_and_promote(
        self, run: Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        target, pending = run.target, state.pending
        assert pending is not None
        assert pending.credential_id is not None
        assert pending.secret is not None
        if pending.phase is Phase.CREATED:
            try:
                self.verify(run, pending.secret)
            except VerificationError as exc:
                self.abandon(run, state, version, error=str(exc))
                raise
            # No write of phase VERIFIED: after a crash here the credential is
            # verified once more, which costs less than a Vault write each time.
            pending.phase = Phase.VERIFIED
            run.emit("credential.verified", new_credential_id=pending.credential_id)

        now = self.clock.now()
        old = state.current
        secret_version = consumer.promote(self.store, target, pending, old, now)
        run.emit(
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
        new = state.current = CredentialRef(
            id=pending.credential_id, expires_at=pending.expires_at, created_at=pending.started_at
        )
        state.pending = None
        failures.clear(state)
        state.last_success_at, state.consumer_version = now, secret_version
        state, version = self.save(target, state, version)
        self.forget_secret(target, pending, version)
        run.rotated = True
        run.emit(
            "rotation.completed",
            outcome="success",
            old_credential_id=old.id if old else None,
            new_credential_id=new.id,
            vault_path=target.vault_path,
            vault_version=secret_version,
            expires_at=new.expires_at.isoformat(),
            retire_at=state.previous.retire_at.isoformat() if state.previous else None,
            duration_ms=round((self.clock.now() - run.started).total_seconds() * 1000),
        )
        return self.retire_if_due(run, state, version)  # a grace of zero: at once

    def verify(self, run: Run, secret: dict[str, str]) -> None:
        """Retry until the new credential works or ``verify_timeout`` is spent.

        ZITADEL serves a new key from a projection, so the first exchanges
        after creation may fail; only a credential that never works is wrong
        (VerificationError: it is given up).  An unreachable ZITADEL leaves it
        pending; the next run resumes.
        """
        deadline = self.clock.now() + run.target.policy.verify_timeout
        delay = 0.2
        while True:
            try:
                run.ops.verify(self.verifier, secret)
                return
            except RotatorError as exc:
                if not exc.retryable or self.clock.now() + timedelta(seconds=delay) > deadline:
                    raise
            self.clock.sleep(delay)
            delay = min(delay * 2, 5.0)

    def retire_if_due(self, run: Run, state: TargetState, version: int) -> tuple[TargetState, int]:
        if state.previous is None or self.clock.now() < state.previous.retire_at:
            return state, version
        return self.retire(run, state, version, reason="grace over")

    def retire(
        self, run: Run, state: TargetState, version: int, *, reason: str
    ) -> tuple[TargetState, int]:
        previous, target = state.previous, run.target
        assert previous is not None
        own = self.own_key_id() if self.own_key_id and target.kind is CredentialKind.KEY else None
        if previous.id == own:
            # Self-rotation with the key in a file: the file still holds the
            # old key, and removing it would lock the rotator out for good.
            raise RotatorError(
                f"{target.name}: refusing to remove key {previous.id}, the rotator's own "
                "identity; for self-rotation read it from Vault "
                "(zitadel.credentials.vault_path = this target's vault_path)"
            )
        if previous.created_by_rotator or target.adopt:
            # NotFound: removed before a crash, or by a person; the goal is reached
            with suppress(ZitadelNotFound):
                run.ops.remove(self.transport, run.user, previous.id)
            run.emit("credential.removed", old_credential_id=previous.id)
        state.consumer_version = consumer.drop_previous(self.store, target)
        state.previous = None
        state, version = self.save(target, state, version)
        run.retired = True
        run.emit(
            "credential.retired",
            old_credential_id=previous.id,
            expired=previous.expires_at <= self.clock.now(),
            vault_path=target.vault_path,
            reason=reason,
            outcome="success",
        )
        return state, version

    def abandon(
        self, run: Run, state: TargetState, version: int, *, error: str
    ) -> tuple[TargetState, int]:
        """Give up the pending rotation: turn it into an orphan record (one CAS
        write, so a rotator that lost the race cannot also promote it), then sweep."""
        pending = state.pending
        assert pending is not None
        self.clock.now()
        state.pending = None
        state.orphans.append(self._orphan(pending, credential_id=pending.credential_id))
        state, version = self.save(run.target, state, version)
        self.forget_secret(run.target, pending, version)
        run.emit(
            "rotation.rolled_back",
            new_credential_id=pending.credential_id,
            outcome="failure",
            error=error,
        )
        return self.sweep(run, state, version)

    def sweep(self, run: Run, state: TargetState, version: int) -> tuple[TargetState, int]:
        """Remove what given-up rotations created; keep each record until that is sure."""
        if not state.orphans:
            return state, version
        now = self.clock.now()
        live = {c.id for c in (state.current, state.previous) if c is not None}
        if state.pending is not None and state.pending.credential_id:
            live.add(state.pending.credential_id)
        try:
            listed = [c for c in run.ops.list(self.transport, run.user) if c.id not in live]
            kept: list[Orphan] = []
            for orphan in state.orphans:
                by_id = orphan.credential_id is not None
                found = (
                    [orphan.credential_id]
                    if by_id
                    else [
                        c.id
                        for c in listed
                        if c.expires_at == orphan.expires_at
                        and (c.created_at is None or c.created_at >= orphan.created_after)
                    ]
                )
                for credential_id in found:
                    assert credential_id is not None
                    with suppress(ZitadelNotFound):
                        run.ops.remove(self.transport, run.user, credential_id)
                        run.emit(
                            "orphan.removed",
                            credential_id=credential_id,
                            orphan_rotation_id=orphan.rotation_id,
                            found_by="id" if by_id else "expiry_instant",
                        )
                if not found and now < orphan.watch_until:
                    kept.append(orphan)  # its create may yet land, or the list lag
        except RotatorError as exc:
            if failures.classify(exc) is not FailureClass.TRANSIENT:
                raise
            return state, version  # records kept: the next reconcile tries again
        if kept == state.orphans:
            return state, version
        state.orphans = kept
        return self.save(run.target, state, version)

    def resume(self, run: Run, state: TargetState, version: int) -> tuple[TargetState, int]:
        pending = state.pending
        if pending is None:
            return state, version
        now = self.clock.now()
        theirs = pending.owner and pending.owner != self.identity
        if theirs and pending.deadline is not None and now < pending.deadline:
            raise RotationInFlight(
                f"rotation {pending.rotation_id} is run by {pending.owner} until "
                f"{pending.deadline.isoformat()}",
                path=self.state_path(run.target),
            )
        run.rotation_id = pending.rotation_id
        run.emit("rotation.resumed", phase=pending.phase.value)
        if pending.phase in (Phase.CREATING, Phase.ABANDONED):
            return self.abandon(run, state, version, error=f"resumed in phase {pending.phase}")
        return self.verify_and_promote(run, state, version)

    # ------------------------------------------------------------ state

    def _orphan(self, pending: Pending, *, credential_id: str | None) -> Orphan:
        return Orphan(
            rotation_id=pending.rotation_id,
            expires_at=pending.expires_at,
            created_after=pending.started_at - _ORPHAN_SKEW,
            watch_until=self.clock.now() + self.orphan_watch,
            credential_id=credential_id,
        )

    def forget_secret(self, target: Target, pending: Pending, version: int) -> None:
        """Destroy the state versions that held the pending secret (they are
        history now: KV v2 keeps old versions readable)."""
        if pending.secret_since is not None:
            with suppress(VaultError):  # best effort: the credential is retired in time anyway
                self.store.destroy_versions(
                    self.state_path(target), range(pending.secret_since, version)
                )

    def save(self, target: Target, state: TargetState, version: int) -> tuple[TargetState, int]:
        version = self.store.write(self.state_path(target), state.to_dict(), cas=version)
        state.dirty = False
        return state, version

    # ------------------------------------------------------------ failures
