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

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

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


#: Outcome labels, in the order a declared target's counters are shown.
_OUTCOMES = tuple(dict.fromkeys(_OUTCOME_EVENTS.values()))
_K = TypeVar("_K")


def _with_zeros(values: dict[_K, float], declared: Iterable[_K]) -> dict[_K, float]:
    """``values`` with a 0 for every declared key it lacks: the declared ones
    first, in their order, then the others (counted before, or undeclared)."""
    shown = {key: values.get(key, 0.0) for key in declared}
    shown.update(values)
    return shown


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


#: The per-target gauges: attribute name -> (metric name, help).
_GAUGES = {
    "expiration": (
        "rotator_credential_expiration_timestamp_seconds",
        "When the target's current credential expires (Unix time).",
    ),
    "next_rotation": (
        "rotator_next_rotation_timestamp_seconds",
        "When the target's next rotation is planned (Unix time; windows applied).",
    ),
    "last_success": (
        "rotator_last_success_timestamp_seconds",
        "When the target was last rotated successfully (Unix time).",
    ),
    "ready": (
        "rotator_target_ready",
        "1 when the target holds a valid credential and its last attempt did not fail.",
    ),
    "stuck": (
        "rotator_target_stuck",
        "1 when the target gave up after too many failures (needs `rotate --force`).",
    ),
    "consecutive_failures": (
        "rotator_consecutive_failures",
        "Failed attempts in a row (0 after a success): a rolled-back attempt that"
        " the retry repairs is 1, then 0; alert on >= 2, not on rotations_total.",
    ),
    "webkey_active_since": (
        "rotator_webkey_active_since_timestamp_seconds",
        "When the web key target's active signing key became active (Unix time).",
    ),
    "webkey_published": (
        "rotator_webkey_published_keys",
        "Web keys served at /oauth/v2/keys (ZITADEL's JWKS) at the last look.",
    ),
}
_INFO_LABELS = ("target", "kind", "user", "user_id", "org_id", "vault_path", "api")


class _Series:
    """Every series of the registry, as plain numbers in dicts.

    A ``prometheus_client`` child (one per label set) costs ~500 bytes; a
    daemon has 13 per target, ~7 KB, most of its memory per target.  Here a
    series is a dict entry, turned into metric families only when scraped;
    the exposition is the same as with ``Gauge``/``Counter`` objects.  A
    declared target's counters and failures-in-a-row gauge at 0 are not stored
    at all (~0.6 KB a target): :meth:`collect` shows the 0.
    """

    def __init__(self, version: str) -> None:
        self.lock = threading.Lock()
        self.gauges: dict[str, dict[str, float]] = {name: {} for name in _GAUGES}
        self.rotations: dict[tuple[str, str], float] = {}
        self.retries: dict[str, float] = {}
        self.failures: dict[str, float] = {}
        self.leader = 0.0
        self.version = version
        self.info: dict[str, tuple[str, ...]] = {}
        self._rendering = threading.local()

    def families(self) -> Iterator[_Family]:
        """Every family of the series, from a copy taken under the lock."""
        with self.lock:
            gauges = {name: dict(values) for name, values in self.gauges.items()}
            rotations, retries = dict(self.rotations), dict(self.retries)
            failures, info, leader = dict(self.failures), dict(self.info), self.leader
        declared = list(info)
        for attribute, (name, help_text) in _GAUGES.items():
            values = gauges[attribute]
            if attribute == "consecutive_failures":
                values = _with_zeros(values, declared)
            yield _Family(name, "gauge", help_text, ("target",),
                          (((t,), v) for t, v in values.items()))
        keys = [(t, o) for t in declared for o in _OUTCOMES]
        yield _Family(
            "rotator_rotations", "counter",
            "Rotation steps by outcome: rotated, retired, failed, stuck, rolled_back.",
            ("target", "outcome"), _with_zeros(rotations, keys).items(),
        )
        for name, help_text, values in (
            ("rotator_retries", "Attempts made while the target was failing.", retries),
            ("rotator_failures", "Failed attempts.", failures),
        ):
            yield _Family(name, "counter", help_text, ("target",),
                          (((t,), v) for t, v in _with_zeros(values, declared).items()))
        yield _Family("rotator_leader", "gauge",
                      "1 while this replica holds the lease and runs rotations.", (),
                      [((), leader)])
        yield _Family("rotator_build_info", "gauge", "Always 1; the version is in the label.",
                      ("version",), [((self.version,), 1.0)])
        yield _Family(
            "rotator_target_info", "gauge",
            "Always 1; what each target is (join on `target` for kind, user, org, path, API).",
            _INFO_LABELS, ((labels, 1.0) for labels in info.values()),
        )

    def collect(self) -> Iterator[Metric]:
        """For the registry (``registry.collect()``); a scrape uses :meth:`exposition`."""
        if getattr(self._rendering, "active", False):
            return  # Metrics.render() writes these itself
        for family in self.families():
            kind = GaugeMetricFamily if family.type == "gauge" else CounterMetricFamily
            metric = kind(family.name, family.help, labels=list(family.labels))
            for values, value in family.samples:
                metric.add_metric(list(values), value)
            yield metric

    def exposition(self) -> bytes:
        """The text format, as ``generate_latest`` writes it, without building a
        ``Sample`` (a tuple and a dict) per series: at 10,000 targets a scrape
        made ~130,000 of them, and their memory stayed with the process."""
        parts: list[bytes] = []
        for family in self.families():
            name = f"{family.name}_total" if family.type == "counter" else family.name
            help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
            lines = [f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n"]
            order = sorted(range(len(family.labels)), key=lambda i: family.labels[i])
            for values, value in family.samples:
                labels = ",".join(
                    f'{family.labels[i]}="{_escape(values[i])}"' for i in order
                )
                braces = f"{{{labels}}}" if labels else ""
                value_text = floatToGoString(value)  # type: ignore[no-untyped-call]
                lines.append(f"{name}{braces} {value_text}\n")
            parts.append("".join(lines).encode())
        return b"".join(parts)

    @contextmanager
    def rendering(self) -> Iterator[None]:
        """While active, :meth:`collect` yields nothing in this thread."""
        self._rendering.active = True
        try:
            yield
        finally:
            self._rendering.active = False


@dataclass(frozen=True)
class _Family:
    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    samples: Iterable[tuple[tuple[str, ...], float]]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Metrics:
    def __init__(self, *, version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series = _Series(version)
        self.registry.register(self._series)
        self._failing: dict[str, bool] = {}
        self._lock = threading.Lock()

    def declare_targets(self, targets: Iterable[Target], *, api: str) -> None:
        """Every configured target's info series, and its counters at 0: the
        first failure is then an increase from 0, which ``increase()`` sees."""
        series = self._series
        with series.lock:
            for t in targets:
                series.info[t.name] = (
                    t.name,
                    t.kind.value,
                    ",".join(t.identities),  # both users of a two-identity target
                    # the id (of the identity in use) once a status read knows it
                    t.user if t.user.isdigit() and not t.users else "",
                    t.org_id or "",
                    t.vault_path,
                    api,
                )

    def observe_status(self, status: TargetStatus) -> None:
        """Set the gauges from an engine status read."""
        name = status.target
        user_id = _INFO_LABELS.index("user_id")
        with self._series.lock:
            info = self._series.info.get(name)
            if info is not None and status.user_id and info[user_id] != status.user_id:
                self._series.info[name] = (*info[:user_id], status.user_id, *info[user_id + 1:])
        self._set("expiration", name, _ts(status.expires_at))
        self._set("last_success", name, _ts(status.last_success_at))
        self._set("ready", name, 1 if status.state in READY_STATES else 0)
        self._set("stuck", name, 1 if status.state == "stuck" else 0)
        self._set("consecutive_failures", name, status.failures)
        with self._lock:
            self._failing[name] = status.failures > 0

    def observe_result(self, result: RotationResult) -> None:
        """Set the gauges from a reconcile result."""
        name = result.target
        if result.outcome in (Outcome.DRY_RUN, Outcome.REFUSED):
            return  # nothing happened: the gauges stand
        if result.expires_at is not None:
            self._set("expiration", name, result.expires_at.timestamp())
        ok = result.outcome in (Outcome.ROTATED, Outcome.RETIRED, Outcome.UP_TO_DATE)
        self._set("ready", name, 1 if ok and result.credential_id else 0)
        # A FAILED result says nothing about stuck (it may come from a run that
        # could not even read the target's state): leave the gauge as it was.
        if result.outcome is Outcome.STUCK:
            self._set("stuck", name, 1)
        elif ok:
            self._set("stuck", name, 0)

    def observe_webkey(self, status: Any) -> None:
        """Gauges of a web key target (rotator.webkey_runner.WebKeyStatus); the
        next rotation goes to ``rotator_next_rotation_timestamp_seconds``."""
        self._set("webkey_active_since", status.target, _ts(status.active_since))
        published = status.published
        self._set("webkey_published", status.target,
                  float(published) if published is not None else None)

    def set_next_rotation(self, target: str, when: datetime | None) -> None:
        self._set("next_rotation", target, _ts(when))

    def set_leader(self, active: bool) -> None:
        with self._series.lock:
            self._series.leader = 1.0 if active else 0.0

    # ------------------------------------------------------------ inputs

    def on_audit(self, event: Mapping[str, Any]) -> None:
        """AuditLog listener: count outcomes, failures and retries."""
        name = event.get("event")
        target = event.get("target")
        if not isinstance(name, str) or not isinstance(target, str):
            return
        series = self._series
        with self._lock, series.lock:
            if name in _ATTEMPT_EVENTS and self._failing.get(target):
                # one retry per attempt: a resumed intent plus a fresh start count once
                self._failing[target] = False
                series.retries[target] = series.retries.get(target, 0.0) + 1
            if name == "rotation.failed":
                self._failing[target] = True
                series.failures[target] = series.failures.get(target, 0.0) + 1
                in_a_row = series.gauges["consecutive_failures"]
                in_a_row[target] = in_a_row.get(target, 0.0) + 1
            elif name == "rotation.completed":
                self._failing[target] = False
                series.gauges["consecutive_failures"][target] = 0.0
            outcome = _OUTCOME_EVENTS.get(name)
            if outcome is not None:
                key = (target, outcome)
                series.rotations[key] = series.rotations.get(key, 0.0) + 1

    def forget(self, target: str) -> None:
        """Drop the per-target gauges (and the declaration) of a target no longer configured."""
        with self._series.lock:
            self._series.info.pop(target, None)
            for values in self._series.gauges.values():
                values.pop(target, None)

    # ------------------------------------------------------------ output

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        with self._series.rendering():  # the other collectors (inventory) as usual
            others = generate_latest(self.registry)
        return self._series.exposition() + others, CONTENT_TYPE_LATEST

    def _set(self, gauge: str, target: str, value: float | None) -> None:
        """Set a per-target gauge; None removes its series."""
        with self._series.lock:
            if value is None:
                self._series.gauges[gauge].pop(target, None)
            else:
                self._series.gauges[gauge][target] = float(value)
