"""What the daemon tells its operator (log lines, not audit events).

The audit stream says what happened to each credential; these lines say what
the daemon is doing and will do: each target's next run (at start, then only
when it changes), one summary per reconcile pass, and for ``run --once`` why
it exits non-zero.  Plain ``logging`` records of the ``rotator.daemon``
logger at INFO (``rotator run`` shows them on stderr), each with its figures
as structured fields too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rotator.report import Outcome, RotationResult

log = logging.getLogger("rotator.daemon")

#: Outcomes counted in a pass summary, in the order shown.
_COUNTED = (Outcome.ROTATED, Outcome.RETIRED, Outcome.FAILED, Outcome.STUCK)


def instant(value: datetime) -> str:
    """``2026-12-31T00:00:00Z``: RFC 3339 UTC, to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def relative(value: datetime, now: datetime) -> str:
    """``in 29d``, ``in 5h``, ``in 12m``, ``3d ago``, ``now`` (one unit, rounded down)."""
    from rotator.cli import relative as cli_relative  # noqa: PLC0415 - the status table's wording

    return cli_relative(value, now)


def when(value: datetime, now: datetime) -> str:
    return f"{instant(value)} ({relative(value, now)})"


@dataclass(frozen=True)
class Summary:
    targets: int
    counts: dict[str, int]
    next_target: str | None
    next_at: datetime | None

    def line(self, now: datetime) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        due = (
            f"next due: {self.next_target} at {when(self.next_at, now)}"
            if self.next_target is not None and self.next_at is not None
            else "nothing scheduled"
        )
        return f"reconcile pass: {self.targets} targets: {counts}; {due}"


def summarise(results: Iterable[RotationResult]) -> Summary:
    """Counts by outcome of every run in ``results`` (a target may run twice in
    a pass: a failure, then its retry) and the earliest next run, each
    target's latest result counting."""
    latest: dict[str, RotationResult] = {}
    counts = {o.value: 0 for o in _COUNTED}
    for r in results:
        latest[r.target] = r
        if r.outcome in _COUNTED:
            counts[r.outcome.value] += 1
    timed = [(r.next_run_at, r.target) for r in latest.values() if r.next_run_at is not None]
    next_at, next_target = min(timed) if timed else (None, None)
    return Summary(len(latest), counts, next_target, next_at)


def exit_reasons(results: Sequence[RotationResult], now: datetime) -> list[str]:
    """One line per target that makes ``run --once`` exit non-zero, and why."""
    lines = []
    for r in results:
        if r.outcome not in (Outcome.FAILED, Outcome.STUCK):
            continue
        error = " ".join((r.error or "no error recorded").split())
        if r.outcome is Outcome.STUCK:
            hint = f"stuck; `rotator rotate --force {r.target}` once the cause is fixed"
        elif r.next_run_at is not None:
            failures = r.status.failures if r.status is not None else 0
            attempts = f" after {failures} failures" if failures > 1 else ""
            hint = f"failed{attempts}; next attempt {when(r.next_run_at, now)}"
        else:
            hint = "failed"
        lines.append(f"rotator: {r.target}: {hint}: {error}")
    return lines


class OperatorLog:
    """Remembers what it last said of each target, and the results of the pass
    under way, so the daemon logs changes and one summary per pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, datetime | None] = {}
        self._pass: list[RotationResult] | None = None

    def record(self, result: RotationResult, now: datetime) -> None:
        """A target's run finished: log its next run if it changed (or is new)."""
        name, at = result.target, result.next_run_at
        with self._lock:
            changed = name not in self._next or self._next[name] != at
            self._next[name] = at
            if self._pass is not None:
                self._pass.append(result)
        if not changed:
            return
        if at is None:
            log.info(
                "target %s: no run scheduled (%s)",
                name,
                result.outcome.value,
                extra={"target": name, "next_run_at": None},
            )
        else:
            log.info(
                "target %s: next run %s",
                name,
                when(at, now),
                extra={"target": name, "next_run_at": instant(at)},
            )

    def begin_pass(self) -> None:
        with self._lock:
            self._pass = []

    def end_pass(self, now: datetime) -> Summary | None:
        with self._lock:
            results, self._pass = self._pass, None
        if results is None:
            return None
        summary = summarise(results)
        self.summary(summary, now)
        return summary

    @staticmethod
    def summary(summary: Summary, now: datetime) -> None:
        log.info(
            summary.line(now),
            extra={
                "targets": summary.targets,
                **summary.counts,
                "next_target": summary.next_target,
                "next_at": instant(summary.next_at) if summary.next_at else None,
            },
        )
