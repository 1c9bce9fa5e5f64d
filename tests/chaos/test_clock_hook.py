"""The testing hook the soak moves rotator processes' time with:
``ROTATOR_CLOCK_OFFSET_FILE`` (rotator/clock.py)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator.clock import FileOffsetClock, SystemClock, system_clock


def _close(a: datetime, b: datetime) -> bool:
    return abs((a - b).total_seconds()) < 5


def test_the_offset_file_moves_the_clock_and_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    path.write_text("86400")
    clock = FileOffsetClock(str(path))
    assert _close(clock.now(), datetime.now(UTC) + timedelta(days=1))
    path.write_text("-3600.5")
    os.utime(path, ns=(1, 1))  # a new mtime even within the same clock tick
    assert _close(clock.now(), datetime.now(UTC) - timedelta(hours=1))


def test_a_missing_file_is_no_offset_and_a_garbled_one_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    clock = FileOffsetClock(str(path))
    assert _close(clock.now(), datetime.now(UTC))
    path.write_text("7200")
    assert _close(clock.now(), datetime.now(UTC) + timedelta(hours=2))
    path.write_text("not a number")
    assert _close(clock.now(), datetime.now(UTC) + timedelta(hours=2))


def test_the_hook_is_off_unless_the_variable_is_set(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("ROTATOR_CLOCK_OFFSET_FILE", raising=False)
    assert isinstance(system_clock(), SystemClock)
    monkeypatch.setenv("ROTATOR_CLOCK_OFFSET_FILE", str(tmp_path / "offset"))
    assert isinstance(system_clock(), FileOffsetClock)
