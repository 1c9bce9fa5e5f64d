"""Prometheus metrics: names, labels and values as a scrape shows them.

The end-to-end scrape after real rotations is in test_daemon.py; here the
inputs are the engine's own result/status dataclasses and a real AuditLog.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from rotator.audit import AuditLog
from rotator.metrics import Metrics
from rotator.report import Outcome, RotationResult, TargetStatus

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
EXPIRES = datetime(2026, 12, 23, tzinfo=UTC)


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def status(state: str = "ready", **overrides: object) -> TargetStatus:
    fields: dict[str, object] = {
        "target": "billing",
        "kind": "key",
        "user_id": "u1",
        "credential_id": "k2",
        "expires_at": EXPIRES,
        "next_rotation_at": EXPIRES - timedelta(days=10),
        "previous_credential_id": None,
        "retire_at": None,
        "vault_path": "zitadel/billing",
        "vault_version": 3,
        "state": state,
        "failures": 0,
        "last_error": None,
        "last_success_at": NOW,
    }
    fields.update(overrides)
    return TargetStatus(**fields)  # type: ignore[arg-type]


def test_per_target_gauges_from_status_and_plan() -> None:
    m = Metrics(version="1.2.3")
    m.observe_status(status())
    m.set_next_rotation("billing", EXPIRES - timedelta(days=10))
    m.set_leader(True)
    s = scrape(m)
    t = (("target", "billing"),)
    assert s[("rotator_credential_expiration_timestamp_seconds", t)] == EXPIRES.timestamp()
    assert (
        s[("rotator_next_rotation_timestamp_seconds", t)]
        == (EXPIRES - timedelta(days=10)).timestamp()
    )
    assert s[("rotator_last_success_timestamp_seconds", t)] == NOW.timestamp()
    assert s[("rotator_target_ready", t)] == 1
    assert s[("rotator_target_stuck", t)] == 0
    assert s[("rotator_leader", ())] == 1
    assert s[("rotator_build_info", (("version", "1.2.3"),))] == 1


def test_stuck_and_failing_targets_are_not_ready() -> None:
    m = Metrics()
    m.observe_status(status("stuck", failures=5, target="a"))
    m.observe_status(status("failing", failures=1, target="b"))
    m.observe_status(status("grace", target="c"))
    s = scrape(m)
    assert s[("rotator_target_stuck", (("target", "a"),))] == 1
    assert s[("rotator_target_ready", (("target", "a"),))] == 0
    assert s[("rotator_target_ready", (("target", "b"),))] == 0
    assert s[("rotator_target_stuck", (("target", "b"),))] == 0
    assert s[("rotator_target_ready", (("target", "c"),))] == 1


def test_results_update_the_gauges() -> None:
    m = Metrics()
    m.observe_result(
        RotationResult("billing", Outcome.ROTATED, credential_id="k3", expires_at=EXPIRES)
    )
    s = scrape(m)
    assert s[("rotator_credential_expiration_timestamp_seconds", (("target", "billing"),))] == (
        EXPIRES.timestamp()
    )
    assert s[("rotator_target_ready", (("target", "billing"),))] == 1
    m.observe_result(RotationResult("billing", Outcome.STUCK, credential_id="k3", error="x"))
    s = scrape(m)
    assert s[("rotator_target_ready", (("target", "billing"),))] == 0
    assert s[("rotator_target_stuck", (("target", "billing"),))] == 1
    # a run that failed before it could read the state (Vault down) is no news about stuck
    m.observe_result(RotationResult("billing", Outcome.FAILED, error="Vault is sealed"))
    assert scrape(m)[("rotator_target_stuck", (("target", "billing"),))] == 1
    m.observe_result(RotationResult("billing", Outcome.ROTATED, credential_id="k4"))
    assert scrape(m)[("rotator_target_stuck", (("target", "billing"),))] == 0


def test_counters_follow_audit_events_and_count_retries() -> None:
    m = Metrics()
    audit = AuditLog(stream=io.StringIO())
    audit.subscribe(m.on_audit)
    # attempt 1 fails, attempt 2 (a retry) fails, attempt 3 (a retry) succeeds
    audit.emit("rotation.started", target="billing", rotation_id="r1")
    audit.emit("rotation.failed", target="billing", outcome="failure", attempt=1, error="down")
    audit.emit("rotation.started", target="billing", rotation_id="r1")
    audit.emit("rotation.failed", target="billing", outcome="failure", attempt=2, error="down")
    audit.emit("rotation.started", target="billing", rotation_id="r1")
    audit.emit("rotation.completed", target="billing", rotation_id="r1", outcome="success")
    audit.emit("credential.retired", target="billing", old_credential_id="k1")
    # after a success, the next rotation is not a retry
    audit.emit("rotation.started", target="billing", rotation_id="r1")
    audit.emit("rotation.completed", target="billing", rotation_id="r1", outcome="success")
    audit.emit("rotation.failed", target="reports", outcome="failure", attempt=5, error="e")
    audit.emit("target.stuck", target="reports", outcome="stuck", attempt=5, error="e")
    s = scrape(m)

    def rotations(target: str, outcome: str) -> float:
        return s.get(("rotator_rotations_total", (("outcome", outcome), ("target", target))), 0)

    assert rotations("billing", "rotated") == 2
    assert rotations("billing", "failed") == 2
    assert rotations("billing", "retired") == 1
    assert rotations("reports", "stuck") == 1
    assert s[("rotator_failures_total", (("target", "billing"),))] == 2
    assert s[("rotator_retries_total", (("target", "billing"),))] == 2
    assert s[("rotator_failures_total", (("target", "reports"),))] == 1


def test_a_retry_that_first_cleans_up_an_interrupted_intent_counts_once() -> None:
    m = Metrics()
    m.on_audit({"event": "rotation.failed", "target": "billing", "attempt": 1})
    m.on_audit({"event": "rotation.resumed", "target": "billing"})
    m.on_audit({"event": "rotation.started", "target": "billing"})
    assert scrape(m)[("rotator_retries_total", (("target", "billing"),))] == 1


def test_a_failing_target_seen_in_status_counts_its_next_attempt_as_retry() -> None:
    # a daemon restarted while a target was failing still counts the retry
    m = Metrics()
    m.observe_status(status("failing", failures=2))
    m.on_audit({"event": "rotation.started", "target": "billing"})
    assert scrape(m)[("rotator_retries_total", (("target", "billing"),))] == 1


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.observe_status(status())
    assert ("rotator_target_ready", (("target", "billing"),)) in scrape(a)
    assert ("rotator_target_ready", (("target", "billing"),)) not in scrape(b)


def test_unknown_expiry_removes_the_series_and_forget_drops_a_target() -> None:
    m = Metrics()
    m.observe_status(status())
    m.observe_status(status("missing", expires_at=None, credential_id=None, last_success_at=None))
    s = scrape(m)
    assert ("rotator_credential_expiration_timestamp_seconds", (("target", "billing"),)) not in s
    assert s[("rotator_target_ready", (("target", "billing"),))] == 0
    m.forget("billing")
    assert not any(labels == (("target", "billing"),) for _, labels in scrape(m))


def test_labels_hold_only_target_names_and_outcomes() -> None:
    m = Metrics()
    audit = AuditLog(stream=io.StringIO())
    audit.subscribe(m.on_audit)
    audit.emit(
        "rotation.completed",
        target="billing",
        rotation_id="r1",
        new_credential_id="k9",
        vault_path="zitadel/x",
    )
    m.observe_status(status())
    label_names = {name for (_, labels) in scrape(m) for name, _ in labels}
    assert label_names == {"target", "outcome", "version"}
    body = m.render()[0].decode()
    assert "k9" not in body
    assert "zitadel/x" not in body


def test_declared_targets_have_an_info_series_and_every_counter_at_0() -> None:
    from tests.enginekit import key_target

    m = Metrics()
    m.declare_targets([key_target(org_id="o1")], api="v2")
    samples = scrape(m)
    info = (
        ("api", "v2"), ("kind", "key"), ("org_id", "o1"), ("target", "billing"),
        ("user", "svc-billing"), ("user_id", ""), ("vault_path", "zitadel/billing"),
    )
    assert samples[("rotator_target_info", info)] == 1
    # once a status read knows the user's id, the one info series carries it
    m.observe_status(status(user_id="2741"))
    infos = {labels for name, labels in scrape(m) if name == "rotator_target_info"}
    assert infos == {tuple(sorted({**dict(info), "user_id": "2741"}.items()))}
    for outcome in ("rotated", "retired", "failed", "stuck", "rolled_back"):
        key = ("rotator_rotations_total", (("outcome", outcome), ("target", "billing")))
        assert samples[key] == 0
    assert samples[("rotator_failures_total", (("target", "billing"),))] == 0
    assert samples[("rotator_retries_total", (("target", "billing"),))] == 0
    assert not [name for name, _ in samples if name.endswith("_created")]


def test_a_two_identity_targets_info_names_both_users_and_the_id_of_the_one_in_use() -> None:
    from tests.enginekit import key_target

    m = Metrics()
    m.declare_targets([key_target(user="svc-a", users=("svc-a", "svc-b"))], api="v2")
    m.observe_status(status(user_id="2742"))
    (info,) = [dict(labels) for name, labels in scrape(m) if name == "rotator_target_info"]
    assert (info["user"], info["user_id"]) == ("svc-a,svc-b", "2742")


def test_a_scrape_is_exactly_what_prometheus_client_writes_for_the_same_families() -> None:
    # render() writes the per-target series itself (no Sample object per series);
    # the registry's collect() still yields prometheus_client families: same text
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from tests.enginekit import key_target, pat_target

    m = Metrics(version="1.2.3")
    odd = pat_target(name="reports", user='svc "odd"\\user\nname', org_id="o\\2")
    m.declare_targets([key_target(org_id="o1"), odd], api="v2")
    m.observe_status(status(failures=2, state="failing"))
    m.set_next_rotation("reports", EXPIRES)
    m.set_leader(True)
    m.on_audit({"event": "rotation.failed", "target": "billing"})
    m.on_audit({"event": "rotation.completed", "target": "undeclared"})
    Gauge("rotator_inventory_probe", "Another collector.", registry=m.registry).set(7)

    class Families:  # the registry's families, written by prometheus_client alone
        def collect(self) -> object:
            return m.registry.collect()

    reference = CollectorRegistry()
    reference.register(Families())  # type: ignore[arg-type]
    assert m.render()[0].decode() == generate_latest(reference).decode()
    assert 'user="svc \\"odd\\"\\\\user\\nname"' in m.render()[0].decode()
