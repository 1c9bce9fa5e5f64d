"""The planner: what a target needs next and when, for the engine and the daemon alike.

Reference week: Monday 2026-11-23 to Sunday 2026-11-29; the window opens on
weekday nights at 02:00 Europe/Berlin (01:00 UTC) for two hours.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from rotator.model import Policy, Schedule
from rotator.planner import Next, next_run, rotation_may_start, with_jitter
from rotator.state import CredentialRef, Pending, Phase, PreviousCredential, TargetState
from rotator.windows import RotationWindow, ScheduleReason

H, D = timedelta(hours=1), timedelta(days=1)
POLICY = Policy(renew_before=10 * D, grace=D, retire_margin=H)
NIGHTS = Schedule(
    windows=(RotationWindow(cron="0 2 * * 1-5", timezone="Europe/Berlin", duration=2 * H),)
)
ANY_TIME = Schedule()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def state(expires: str | None = "2026-12-08T00:00", **kw: object) -> TargetState:
    current = CredentialRef(id="k1", expires_at=utc(expires)) if expires else None
    return TargetState(target="t", kind="key", user_id="u", current=current, **kw)  # type: ignore[arg-type]


def test_a_healthy_credential_rotates_at_its_due_time() -> None:
    planned = next_run(state(), POLICY, ANY_TIME, utc("2026-11-23T12:00"))
    assert planned.what is Next.ROTATE
    assert planned.at == planned.rotation_at == utc("2026-11-28T00:00")  # expiry - 10 days
    assert planned.reason is ScheduleReason.DUE


def test_a_window_moves_the_rotation_to_its_next_opening() -> None:
    # due Saturday 00:00 UTC: the next window opens Monday 02:00 Berlin
    planned = next_run(state(), POLICY, NIGHTS, utc("2026-11-23T12:00"))
    assert planned.rotation_at == utc("2026-11-30T01:00")
    assert planned.reason is ScheduleReason.WINDOW
    assert not rotation_may_start(state(), POLICY, NIGHTS, utc("2026-11-28T09:00"))
    assert rotation_may_start(state(), POLICY, NIGHTS, utc("2026-11-30T01:30"))


def test_past_the_latest_safe_time_the_rotation_starts_outside_any_window() -> None:
    # expiry 12-08 00:00 minus grace and margin: 12-06 23:00, a Sunday
    closed = Schedule(windows=(RotationWindow(cron="0 2 1 1 *", duration=H),))  # New Year only
    planned = next_run(state(), POLICY, closed, utc("2026-11-23T12:00"))
    assert planned.rotation_at == utc("2026-12-06T23:00")
    assert planned.reason is ScheduleReason.NO_WINDOW_BEFORE_EXPIRY
    assert rotation_may_start(state(), POLICY, closed, utc("2026-12-07T00:00"))


@pytest.mark.parametrize("expires", [None, "2026-11-20T00:00"])
def test_a_missing_or_expired_credential_is_replaced_at_once_windows_or_not(
    expires: str | None,
) -> None:
    now = utc("2026-11-28T09:00")  # Saturday: no window
    planned = next_run(state(expires), POLICY, NIGHTS, now)
    assert (planned.what, planned.at) == (Next.ROTATE, now)


def test_retirement_comes_first_and_is_never_held_back() -> None:
    previous = PreviousCredential(
        id="k0", expires_at=utc("2026-11-25T00:00"), retire_at=utc("2026-11-24T00:00")
    )
    stuck = state(previous=previous, stuck=True)
    planned = next_run(stuck, POLICY, NIGHTS, utc("2026-11-23T12:00"))
    assert (planned.what, planned.at, planned.rotation_at) == (
        Next.RETIRE,
        utc("2026-11-24T00:00"),
        None,
    )


def test_a_stuck_target_with_nothing_to_retire_waits_for_a_person() -> None:
    planned = next_run(state(stuck=True), POLICY, ANY_TIME, utc("2026-11-23T12:00"))
    assert (planned.what, planned.at, planned.rotation_at) == (Next.NOTHING, None, None)


def test_a_retry_waits_for_its_backoff_even_when_long_due_and_ignores_windows() -> None:
    retry = utc("2026-11-29T10:00")  # Sunday: outside every window
    failing = state(failures=2, next_attempt_at=retry)
    planned = next_run(failing, POLICY, NIGHTS, utc("2026-11-29T09:00"))
    assert (planned.what, planned.at) == (Next.RETRY, retry)
    assert rotation_may_start(failing, POLICY, NIGHTS, retry)


def test_an_interrupted_rotation_resumes_at_once() -> None:
    now = utc("2026-11-28T09:00")
    pending = Pending(
        rotation_id="r",
        trigger="cli",
        phase=Phase.CREATED,
        started_at=now,
        expires_at=utc("2026-12-28T00:00"),
    )
    planned = next_run(state(pending=pending), POLICY, NIGHTS, now)
    assert (planned.what, planned.at) == (Next.RESUME, now)


def test_jitter_spreads_future_runs_only() -> None:
    now, later = utc("2026-11-23T12:00"), utc("2026-11-24T12:00")
    rng = random.Random(7)
    jittered = with_jitter(later, now, timedelta(seconds=30), rng)
    assert jittered is not None
    assert later <= jittered <= later + timedelta(seconds=30)
    assert with_jitter(now, now, timedelta(seconds=30), rng) == now
    assert with_jitter(None, now, timedelta(seconds=30), rng) is None


def test_a_window_that_was_open_while_overdue_does_not_let_it_start_now() -> None:
    # due since Monday; the windows of Mon-Fri nights have passed; now Saturday
    planned = next_run(
        state(
            "2026-12-04T00:00",
        ),
        POLICY,
        NIGHTS,
        utc("2026-11-28T09:00"),
    )
    assert planned.rotation_at is not None
    assert planned.rotation_at > utc("2026-11-28T09:00")
    assert not rotation_may_start(
        state("2026-12-04T00:00"), POLICY, NIGHTS, utc("2026-11-28T09:00")
    )
