"""Rotation windows and freezes: when a rotation may start, and the plan.

Times are UTC unless a test says otherwise.  Reference week: Monday
2026-11-23 to Sunday 2026-11-29 (Europe/Berlin is UTC+1 then, UTC+2 in July).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.model import CredentialKind, Policy, Target
from rotator.windows import (
    FreezeWindow,
    RotationWindow,
    ScheduledTarget,
    ScheduleReason,
    is_allowed,
    next_allowed,
    project,
    schedule_rotation,
    unsatisfiable,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


H = timedelta(hours=1)
D = timedelta(days=1)
WEEKDAY_NIGHTS = RotationWindow(cron="0 2 * * 1-5", timezone="Europe/Berlin", duration=2 * H)
HOLIDAYS = FreezeWindow(start=utc("2026-12-20T00:00"), end=utc("2027-01-05T00:00"))
NIGHTLY_FREEZE = FreezeWindow(cron="0 0 * * *", duration=8 * H)  # 00:00-08:00 UTC


# --- a window is open during [fire, fire + duration) in its own time zone -----------------


@pytest.mark.parametrize(
    ("instant", "open_"),
    [
        ("2026-11-23T01:00:00", True),  # Mon 02:00 Berlin (CET): opens
        ("2026-11-23T02:59:59", True),  # Mon 03:59:59 Berlin
        ("2026-11-23T03:00:00", False),  # Mon 04:00 Berlin: closed (half-open)
        ("2026-11-23T00:59:59", False),  # one second before it opens
        ("2026-11-28T01:30:00", False),  # Saturday
        ("2026-11-27T02:00:00", True),  # Friday
        ("2026-07-06T00:00:00", True),  # Mon 02:00 Berlin in summer (CEST) = 00:00 UTC
        ("2026-07-06T01:59:00", True),
        ("2026-07-06T02:00:00", False),  # 04:00 CEST
    ],
)
def test_window_is_open_during_its_duration_in_its_timezone(instant: str, open_: bool) -> None:
    assert (WEEKDAY_NIGHTS.closes_at(utc(instant)) is not None) is open_
    assert is_allowed(utc(instant), [WEEKDAY_NIGHTS], []) is open_


@pytest.mark.parametrize(
    ("windows", "freezes", "start", "expected"),
    [
        # no constraints: now
        ([], [], "2026-11-28T12:00", "2026-11-28T12:00"),
        # inside a window: now
        ([WEEKDAY_NIGHTS], [], "2026-11-23T01:30", "2026-11-23T01:30"),
        # Saturday: Monday 02:00 Berlin
        ([WEEKDAY_NIGHTS], [], "2026-11-28T12:00", "2026-11-30T01:00"),
        # just after a window closed: the next night
        ([WEEKDAY_NIGHTS], [], "2026-11-23T03:00", "2026-11-24T01:00"),
        # holiday freeze then the first weekday window (Tue 2027-01-05 02:00 Berlin)
        ([WEEKDAY_NIGHTS], [HOLIDAYS], "2026-12-21T01:30", "2027-01-05T01:00"),
        # freeze without windows: its end
        ([], [HOLIDAYS], "2026-12-24T10:00", "2027-01-05T00:00"),
        # a freeze that ends while a window is open: the freeze end
        (
            [WEEKDAY_NIGHTS],
            [FreezeWindow(start=utc("2026-11-23T00:00"), end=utc("2026-11-23T01:30"))],
            "2026-11-23T00:00",
            "2026-11-23T01:30",
        ),
        # recurring freeze: after it
        ([], [NIGHTLY_FREEZE], "2026-11-23T03:00", "2026-11-23T08:00"),
        ([], [NIGHTLY_FREEZE], "2026-11-23T08:00", "2026-11-23T08:00"),
        # chained freezes: the end of the last one
        (
            [],
            [
                FreezeWindow(start=utc("2026-11-23T00:00"), end=utc("2026-11-24T00:00")),
                FreezeWindow(start=utc("2026-11-23T23:00"), end=utc("2026-11-25T06:00")),
            ],
            "2026-11-23T10:00",
            "2026-11-25T06:00",
        ),
        # a nightly freeze over a night window: the window's remaining part after 08:00
        (
            [RotationWindow(cron="0 6 * * *", duration=4 * H)],
            [NIGHTLY_FREEZE],
            "2026-11-23T05:00",
            "2026-11-23T08:00",
        ),
    ],
)
def test_next_allowed(
    windows: list[RotationWindow], freezes: list[FreezeWindow], start: str, expected: str
) -> None:
    assert next_allowed(utc(start), windows, freezes) == utc(expected)


@pytest.mark.parametrize(
    ("weekdays", "expected"),
    [
        # crontab numbering (0 and 7 = Sunday), not APScheduler 3.x's (0 = Monday)
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("5-7", {"Fri", "Sat", "Sun"}),
        ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
        ("1,3", {"Mon", "Wed"}),
        ("sat,sun", {"Sat", "Sun"}),
        ("mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("*", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
    ],
)
def test_weekdays_follow_crontab_numbering(weekdays: str, expected: set[str]) -> None:
    window = RotationWindow(cron=f"0 12 * * {weekdays}", duration=H)
    days = {
        (utc("2026-11-23T12:00") + n * D).strftime("%a")
        for n in range(7)
        if is_allowed(utc("2026-11-23T12:00") + n * D, [window], [])
    }
    assert days == expected


def test_daylight_saving_gap_opens_at_the_equivalent_instant() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 -> 03:00)
    window = RotationWindow(cron="30 2 * * *", timezone="Europe/Berlin", duration=H)
    assert next_allowed(utc("2026-03-29T00:00"), [window], []) == utc("2026-03-29T01:30")


def test_a_window_that_never_fires_allows_nothing() -> None:
    never = RotationWindow(cron="0 0 30 2 *", duration=H)  # February 30th
    assert next_allowed(utc("2026-11-23T00:00"), [never], []) is None


def test_a_freeze_that_never_ends_allows_nothing_up_to_the_limit() -> None:
    always = FreezeWindow(cron="0 * * * *", duration=2 * H)  # overlapping hourly freezes
    start = utc("2026-11-23T00:00")
    assert next_allowed(start, [], [always], limit=start + 30 * D) is None


def test_limit_cuts_the_search() -> None:
    assert (
        next_allowed(utc("2026-11-28T12:00"), [WEEKDAY_NIGHTS], [], limit=utc("2026-11-29T00:00"))
        is None
    )


def test_next_allowed_is_the_earliest_allowed_instant() -> None:
    """Property over a grid of start times: the answer is allowed, not before the
    start, and no instant between them (sampled every 30 minutes) is allowed."""
    # 07:00-10:00 Berlin on weekdays, partly under the 00:00-08:00 UTC nightly freeze
    windows = [RotationWindow(cron="0 7 * * 1-5", timezone="Europe/Berlin", duration=3 * H)]
    freezes = [NIGHTLY_FREEZE, HOLIDAYS]
    t = utc("2026-12-15T00:00")
    while t < utc("2027-01-10T00:00"):
        found = next_allowed(t, windows, freezes)
        assert found is not None
        assert found >= t
        assert is_allowed(found, windows, freezes)
        probe = t
        while probe < found:
            assert not is_allowed(probe, windows, freezes), (t, probe, found)
            probe += timedelta(minutes=30)
        t += timedelta(minutes=263)


# --- schedule_rotation: defer into a window, but never past the latest safe time --------------

EXPIRY = utc("2026-12-10T00:00")
MARGIN = 2 * D  # latest safe start: 2026-12-08T00:00


@pytest.mark.parametrize(
    ("windows", "freezes", "due", "when", "reason"),
    [
        ([], [], "2026-11-30T09:00", "2026-11-30T09:00", ScheduleReason.DUE),
        ([WEEKDAY_NIGHTS], [], "2026-11-30T01:15", "2026-11-30T01:15", ScheduleReason.DUE),
        ([WEEKDAY_NIGHTS], [], "2026-11-28T09:00", "2026-11-30T01:00", ScheduleReason.WINDOW),
        # a yearly window cannot fit: rotate at the latest safe time
        (
            [RotationWindow(cron="0 0 1 7 *", duration=H)],
            [],
            "2026-11-30T00:00",
            "2026-12-08T00:00",
            ScheduleReason.NO_WINDOW_BEFORE_EXPIRY,
        ),
        # a freeze over the whole renewal period: the latest safe time
        (
            [],
            [FreezeWindow(start=utc("2026-11-29T00:00"), end=utc("2026-12-31T00:00"))],
            "2026-11-30T00:00",
            "2026-12-08T00:00",
            ScheduleReason.NO_WINDOW_BEFORE_EXPIRY,
        ),
        # due after the latest safe time already (overdue): at once
        (
            [WEEKDAY_NIGHTS],
            [],
            "2026-12-09T12:00",
            "2026-12-09T12:00",
            ScheduleReason.NO_WINDOW_BEFORE_EXPIRY,
        ),
        # the last window before the deadline still counts (Mon 2026-12-07 02:00 Berlin)
        ([WEEKDAY_NIGHTS], [], "2026-12-05T12:00", "2026-12-07T01:00", ScheduleReason.WINDOW),
    ],
)
def test_schedule_rotation(
    windows: list[RotationWindow],
    freezes: list[FreezeWindow],
    due: str,
    when: str,
    reason: ScheduleReason,
) -> None:
    assert schedule_rotation(utc(due), EXPIRY, windows, freezes, MARGIN) == (utc(when), reason)


@pytest.mark.parametrize(
    "windows",
    [
        [WEEKDAY_NIGHTS],
        [
            RotationWindow(
                cron="0 12 * * 0",
                timezone="America/New_York",
                duration=30 * 60 * timedelta(seconds=1),
            )
        ],
        [RotationWindow(cron="0 0 1 * *", duration=H)],
    ],
)
def test_scheduled_start_is_never_before_due_nor_after_the_safe_time_unless_overdue(
    windows: list[RotationWindow],
) -> None:
    deadline = EXPIRY - MARGIN
    due = utc("2026-11-20T00:00")
    while due < EXPIRY:
        when, reason = schedule_rotation(due, EXPIRY, windows, [HOLIDAYS], MARGIN)
        assert when >= due
        assert when <= max(due, deadline)
        if reason is not ScheduleReason.NO_WINDOW_BEFORE_EXPIRY:
            assert is_allowed(when, windows, [HOLIDAYS])
        due += timedelta(hours=5)


# --- configuration errors name the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RotationWindow(cron="0 2 * *", duration=H), "cron"),
        (lambda: RotationWindow(cron="0 25 * * *", duration=H), "cron"),
        (lambda: RotationWindow(cron="0 2 * * *", timezone="Mars/Olympus", duration=H), "timezone"),
        (lambda: RotationWindow(cron="0 2 * * *", duration=timedelta(0)), "duration"),
        (lambda: FreezeWindow(start=datetime(2026, 12, 20), end=utc("2027-01-05T00:00")), "start"),
        (lambda: FreezeWindow(start=utc("2027-01-05T00:00"), end=utc("2026-12-20T00:00")), "end"),
        (lambda: FreezeWindow(start=utc("2027-01-05T00:00")), "end"),
        (FreezeWindow, "freeze"),
        (
            lambda: FreezeWindow(
                start=utc("2026-12-20T00:00"), end=utc("2027-01-05T00:00"), cron="0 0 * * *"
            ),
            "either",
        ),
        (lambda: FreezeWindow(cron="0 0 * * *"), "duration"),
    ],
)
def test_invalid_windows_are_rejected_naming_the_field(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


# --- project: every rotation across the horizon -----------------------------------------

NOW = utc("2026-11-23T10:00")
POLICY = Policy(lifetime=30 * D, renew_before=10 * D, grace=D, retire_margin=H)


def target(name: str = "billing", policy: Policy = POLICY) -> Target:
    return Target(
        name=name,
        user="svc-billing",
        kind=CredentialKind.KEY,
        vault_path=f"zitadel/{name}",
        policy=policy,
    )


def test_projection_follows_the_real_cadence_with_midnight_expiry() -> None:
    st = ScheduledTarget(target(), expires_at=utc("2026-11-30T00:00"))
    plan = project([st], 90 * D, NOW)
    assert len(plan) == 5  # Nov 23, Dec 13, Jan 2, Jan 22, Feb 11
    assert not unsatisfiable(plan)
    first = plan[0]
    assert first.at == utc("2026-11-23T10:00")  # due 2026-11-20: overdue, at once
    assert first.new_expires_at == utc("2026-12-23T00:00")  # midnight 30 days ahead
    for prev, nxt in pairwise(plan):
        assert nxt.old_expires_at == prev.new_expires_at
        assert nxt.at == nxt.due_at == prev.new_expires_at - POLICY.renew_before
    for p in plan:
        assert p.new_expires_at.time() == datetime.min.time()
        assert p.retire_at is not None
        assert p.old_expires_at is not None
        assert p.retire_at <= p.old_expires_at - POLICY.retire_margin
        assert p.at <= NOW + 90 * D


def test_projection_puts_every_rotation_into_a_window() -> None:
    st = ScheduledTarget(target(), windows=(WEEKDAY_NIGHTS,), expires_at=utc("2026-12-06T00:00"))
    plan = project([st], 365 * D, NOW)
    assert len(plan) >= 12
    assert not unsatisfiable(plan)
    for p in plan:
        assert is_allowed(p.at, [WEEKDAY_NIGHTS], [])
        assert p.reason in {"due", "window"}


def test_holiday_freeze_over_the_whole_renewal_period_is_unsatisfiable() -> None:
    # expiry 2026-12-31: due 2026-12-21, latest safe start 2026-12-29T23:00 - all frozen
    st = ScheduledTarget(target(), freezes=(HOLIDAYS,), expires_at=utc("2026-12-31T00:00"))
    plan = project([st], 90 * D, NOW)
    bad = unsatisfiable(plan)
    assert len(bad) == 1
    assert bad[0].reason == "no_window_before_expiry"
    assert bad[0].at == utc("2026-12-29T23:00")  # rotated anyway, at the latest safe time
    assert "no rotation window" in bad[0].problems[0]


def test_grace_not_shorter_than_renew_before_is_unsatisfiable() -> None:
    policy = Policy(lifetime=30 * D, renew_before=2 * D, grace=2 * D, retire_margin=H)
    plan = project(
        [ScheduledTarget(target(policy=policy), expires_at=utc("2026-12-30T00:00"))], 90 * D, NOW
    )
    assert plan
    assert all("grace" in p.problems[0] for p in plan)


def test_a_window_that_never_fires_is_reported_even_beyond_the_horizon() -> None:
    never = RotationWindow(cron="0 0 30 2 *", duration=H)
    st = ScheduledTarget(target(), windows=(never,), expires_at=utc("2027-06-01T00:00"))
    plan = project([st], 7 * D, NOW)
    assert len(plan) == 1
    assert any("never fires" in problem for problem in plan[0].problems)


def test_a_target_without_credential_rotates_at_once_and_an_expired_one_too() -> None:
    plan = project(
        [
            ScheduledTarget(target("new"), windows=(WEEKDAY_NIGHTS,)),
            ScheduledTarget(
                target("old"), windows=(WEEKDAY_NIGHTS,), expires_at=utc("2026-11-01T00:00")
            ),
        ],
        D,
        NOW,
    )
    assert [(p.target, p.at, p.reason) for p in plan] == [
        ("new", NOW, "initial"),
        ("old", NOW, "expired"),
    ]


def test_projection_of_several_targets_is_sorted_by_start() -> None:
    plan = project(
        [
            ScheduledTarget(target("a"), expires_at=utc("2027-01-20T00:00")),
            ScheduledTarget(target("b"), expires_at=utc("2026-12-01T00:00")),
        ],
        60 * D,
        NOW,
    )
    assert [p.at for p in plan] == sorted(p.at for p in plan)
    assert {p.target for p in plan} == {"a", "b"}


def test_targets_alike_each_get_their_own_rotations_and_ties_go_by_name() -> None:
    alike = utc("2026-12-20T00:00")
    plan = project(
        [
            ScheduledTarget(target("c"), expires_at=alike),
            ScheduledTarget(target("a"), expires_at=alike),
            ScheduledTarget(target("b", Policy(lifetime=20 * D, renew_before=5 * D, grace=D,
                                              retire_margin=H)), expires_at=alike),
        ],
        60 * D,
        NOW,
    )
    by_target = {name: [p for p in plan if p.target == name] for name in "abc"}
    assert [(p.at, p.new_expires_at) for p in by_target["a"]] == [
        (p.at, p.new_expires_at) for p in by_target["c"]
    ]
    assert by_target["b"][0].at == alike - 5 * D  # its own policy, not the others' chain
    assert by_target["a"][0].at == alike - POLICY.renew_before
    firsts = [p.target for p in plan if p.at == alike - POLICY.renew_before]
    assert firsts == ["a", "c"]


# --- `rotator plan --horizon` end to end (emulator + OpenBao) -----------------------------


def _plan(tmp_path: Path, emulator: Any, openbao: Any, mount: str, schedule: dict[str, Any]) -> Any:
    config = {
        "zitadel": {
            "url": emulator.issuer,
            "api": "v2",
            "credentials": {"key_file": str(emulator.admin_key_file)},
        },
        "vault": {"url": openbao.url, "mount": mount},
        "policy": {"lifetime": "30d", "renew_before": "10d", "grace": "1d"},
        "targets": [
            {"name": "billing", "user": "svc-billing", "kind": "key", "schedule": schedule}
        ],
    }
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "rotator", "--config", str(path), "plan", "--horizon", "90d"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), **openbao.env()},
        timeout=120,
        check=False,
    )


def test_plan_rejects_a_freeze_over_a_whole_renewal_period(
    tmp_path: Path, emulator: Any, openbao: Any, kv_mount: str
) -> None:
    # the credential issued now is due in ~20 days; freeze days 15 to 35
    now = datetime.now(UTC)
    freeze = {"start": (now + 15 * D).isoformat(), "end": (now + 35 * D).isoformat()}
    run = _plan(tmp_path, emulator, openbao, kv_mount, {"freeze": [freeze]})
    assert run.returncode == 2, run.stderr
    assert "billing" in run.stderr
    assert "no rotation window is open and unfrozen" in run.stderr


def test_plan_accepts_weekday_night_windows(
    tmp_path: Path, emulator: Any, openbao: Any, kv_mount: str
) -> None:
    window = {"cron": "0 2 * * 1-5", "timezone": "Europe/Berlin", "duration": "2h"}
    run = _plan(tmp_path, emulator, openbao, kv_mount, {"windows": [window]})
    assert run.returncode == 0, run.stderr
    assert "window" in run.stdout
