"""When a target runs next: one pure function the engine and the daemon share.

A target has at most three things ahead of it, in this order of precedence:

1. **retirement** of the previous credential at its ``retire_at``: never held
   back, by anything (it must leave before it expires);
2. **finishing** what is under way: an interrupted rotation resumes at once,
   a failed one is retried at ``next_attempt_at``; neither waits for a window;
3. a **fresh rotation** at ``expires_at - renew_before``, moved into the
   target's rotation windows and out of its freezes; if no allowed time lies
   before the latest safe time (expiry minus grace and retire margin) it
   starts at that latest safe time anyway (:func:`rotator.windows.schedule_rotation`).

A missing or expired credential is replaced at once, windows or not: an
expired credential is an outage, a rotation outside a window an
inconvenience.  A ``stuck`` target does nothing but retire until a person
acts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from rotator import policy as rules
from rotator.model import Policy, Schedule
from rotator.state import TargetState
from rotator.windows import ScheduleReason, schedule_rotation


class Next(StrEnum):
    RETIRE = "retire"
    RESUME = "resume"
    RETRY = "retry"
    ROTATE = "rotate"
    #: Nothing until a person acts (stuck, nothing to retire).
    NOTHING = "nothing"


@dataclass(frozen=True)
class NextRun:
    #: When reconcile has something to do; None: nothing until a person acts.
    at: datetime | None
    what: Next
    #: When the next rotation starts (retry, resume or fresh); None when stuck.
    rotation_at: datetime | None
    #: Why a fresh rotation starts when it does (due, window, no window before expiry).
    reason: ScheduleReason | None = None


def next_run(state: TargetState, policy: Policy, schedule: Schedule, now: datetime) -> NextRun:
    """What ``state`` needs next, and when; see the module docstring."""
    retire = state.previous.retire_at if state.previous is not None else None
    rotation_at: datetime | None
    reason: ScheduleReason | None = None
    if state.stuck:
        rotation_at, what = None, Next.NOTHING
    elif state.pending is not None:
        rotation_at, what = max(now, state.next_attempt_at or now), Next.RESUME
    elif state.next_attempt_at is not None:
        # backing off: nothing before the retry time, even if due long ago
        rotation_at, what = state.next_attempt_at, Next.RETRY
    elif state.current is None or state.current.expires_at <= now:
        rotation_at, what = now, Next.ROTATE
    else:
        expires = state.current.expires_at
        # search from now, not from a due time long past: a window that was
        # open yesterday does not let a rotation start today
        start = max(rules.due_at(expires, policy), now)
        rotation_at, reason = schedule_rotation(
            start, expires, schedule.windows, schedule.freeze, rules.safety_margin(policy)
        )
        what = Next.ROTATE
    if retire is not None and (rotation_at is None or retire <= rotation_at):
        return NextRun(at=retire, what=Next.RETIRE, rotation_at=rotation_at, reason=reason)
    return NextRun(at=rotation_at, what=what, rotation_at=rotation_at, reason=reason)


def rotation_may_start(
    state: TargetState, policy: Policy, schedule: Schedule, now: datetime
) -> bool:
    """Whether a fresh rotation is due now and its windows let it start."""
    planned = next_run(state, policy, schedule, now)
    return planned.rotation_at is not None and planned.rotation_at <= now


def with_jitter(
    when: datetime | None, now: datetime, jitter: timedelta, rng: random.Random
) -> datetime | None:
    """Spread future runs over ``jitter`` so replicas of many targets do not
    hit ZITADEL in the same second; a run already due stays due."""
    if when is None or jitter <= timedelta(0) or when <= now:
        return when
    return when + timedelta(seconds=rng.uniform(0, jitter.total_seconds()))
