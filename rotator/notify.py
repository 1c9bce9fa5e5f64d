"""Webhook notifications: rotation failed, target stuck, credential expiring.

Two payload forms:

* ``generic``: one JSON object ``{"event", "target", "severity", "message",
  "timestamp", ...}`` with the fields listed in :data:`_SAFE_FIELDS`;
* ``slack``: ``{"text": message}``, accepted by Slack incoming webhooks and
  the many tools that copy their format (Mattermost, Rocket.Chat, Teams
  workflows).

A webhook that is down must never take the daemon with it: sending happens
on a background thread with a bounded queue, each request has a timeout and
a few retries, and failures are logged (never the URL: a Slack webhook URL is
itself a secret) and then dropped.

Payloads carry ids, times and one-line error messages from
:mod:`rotator.errors`, which never hold secret material (server text in
them is redacted of what was sent; :func:`rotator.redact.redact` runs over
the error once more here).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from rotator.redact import redact
from rotator.report import TargetStatus

log = logging.getLogger(__name__)

#: Fields copied from an audit event into a generic payload (ids, times, counts, errors).
_SAFE_FIELDS = (
    "kind",
    "user_id",
    "org",
    "rotation_id",
    "trigger",
    "credential_id",
    "old_credential_id",
    "new_credential_id",
    "vault_path",
    "attempt",
    "next_attempt_at",
    "error",
    "error_type",
    "expires_at",
    "key_id",
    "previous_key_id",
)


@dataclass(frozen=True)
class Notification:
    #: "rotation.failed" | "target.stuck" | "credential.expiring"
    event: str
    target: str
    severity: str
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


def generic_payload(n: Notification) -> dict[str, Any]:
    return {
        "source": "zitadel-rotator",
        "event": n.event,
        "target": n.target,
        "severity": n.severity,
        "message": n.message,
        "timestamp": n.timestamp.isoformat(timespec="seconds"),
        **{k: v for k, v in n.fields.items() if k in _SAFE_FIELDS and v is not None},
    }


def slack_payload(n: Notification) -> dict[str, Any]:
    icon = {"error": ":x:", "critical": ":rotating_light:", "warning": ":warning:"}
    return {"text": f"{icon.get(n.severity, '')} zitadel-rotator: {n.message}".strip()}


def from_audit(event: Mapping[str, Any]) -> Notification | None:
    """The notification an audit event calls for, if any."""
    name, target = event.get("event"), event.get("target")
    if not isinstance(target, str):
        return None
    # Errors are redacted where they are built; the shapes (JWT, PEM, Bearer)
    # are scrubbed once more on the way out, as a webhook leaves our hands.
    error = redact(str(event.get("error") or "unknown error"))
    fields = {k: event.get(k) for k in _SAFE_FIELDS}
    fields["trigger"] = (event.get("actor") or {}).get("trigger")  # audit schema v1
    if fields.get("error") is not None:
        fields["error"] = error
    if name == "rotation.failed":
        attempt = event.get("attempt")
        retry = event.get("next_attempt_at")
        tail = f"; next attempt at {retry}" if retry else ""
        where = f" (attempt {attempt})" if attempt else ""
        return Notification(
            "rotation.failed", target, "error",
            f"rotation of target `{target}` failed{where}: {error}{tail}", fields,
        )
    if name == "rotation.rolled_back" and event.get("kind") == "webkey":
        return Notification(
            "rotation.rolled_back", target, "error",
            f"web key activation of target `{target}` did not take and was rolled back "
            f"(the previous key signs again): {error}",
            fields,
        )
    if name == "target.stuck":
        return Notification(
            "target.stuck", target, "critical",
            f"target `{target}` is stuck after {event.get('attempt', 'too many')} failed "
            f"attempts; automatic rotation stopped until someone runs "
            f"`rotator rotate --force {target}`. Last error: {error}",
            fields,
        )
    return None


def expiring(
    statuses: Iterable[TargetStatus],
    now: datetime,
    threshold: timedelta,
    already: set[tuple[str, str]],
) -> list[Notification]:
    """Notices for credentials expiring within ``threshold`` of ``now``.

    ``already`` holds the (target, credential id) pairs notified before; it
    is updated, so each credential is announced once per threshold crossing.
    A pair whose credential left the threshold (replaced, or the threshold
    grew) is forgotten, so a later crossing is announced again.
    """
    notices: list[Notification] = []
    inside: set[tuple[str, str]] = set()
    for status in statuses:
        if status.expires_at is None or status.credential_id is None:
            continue
        key = (status.target, status.credential_id)
        if status.expires_at - now > threshold:
            continue
        inside.add(key)
        if key in already:
            continue
        left = status.expires_at - now
        when = "has expired" if left <= timedelta(0) else f"expires in {_human(left)}"
        notices.append(
            Notification(
                "credential.expiring", status.target,
                "critical" if left <= timedelta(0) else "warning",
                f"the {status.kind} {status.credential_id} of target `{status.target}` {when} "
                f"(at {status.expires_at.isoformat(timespec='seconds')}); state {status.state}",
                {
                    "kind": status.kind,
                    "credential_id": status.credential_id,
                    "expires_at": status.expires_at.isoformat(),
                    "user_id": status.user_id,
                    "error": status.last_error,
                },
                timestamp=now,
            )
        )
    already.intersection_update(inside)
    already.update(inside)
    return notices


def _human(delta: timedelta) -> str:
    total = int(delta.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {rest // 60}m"


class Webhook:
    """Posts notifications to one URL from a background thread."""

    def __init__(
        self,
        url: str,
        *,
        format: str = "generic",
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.5,
        queue_size: int = 100,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if format not in ("generic", "slack"):
            raise ValueError(f"format: must be generic or slack (got {format!r})")
        self._url = url
        self._payload = slack_payload if format == "slack" else generic_payload
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._queue: queue.Queue[Notification | None] = queue.Queue(maxsize=queue_size)
        self._expiry_seen: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._run, name="rotator-notify", daemon=True)
        self._thread.start()
        self.sent = 0
        self.dropped = 0

    # -------------------------------------------------------------- feeding

    def on_audit(self, event: Mapping[str, Any]) -> None:
        """AuditLog listener: queue the notification an event calls for."""
        notification = from_audit(event)
        if notification is not None:
            self.submit(notification)

    def check_expiry(
        self, statuses: Iterable[TargetStatus], now: datetime, threshold: timedelta
    ) -> int:
        """Queue notices for credentials within ``threshold`` of expiry; returns how many."""
        notices = expiring(statuses, now, threshold, self._expiry_seen)
        for n in notices:
            self.submit(n)
        return len(notices)

    def submit(self, notification: Notification) -> None:
        try:
            self._queue.put_nowait(notification)
        except queue.Full:
            self.dropped += 1
            log.warning(
                "webhook queue full, notification dropped",
                extra={"target": notification.target, "notification": notification.event},
            )

    # -------------------------------------------------------------- sending

    def send(self, notification: Notification) -> bool:
        """POST one notification with bounded retries; True when delivered."""
        body = self._payload(notification)
        for attempt in range(1, self._attempts + 1):
            problem: str
            final = attempt >= self._attempts
            try:
                response = self._client.post(self._url, json=body)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    self.sent += 1
                    return True
                problem = f"HTTP {response.status_code}"
                # the receiver rejects the payload: retrying won't help
                final = final or (400 <= response.status_code < 500 and response.status_code != 429)
            if final:
                log.warning(
                    "webhook delivery failed, notification dropped",
                    extra={
                        "target": notification.target,
                        "notification": notification.event,
                        "problem": problem,
                        "attempts": attempt,
                    },
                )
                self.dropped += 1
                return False
            self._sleep(self._backoff * 2 ** (attempt - 1))
        return False  # pragma: no cover - the loop always returns

    def _run(self) -> None:
        while True:
            notification = self._queue.get()
            try:
                if notification is None:
                    return
                self.send(notification)
            except Exception:  # the notifier must outlive any bug in one send
                log.exception("webhook sender failed")
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is drained (tests, shutdown); True when it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop."""
        self.flush(timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=1)
        self._client.close()
