"""Where the engine gets the time from.

Every decision takes ``now`` from a :class:`~rotator.ports.Clock`, so tests can move time
(together with the emulator's clock offset) without sleeping.
"""

from __future__ import annotations

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


__all__ = ["Clock", "OffsetClock", "SystemClock"]
