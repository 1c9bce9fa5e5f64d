"""Prometheus metrics for the daemon, in a registry of their own.

Each :class:`Metrics` owns a fresh :class:`CollectorRegistry`, so two daemons
in one process (tests) or a CLI run never share or double-register series.

Sources, chosen so nothing is counted twice:

* **gauges** (expiry, next rotation, last success, ready, stuck) are set from
  what the engine reports: :class:`~rotator.report.RotationResult` after a
  reconcile and :class:`~rotator.report.TargetStatus` from a status read;
* **counters** (rotations by outcome, retries, failures) are driven by audit
  events (:meth:`on_audit`, subscribed to :class:`~rotator.audit.AuditLog`),
  which the engine emits exactly once per real event, whoever called it.

Labels are target names and outcome words only: never a credential id,
token or path that could carry a secret.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rotator import __version__
from rotator.model import Target
from rotator.report import Outcome, RotationResult, TargetStatus

# No `*_created` series: they double the counters' cardinality and no alert
# or dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Engine states in which the consumer finds a valid credential and nothing failed.
READY_STATES = frozenset({"ready", "grace", "due", "rotating", "interrupted"})

#: Audit event -> ``outcome`` label of rotator_rotations_total.
_OUTCOME_EVENTS = {
    "rotation.completed": "rotated",
    "credential.retired": "retired",
    "rotation.failed": "failed",
    "target.stuck": "stuck",
    "rotation.rolled_back": "rolled_back",
}
#: Audit events that start an attempt (a retry when the target was failing).
_ATTEMPT_EVENTS = frozenset({"rotation.started", "rotation.resumed"})


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class Metrics:
    def __init__(self, *, version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.expiration = Gauge(
            "rotator_credential_expiration_timestamp_seconds",
            "When the target's current credential expires (Unix time).",
            ["target"], registry=r,
        )
        self.next_rotation = Gauge(
            "rotator_next_rotation_timestamp_seconds",
            "When the target's next rotation is planned (Unix time; windows applied).",
            ["target"], registry=r,
        )
        self.last_success = Gauge(
            "rotator_last_success_timestamp_seconds",
            "When the target was last rotated successfully (Unix time).",
            ["target"], registry=r,
        )
        self.ready = Gauge(
            "rotator_target_ready",
            "1 when the target holds a valid credential and its last attempt did not fail.",
            ["target"], registry=r,
        )
        self.stuck = Gauge(
            "rotator_target_stuck",
            "1 when the target gave up after too many failures (needs `rotate --force`).",
            ["target"], registry=r,
        )
        self.rotations = Counter(
            "rotator_rotations",
            "Rotation steps by outcome: rotated, retired, failed, stuck, rolled_back.",
            ["target", "outcome"], registry=r,
        )
        self.retries = Counter(
            "rotator_retries",
            "Attempts made while the target was failing.",
            ["target"], registry=r,
        )
        self.failures = Counter(
            "rotator_failures",
            "Failed attempts.",
            ["target"], registry=r,
        )
        self.consecutive_failures = Gauge(
            "rotator_consecutive_failures",
            "Failed attempts in a row (0 after a success): a rolled-back attempt that"
            " the retry repairs is 1, then 0; alert on >= 2, not on rotations_total.",
            ["target"], registry=r,
        )
        self.leader = Gauge(
            "rotator_leader", "1 while this replica holds the lease and runs rotations.",
            registry=r,
        )
        self.build_info = Gauge(
            "rotator_build_info", "Always 1; the version is in the label.", ["version"],
            registry=r,
        )
        self.build_info.labels(version=version).set(1)
        self.target_info = Gauge(
            "rotator_target_info",
            "Always 1; what each target is (join on `target` for kind, user, org, path, API).",
            ["target", "kind", "user", "user_id", "org_id", "vault_path", "api"], registry=r,
        )
        self.webkey_active_since = Gauge(
            "rotator_webkey_active_since_timestamp_seconds",
            "When the web key target's active signing key became active (Unix time).",
            ["target"], registry=r,
        )
        self.webkey_published = Gauge(
            "rotator_webkey_published_keys",
            "Web keys served at /oauth/v2/keys (ZITADEL's JWKS) at the last look.",
            ["target"], registry=r,
        )
        #: The info series' labels per target: user_id is known once the user
        #: was looked up (a status read), so the series is replaced then.
        self._info: dict[str, dict[str, str]] = {}
        self._failing: dict[str, bool] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ inputs

    def declare_targets(self, targets: Iterable[Target], *, api: str) -> None:
        """Every configured target's info series, and its counters at 0: the
        first failure is then an increase from 0, which ``increase()`` sees."""
        for t in targets:
            self._set_info(t.name, {
                "target": t.name,
                "kind": t.kind.value,
                "user": t.user,
                "user_id": t.user if t.user.isdigit() else "",
                "org_id": t.org_id or "",
                "vault_path": t.vault_path,
                "api": api,
            })
            for outcome in _OUTCOME_EVENTS.values():
                self.rotations.labels(target=t.name, outcome=outcome)
            self.retries.labels(target=t.name)
            self.failures.labels(target=t.name)
            self.consecutive_failures.labels(target=t.name).set(0)

    def _set_info(self, target: str, labels: dict[str, str]) -> None:
        old = self._info.get(target)
        if old is not None:
            with contextlib.suppress(KeyError):
                self.target_info.remove(*old.values())
        self._info[target] = labels
        self.target_info.labels(**labels).set(1)

    def observe_status(self, status: TargetStatus) -> None:
        """Set the gauges from an engine status read."""
        name = status.target
        info = self._info.get(name)
        if info is not None and status.user_id and info["user_id"] != status.user_id:
            self._set_info(name, {**info, "user_id": status.user_id})
        self._set(self.expiration, name, _ts(status.expires_at))
        self._set(self.last_success, name, _ts(status.last_success_at))
        self.ready.labels(target=name).set(1 if status.state in READY_STATES else 0)
        self.stuck.labels(target=name).set(1 if status.state == "stuck" else 0)
        self.consecutive_failures.labels(target=name).set(status.failures)
        with self._lock:
            self._failing[name] = status.failures > 0

    def observe_result(self, result: RotationResult) -> None:
        """Set the gauges from a reconcile result."""
        name = result.target
        if result.outcome in (Outcome.DRY_RUN, Outcome.REFUSED):
            return  # nothing happened: the gauges stand
        if result.expires_at is not None:
            self.expiration.labels(target=name).set(result.expires_at.timestamp())
        ok = result.outcome in (Outcome.ROTATED, Outcome.RETIRED, Outcome.UP_TO_DATE)
        self.ready.labels(target=name).set(1 if ok and result.credential_id else 0)
        # A FAILED result says nothing about stuck (it may come from a run that
        # could not even read the target's state): leave the gauge as it was.
        if result.outcome is Outcome.STUCK:
            self.stuck.labels(target=name).set(1)
        elif ok:
            self.stuck.labels(target=name).set(0)

    def observe_webkey(self, status: Any) -> None:
        """Gauges of a web key target (rotator.webkey_runner.WebKeyStatus); the
        next rotation goes to ``rotator_next_rotation_timestamp_seconds``."""
        self._set(self.webkey_active_since, status.target, _ts(status.active_since))
        published = status.published
        self._set(self.webkey_published, status.target,
                  float(published) if published is not None else None)

    def set_next_rotation(self, target: str, when: datetime | None) -> None:
        self._set(self.next_rotation, target, _ts(when))

    def set_leader(self, active: bool) -> None:
        self.leader.set(1 if active else 0)

    def on_audit(self, event: Mapping[str, Any]) -> None:
        """AuditLog listener: count outcomes, failures and retries."""
        name = event.get("event")
        target = event.get("target")
        if not isinstance(name, str) or not isinstance(target, str):
            return
        with self._lock:
            if name in _ATTEMPT_EVENTS and self._failing.get(target):
                # one retry per attempt: a resumed intent plus a fresh start count once
                self._failing[target] = False
                self.retries.labels(target=target).inc()
            if name == "rotation.failed":
                self._failing[target] = True
                self.failures.labels(target=target).inc()
                self.consecutive_failures.labels(target=target).inc()
            elif name == "rotation.completed":
                self._failing[target] = False
                self.consecutive_failures.labels(target=target).set(0)
        outcome = _OUTCOME_EVENTS.get(name)
        if outcome is not None:
            self.rotations.labels(target=target, outcome=outcome).inc()

    def forget(self, target: str) -> None:
        """Drop the per-target gauges of a target no longer configured."""
        for gauge in (self.expiration, self.next_rotation, self.last_success, self.ready,
                      self.stuck, self.consecutive_failures):
            with contextlib.suppress(KeyError):
                gauge.remove(target)

    # ------------------------------------------------------------ output

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def _set(gauge: Gauge, target: str, value: float | None) -> None:
        if value is None:
            with contextlib.suppress(KeyError):
                gauge.remove(target)
        else:
            gauge.labels(target=target).set(value)

