"""Webhook notifications, delivered to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rotator.audit import AuditLog
from rotator.notify import Webhook, expiring
from rotator.report import TargetStatus

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@dataclass
class Receiver:
    """Records every POST; answers with the queued statuses, then 200."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def wait(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while len(self.bodies) < count and not deadline.is_set():
                self.arrived.wait(0.05)
                self.arrived.clear()
        finally:
            timer.cancel()
        return self.bodies


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            status = rec.statuses.pop(0) if rec.statuses else 200
            rec.bodies.append(body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            rec.arrived.set()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/rotator"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def webhook(url: str, **kwargs: Any) -> Webhook:
    return Webhook(url, timeout=2.0, backoff=0.01, **kwargs)


def failure_event(audit: AuditLog) -> None:
    audit.emit(
        "rotation.failed",
        target="billing",
        kind="key",
        rotation_id="r1",
        outcome="failure",
        error="ZITADEL AddKey: unavailable (unavailable)",
        attempt=2,
        next_attempt_at="2026-11-23T10:04:00+00:00",
    )


def test_rotation_failure_reaches_the_webhook_as_generic_json(receiver: Receiver) -> None:
    hook = webhook(receiver.url)
    audit = AuditLog(stream=io.StringIO())
    audit.subscribe(hook.on_audit)
    failure_event(audit)
    audit.emit("rotation.completed", target="reports", rotation_id="r2")  # not a notification
    hook.close()
    [body] = receiver.wait(1)
    assert body["event"] == "rotation.failed"
    assert body["target"] == "billing"
    assert body["severity"] == "error"
    assert body["attempt"] == 2
    assert body["error"] == "ZITADEL AddKey: unavailable (unavailable)"
    assert "billing" in body["message"]
    assert "2026-11-23T10:04:00" in body["message"]
    assert body["source"] == "zitadel-rotator"


def test_slack_form_is_a_single_text_field(receiver: Receiver) -> None:
    hook = webhook(receiver.url, format="slack")
    audit = AuditLog(stream=io.StringIO())
    audit.subscribe(hook.on_audit)
    audit.emit(
        "target.stuck",
        target="billing",
        outcome="stuck",
        attempt=5,
        error="ZITADEL: denied (permission_denied)",
    )
    hook.close()
    [body] = receiver.wait(1)
    assert set(body) == {"text"}
    assert "`billing` is stuck after 5 failed attempts" in body["text"]
    assert "rotator rotate --force billing" in body["text"]


def test_delivery_is_retried_on_server_errors(receiver: Receiver) -> None:
    receiver.statuses = [503, 500]
    hook = webhook(receiver.url, attempts=3)
    failure_event(AuditLog(stream=io.StringIO()))  # unsubscribed: nothing sent
    hook.on_audit({"event": "rotation.failed", "target": "billing", "error": "e"})
    hook.close()
    assert len(receiver.wait(3)) == 3
    assert hook.sent == 1


def test_a_rejected_payload_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    hook = webhook(receiver.url, attempts=3)
    hook.on_audit({"event": "rotation.failed", "target": "billing", "error": "e"})
    hook.close()
    assert len(receiver.wait(1)) == 1
    assert (hook.sent, hook.dropped) == (0, 1)


def test_an_unreachable_webhook_is_logged_and_dropped_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    secret_url = f"http://127.0.0.1:{port}/services/T000/B000/XXXXSECRETXXXX"
    hook = webhook(secret_url, attempts=2)
    audit = AuditLog(stream=io.StringIO())
    audit.subscribe(hook.on_audit)
    failure_event(audit)  # must not raise into the engine
    hook.close()
    assert hook.dropped == 1
    assert "webhook delivery failed" in caplog.text
    assert "SECRETXXXX" not in caplog.text  # a Slack URL is a secret


def test_payloads_carry_only_safe_fields(receiver: Receiver) -> None:
    hook = webhook(receiver.url)
    hook.on_audit(
        {
            "event": "rotation.failed",
            "target": "billing",
            "error": "boom",
            "private_key": "-----BEGIN PRIVATE KEY-----",
            "token": "pat-value",
            "vault_token": "hvs.x",
        }
    )
    hook.close()
    [body] = receiver.wait(1)
    text = json.dumps(body)
    assert "BEGIN PRIVATE" not in text
    assert "pat-value" not in text
    assert "hvs.x" not in text


def status(
    target: str, credential: str, expires_in: timedelta, state: str = "ready"
) -> TargetStatus:
    return TargetStatus(
        target=target,
        kind="key",
        user_id="u1",
        credential_id=credential,
        expires_at=NOW + expires_in,
        next_rotation_at=None,
        previous_credential_id=None,
        retire_at=None,
        vault_path=f"zitadel/{target}",
        vault_version=1,
        state=state,
        failures=0,
        last_error=None,
        last_success_at=None,
    )


def test_expiry_notices_once_per_credential_per_crossing() -> None:
    seen: set[tuple[str, str]] = set()
    week = timedelta(days=7)
    statuses = [
        status("billing", "k1", timedelta(days=3)),
        status("reports", "p1", timedelta(days=20)),
    ]
    first = expiring(statuses, NOW, week, seen)
    assert [(n.target, n.event, n.severity) for n in first] == [
        ("billing", "credential.expiring", "warning")
    ]
    assert "expires in 3d 0h" in first[0].message
    assert expiring(statuses, NOW + timedelta(hours=1), week, seen) == []  # de-duplicated
    # the credential was replaced: the new one is announced only when it crosses again
    assert expiring([status("billing", "k2", timedelta(days=30))], NOW, week, seen) == []
    again = expiring([status("billing", "k2", timedelta(days=6))], NOW, week, seen)
    assert [n.fields["credential_id"] for n in again] == ["k2"]


def test_an_expired_credential_is_critical() -> None:
    [notice] = expiring(
        [status("billing", "k1", -timedelta(hours=2), "expired")], NOW, timedelta(days=7), set()
    )
    assert notice.severity == "critical"
    assert "has expired" in notice.message


def test_check_expiry_sends_through_the_webhook(receiver: Receiver) -> None:
    hook = webhook(receiver.url, format="slack")
    statuses = [status("billing", "k1", timedelta(days=2))]
    assert hook.check_expiry(statuses, NOW, timedelta(days=7)) == 1
    assert hook.check_expiry(statuses, NOW, timedelta(days=7)) == 0
    hook.close()
    [body] = receiver.wait(1)
    assert "k1 of target `billing` expires in 2d 0h" in body["text"]
