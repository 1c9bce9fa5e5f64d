"""Runtime fault injection (not a ZITADEL feature; driven by /_emulator/faults).

Every transport calls ``faults.check(method)`` once per request, before any
other processing, with the bare method name ("AddKey", "AddMachineKey",
"token", "userinfo", "introspect", ...).  The check may sleep (latency) and
may raise ``EmuError`` with the configured code.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.emulator.errors import EmuError

#: Codes a rule may inject, with the message the emulator answers.  The
#: resource_exhausted text is ZITADEL's quota message (§8); the others are the
#: kind of message a proxy or a failing ZITADEL produces.
INJECTABLE: dict[str, str] = {
    "unavailable": "emulator: injected unavailable",
    "resource_exhausted": "Quota.Access.Exhausted (QUERY-vjAy8)",
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


@dataclass
class Faults:
    latency_ms: int = 0
    rules: list[Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def configure(self, spec: dict[str, Any]) -> None:
        """Replace the configuration with ``{"latency_ms": N, "rules": [...]}``."""
        rules = []
        for raw in spec.get("rules", []):
            code = str(raw["code"])
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
                )
            )
        seed = spec.get("seed")
        with self._lock:
            self.latency_ms = int(spec.get("latency_ms", 0))
            self.rules = rules
            if seed is not None:
                self._rng.seed(seed)

    def clear(self) -> None:
        with self._lock:
            self.latency_ms = 0
            self.rules = []

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "latency_ms": self.latency_ms,
                "rules": [
                    {"method": r.method, "code": r.code, "rate": r.rate, "count": r.count,
                     "latency_ms": r.latency_ms, "fired": r.fired}
                    for r in self.rules
                ],
            }

    def check(self, method: str) -> None:
        delay_ms = self.latency_ms
        failure: EmuError | None = None
        with self._lock:
            for rule in self.rules:
                if rule.method not in ("*", method):
                    continue
                delay_ms += rule.latency_ms
                if rule.count is not None and rule.count <= 0:
                    continue
                if failure is None and self._rng.random() < rule.rate:
                    if rule.count is not None:
                        rule.count -= 1
                    rule.fired += 1
                    failure = EmuError(rule.code, INJECTABLE[rule.code])
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)
        if failure is not None:
            raise failure
