"""What ``rotator status`` says about a target, read as an operator reads it:
absolute and relative times, the retire time of a credential in grace, an
interrupted rotation told apart from one that runs, retries in the next
rotation, a hint when nothing was ever rotated, and the failure count's
grammar.  Pure functions over a state: no server needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rotator.cli import _status_rows, relative, status_notes
from rotator.report import StatusLabel, status
from rotator.state import CredentialRef, Pending, Phase, PreviousCredential, TargetState
from tests.enginekit import key_target

NOW = datetime(2026, 5, 2, 12, 0, tzinfo=UTC)
TARGET = key_target()


def state(**kw: object) -> TargetState:
    base = TargetState(
        target="billing",
        kind="key",
        user_id="u1",
        current=CredentialRef(id="k2", expires_at=datetime(2026, 5, 31, tzinfo=UTC)),
        last_success_at=NOW - timedelta(hours=3),
    )
    for name, value in kw.items():
        setattr(base, name, value)
    return base


def row(s: TargetState | None) -> list[str]:
    _header, line = _status_rows([status(TARGET, s, 3, NOW)], NOW)
    return line


@pytest.mark.parametrize(
    ("later", "text"),
    [
        (timedelta(days=29, hours=12), "in 29d"),
        (timedelta(hours=47), "in 47h"),
        (timedelta(minutes=90), "in 90m"),
        (timedelta(seconds=30), "now"),
        (-timedelta(days=3, hours=1), "3d ago"),
    ],
)
def test_relative_times_use_one_unit_rounded_down(later: timedelta, text: str) -> None:
    assert relative(NOW + later, NOW) == text


def test_a_ready_target_shows_absolute_and_relative_times() -> None:
    assert row(state()) == [
        "billing",
        "key",
        "k2",
        "2026-05-31 00:00 UTC (in 28d)",
        "2026-05-21 00:00 UTC (in 18d)",
        "3",
        "ready",
    ]


def test_grace_names_the_previous_credential_and_its_retire_time() -> None:
    previous = PreviousCredential(
        id="k1", expires_at=NOW + timedelta(days=5), retire_at=NOW + timedelta(hours=20)
    )
    s = status(TARGET, state(previous=previous), 3, NOW)
    assert s.state is StatusLabel.GRACE
    assert status_notes(s, NOW) == [
        "billing: previous key k1 stays valid until it is retired at "
        "2026-05-03 08:00 UTC (in 20h)"
    ]


def pending(owner: str, deadline: datetime | None) -> Pending:
    return Pending(
        rotation_id="r9",
        trigger="schedule",
        phase=Phase.CREATED,
        started_at=NOW - timedelta(minutes=5),
        expires_at=NOW + timedelta(days=30),
        owner=owner,
        deadline=deadline,
    )


def test_a_rotation_whose_process_stopped_reads_interrupted_not_rotating() -> None:
    stale = state(pending=pending("host-a:41", NOW - timedelta(minutes=1)))
    assert row(stale)[-1] == "interrupted (resumes on next run)"
    assert status(TARGET, stale, 3, NOW).state is StatusLabel.INTERRUPTED
    assert row(state(pending=pending("", None)))[-1] == "interrupted (resumes on next run)"

    live = state(pending=pending("host-a:41", NOW + timedelta(minutes=2)))
    assert row(live)[-1] == "rotating (by host-a:41, deadline in 2m)"


def test_the_next_rotation_is_the_retry_when_backing_off() -> None:
    failing = state(
        current=None,
        failures=1,
        last_error="ZITADEL: down",
        next_attempt_at=NOW + timedelta(minutes=4),
    )
    cells = row(failing)
    assert cells[4] == "2026-05-02 12:04 UTC (in 4m, retry)"
    assert cells[-1] == "failing (1 failure)"
    assert row(state(failures=3, next_attempt_at=NOW + timedelta(hours=1)))[-1] == (
        "failing (3 failures)"
    )


def test_a_target_never_rotated_gets_a_hint() -> None:
    s = status(TARGET, None, None, NOW)
    assert row(None)[-1] == "missing"
    assert status_notes(s, NOW) == [
        "billing: nothing rotated yet; `rotator rotate billing` creates its first key now "
        "(the daemon does on its next pass)"
    ]
