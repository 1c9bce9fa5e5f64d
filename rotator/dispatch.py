"""Runs target reconciles on a bounded pool of threads, each at its time.

One queue ordered by due time holds at most one entry per target (a target
costs a heap entry, not a scheduler job), and a second, first-come queue
holds the periodic pass over every target.  A worker always takes a *timed*
entry that is due before anything of the pass, so a rotation due now never
waits behind ten thousand idle checks.  Never two reconciles of one target
run at once: an entry that comes due while its target runs is run again
right after.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

#: What a worker runs: reconcile the named target; returns seconds until its next run (or None).
Job = Callable[[str], float | None]


class Dispatcher:
    def __init__(
        self,
        job: Job,
        *,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
        name: str = "rotator-worker",
    ) -> None:
        self._job, self._clock = job, clock
        self._cond = threading.Condition()
        self._timed: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, int]] = {}  # the live entry of each target
        self._pass: deque[str] = deque()
        self._in_pass: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._seq = itertools.count()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        self._idle_waiters: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ API

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """No new job starts; the ones running finish (``wait``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                if thread.ident is not None:  # started
                    thread.join()

    def at(self, name: str, delay: float | None) -> None:
        """Run ``name`` in ``delay`` seconds (None: unschedule); replaces its entry."""
        with self._cond:
            if delay is None:
                self._due.pop(name, None)
                return
            due = self._clock() + max(0.0, delay)
            seq = next(self._seq)
            self._due[name] = (due, seq)
            heapq.heappush(self._timed, (due, seq, name))
            self._cond.notify()

    def add_pass(self, names: list[str], on_done: Callable[[], None] | None = None) -> None:
        """Queue every name once behind the timed entries; ``on_done`` after the last ran."""
        with self._cond:
            for name in names:
                if name not in self._in_pass:
                    self._in_pass.add(name)
                    self._pass.append(name)
            if on_done is not None:
                self._idle_waiters.append(on_done)
            self._cond.notify_all()

    def scheduled(self, name: str) -> float | None:
        """Seconds until ``name`` runs (None: no timed entry)."""
        with self._cond:
            entry = self._due.get(name)
            return None if entry is None else entry[0] - self._clock()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._due) + len(self._pass)

    # ------------------------------------------------------------ workers

    def _next(self) -> str | None:
        """The next target to run, or None when stopping (holds the lock)."""
        while not self._stopping:
            now = self._clock()
            while self._timed:
                due, seq, name = self._timed[0]
                if self._due.get(name) != (due, seq):
                    heapq.heappop(self._timed)  # replaced or unscheduled
                    continue
                if due > now:
                    break
                heapq.heappop(self._timed)
                del self._due[name]
                if name in self._running:
                    self._again.add(name)
                    continue
                return name
            while self._pass:
                name = self._pass.popleft()
                self._in_pass.discard(name)
                if name in self._running:
                    self._again.add(name)
                    continue
                return name
            self._notify_idle()
            timeout = self._timed[0][0] - now if self._timed else None
            self._cond.wait(timeout)
        return None

    def _notify_idle(self) -> None:
        """The pass queue ran dry and nothing runs: call who waits for that."""
        if self._idle_waiters and not self._pass and not self._running:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                threading.Thread(target=waiter, name="rotator-pass-done", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                name = self._next()
                if name is None:
                    return
                self._running.add(name)
            delay: float | None = None
            try:
                delay = self._job(name)
            except Exception:  # one target's bug must not kill a worker
                log.exception("job for %s failed", name)
                delay = 60.0
            with self._cond:
                self._running.discard(name)
                if name in self._again:
                    self._again.discard(name)
                    delay = 0.0
                if delay is not None and not self._stopping:
                    entry = self._due.get(name)
                    due = self._clock() + max(0.0, delay)
                    if entry is None or due < entry[0]:
                        seq = next(self._seq)
                        self._due[name] = (due, seq)
                        heapq.heappush(self._timed, (due, seq, name))
                self._cond.notify_all()
