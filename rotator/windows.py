"""When a rotation may run: rotation windows, freeze windows, projections.

Pure functions over instants; no I/O, no clock.  Cron arithmetic is
APScheduler 3.x's :class:`CronTrigger`, so a window's cron expression means
exactly what it means for the daemon's own jobs (including DST: a window at a
local time that does not exist that day opens at the equivalent UTC instant).

Semantics (modelled on cert-manager v1.21 ``renewal.windows``):

* A **rotation window** ``{cron, timezone, duration}`` is open from each cron
  fire time for ``duration``: ``[fire, fire + duration)``.  With windows, a
  rotation only *starts* while one is open; without windows, any time is fine.
* A **freeze** is closed time: absolute ``[start, end)`` or recurring
  ``[fire, fire + duration)``.  No rotation starts inside a freeze.
* If no allowed time exists between the due time and the latest safe time
  (expiry minus a margin), the rotation happens at the latest safe time anyway,
  and the result says so: an expired credential is an outage, a rotation
  outside the window is an inconvenience.
* Windows and freezes gate only the *start* of a rotation.  Finishing an
  interrupted one, retrying a failed one and retiring an old credential are
  bound by expiry, not by windows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rotator.model import Target
from rotator.policy import new_expiry, retire_at, safety_margin

if TYPE_CHECKING:  # imported where a window is parsed: most configs have none (start-up cost)
    from apscheduler.triggers.cron import CronTrigger

#: How far ahead :func:`next_allowed` searches when not given a limit.
DEFAULT_SEARCH = timedelta(days=400)
#: Upper bound on search steps, so a freeze that recurs faster than it ends
#: (closed forever) terminates instead of spinning.
_MAX_STEPS = 20_000


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        raise ValueError(f"{what}: needs a timezone (write e.g. 2026-12-20T00:00:00Z)")
    return value.astimezone(UTC)


@functools.lru_cache(maxsize=256)
def _trigger(cron: str, timezone: str) -> CronTrigger:
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"timezone: unknown IANA time zone {timezone!r}") from exc
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron: {cron!r} must have 5 fields (minute hour day month weekday)")
    minute, hour, day, month, weekday = fields
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - see the imports

    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_standard_weekdays(weekday),
            timezone=tz,
        )
    except ValueError as exc:
        raise ValueError(f"cron: {cron!r} is not a valid cron expression ({exc})") from exc


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _standard_weekdays(field: str) -> str:
    """Translate crontab weekday numbers (0 or 7 = Sunday) into names.

    APScheduler 3.x numbers weekdays from 0 = Monday (its issue #286), so
    ``1-5`` would silently mean Tuesday to Saturday; names mean the same in
    both.  Numeric items, ranges and steps are expanded to name lists.
    """
    items: list[str] = []
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() else None
        if step_text and step is None:
            items.append(item)  # malformed: let CronTrigger explain
            continue
        if base == "*":
            if step is None:
                items.append(item)
                continue
            first, last = 0, 6
        elif base.isdigit():
            first = last = int(base)
            if step is not None:
                last = 6
        elif "-" in base and all(part.isdigit() for part in base.split("-", 1)):
            first, last = (int(part) for part in base.split("-", 1))
        else:
            items.append(item)  # names: same meaning in APScheduler
            continue
        if not (0 <= first <= last <= 7):
            raise ValueError(f"weekday {item!r} out of range 0-7")
        items.extend(_WEEKDAYS[n] for n in range(first, last + 1, step or 1))
    return ",".join(dict.fromkeys(items))


def _next_fire(cron: str, timezone: str, t: datetime) -> datetime | None:
    """First fire time at or after ``t`` (second resolution), in UTC."""
    fire = _trigger(cron, timezone).get_next_fire_time(None, t)
    return None if fire is None else fire.astimezone(UTC)


def _occurrence(cron: str, timezone: str, duration: timedelta, t: datetime) -> datetime | None:
    """End of the occurrence ``[fire, fire + duration)`` that contains ``t``, if any."""
    # The first fire strictly after t - duration is the only candidate: any
    # later one starts after it, any earlier one has already closed.
    fire = _next_fire(cron, timezone, t - duration + timedelta(microseconds=1))
    if fire is not None and fire <= t:
        return fire + duration
    return None


@dataclass(frozen=True)
class RotationWindow:
    """Time a rotation may start: each cron fire in ``timezone``, for ``duration``."""

    cron: str
    duration: timedelta
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        _trigger(self.cron, self.timezone)  # raises ValueError naming the field
        if self.duration <= timedelta(0):
            raise ValueError("duration: must be positive (e.g. 2h)")

    def closes_at(self, t: datetime) -> datetime | None:
        """When the occurrence open at ``t`` closes; None when closed at ``t``."""
        return _occurrence(self.cron, self.timezone, self.duration, t)

    def next_open(self, t: datetime) -> datetime | None:
        """The earliest instant at or after ``t`` at which this window is open."""
        if self.closes_at(t) is not None:
            return t
        return _next_fire(self.cron, self.timezone, t)


@dataclass(frozen=True)
class FreezeWindow:
    """Time no rotation may start: absolute ``[start, end)`` or recurring cron + duration."""

    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    duration: timedelta | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        absolute = self.start is not None or self.end is not None
        recurring = self.cron is not None or self.duration is not None
        if absolute == recurring:
            raise ValueError("freeze: give either start and end, or cron and duration")
        if absolute:
            if self.start is None or self.end is None:
                raise ValueError("freeze: start and end are both required")
            start, end = _aware(self.start, "start"), _aware(self.end, "end")
            if end <= start:
                raise ValueError("end: must be after start")
            object.__setattr__(self, "start", start)
            object.__setattr__(self, "end", end)
        else:
            if self.cron is None or self.duration is None:
                raise ValueError("freeze: cron and duration are both required")
            _trigger(self.cron, self.timezone)
            if self.duration <= timedelta(0):
                raise ValueError("duration: must be positive (e.g. 12h)")

    def ends_at(self, t: datetime) -> datetime | None:
        """When the freeze in force at ``t`` ends; None when ``t`` is not frozen."""
        if self.cron is None:
            assert self.start is not None
            assert self.end is not None
            return self.end if self.start <= t < self.end else None
        assert self.duration is not None
        return _occurrence(self.cron, self.timezone, self.duration, t)


def is_allowed(
    t: datetime, windows: Sequence[RotationWindow], freezes: Sequence[FreezeWindow]
) -> bool:
    """Whether a rotation may start at ``t``."""
    t = _aware(t, "t")
    in_window = not windows or any(w.closes_at(t) is not None for w in windows)
    return in_window and all(f.ends_at(t) is None for f in freezes)


def next_allowed(
    t: datetime,
    windows: Sequence[RotationWindow],
    freezes: Sequence[FreezeWindow],
    *,
    limit: datetime | None = None,
) -> datetime | None:
    """The earliest instant at or after ``t`` at which a rotation may start.

    None when there is none up to ``limit`` (default: ``t`` + 400 days), e.g.
    the windows never fire or a freeze covers everything until then.
    """
    cur = _aware(t, "t")
    bound = _aware(limit, "limit") if limit is not None else cur + DEFAULT_SEARCH
    for _ in range(_MAX_STEPS):
        if cur > bound:
            return None
        if windows:
            opens = [o for o in (w.next_open(cur) for w in windows) if o is not None]
            if not opens:
                return None
            cur = min(opens)
            if cur > bound:
                return None
        frozen_until = [e for e in (f.ends_at(cur) for f in freezes) if e is not None]
        if not frozen_until:
            return cur
        cur = max(frozen_until)
    return None


class ScheduleReason(StrEnum):
    #: At the due time: no window or freeze is in the way.
    DUE = "due"
    #: Deferred from the due time to the next allowed time.
    WINDOW = "window"
    #: No allowed time before the latest safe time: rotating outside the windows.
    NO_WINDOW_BEFORE_EXPIRY = "no_window_before_expiry"


def schedule_rotation(
    due_at: datetime,
    expires_at: datetime,
    windows: Sequence[RotationWindow],
    freezes: Sequence[FreezeWindow],
    margin: timedelta,
) -> tuple[datetime, ScheduleReason]:
    """When a rotation due at ``due_at`` starts, given the windows and freezes.

    The latest safe time is ``expires_at - margin``; when no allowed time lies
    in ``[due_at, latest safe time]`` the rotation starts at the latest safe
    time anyway (or at ``due_at`` if that is already later).
    """
    due = _aware(due_at, "due_at")
    deadline = _aware(expires_at, "expires_at") - margin
    if not windows and not freezes:
        return due, ScheduleReason.DUE
    when = next_allowed(due, windows, freezes, limit=deadline)
    if when is None:
        return max(due, deadline), ScheduleReason.NO_WINDOW_BEFORE_EXPIRY
    return when, ScheduleReason.DUE if when == due else ScheduleReason.WINDOW


# --- projection (`rotator plan --horizon`) ----------------------------------------------


@dataclass(frozen=True)
class ScheduledTarget:
    """A target with its windows and what is known of its current credential."""

    target: Target
    windows: tuple[RotationWindow, ...] = ()
    freezes: tuple[FreezeWindow, ...] = ()
    #: Expiry of the current credential; None when there is none yet.
    expires_at: datetime | None = None


@dataclass(frozen=True)
class PlannedRotation:
    target: str
    #: When the rotation starts.
    at: datetime
    #: When it was due (expiry - renew_before); ``at`` differs when windows defer it.
    due_at: datetime
    reason: str
    old_expires_at: datetime | None
    new_expires_at: datetime
    #: When the old credential is removed from ZITADEL.
    retire_at: datetime | None
    #: Why the configuration cannot be satisfied here (empty: fine).
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _config_problems(st: ScheduledTarget, now: datetime) -> list[str]:
    policy = st.target.policy
    problems: list[str] = []
    margin = safety_margin(st.target.policy)
    if margin >= policy.renew_before:
        problems.append(
            f"grace + retire_margin ({margin}) is not shorter than renew_before "
            f"({policy.renew_before}): the old credential cannot keep its grace before it expires"
        )
    for i, w in enumerate(st.windows):
        if _next_fire(w.cron, w.timezone, now) is None:
            problems.append(f"windows[{i}]: cron {w.cron!r} never fires")
    return problems


def project(
    targets: Sequence[ScheduledTarget], horizon: timedelta, now: datetime
) -> list[PlannedRotation]:
    """Every rotation of every target from ``now`` to ``now + horizon``.

    Each rotation issues a credential expiring at midnight UTC ``lifetime``
    ahead (as the engine does), so the projection follows the real cadence.
    A rotation whose windows leave no allowed time before the latest safe
    time carries a problem; so does every rotation of a target whose policy
    cannot be satisfied.  Rotations are sorted by start time.
    """
    now = _aware(now, "now")
    end = now + horizon
    # Targets alike (same expiry, policy and windows: a fleet's keys expire at a
    # few midnights) share one chain of rotations, computed once.
    chains: dict[tuple[object, ...], list[_Step]] = {}
    planned: list[PlannedRotation] = []
    for st in targets:
        key = (st.expires_at, st.target.policy, st.windows, st.freezes)
        chain = chains.get(key)
        if chain is None:
            chain = chains[key] = _chain(st, now, end)
        name = st.target.name
        planned += [PlannedRotation(name, *step) for step in chain]
    planned.sort(key=attrgetter("at", "target"))
    return planned


#: A :class:`PlannedRotation`'s fields after ``target``.
_Step = tuple[
    datetime, datetime, str, datetime | None, datetime, datetime | None, tuple[str, ...]
]


def _chain(st: ScheduledTarget, now: datetime, end: datetime) -> list[_Step]:
    """The rotations of one target from ``now`` to ``end`` (see :func:`project`)."""
    policy = st.target.policy
    margin = safety_margin(st.target.policy)
    config_problems = _config_problems(st, now)
    expires = _aware(st.expires_at, "expires_at") if st.expires_at is not None else None
    steps: list[_Step] = []
    for _ in range(10_000):
        problems = list(config_problems)
        if expires is None:
            # No credential yet: the engine issues one at once, windows or not.
            at, due, reason, retire = now, now, "initial", None
        else:
            due = max(expires - policy.renew_before, now)
            at, why = schedule_rotation(due, expires, st.windows, st.freezes, margin)
            at = max(at, now)
            reason = str(why)
            if expires <= now:
                reason = "expired"
            elif why is ScheduleReason.NO_WINDOW_BEFORE_EXPIRY:
                problems.append(
                    f"no rotation window is open and unfrozen between {_fmt(due)} and "
                    f"{_fmt(expires - margin)} (expiry {_fmt(expires)} minus grace and "
                    f"retire_margin); rotating outside the windows at {_fmt(at)}"
                )
            retire = retire_at(at, expires, policy)
        if at > end and (steps or not config_problems):
            # A broken config is reported even if its first rotation lies beyond the horizon.
            break
        new_exp = new_expiry(at, policy.lifetime)
        looping = new_exp - policy.renew_before <= at
        if looping:  # the new credential would be due at once: rotating in a loop
            problems.append(
                f"lifetime ({policy.lifetime}) leaves a new credential due at once "
                f"(renew_before {policy.renew_before})"
            )
        steps.append((at, due, reason, expires, new_exp, retire, tuple(problems)))
        if looping:
            break
        expires = new_exp
    return steps


def unsatisfiable(planned: Sequence[PlannedRotation]) -> list[PlannedRotation]:
    """The planned rotations that carry problems (``plan`` exits non-zero on any)."""
    return [p for p in planned if p.problems]
