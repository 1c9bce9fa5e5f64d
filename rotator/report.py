"""What the engine reports: results of a reconcile, a target's status, the
dry-run plan.  Pure functions over the state; the CLI, the daemon, metrics
and notifications import these types from here, not from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from rotator import policy as rules
from rotator.model import Policy, Target
from rotator.planner import NextRun, next_run
from rotator.state import Phase, TargetState


class Outcome(StrEnum):
    ROTATED = "rotated"
    RETIRED = "retired"
    UP_TO_DATE = "up_to_date"
    DRY_RUN = "dry_run"
    FAILED = "failed"
    STUCK = "stuck"
    #: Not done, on purpose: it needs ``--force`` (nothing recorded as a failure).
    REFUSED = "refused"


class StatusLabel(StrEnum):
    #: No state: nothing was ever rotated (or the state was lost).
    MISSING = "missing"
    STUCK = "stuck"
    FAILING = "failing"
    #: A rotation is under way in a live process (its intent's deadline has not passed).
    ROTATING = "rotating"
    #: A rotation was under way when its process stopped; the next run finishes it.
    INTERRUPTED = "interrupted"
    EXPIRED = "expired"
    DUE = "due"
    #: Rotated; the previous credential is still valid for consumers that lag.
    GRACE = "grace"
    READY = "ready"


@dataclass(frozen=True)
class RotationResult:
    target: str
    outcome: Outcome
    rotation_id: str | None = None
    credential_id: str | None = None
    previous_credential_id: str | None = None
    expires_at: datetime | None = None
    #: When reconcile has something to do next (retirement, retry or rotation).
    next_run_at: datetime | None = None
    #: When the next rotation starts, windows applied; None when stuck.
    next_rotation_at: datetime | None = None
    error: str | None = None
    actions: tuple[str, ...] = ()
    #: The target's status after this run (no extra read needed).
    status: TargetStatus | None = None


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
    state: StatusLabel
    failures: int
    last_error: str | None
    last_success_at: datetime | None
    #: When reconcile acts next, and what it does then (retire, resume, retry,
    #: rotate; None when only a person can act).
    next_run_at: datetime | None = None
    next_action: str | None = None
    #: The owner of a rotation under way, and when its intent lapses.
    rotating_owner: str | None = None
    rotating_until: datetime | None = None
    #: The identity consumers use now, and the one the next rotation creates
    #: its credential on (the same user for a single-identity target).
    active_user_id: str | None = None
    next_user_id: str | None = None
    #: What the table cannot say: which identity is which, the client-secret caveat.
    notes: tuple[str, ...] = ()


def label(state: TargetState, policy: Policy, now: datetime) -> StatusLabel:
    """The first that applies, in this order of importance to an operator."""
    current = state.current
    ladder = (
        (state.stuck, StatusLabel.STUCK),
        (state.failures > 0, StatusLabel.FAILING),
        (state.pending is not None and _live(state, now), StatusLabel.ROTATING),
        (state.pending is not None, StatusLabel.INTERRUPTED),
        (current is None, StatusLabel.MISSING),
        (current is not None and current.expires_at <= now, StatusLabel.EXPIRED),
        (current is not None and now >= rules.due_at(current.expires_at, policy), StatusLabel.DUE),
        (state.previous is not None, StatusLabel.GRACE),
    )
    return next((name for applies, name in ladder if applies), StatusLabel.READY)


def _live(state: TargetState, now: datetime) -> bool:
    """Whether a process is still running the pending rotation: its intent has
    an owner and a deadline not yet passed (after it, any rotator resumes it)."""
    pending = state.pending
    return bool(
        pending is not None
        and pending.owner
        and pending.deadline is not None
        and now < pending.deadline
    )


ONE_IDENTITY_CAVEAT = (
    "one identity: each rotation regenerates the client secret and the old one stops "
    "working at once; consumers holding it are refused at the token endpoint until they "
    "re-read Vault (tokens already issued keep working up to their lifetime); "
    "`users: [a, b]` avoids this"
)


def _name(target: Target, state: TargetState | None, user_id: str) -> str:
    """A user as people know it: its configured name (the id when unknown)."""
    if state is not None:
        for index, identity in enumerate(state.identities):
            if identity.id == user_id and index < len(target.identities):
                return f"{target.identities[index]} ({user_id})"
    return user_id or "-"


def identity_notes(target: Target, state: TargetState | None) -> tuple[str, ...]:
    """Which identity is active and which is next; the single-identity secret caveat."""
    notes = []
    if target.two_identities:
        active = state.active_user_id if state else ""
        upcoming = state.next_user_id if state else ""
        active_text = _name(target, state, active) if active else "none yet"
        upcoming_text = _name(target, state, upcoming) if upcoming else target.identities[0]
        notes.append(
            f"{target.name}: identities {' and '.join(target.identities)}: active "
            f"{active_text}; the next rotation creates its {target.kind.value} on {upcoming_text}"
        )
    elif target.kind.value == "secret":
        notes.append(f"{target.name}: {ONE_IDENTITY_CAVEAT}")
    return tuple(notes)


def status(
    target: Target, state: TargetState | None, vault_version: int | None, now: datetime
) -> TargetStatus:
    """What ``rotator status`` shows for ``target``."""
    planned = next_run(state, target.policy, target.schedule, now) if state else None
    current = state.current if state else None
    previous = state.previous if state else None
    live = state is not None and _live(state, now)
    pending = state.pending if state and live else None
    return TargetStatus(
        target=target.name,
        kind=target.kind.value,
        user_id=state.user_id if state else None,
        credential_id=current.id if current else None,
        expires_at=current.expires_at if current else None,
        # a retry or a resumed rotation counts even when there is no credential yet
        next_rotation_at=planned.rotation_at if planned else None,
        previous_credential_id=previous.id if previous else None,
        retire_at=previous.retire_at if previous else None,
        vault_path=target.vault_path,
        vault_version=vault_version,
        state=label(state, target.policy, now) if state else StatusLabel.MISSING,
        failures=state.failures if state else 0,
        last_error=state.last_error if state else None,
        last_success_at=state.last_success_at if state else None,
        next_run_at=planned.at if planned else None,
        next_action=planned.what.value if planned and planned.at else None,
        rotating_owner=pending.owner if pending else None,
        rotating_until=pending.deadline if pending else None,
        active_user_id=(state.active_user_id or None) if state else None,
        next_user_id=(state.next_user_id or None) if state else None,
        notes=identity_notes(target, state),
    )


def plan(
    target: Target,
    state: TargetState,
    reason: str | None,
    now: datetime,
    *,
    supersede: bool = True,
    unstick: bool = False,
) -> RotationResult:
    """The dry run: what the next reconcile of ``target`` would do, in words.

    ``reason`` is why a rotation would start now (None: it would not).  A
    rotation while the previous credential is still in grace removes it at
    once (superseded): the plan says so, or, with ``supersede=False``
    (``rotate`` without ``--force``), that the rotation would be refused.
    """
    actions: list[str] = []
    kind = target.kind.value
    if state.pending is not None:
        resumable = state.pending.phase in (Phase.CREATED, Phase.VERIFIED)
        verb = "finish" if resumable else "clean up"
        actions.append(f"{verb} interrupted rotation {state.pending.rotation_id}")
    stuck = state.stuck and not unstick
    rotates = reason is not None and not stuck
    previous = state.previous
    in_grace = previous is not None and now < previous.retire_at
    refused = False
    if previous is not None and rotates and in_grace:
        until = previous.retire_at.isoformat()
        if not supersede:
            actions.append(
                f"refuse to rotate: previous {kind} {previous.id} is still in grace until "
                f"{until}; `rotator rotate --force {target.name}` removes it now"
            )
            rotates, refused = False, True
        else:
            actions.append(f"removes {kind} {previous.id} now; it is still in grace until {until}")
    elif previous is not None:
        when = "now" if not in_grace else previous.retire_at.isoformat()
        actions.append(f"retire {kind} {previous.id} at {when}")
    planned = next_run(state, target.policy, target.schedule, now)
    if stuck:
        actions.append("stuck: waits for `rotator rotate --force`")
    elif rotates and reason is not None:
        actions.extend(_rotate_now(target, state, reason, now))
    elif not refused and state.current is not None and planned.rotation_at is not None:
        actions.append(f"rotate at {planned.rotation_at.isoformat()}")
    return result(
        target, state, Outcome.DRY_RUN, now, actions=tuple(actions), with_status=False,
        planned=planned,
    )


def _rotate_now(target: Target, state: TargetState, reason: str, now: datetime) -> list[str]:
    """The plan's words for a rotation starting now: where, and what it costs consumers."""
    kind = target.kind.value
    where = ""
    if target.two_identities:
        upcoming = state.next_user_id
        where = f" on {_name(target, state, upcoming) if upcoming else target.identities[0]}"
        if state.current is not None:
            where += f", not on {_name(target, state, state.active_user_id)} (in use)"
    if kind != "secret":
        expiry = rules.new_expiry(now, target.policy.lifetime).isoformat()
        return [f"rotate now ({reason}): new {kind}{where} expiring {expiry}"]
    actions = [f"rotate now ({reason}): regenerate the client secret{where}"]
    if not target.two_identities and state.current is not None:
        actions.append(f"caveat: {ONE_IDENTITY_CAVEAT}")
    return actions


def result(
    target: Target,
    state: TargetState,
    outcome: Outcome,
    now: datetime,
    *,
    rotation_id: str | None = None,
    error: str | None = None,
    actions: tuple[str, ...] = (),
    with_status: bool = True,
    planned: NextRun | None = None,
) -> RotationResult:
    """The result of a run that ended with ``state``: its credentials and what comes
    next (``planned``, when the caller has worked it out already)."""
    planned = planned or next_run(state, target.policy, target.schedule, now)
    return RotationResult(
        target=target.name,
        outcome=outcome,
        rotation_id=rotation_id,
        credential_id=state.current.id if state.current else None,
        previous_credential_id=state.previous.id if state.previous else None,
        expires_at=state.current.expires_at if state.current else None,
        next_run_at=planned.at,
        next_rotation_at=planned.rotation_at,
        error=error,
        actions=actions,
        status=status(target, state, state.consumer_version, now) if with_status else None,
    )
