"""The engine: one entry point per target for the daemon and the CLI.

:meth:`Engine.reconcile` loads a target's state, runs the rotation protocol
(:mod:`rotator.rotation`) on it, and turns whatever went wrong into a
recorded failure (:mod:`rotator.failures`) and a :class:`RotationResult`;
:meth:`Engine.status` and :meth:`Engine.plan` report without acting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from rotator import consumer, failures, report
from rotator.audit import AuditLog
from rotator.errors import GraceNotOver, RotatorError, ZitadelNotFound, ZitadelRejected
from rotator.failures import Backoff, FailureBook, FailureClass
from rotator.kinds import ops_for
from rotator.model import Target, Trigger, User
from rotator.ports import Clock, SecretStore, Verifier, ZitadelTransport
from rotator.presence import Presence
from rotator.report import Outcome, RotationResult, TargetStatus
from rotator.rotation import Rotation, Run
from rotator.state import Identity, TargetState
from rotator.status_index import Recorder, RecordingStore, Snapshot, StatusIndex
from rotator.zitadel.orgs import OrgDirectory


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
        backoff: Backoff | None = None,
        identity: str = "rotator",
        intent_timeout: timedelta = timedelta(seconds=30),
        orphan_watch: timedelta = timedelta(minutes=15),
        own_key_id: Callable[[], str | None] | None = None,
        presence_interval: timedelta = timedelta(minutes=5),
        orgs: OrgDirectory | None = None,
    ) -> None:
        self.state_prefix = state_prefix.strip("/")
        #: The status index (rotator/status_index.py): a cache that only status
        #: and plan read.  Every state read or write below goes through the
        #: recorder, which notes the summaries that publish_index files.
        self.index = StatusIndex(store, self.state_prefix, clock)
        self.recorder = Recorder(self.state_prefix, clock)
        store = RecordingStore(store, self.recorder)
        self.transport, self.store, self.clock, self.audit = transport, store, clock, audit
        #: targets[].org names to ids (None: no target names its org)
        self.orgs = orgs
        self.backoff = backoff or Backoff()
        self.failures = FailureBook(store, self.backoff, self.state_path, clock)
        self.rotation = Rotation(
            transport,
            store,
            verifier,
            clock=clock,
            state_path=self.state_path,
            identity=identity,
            intent_timeout=intent_timeout,
            orphan_watch=orphan_watch,
            own_key_id=own_key_id,
            presence=Presence(transport, clock, max_age=presence_interval),
        )
        #: Users resolved once per process: a user's id and org never change.
        self._users: dict[tuple[str | None, str], User] = {}

    def state_path(self, target: Target) -> str:
        return f"{self.state_prefix}/targets/{target.name}"

    def reconcile(
        self,
        target: Target,
        *,
        trigger: Trigger,
        rotate_now: bool = False,
        unstick: bool = False,
        dry_run: bool = False,
        supersede: bool = True,
    ) -> RotationResult:
        """Bring ``target`` to its desired state (see :mod:`rotator.rotation`).

        ``rotate_now`` starts a rotation whether due or not, windows or not;
        ``unstick`` clears ``stuck`` (a person fixed the cause); ``supersede=False``
        refuses (outcome REFUSED) a rotation that would remove a previous
        credential still in grace.  Errors do not
        propagate: they are recorded and returned as ``FAILED`` / ``STUCK``.
        """
        now = self.clock.now()
        waiting = self.failures.waiting(target, now)
        if waiting is not None and not (rotate_now or unstick or dry_run):
            return self._failed(target, waiting)
        try:
            state, version, users, former = self._load(target)
        except RotatorError as exc:
            return self._early_failure(target, exc, record=not dry_run)
        self.failures.forget(target)
        holder = _holder(state, users)
        if dry_run:
            return self._dry_run(
                target, state, holder, rotate_now=rotate_now, supersede=supersede, unstick=unstick
            )

        ops = ops_for(target.kind)
        run = Run(target, trigger, holder, ops, self.audit, started=now, users=users, former=former)
        try:
            state, version, stopped = self.rotation.converge(
                run, state, version, rotate_now=rotate_now, unstick=unstick, supersede=supersede
            )
        except RotatorError as exc:
            return self._fail(run, exc)
        if stopped is not None:
            return self._result(run, state, stopped, error=state.last_error)
        if failures.clear(state) or (state.dirty and state.current is not None):
            state, version = self.rotation.save(target, state, version)
        outcome = Outcome.UP_TO_DATE
        if run.rotated:
            outcome = Outcome.ROTATED
        elif run.retired:
            outcome = Outcome.RETIRED
        return self._result(run, state, outcome)

    def _dry_run(
        self,
        target: Target,
        state: TargetState,
        holder: User,
        *,
        rotate_now: bool = False,
        supersede: bool = True,
        unstick: bool = False,
    ) -> RotationResult:
        reason = self.rotation.rotation_reason(target, state, holder)
        reason = "requested" if rotate_now else reason
        now = self.clock.now()
        return report.plan(target, state, reason, now, supersede=supersede, unstick=unstick)

    def plan(self, target: Target) -> RotationResult:
        return self.reconcile(target, trigger=Trigger.CLI, dry_run=True)

    # ------------------------------------------------------------ status index

    def read_index(self, targets: Sequence[Target]) -> Snapshot:
        """The status index's entries for ``targets`` (rotator/status_index.py)."""
        return self.index.read([t.name for t in targets])

    def plan_from(self, target: Target, state: TargetState) -> RotationResult:
        """``plan`` of ``target`` from its index summary rather than its state.

        Falls back to :meth:`plan` where the summary cannot answer alone: a
        blank state (the plan reads the consumer secret to adopt it) or users
        the summary does not name."""
        if state.is_blank() or state.user_ref != _user_ref(target):
            return self.plan(target)
        failures.forgive_if_changed(state, target)
        _name_the_user_of_legacy_records(state)
        try:
            users = self._resolve_users(target, state)
        except RotatorError as exc:
            return RotationResult(target=target.name, outcome=Outcome.FAILED, error=str(exc))
        return self._dry_run(target, state, _holder(state, users))

    def status_from(self, target: Target, state: TargetState) -> TargetStatus:
        """``status`` of ``target`` from its index summary (no Vault read)."""
        return report.status(target, state, state.consumer_version, self.clock.now())

    def publish_index(
        self, configured: Sequence[Target], touched: Sequence[Target] | None = None
    ) -> int:
        """File what this process saw of the targets' state since the last call
        into the status index: of ``touched`` (``rotate``), or of every target
        (the daemon's pass, which also prunes the shards it saw nothing in).
        Entries of targets not in ``configured`` go.  Never raises; returns the
        number of shards written."""
        names = [t.name for t in configured]
        every_shard = touched is None
        seen = self.recorder.take(None if every_shard else [t.name for t in touched or ()])
        return self.index.publish(seen, names, every_shard=every_shard)

    def status(self, target: Target) -> TargetStatus:
        raw = self.store.read(self.state_path(target))
        state = TargetState.from_dict(dict(raw.data)) if raw else self.failures.remembered(target)
        version = state.consumer_version if state else None
        if version is None:  # written by an older rotator, or never rotated
            secret = self.store.read(target.vault_path)
            version = secret.version if secret else None
        return report.status(target, state, version, self.clock.now())

    # ------------------------------------------------------------ state

    def identity_problems(self, target: Target) -> list[str]:
        """What is wrong with the target's users in ZITADEL (asked afresh): each
        must exist and be a machine user, and two identities two different users."""
        problems: list[str] = []
        found: dict[str, str] = {}
        for name in target.identities:
            try:
                user = self.transport.resolve_user(name, self._org_id(target))
            except (ZitadelNotFound, ZitadelRejected) as exc:
                # not found says whether the user may exist unseen; a human user is refused
                problems.append(f"{target.name}: {exc}")
                continue
            if not user.machine:
                problems.append(f"{target.name}: user {name!r} ({user.id}) is not a machine user")
            if user.id in found:
                problems.append(
                    f"{target.name}: users {found[user.id]!r} and {name!r} are the same user "
                    f"({user.id}); two identities need two machine users"
                )
            found[user.id] = name
        return problems

    def _resolve_users(self, target: Target, state: TargetState | None) -> tuple[User, ...]:
        """The target's users (one, or two identities): from its state while
        the target names the same users, else looked up in ZITADEL once per
        process."""
        ref = _user_ref(target)
        if state is not None and state.user_ref == ref:
            known = state.identities
            if len(known) == len(target.identities) and all(i.id and i.org_id for i in known):
                return tuple(User(id=i.id, org_id=i.org_id, username=i.username) for i in known)
        org_id = self._org_id(target)
        users = []
        for name in target.identities:
            key = (org_id, name)
            if key not in self._users:
                self._users[key] = self.transport.resolve_user(name, org_id)
            users.append(self._users[key])
        if len({u.id for u in users}) != len(users):
            # two names for one user would put the new credential on the one in use
            raise ZitadelRejected(
                f"users {' and '.join(target.identities)} are the same ZITADEL user "
                f"({users[0].id}); two identities need two machine users"
            )
        return tuple(users)

    def _org_id(self, target: Target) -> str | None:
        """``org_id``, or the id of the org ``target.org`` names (asked once)."""
        if target.org is None:
            return target.org_id
        if self.orgs is None:  # a programming error: build() makes one when an org is named
            raise ValueError(f"target {target.name} names org {target.org!r}: no OrgDirectory")
        return self.orgs.org_id(target.org)

    def _load(
        self, target: Target
    ) -> tuple[TargetState, int, tuple[User, ...], tuple[User, ...]]:
        """The state, its version, the target's users, and the users the state
        named that the target no longer lists."""
        raw = self.store.read(self.state_path(target))
        state = TargetState.from_dict(dict(raw.data)) if raw else None
        if state is not None:
            failures.forgive_if_changed(state, target)
            _name_the_user_of_legacy_records(state)
        users = self._resolve_users(target, state)
        former = _former_users(state, users) if state is not None else ()
        if state is None or state.is_blank():
            # first run, lost state, or only failures so far: what does Vault hold?
            state = state or TargetState(target=target.name, kind=target.kind.value, user_id="")
            existing = self.store.read(target.vault_path)
            if existing is not None:
                ops = ops_for(target.kind)
                listed = [c for user in users for c in ops.list(self.transport, user)]
                state.current = consumer.adopt(target, existing, listed, self.clock.now())
                state.consumer_version = existing.version
        known = (state.user_id, state.org_id, state.user_ref, list(state.identities))
        holder = _holder(state, users)
        state.user_id, state.org_id, state.user_ref = holder.id, holder.org_id, _user_ref(target)
        state.identities = [Identity(u.id, u.org_id, u.username) for u in users]
        learned = (state.user_id, state.org_id, state.user_ref, state.identities)
        # what was learned (an adopted credential, the users) is kept for the next run
        state.dirty = raw is None or known != learned
        return state, raw.version if raw else 0, users, former

    # ------------------------------------------------------------ failures

    def _fail(self, run: Run, exc: RotatorError) -> RotationResult:
        if isinstance(exc, GraceNotOver):  # a refusal, not a failure: nothing recorded
            return RotationResult(target=run.target.name, outcome=Outcome.REFUSED, error=str(exc))
        if failures.classify(exc) is FailureClass.CONFLICT:
            # Another rotator acts on this target: it owns the rotation, and
            # writing our failure would only make it fail too.
            run.emit("rotation.yielded", outcome="conflict", error=str(exc))
            return RotationResult(
                target=run.target.name,
                outcome=Outcome.FAILED,
                rotation_id=run.rotation_id,
                error=str(exc),
                next_run_at=self.clock.now() + self.backoff.base,
            )
        state, failure = self.failures.record(run.target, exc)
        self._emit_failure(failure, exc, run.emit)
        outcome = Outcome.STUCK if failure.stuck else Outcome.FAILED
        return self._result(run, state, outcome, error=str(exc))

    def _early_failure(
        self, target: Target, exc: RotatorError, *, record: bool = True
    ) -> RotationResult:
        """Failed before the target's state could be read (user unknown, foreign
        secret, Vault sealed): recorded all the same, unless ``record=False``
        (a dry run is read-only: no failure written, no audit event)."""
        if not record:
            return RotationResult(target=target.name, outcome=Outcome.FAILED, error=str(exc))
        state, failure = self.failures.record(target, exc, early=True)

        def emit(event: str, **fields: Any) -> None:
            self.audit.emit(
                event,
                target=target.name,
                kind=target.kind.value,
                vault_path=target.vault_path,
                **fields,
            )

        self._emit_failure(failure, exc, emit)
        return self._failed(target, state)

    @staticmethod
    def _emit_failure(
        failure: failures.Failure, exc: RotatorError, emit: Callable[..., None]
    ) -> None:
        retry = failure.next_attempt_at
        emit(
            "rotation.failed",
            outcome="failure",
            error=failure.error,
            error_type=type(exc).__name__,
            failure_class=failure.cls.value,
            attempt=failure.attempt,
            next_attempt_at=retry.isoformat() if retry else None,
        )
        if failure.stuck:
            emit(
                "target.stuck",
                outcome="stuck",
                attempt=failure.attempt,
                error=failure.error,
                failure_class=failure.cls.value,
            )

    def _failed(self, target: Target, state: TargetState) -> RotationResult:
        now = self.clock.now()
        return RotationResult(
            target=target.name,
            outcome=Outcome.STUCK if state.stuck else Outcome.FAILED,
            error=state.last_error,
            next_run_at=state.next_attempt_at,
            next_rotation_at=state.next_attempt_at,
            status=report.status(target, state, state.consumer_version, now),
        )

    def _result(
        self, run: Run, state: TargetState, outcome: Outcome, *, error: str | None = None
    ) -> RotationResult:
        return report.result(
            run.target, state, outcome, self.clock.now(), rotation_id=run.rotation_id, error=error
        )

def _user_ref(target: Target) -> str:
    return f"{target.org_id or target.org or ''}/{','.join(target.identities)}"


def _holder(state: TargetState, users: tuple[User, ...]) -> User:
    """The identity in use: the current credential's, else the first."""
    active = state.active_user_id
    return next((u for u in users if u.id == active), users[0])


def _name_the_user_of_legacy_records(state: TargetState) -> None:
    """Records written before two identities name no user: they are all the
    state's only user then (``user_id``), whatever ``users:`` says now."""
    if not state.user_id:
        return
    for record in (state.current, state.previous, state.pending, *state.orphans):
        if record is not None and not record.user_id:
            record.user_id = state.user_id


def _former_users(state: TargetState, users: tuple[User, ...]) -> tuple[User, ...]:
    configured = {u.id for u in users}
    named = [User(id=i.id, org_id=i.org_id, username=i.username) for i in state.identities]
    if not named and state.user_id:  # written before two identities
        named = [User(id=state.user_id, org_id=state.org_id, username="")]
    return tuple(u for u in named if u.id not in configured)
