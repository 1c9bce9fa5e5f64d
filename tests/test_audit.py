"""The audit trail: one JSON line per event, on the stream and in the file."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from rotator.audit import AuditLog


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


def test_fields_that_look_secret_are_redacted_but_ids_are_kept() -> None:
    stream = io.StringIO()
    record = AuditLog(stream).emit(
        "x",
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
    audit.emit("one")
    audit.emit("two")
    assert seen == [("one", 1), ("two", 2)]


def test_capture_yields_the_events_emitted_inside_the_block_as_written() -> None:
    stream = io.StringIO()
    audit = AuditLog(stream)
    audit.emit("before")
    with audit.capture() as events:
        audit.emit("rotation.started", target="billing", token="pat-value", credential_id=None)
        audit.emit("rotation.completed", target="billing", vault_version=3)
    audit.emit("after")

    assert [e["event"] for e in events] == ["rotation.started", "rotation.completed"]
    assert events[0]["token"] == "[redacted]"  # redacted, as written
    assert "credential_id" not in events[0]
    assert events[1]["vault_version"] == 3
    assert all(e["level"] == "info" and e["timestamp"].endswith("Z") for e in events)
    assert len(stream.getvalue().splitlines()) == 4  # still written


def test_console_rendering_for_people_and_json_in_the_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    audit = AuditLog(stream, file=tmp_path / "audit.jsonl", console=True)
    audit.emit("rotation.completed", target="billing", vault_version=3, token="pat-value")

    [line] = stream.getvalue().splitlines()
    stamp, event, *fields = line.split()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", stamp)
    assert event == "rotation.completed"
    assert fields == ["target=billing", "vault_version=3", "token=[redacted]"]
    [record] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert record["event"] == "rotation.completed"
    assert record["token"] == "[redacted]"
