"""Where the engine gets the time from.

Every decision takes ``now`` from a :class:`~rotator.ports.Clock`, so tests can move time
(together with the emulator's clock offset) without sleeping.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rotator.ports import Clock


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class OffsetClock:
    """The system clock shifted by ``offset``; sleeping really sleeps."""

    offset: timedelta = field(default_factory=timedelta)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


#: Testing hook: a file holding float seconds added to the system clock.
OFFSET_FILE_ENV = "ROTATOR_CLOCK_OFFSET_FILE"


class FileOffsetClock:
    """The system clock plus the float seconds in ``path``, re-read whenever the
    file changes (one ``stat`` per ``now()``), so a test moves the clock of
    running CLI and daemon processes together with the emulator's.  A missing
    or unreadable file means offset 0; sleeping really sleeps."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._offset = timedelta()

    def _current_offset(self) -> timedelta:
        try:
            st = os.stat(self._path)
        except OSError:
            return timedelta()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                with open(self._path, encoding="ascii") as handle:
                    self._offset = timedelta(seconds=float(handle.read().strip() or "0"))
                self._stamp = stamp
            except (OSError, ValueError):
                pass  # half-written: keep the last offset, read again next time
        return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self._current_offset()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def system_clock() -> Clock:
    """The process's clock: :class:`SystemClock`, or a :class:`FileOffsetClock`
    when ``ROTATOR_CLOCK_OFFSET_FILE`` is set (testing hook: the chaos soak)."""
    path = os.environ.get(OFFSET_FILE_ENV)
    return FileOffsetClock(path) if path else SystemClock()


__all__ = ["Clock", "FileOffsetClock", "OffsetClock", "SystemClock", "system_clock"]
