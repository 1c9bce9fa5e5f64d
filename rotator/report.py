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
from rotator.planner import next_run
from rotator.state import Phase, TargetState


class Outcome(StrEnum):
    ROTATED = "rotated"
    RETIRED = "retired"
    UP_TO_DATE = "up_to_date"
    DRY_RUN = "dry_run"
    FAILED = "failed"
    STUCK = "stuck"


class StatusLabel(StrEnum):
    #: No state: nothing was ever rotated (or the state was lost).
    MISSING = "missing"
    STUCK = "stuck"
    FAILING = "failing"
    #: A rotation was under way when its process stopped; the next run finishes it.
    ROTATING = "rotating"
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


def label(state: TargetState, policy: Policy, now: datetime) -> StatusLabel:
    """The first that applies, in this order of importance to an operator."""
    current = state.current
    ladder = (
        (state.stuck, StatusLabel.STUCK),
        (state.failures > 0, StatusLabel.FAILING),
        (state.pending is not None, StatusLabel.ROTATING),
        (current is None, StatusLabel.MISSING),
        (current is not None and current.expires_at <= now, StatusLabel.EXPIRED),
        (current is not None and now >= rules.due_at(current.expires_at, policy), StatusLabel.DUE),
        (state.previous is not None, StatusLabel.GRACE),
    )
    return next((name for applies, name in ladder if applies), StatusLabel.READY)


def status(
    target: Target, state: TargetState | None, vault_version: int | None, now: datetime
) -> TargetStatus:
    """What ``rotator status`` shows for ``target``."""
    planned = next_run(state, target.policy, target.schedule, now) if state else None
    current = state.current if state else None
    previous = state.previous if state else None
    return TargetStatus(
        target=target.name,
        kind=target.kind.value,
        user_id=state.user_id if state else None,
        credential_id=current.id if current else None,
        expires_at=current.expires_at if current else None,
        next_rotation_at=planned.rotation_at if planned and current else None,
        previous_credential_id=previous.id if previous else None,
        retire_at=previous.retire_at if previous else None,
        vault_path=target.vault_path,
        vault_version=vault_version,
        state=label(state, target.policy, now) if state else StatusLabel.MISSING,
        failures=state.failures if state else 0,
        last_error=state.last_error if state else None,
        last_success_at=state.last_success_at if state else None,
    )


def plan(target: Target, state: TargetState, reason: str | None, now: datetime) -> RotationResult:
    """The dry run: what the next reconcile of ``target`` would do, in words.

    ``reason`` is why a rotation would start now (None: it would not).
    """
    actions: list[str] = []
    if state.pending is not None:
        resumable = state.pending.phase in (Phase.CREATED, Phase.VERIFIED)
        verb = "finish" if resumable else "clean up"
        actions.append(f"{verb} interrupted rotation {state.pending.rotation_id}")
    if state.previous is not None:
        retire = state.previous.retire_at
        when = "now" if now >= retire else retire.isoformat()
        actions.append(f"retire {target.kind.value} {state.previous.id} at {when}")
    planned = next_run(state, target.policy, target.schedule, now)
    if state.stuck:
        actions.append("stuck: waits for `rotator rotate --force`")
    elif reason is not None:
        expiry = rules.new_expiry(now, target.policy.lifetime)
        actions.append(
            f"rotate now ({reason}): new {target.kind.value} expiring {expiry.isoformat()}"
        )
    elif state.current is not None and planned.rotation_at is not None:
        actions.append(f"rotate at {planned.rotation_at.isoformat()}")
    return RotationResult(
        target=target.name,
        outcome=Outcome.DRY_RUN,
        credential_id=state.current.id if state.current else None,
        previous_credential_id=state.previous.id if state.previous else None,
        expires_at=state.current.expires_at if state.current else None,
        next_run_at=planned.at,
        next_rotation_at=planned.rotation_at,
        actions=tuple(actions),
    )
