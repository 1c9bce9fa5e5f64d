"""The audit trail: one JSON line per event, on the stream and in the file."""

from __future__ import annotations

import getpass
import io
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from rotator.audit import AuditLog
from tests.harness.audit_schema import problems


def test_each_event_is_one_json_line_on_the_stream_and_in_the_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    audit = AuditLog(stream, file=tmp_path / "logs" / "audit.jsonl")
    audit.emit("rotation.started", target="billing", rotation_id="r1", old_credential_id=None)
    audit.emit("rotation.completed", target="billing", rotation_id="r1", vault_version=3)

    lines = stream.getvalue().splitlines()
    assert lines == (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["rotation.started", "rotation.completed"]
    assert all(e["audit"] is True and e["level"] == "info" for e in events)
    assert all(e["timestamp"].endswith("Z") for e in events)
    assert "old_credential_id" not in events[0]  # None fields are left out
    assert events[1]["vault_version"] == 3


def test_every_line_has_the_v1_shape_core_fields_first_null_when_not_applicable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("POD_NAME", "POD_NAMESPACE", "POD_SERVICE_ACCOUNT"):
        monkeypatch.delenv(variable, raising=False)
    stream = io.StringIO()
    audit = AuditLog(stream, trigger="cli")
    audit.emit("daemon.stopped", identity="host:1")

    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert list(event)[:7] == [
        "timestamp", "level", "event", "target", "rotation_id", "outcome", "actor",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", event["timestamp"])
    assert (event["target"], event["rotation_id"], event["outcome"]) == (None, None, None)
    assert event["actor"] == {
        "trigger": "cli",
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    assert (event["schema_version"], event["identity"]) == (1, "host:1")
    assert problems(event) == []


def test_the_actor_names_the_kubernetes_pod_and_an_events_own_trigger_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "rotator-7d9f-x2")
    monkeypatch.setenv("POD_NAMESPACE", "platform")
    monkeypatch.setenv("POD_SERVICE_ACCOUNT", "zitadel-rotator")
    record = AuditLog(io.StringIO(), trigger="cli").emit(
        "rotation.started", target="billing", rotation_id="r1", trigger="schedule"
    )
    assert record["actor"]["trigger"] == "schedule"
    assert {k: record["actor"][k] for k in ("pod", "namespace", "service_account")} == {
        "pod": "rotator-7d9f-x2",
        "namespace": "platform",
        "service_account": "zitadel-rotator",
    }
    assert "trigger" not in record  # only in actor


@pytest.mark.parametrize(
    ("event", "fields", "level"),
    [
        ("rotation.failed", {"outcome": "failure", "error": "boom", "attempt": 1}, "error"),
        ("target.stuck", {"outcome": "stuck"}, "critical"),
        ("rotation.rolled_back", {"outcome": "failure"}, "warning"),
        ("rotation.completed", {"outcome": "success", "rotation_id": "r1"}, "info"),
        ("credential.retired", {"outcome": "success"}, "info"),
    ],
)
def test_levels_say_how_bad_it_is(event: str, fields: dict[str, Any], level: str) -> None:
    assert AuditLog(io.StringIO()).emit(event, target="billing", **fields)["level"] == level


def test_the_schema_rejects_what_v1_forbids() -> None:
    good = AuditLog(io.StringIO(), trigger="schedule").emit(
        "rotation.failed", target="billing", outcome="failure", error="boom", attempt=1
    )
    assert problems(good) == []
    assert problems({**good, "event": "zitadel_api_detected"})  # undotted, unknown
    assert problems({**good, "timestamp": "2024-05-01T00:00:00+00:00"})  # not Z
    assert problems({**good, "level": "info"})  # a failure is an error
    assert problems({k: v for k, v in good.items() if k != "rotation_id"})  # core field missing
    assert problems({**good, "actor": {**good["actor"], "trigger": "cron"}})


def test_fields_that_look_secret_are_redacted_but_ids_are_kept() -> None:
    stream = io.StringIO()
    record = AuditLog(stream).emit(
        "rotation.started",
        target="billing",
        rotation_id="r1",
        private_key="-----BEGIN RSA PRIVATE KEY-----abc",
        token="pat-value",
        client_secret="s3cr3t",
        key_id="123",
        new_credential_id="456",
    )
    text = stream.getvalue()
    for secret in ("BEGIN RSA", "pat-value", "s3cr3t"):
        assert secret not in text
    assert record["private_key"] == record["token"] == record["client_secret"] == "[redacted]"
    assert (record["key_id"], record["new_credential_id"]) == ("123", "456")


def test_listeners_hear_of_an_event_after_it_is_written() -> None:
    stream = io.StringIO()
    audit = AuditLog(stream)
    seen: list[tuple[str, int]] = []

    def listener(event: dict[str, Any]) -> None:
        seen.append((event["event"], len(stream.getvalue().splitlines())))

    audit.subscribe(listener)
    audit.emit("daemon.started")
    audit.emit("daemon.stopped")
    assert seen == [("daemon.started", 1), ("daemon.stopped", 2)]


def test_capture_yields_the_events_emitted_inside_the_block_as_written() -> None:
    stream = io.StringIO()
    audit = AuditLog(stream)
    audit.emit("daemon.started")
    with audit.capture() as events:
        audit.emit(
            "rotation.started", target="billing", rotation_id="r1", token="pat-value",
            credential_id=None,
        )
        audit.emit("rotation.completed", target="billing", rotation_id="r1", vault_version=3)
    audit.emit("daemon.stopped")

    assert [e["event"] for e in events] == ["rotation.started", "rotation.completed"]
    assert events[0]["token"] == "[redacted]"  # redacted, as written
    assert "credential_id" not in events[0]
    assert events[1]["vault_version"] == 3
    assert all(e["level"] == "info" and e["timestamp"].endswith("Z") for e in events)
    assert len(stream.getvalue().splitlines()) == 4  # still written


def test_console_rendering_for_people_and_json_in_the_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    audit = AuditLog(stream, file=tmp_path / "audit.jsonl", console=True)
    audit.emit("rotation.completed", target="billing", rotation_id="r1", token="pat-value")

    [line] = stream.getvalue().splitlines()
    stamp, event, *fields = line.split()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", stamp)
    assert event == "rotation.completed"
    assert fields == ["target=billing", "rotation_id=r1", "token=[redacted]"]
    failed = io.StringIO()
    AuditLog(failed, console=True).emit(
        "rotation.failed", target="billing", outcome="failure", error="boom", attempt=1
    )
    assert failed.getvalue().split()[1:4] == ["[error", "]", "rotation.failed"]

    [record] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert record["event"] == "rotation.completed"
    assert record["token"] == "[redacted]"
