"""Structured audit events: one JSON object per rotation step.

The audit trail is the record a person reads after the fact, so every event
carries the same identifying fields (target, rotation id, credential ids,
vault path and version, trigger, outcome).  Nothing secret is ever passed in;
as a second line of defence, :func:`redact` drops any field whose name says it
could hold secret material.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog

_SECRET_FIELD_HINTS = ("key", "token", "secret", "password", "assertion")
_SAFE_FIELDS = frozenset(
    {"key_id", "old_credential_id", "new_credential_id", "credential_id", "token_id", "kind"}
)


def redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace values of secret-looking fields."""
    for name in list(event_dict):
        lowered = name.lower()
        if lowered in _SAFE_FIELDS or lowered.endswith(("_id", "_ids")):
            continue
        if any(hint in lowered for hint in _SECRET_FIELD_HINTS):
            event_dict[name] = "[redacted]"
    return event_dict


class AuditLog:
    """Emits audit events as JSON lines to a stream and, optionally, a file."""

    def __init__(self, stream: IO[str] | None = None, file: str | Path | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._file = Path(file) if file else None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._processors: list[Any] = [
            structlog.processors.add_log_level,
            redact,
        ]

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener`` with every event (metrics and notifications hook in here)."""
        self._listeners.append(listener)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "audit": True,
            **{k: v for k, v in fields.items() if v is not None},
        }
        processed: MutableMapping[str, Any] = record
        for processor in self._processors:
            processed = processor(None, "info", processed)
        line = json.dumps(processed, default=str, sort_keys=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
            if self._file is not None:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                with self._file.open("a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
        for listener in self._listeners:
            listener(dict(processed))
        return dict(processed)
