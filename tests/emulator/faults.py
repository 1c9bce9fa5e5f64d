"""Runtime fault injection (not a ZITADEL feature; driven by /_emulator/faults).

Every transport calls ``faults.check(method)`` once per request, before any
other processing, with the bare method name ("AddKey", "AddMachineKey",
"token", "userinfo", "introspect", ...).  The check may sleep (latency) and
may raise ``EmuError`` with the configured code.

A rule's ``mode`` says when it strikes:

- ``fail`` (default): before anything happens; ZITADEL does nothing.
- ``slow``: ZITADEL performs and commits the action, then answers only after
  ``latency_ms`` - beyond the client's deadline, the client gives up on a
  credential that exists.
- ``lost``: ZITADEL performs and commits the action, then answers the rule's
  ``code`` (a proxy's 503 after the backend wrote).
- ``drop``: ZITADEL performs and commits the action, then the connection is
  closed without an answer (gRPC: UNAVAILABLE, what a client sees on a reset).

For the last three ``check`` returns an :class:`After` that the transport
applies once the handler succeeded (``after.apply()``).

``list_lag_ms`` hides credentials created less than that long ago (emulator
time) from ListKeys / ListPersonalAccessTokens, v1 and v2, like ZITADEL's
eventually consistent projections.

``rate_limit`` (requests/s, 0 = none; ``--rate-limit N`` or the fault config)
is ZITADEL Cloud's per-client limiter: a request that would be the N+1-th
*admitted* in the last second (sliding window, every method, OAuth included)
is answered 429 / ``RESOURCE_EXHAUSTED`` with the quota message, before
anything else happens.  Rejected requests do not use up the window.

Counters (``counters()``, ``GET /_emulator/counters``; the 429 count also in
``GET /_emulator/faults``): calls per method, 429s from the rate limit, and the
peak number of requests sleeping in the injected latency at once, which shows
whether requests overlap.  The latency sleep holds no lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from tests.emulator.errors import EmuError

MODES = ("fail", "slow", "lost", "drop")


class DropConnection(Exception):
    """Raised by ``After.apply`` in ``drop`` mode: the HTTP server closes the
    connection without writing a response."""


@dataclass(frozen=True)
class After:
    """What happens to a request's answer once ZITADEL has acted."""

    mode: str
    delay_ms: int
    error: EmuError

    def apply(self) -> None:
        """Sleep ``delay_ms``; then raise the lost answer (``lost``: ``EmuError``,
        ``drop``: :class:`DropConnection`) or return (``slow``)."""
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000)
        if self.mode == "lost":
            raise self.error
        if self.mode == "drop":
            raise DropConnection(self.error.message)

#: ZITADEL's quota message (§8): what a rate-limited request is answered.
QUOTA_MESSAGE = "Quota.Access.Exhausted (QUERY-vjAy8)"

#: Codes a rule may inject, with the message the emulator answers.  The
#: resource_exhausted text is ZITADEL's quota message (§8); the others are the
#: kind of message a proxy or a failing ZITADEL produces.
INJECTABLE: dict[str, str] = {
    "unavailable": "emulator: injected unavailable",
    "resource_exhausted": QUOTA_MESSAGE,
    "internal": "Errors.Internal",
    "deadline_exceeded": "emulator: injected deadline exceeded",
    "unknown": "emulator: injected unknown error",
    "aborted": "emulator: injected aborted",
    # a permanent cause: the rotator's identity lost its grant
    "permission_denied": "No matching permissions found (AUTH-5mWD2)",
}


@dataclass
class Rule:
    method: str  # bare method name, or "*" for every method
    code: str
    rate: float = 1.0
    count: int | None = None  # fail only the next N matching calls
    latency_ms: int = 0  # extra delay for matching calls (before the failure roll)
    fired: int = 0
    mode: str = "fail"  # see the module docstring


@dataclass
class Faults:
    latency_ms: int = 0
    rules: list[Rule] = field(default_factory=list)
    #: New keys/PATs are missing from list answers for this long (emulator time).
    list_lag_ms: int = 0
    #: Requests admitted per sliding second; 0 = unlimited.
    rate_limit: int = 0
    #: ``--rate-limit``: what ``rate_limit`` returns to when a configuration
    #: without one replaces the current one, or on ``clear()``.
    startup_rate_limit: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _admitted: deque[float] = field(default_factory=deque, repr=False)
    _calls: Counter[str] = field(default_factory=Counter, repr=False)
    _rate_limited: int = 0
    _delayed_now: int = 0
    _delayed_peak: int = 0

    def counters(self) -> dict[str, Any]:
        """``{"calls": {method: n}, "total": n, "rate_limited": n,
        "peak_concurrent_delays": n}`` since start or the last reset."""
        with self._lock:
            return {"calls": dict(sorted(self._calls.items())),
                    "total": sum(self._calls.values()),
                    "rate_limited": self._rate_limited,
                    "peak_concurrent_delays": self._delayed_peak}

    def reset_counters(self) -> None:
        with self._lock:
            self._calls.clear()
            self._rate_limited = 0
            self._delayed_peak = self._delayed_now

    def _admit(self, now: float) -> bool:
        """Sliding one-second window over admitted requests (caller holds the lock)."""
        if self.rate_limit <= 0:
            return True
        while self._admitted and self._admitted[0] <= now - 1.0:
            self._admitted.popleft()
        if len(self._admitted) >= self.rate_limit:
            return False
        self._admitted.append(now)
        return True

    def configure(self, spec: dict[str, Any]) -> None:
        """Replace the configuration with ``{"latency_ms": N, "list_lag_ms": N,
        "rules": [...], "seed": N}``."""
        rules = []
        for raw in spec.get("rules", []):
            mode = str(raw.get("mode", "fail"))
            if mode not in MODES:
                raise ValueError(f"unsupported fault mode {mode!r}; use one of {list(MODES)}")
            code = str(raw.get("code", "unavailable" if mode != "fail" else ""))
            if code not in INJECTABLE:
                allowed = sorted(INJECTABLE)
                raise ValueError(f"unsupported fault code {code!r}; use one of {allowed}")
            rate = float(raw.get("rate", 1.0))
            if not 0.0 <= rate <= 1.0:
                raise ValueError("rate must be within [0, 1]")
            count = raw.get("count")
            rules.append(
                Rule(
                    method=str(raw.get("method", "*")),
                    code=code,
                    rate=rate,
                    count=None if count is None else int(count),
                    latency_ms=int(raw.get("latency_ms", 0)),
                    mode=mode,
                )
            )
        list_lag_ms = int(spec.get("list_lag_ms", 0))
        if list_lag_ms < 0:
            raise ValueError("list_lag_ms must be >= 0")
        rate_limit = int(spec.get("rate_limit", self.startup_rate_limit))
        if rate_limit < 0:
            raise ValueError("rate_limit must be >= 0 (0 = none)")
        seed = spec.get("seed")
        with self._lock:
            self.latency_ms = int(spec.get("latency_ms", 0))
            self.list_lag_ms = list_lag_ms
            self.rate_limit = rate_limit
            self.rules = rules
            if seed is not None:
                self._rng.seed(seed)

    def clear(self) -> None:
        with self._lock:
            self.latency_ms = 0
            self.list_lag_ms = 0
            self.rate_limit = self.startup_rate_limit
            self.rules = []

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "latency_ms": self.latency_ms,
                "list_lag_ms": self.list_lag_ms,
                "rate_limit": self.rate_limit,
                "rate_limited": self._rate_limited,
                "rules": [
                    {"method": r.method, "code": r.code, "rate": r.rate, "count": r.count,
                     "latency_ms": r.latency_ms, "mode": r.mode, "fired": r.fired}
                    for r in self.rules
                ],
            }

    def check(self, method: str) -> After | None:
        """Delay and/or fail this call now (``fail`` rules), or return what to do
        with its answer once ZITADEL has acted (``slow``/``lost``/``drop``)."""
        delay_ms = self.latency_ms
        failure: EmuError | None = None
        after: After | None = None
        with self._lock:
            self._calls[method] += 1
            if not self._admit(time.monotonic()):
                self._rate_limited += 1
                failure = EmuError("resource_exhausted", QUOTA_MESSAGE)
            for rule in self.rules if failure is None else ():
                if rule.method not in ("*", method):
                    continue
                if rule.mode == "fail":
                    delay_ms += rule.latency_ms
                if rule.count is not None and rule.count <= 0:
                    continue
                if failure is None and after is None and self._rng.random() < rule.rate:
                    if rule.count is not None:
                        rule.count -= 1
                    rule.fired += 1
                    error = EmuError(rule.code, INJECTABLE[rule.code])
                    if rule.mode == "fail":
                        failure = error
                    else:
                        after = After(rule.mode, rule.latency_ms, error)
        if delay_ms > 0:
            self._delay(delay_ms)
        if failure is not None:
            raise failure
        return after

    def _delay(self, delay_ms: int) -> None:
        """The injected round trip: sleeps without any lock held, so concurrent
        requests overlap (16 calls at 50 ms take ~50 ms, not 800)."""
        with self._lock:
            self._delayed_now += 1
            self._delayed_peak = max(self._delayed_peak, self._delayed_now)
        try:
            time.sleep(delay_ms / 1000)
        finally:
            with self._lock:
                self._delayed_now -= 1
