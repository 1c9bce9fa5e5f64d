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

**Two identities** (``users: [a, b]``): the new credential is created on the
identity *not* in use (``TargetState.next_user_id``), so the one consumers
hold is never touched before the new one is promoted; the retired credential
is the other identity's.  The steps are the same.

**Client secrets** (``kind: secret``) are replaced in place: a user has one
secret and regenerating it (the *create* step) kills the old one at once.
So a secret rotation is never given up: nothing is left to roll back to.
Found in ``creating`` after a crash (the new secret may exist, unstored, and
the old one is dead), it regenerates at once and completes
(``secret.regenerated_after_loss``); a secret that does not verify keeps its
pending record and is retried with backoff, as a failure that alerts but
never makes the target stuck.  With one identity there is no previous secret
and no grace, and *promote* comes before *verify*: the old secret is dead
already, so consumers get the new one at once rather than a dead one for as
long as verification fails.  With two identities the other identity's secret
still works: verify comes first, and it is removed after grace.  A pending
secret refused for a whole verify window is dead, not lagging (a regeneration
sent late replaced it): it is regenerated, once per run; otherwise only a
person's ``rotate --force`` regenerates a pending secret again.  No
regeneration leaves once the claim on the rotation may have lapsed
(:mod:`rotator.fence`): it could land after another rotator's and replace the
secret that one stores.

A credential that consumers hold already was promoted only once verified:
resumed after a crash, it is not verified (nor given up) again.

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
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rotator import consumer, failures, fence, planner
from rotator import policy as rules
from rotator.audit import AuditLog
from rotator.errors import (
    ClaimLapsed,
    GraceNotOver,
    RotationInFlight,
    RotatorError,
    SecretNotVerified,
    VaultError,
    VerificationError,
    VerificationReason,
    ZitadelNotFound,
    ZitadelUnavailable,
)
from rotator.failures import FailureClass
from rotator.kinds import CredentialOps
from rotator.model import Credential, CredentialKind, Target, Trigger, User
from rotator.ports import Clock, SecretStore, Verifier, ZitadelTransport
from rotator.presence import Presence
from rotator.report import Outcome
from rotator.state import (
    CredentialRef,
    Orphan,
    Pending,
    Phase,
    PreviousCredential,
    Removal,
    TargetState,
)

#: Clock skew tolerated when matching an orphan's creation time to its intent.
_ORPHAN_SKEW = timedelta(minutes=5)


@dataclass
class Run:
    """One reconcile of one target: what it did, and its audit trail."""

    target: Target
    trigger: Trigger
    #: The identity consumers use now (the current credential's), or the only one.
    user: User
    ops: CredentialOps
    audit: AuditLog
    started: datetime
    rotated: bool = False
    retired: bool = False
    #: A refused pending secret was regenerated in this run (at most once per run).
    regenerated: bool = False
    rotation_id: str | None = None
    #: Every identity of the target, in configured order (empty: just ``user``).
    users: tuple[User, ...] = ()
    #: Users the state named that the target no longer lists: a credential
    #: may still be in grace (or an orphan) there.
    former: tuple[User, ...] = ()

    def identity(self, user_id: str | None) -> User:
        """The user a credential record names ("": the target's only user).  One
        no longer configured is still that user: a credential is removed only
        by its own user id."""
        if not user_id:
            return self.user
        known = next((u for u in (*self.users, *self.former) if u.id == user_id), None)
        return known or User(id=user_id, org_id=self.user.org_id, username="")

    @property
    def alone(self) -> bool:
        """One identity: while its credential is replaced, no other one works."""
        return len(self.users) < 2

    def spare(self, state: TargetState) -> User:
        """Where the next credential goes: the identity not in use."""
        return self.identity(state.next_user_id) if self.users else self.user

    def emit(self, event: str, *, user: User | None = None, **fields: Any) -> None:
        """``user``: the identity the event is about (default: the one in use)."""
        who = user or self.user
        self.audit.emit(
            event,
            target=self.target.name,
            kind=self.target.kind.value,
            user_id=who.id,
            org=who.org_id,
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
        state, version = self.finish_removal(run, state, version)
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
        # Only a person's --force (unstick) regenerates a pending secret; a plain
        # `rotate` finishes what is under way (consumers may hold it already).
        state, version = self.resume(run, state, version, forced=unstick)
        if run.rotated:
            # The rotation under way is finished: it is the one asked for, and a
            # second would regenerate a secret again or refuse for its grace.
            return state, version, None
        holder = run.identity(state.current.user_id) if state.current else run.user
        reason = "forced" if rotate_now else self.rotation_reason(run.target, state, holder)
        if reason is not None:
            state, version = self.rotate(run, state, version, reason, supersede=supersede)
        return state, version, None

    def rotation_reason(self, target: Target, state: TargetState, user: User) -> str | None:
        """Why a rotation should start now; None: it should not.  ``user`` holds
        the current credential."""
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
        user = run.spare(state)
        if state.removing is not None and state.removing.user_id == user.id:
            # (finish_removal took ours and stale ones): another rotator is removing
            # this user's old secret, and would take a new one with it
            raise RotationInFlight(
                f"the old client secret of user {user.id} is being removed by "
                f"{state.removing.owner} until {state.removing.deadline.isoformat()}",
                path=self.state_path(target),
            )
        rotation = uuid.uuid4()
        run.rotation_id = rotation.hex
        # Midnight, plus microseconds drawn from the rotation id: ZITADEL stores
        # the instant exactly and lists have no other field we control, so this
        # is how a credential whose create answer was lost is recognised as
        # this rotation's, and nobody else's.
        expires_at = rules.new_expiry(now, target.policy.lifetime) + timedelta(
            microseconds=1 + rotation.int % 999_999
        )
        state.pending = Pending(
            rotation_id=run.rotation_id,
            trigger=run.trigger.value,
            phase=Phase.CREATING,
            started_at=now,
            expires_at=expires_at,
            owner=self.identity,
            deadline=self._intent_deadline(now, target),
            user_id=user.id,
        )
        state, version = self.save(target, state, version)  # intent
        run.emit(
            "rotation.started",
            reason=reason,
            old_credential_id=old.id if old else None,
            expired=bool(old and old.expires_at <= now),
            new_expires_at=expires_at.isoformat(),
        )
        state, version = self.create_and_store(run, state, version)
        return self.verify_and_promote(run, state, version)

    def create_and_store(
        self, run: Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        """Create the credential the intent in ``state.pending`` announced, and keep
        its secret in the state (phase CREATED)."""
        target, pending = run.target, state.pending
        assert pending is not None
        user = run.identity(pending.user_id)
        in_place = run.ops.replaces_in_place
        # A regeneration that lands after another rotator took the rotation over
        # would replace the secret that one stores (ZITADEL takes no precondition):
        # it is sent only while our claim holds for one more call's time.
        guard = (
            fence.guard(
                self._fence_limit(pending.deadline),
                self.clock.now,
                f"{target.name}: regenerating the client secret of user {user.id}",
            )
            if in_place and pending.deadline is not None
            else nullcontext()
        )
        try:
            with guard:
                fence.check()  # here, and again below us after any wait (throttle, token)
                credential, secret = run.ops.create(self.transport, user, pending.expires_at)
        except ClaimLapsed:
            if not run.regenerated:
                # Nothing was sent, so the old secret still works: give the intent up
                # (unless another rotator took it over) rather than leave it
                # `creating`, which the next run would take for a lost regeneration.
                state.pending = None
                with suppress(RotatorError):
                    self.save(target, state, version)
            # A regeneration redone (lost, refused, --force): the old secret died with
            # the first one.  The intent stays `creating`: the next run regenerates.
            raise
        except RotatorError as exc:
            if in_place:
                # A lost answer may have regenerated the secret: the intent in
                # Vault stays in `creating`, and the next run regenerates again.
                raise
            # A lost answer may still mean a created credential: record it now
            # (orphan by expiry), so the next attempt need not wait for our
            # deadline.  If even that fails, the intent in Vault says the same.
            with suppress(RotatorError):
                self.abandon(run, state, version, error=str(exc))
            raise
        run.emit("credential.created", user=user, new_credential_id=credential.id)
        self.presence.forget(target.kind, user)

        pending.phase, pending.credential_id, pending.secret = Phase.CREATED, credential.id, secret
        if pending.secret_since is None:  # (a secret regenerated again keeps the first)
            pending.secret_since = version + 1  # check-and-set: this write makes exactly that one
        if not in_place:
            # A create retried below us (a 429 answered after ZITADEL acted, a
            # transparent transport retry) leaves a twin with this rotation's
            # expiry instant: watch for it like for any orphan.
            state.orphans.append(self._orphan(pending, credential_id=None))
        try:
            state, version = self.save(target, state, version)  # store
        except VaultError as exc:
            if in_place:
                # Nothing to remove (the secret replaced the old one): the intent
                # in Vault is still `creating`, so the next run regenerates.
                raise
            # The intent in Vault still names this rotation's expiry instant
            # (or, after a lost CAS, the winner recorded it as an orphan): if
            # this removal fails, a later sweep finds the credential.
            with suppress(RotatorError):
                run.ops.remove(self.transport, user, credential.id)
            run.emit(
                "rotation.rolled_back",
                user=user,
                new_credential_id=credential.id,
                outcome="failure",
                error=str(exc),
            )
            raise
        run.emit(
            "credential.stored",
            user=user,
            new_credential_id=credential.id,
            vault_path=self.state_path(target),
            vault_version=version,
        )
        return state, version

    def verify_and_promote(
        self, run: Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        target, pending = run.target, state.pending
        assert pending is not None
        assert pending.credential_id is not None
        assert pending.secret is not None
        user = run.identity(pending.user_id)
        # One identity's secret, replaced in place: the old one died with the
        # regeneration, so consumers get the new one now instead of a dead one
        # for as long as verification fails (it goes on, alerting, until it works).
        early = pending.phase is Phase.CREATED and run.ops.replaces_in_place and run.alone
        if early and not consumer.holds(self.store, target, pending.secret):
            state, version = self.hold_claim(run, state, version)
            self.promote(run, state, user, before_verification=True)
        if pending.phase is Phase.CREATED:
            try:
                self.verify(run, pending.secret)
            except VerificationError as exc:
                if (
                    run.ops.replaces_in_place
                    and exc.reason is VerificationReason.TOKEN_REFUSED
                    and not run.regenerated
                ):
                    # Refused for the whole verify window: not ZITADEL's projection
                    # lag but a dead secret (a late regeneration replaced it). Once
                    # per run, so a secret refused for another reason cannot churn.
                    return self.regenerate(run, state, version, cause="refused")
                if run.ops.replaces_in_place:
                    # Nothing to roll back to: keep the secret, keep trying.
                    where = "already in Vault (the old one is dead), " if early else ""
                    raise SecretNotVerified(
                        f"the new client secret of user {user.id} does not work yet ({exc}); "
                        f"it is {where}kept pending and verified again at the next attempt"
                    ) from exc
                self.abandon(run, state, version, error=str(exc))
                raise
            # No write of phase VERIFIED: after a crash here the credential is
            # verified once more, which costs less than a Vault write each time.
            pending.phase = Phase.VERIFIED
            run.emit("credential.verified", user=user, new_credential_id=pending.credential_id)

        # the consumer secret is written outside the state: only under a live claim
        state, version = self.hold_claim(run, state, version)
        now = self.clock.now()
        old = state.current
        if early:  # promoted above: only the version is read back
            secret_version = consumer.promote(self.store, target, pending, old, now)
        else:
            secret_version = self.promote(run, state, user)
        # A credential replaced in place (one identity's client secret) is
        # dead already: there is no previous one to keep in grace.
        if old is not None and old.id != pending.credential_id:
            state.previous = PreviousCredential(
                id=old.id,
                expires_at=old.expires_at,
                retire_at=rules.retire_at(now, old.expires_at, target.policy),
                created_by_rotator=old.created_by_rotator,
                user_id=old.user_id,
            )
        new = state.current = CredentialRef(
            id=pending.credential_id,
            expires_at=pending.expires_at,
            created_at=pending.started_at,
            user_id=pending.user_id,
        )
        state.pending = None
        run.user = user  # the identity in use from now on
        state.user_id, state.org_id = user.id, user.org_id
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

    def promote(
        self, run: Run, state: TargetState, user: User, *, before_verification: bool = False
    ) -> int:
        """Write the pending credential as the consumer secret; its version."""
        pending, old = state.pending, state.current
        assert pending is not None
        version = consumer.promote(self.store, run.target, pending, old, self.clock.now())
        why = {
            "before_verification": True,
            "reason": "one identity: the old client secret died with the regeneration",
        }
        run.emit(
            "credential.promoted",
            user=user,
            old_credential_id=old.id if old else None,
            new_credential_id=pending.credential_id,
            vault_path=run.target.vault_path,
            vault_version=version,
            **(why if before_verification else {}),
        )
        return version

    def verify(self, run: Run, secret: dict[str, str]) -> None:
        """Retry until the new credential works or ``verify_timeout`` is spent.

        ZITADEL serves a new key (and a regenerated secret) from a projection,
        so the first exchanges after creation may fail; only a credential that
        never works is wrong (VerificationError: it is given up, or, for a
        secret, retried later).  An unreachable ZITADEL leaves it pending; the
        next run resumes.
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
        user = run.identity(previous.user_id)
        own = self.own_key_id() if self.own_key_id and target.kind is CredentialKind.KEY else None
        if previous.id == own:
            # Self-rotation with the key in a file: the file still holds the
            # old key, and removing it would lock the rotator out for good.
            raise RotatorError(
                f"{target.name}: refusing to remove key {previous.id}, the rotator's own "
                "identity; for self-rotation read it from Vault "
                "(zitadel.credentials.vault_path = this target's vault_path)"
            )
        if (previous.created_by_rotator or target.adopt) and run.ops.replaces_in_place:
            # Removal names only the user: claim it in the state first, so that no
            # rotator regenerates this user's secret (which it would take) meanwhile.
            state.previous = None
            state.removing = self._removal_claim(user.id, self.clock.now())
            state, version = self.save(target, state, version)
            state, version = self.finish_removal(run, state, version)
        elif previous.created_by_rotator or target.adopt:
            # NotFound: removed before a crash, or by a person; the goal is reached
            with suppress(ZitadelNotFound):
                run.ops.remove(self.transport, user, previous.id)
            self.presence.forget(target.kind, user)
            run.emit("credential.removed", user=user, old_credential_id=previous.id)
        state.consumer_version = consumer.drop_previous(self.store, target)
        state.previous = None
        state, version = self.save(target, state, version)
        run.retired = True
        run.emit(
            "credential.retired",
            user=user,
            old_credential_id=previous.id,
            expired=previous.expires_at <= self.clock.now(),
            vault_path=target.vault_path,
            reason=reason,
            outcome="success",
        )
        return state, version

    def finish_removal(
        self, run: Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        """Remove the client secret ``state.removing`` claims: ours, or one whose
        claimant died (its deadline passed); another's live claim is left alone.

        The removal names only the user, and the state read may be stale (the
        claimant may have finished, and another rotator regenerated that user's
        secret since): a claim not ours, or ours about to lapse, is taken over
        with a check-and-set write *before* anything is removed, and the removal
        is sent only while the claim holds (:mod:`rotator.fence`)."""
        claim = state.removing
        if claim is None:
            return state, version
        now = self.clock.now()
        if claim.owner != self.identity and now < claim.deadline:
            return state, version
        if claim.owner != self.identity or now >= self._fence_limit(claim.deadline):
            state.removing = claim = self._removal_claim(claim.user_id, now)
            state, version = self.save(run.target, state, version)
        user = run.identity(claim.user_id)
        with (
            fence.guard(
                self._fence_limit(claim.deadline),
                self.clock.now,
                f"{run.target.name}: removing the client secret of user {user.id}",
            ),
            suppress(ZitadelNotFound),
        ):
            fence.check()
            run.ops.remove(self.transport, user, claim.user_id)  # gone already: False
        self.presence.forget(run.target.kind, user)
        run.emit("credential.removed", user=user, old_credential_id=claim.user_id)
        state.removing = None
        return self.save(run.target, state, version)

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
            user=run.identity(pending.user_id),
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
        # A secret is named by its user and each regeneration overwrites the last:
        # an orphaned one on a user now holding (or about to hold) the current,
        # previous or pending secret no longer exists, and "removing" it would
        # remove the one in use.
        in_use = (
            {c.user_id or state.user_id for c in (state.current, state.previous) if c is not None}
            | ({state.pending.user_id or state.user_id} if state.pending is not None else set())
            if run.ops.replaces_in_place
            else set()
        )
        listings: dict[str, list[Credential]] = {}

        def listed(user: User) -> list[Credential]:
            if user.id not in listings:
                everything = run.ops.list(self.transport, user)
                listings[user.id] = [c for c in everything if c.id not in live]
            return listings[user.id]

        try:
            kept: list[Orphan] = []
            for orphan in state.orphans:
                if (orphan.user_id or state.user_id) in in_use or orphan.credential_id in live:
                    continue  # overwritten by (or it is) a credential in use: forget it
                user = run.identity(orphan.user_id)
                by_id = orphan.credential_id is not None
                found = (
                    [orphan.credential_id]
                    if by_id
                    else [
                        c.id
                        for c in listed(user)
                        if c.expires_at == orphan.expires_at
                        and (c.created_at is None or c.created_at >= orphan.created_after)
                    ]
                )
                for credential_id in found:
                    assert credential_id is not None
                    try:
                        run.ops.remove(self.transport, user, credential_id)
                        gone = False
                    except ZitadelNotFound:
                        # Removed already: by an earlier removal whose answer was
                        # lost (a retry below us then meets NotFound), or by a
                        # person.  Audited all the same, or it would be in no event.
                        gone = True
                    run.emit(
                        "orphan.removed",
                        user=user,
                        credential_id=credential_id,
                        orphan_rotation_id=orphan.rotation_id,
                        found_by="id" if by_id else "expiry_instant",
                        already_gone=gone,
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

    def resume(
        self, run: Run, state: TargetState, version: int, *, forced: bool = False
    ) -> tuple[TargetState, int]:
        """``forced`` (a person's ``rotate --force``): a secret kept pending because it
        does not verify is regenerated instead of verified once more -- unless
        consumers read it already while another identity still works: with two
        identities a secret is promoted only once verified (a crash came after)."""
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
        resumed_in = pending.phase
        lost = resumed_in is Phase.CREATING
        # --force regenerates a secret that does not verify, but with two identities
        # never one consumers read already (verified before its promotion, then a crash)
        redo = run.ops.replaces_in_place and forced and resumed_in is Phase.CREATED
        if redo and not run.alone and pending.secret:
            redo = not consumer.holds(self.store, run.target, pending.secret)
        # Lost: the regeneration may have happened and its secret was never stored;
        # the old one is dead then too.  Regenerate at once.
        regenerating = run.ops.replaces_in_place and (lost or redo)
        # The state read may be stale (its claimant finished, and a newer rotation
        # completed since): take the rotation over with check-and-set before any
        # side effect; a stale read loses here and yields.
        state, version = self.claim(
            run, state, version, phase=Phase.CREATING if regenerating else None
        )
        pending = state.pending
        assert pending is not None
        run.emit("rotation.resumed", phase=resumed_in.value)
        if regenerating:
            return self.regenerate(
                run, state, version, cause="lost" if lost else None, claimed=True
            )
        if pending.phase in (Phase.CREATING, Phase.ABANDONED):
            return self.abandon(run, state, version, error=f"resumed in phase {pending.phase}")
        if (
            pending.phase is Phase.CREATED
            and pending.secret
            and not _may_have_been_promoted_early(run, state)
            and consumer.holds(self.store, run.target, pending.secret)
        ):
            # Consumers read it already, and it was promoted only once verified
            # (a crash or a lapsed claim came after): verifying it again could
            # give it up, and removing it would break them.
            pending.phase = Phase.VERIFIED
        return self.verify_and_promote(run, state, version)

    def hold_claim(
        self, run: Run, state: TargetState, version: int
    ) -> tuple[TargetState, int]:
        """Renew the claim (check-and-set) when it may lapse before the next write
        lands: a rotator whose claim lapsed while it verified must not write the
        consumer secret after another one took the rotation over."""
        pending = state.pending
        assert pending is not None
        if pending.deadline is None or self.clock.now() >= self._fence_limit(pending.deadline):
            return self.claim(run, state, version)
        return state, version

    def claim(
        self, run: Run, state: TargetState, version: int, *, phase: Phase | None = None
    ) -> tuple[TargetState, int]:
        """Make the pending rotation ours until a new deadline (check-and-set),
        moving it to ``phase`` in the same write when given."""
        pending = state.pending
        assert pending is not None
        if phase is not None:
            pending.phase = phase
        pending.owner = self.identity
        pending.deadline = self._intent_deadline(self.clock.now(), run.target)
        return self.save(run.target, state, version)

    def regenerate(
        self, run: Run, state: TargetState, version: int, *, cause: str | None,
        claimed: bool = False,
    ) -> tuple[TargetState, int]:
        """Regenerate the pending client secret and complete: its secret was lost
        (``cause="lost"``: found in ``creating``), refused for a whole verify
        window (``"refused"``: replaced by a late regeneration), or a person's
        ``--force`` (None).  ``claimed``: the caller made the intent ours, in
        phase ``creating``, already."""
        pending = state.pending
        assert pending is not None
        user = run.identity(pending.user_id)
        if cause is not None:
            run.emit(
                "secret.regenerated_after_loss", user=user, phase=pending.phase.value, cause=cause
            )
        run.regenerated = True
        if not claimed:
            state, version = self.claim(run, state, version, phase=Phase.CREATING)
        state, version = self.create_and_store(run, state, version)
        return self.verify_and_promote(run, state, version)

    # ------------------------------------------------------------ claims

    def _intent_deadline(self, now: datetime, target: Target) -> datetime:
        """Until when an intent taken ``now`` is its owner's alone: creation and
        storage (an intent timeout each) and verification."""
        return now + 2 * self.intent_timeout + target.policy.verify_timeout

    def _removal_claim(self, user_id: str, now: datetime) -> Removal:
        """Our claim, from ``now``, on removing ``user_id``'s old client secret."""
        return Removal(user_id=user_id, owner=self.identity, deadline=now + 2 * self.intent_timeout)

    def _fence_limit(self, deadline: datetime) -> datetime:
        """The last moment a call may be sent under a claim ending at ``deadline``:
        one intent timeout (a call's time) before it."""
        return deadline - self.intent_timeout

    # ------------------------------------------------------------ state

    def _orphan(self, pending: Pending, *, credential_id: str | None) -> Orphan:
        return Orphan(
            rotation_id=pending.rotation_id,
            expires_at=pending.expires_at,
            created_after=pending.started_at - _ORPHAN_SKEW,
            watch_until=self.clock.now() + self.orphan_watch,
            credential_id=credential_id,
            user_id=pending.user_id,
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


def _may_have_been_promoted_early(run: Run, state: TargetState) -> bool:
    """A client secret regenerated on the identity consumers use (or with no
    credential yet): with one identity it is promoted *before* verification, so
    "consumers hold it" proves nothing -- also once a second identity was
    configured since."""
    pending, current = state.pending, state.current
    assert pending is not None
    if not run.ops.replaces_in_place:
        return False
    in_use = (current.user_id or state.user_id) if current else ""
    return not in_use or (pending.user_id or state.user_id) == in_use
