"""Structured audit events: one JSON object per rotation step.

The audit trail is the record a person (or a SIEM) reads after the fact, so
every event has one shape, audit schema v1 (``config/audit.md``,
``config/audit.schema.json``): ``timestamp`` (RFC 3339, UTC, ``Z``),
``level``, ``event`` (dotted), ``target``, ``rotation_id``, ``outcome`` (null
when they do not apply) and ``actor`` (trigger, OS user, host, pid, and the
Kubernetes pod, namespace and service account when the environment names
them), then the event's own fields.  Events go through a structlog
processor chain that ends in a JSON line on a stream (stdout for the daemon;
structlog's console rendering instead with ``console=True``) and, optionally,
a JSON line in an append-only file.

Tests read events with :meth:`AuditLog.capture`, not by parsing lines.

Nothing secret is ever passed in; as a second line of defence, :func:`redact`
replaces any field whose name says it could hold secret material.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import structlog

_SECRET_FIELD_HINTS = ("key", "token", "secret", "password", "assertion")
_SAFE_FIELDS = frozenset(
    {"key_id", "old_credential_id", "new_credential_id", "credential_id", "token_id", "kind"}
)

EventDict = MutableMapping[str, Any]
Listener = Callable[[dict[str, Any]], None]

#: The ``schema_version`` of every audit line (bumped on an incompatible change).
SCHEMA_VERSION = 1

#: Events that are not routine; every other event is ``info``.  A SIEM pages
#: on ``critical`` (automatic rotation stopped) and tickets ``error``.
LEVELS: dict[str, str] = {
    "rotation.failed": "error",
    "daemon.start_failed": "error",
    "target.stuck": "critical",
    "rotation.rolled_back": "warning",
    # a window without a valid secret in Vault (bounded by one reconcile)
    "secret.regenerated_after_loss": "warning",
    "config.cleartext_url": "warning",
    "daemon.standby": "warning",
}

#: The fields every line carries, in this order (null when they do not apply).
CORE_FIELDS = ("timestamp", "level", "event", "target", "rotation_id", "outcome", "actor")

#: Environment variables naming the Kubernetes pod (the chart sets them from
#: the downward API) -> key in ``actor``.
_KUBERNETES_ENV = {
    "POD_NAME": "pod",
    "POD_NAMESPACE": "namespace",
    "POD_SERVICE_ACCOUNT": "service_account",
}


def _os_user() -> str:
    """The OS user; a container's uid may have no passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def actor(trigger: str | None) -> dict[str, Any]:
    """Who acts: what triggered it, and which process, user and host (and pod)."""
    found: dict[str, Any] = {
        "trigger": trigger,
        "user": _os_user(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    for variable, key in _KUBERNETES_ENV.items():
        value = os.environ.get(variable)
        if value:
            found[key] = value
    return found


def redact(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace values of secret-looking fields."""
    for name in list(event_dict):
        lowered = name.lower()
        if lowered in _SAFE_FIELDS or lowered.endswith(("_id", "_ids")):
            continue
        if any(hint in lowered for hint in _SECRET_FIELD_HINTS):
            event_dict[name] = "[redacted]"
    return event_dict


#: The audit file names targets, users and credential ids: for the rotator's eyes only.
AUDIT_FILE_MODE = 0o600


def open_private_append(path: Path) -> IO[str]:
    """``path`` opened for appending, created ``AUDIT_FILE_MODE`` if new.

    An existing file keeps its mode: an operator who widened it on purpose
    (e.g. for a log shipper's group) is not overruled, and it is never widened.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, AUDIT_FILE_MODE)
    return os.fdopen(fd, "a", encoding="utf-8")


_JSON = structlog.processors.JSONRenderer(default=str)
_CONSOLE = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)


def _console_line(event: EventDict) -> str:
    """``HH:MM:SS event key=value ...`` for people (``--log-format console``)."""
    hidden = ("audit", "level", "schema_version", "actor")
    shown = {k: v for k, v in event.items() if k not in hidden and v is not None}
    shown["timestamp"] = str(shown.get("timestamp", ""))[11:19]
    if event.get("level", "info") != "info":
        shown["level"] = event["level"]  # rendered "[error    ]" after the time
    return str(_CONSOLE(None, "info", shown))


class _Sink:
    """The structlog "logger" at the end of the chain: writes each event as
    a JSON line (or a console line) to the stream and, if configured, appends
    its JSON line to the audit file."""

    def __init__(self, stream: IO[str], file: Path | None, *, console: bool = False) -> None:
        self._stream = stream
        self._file = file
        self._console = console
        self._lock = threading.Lock()

    def msg(self, event: EventDict) -> None:
        line = str(_JSON(None, "info", dict(event)))
        with self._lock:
            self._stream.write((_console_line(event) if self._console else line) + "\n")
            self._stream.flush()
            if self._file is not None:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                with open_private_append(self._file) as fh:
                    fh.write(line + "\n")

    info = msg


class AuditLog:
    """Emits audit events as JSON lines to a stream and, optionally, a file.

    ``console=True`` renders the stream's lines for people (structlog's
    console renderer); the file always gets JSON lines.  ``trigger`` is the
    ``actor.trigger`` of events that do not name their own (``schedule`` for
    the daemon, ``cli`` for a command).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        file: str | Path | None = None,
        *,
        console: bool = False,
        trigger: str | None = None,
    ) -> None:
        path = Path(file) if file else None
        self._listeners: list[Listener] = []
        self._trigger = trigger
        self._logger = structlog.wrap_logger(
            _Sink(stream if stream is not None else sys.stdout, path, console=console),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
                redact,
                self._remember,
                _to_sink,
            ],
            cache_logger_on_first_use=False,
        )
        self._local = threading.local()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every event (metrics and notifications hook in here)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    @contextmanager
    def capture(self) -> Iterator[list[dict[str, Any]]]:
        """The events emitted inside the ``with`` block, as written (redacted,
        with ``timestamp`` and ``level``), like ``structlog.testing.capture_logs``.
        They are still written to the stream and the file."""
        events: list[dict[str, Any]] = []
        self.subscribe(events.append)
        try:
            yield events
        finally:
            self.unsubscribe(events.append)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record ``event`` (a dotted name); its level comes from :data:`LEVELS`.

        ``target``, ``rotation_id`` and ``outcome`` are always written (null
        if not given); other ``None`` fields are left out; a ``trigger``
        field goes into ``actor``.  Returns the event as written.
        """
        trigger = fields.pop("trigger", None) or self._trigger
        core = {name: fields.pop(name, None) for name in ("target", "rotation_id", "outcome")}
        self._logger.info(
            event,
            level=LEVELS.get(event, "info"),
            **core,
            actor=actor(trigger),
            audit=True,
            schema_version=SCHEMA_VERSION,
            **{k: v for k, v in fields.items() if v is not None},
        )
        record: dict[str, Any] = self._local.last
        # listeners hear of an event only once it is on record
        for listener in self._listeners:
            listener(dict(record))
        return record

    def _remember(self, _logger: object, _method: str, event_dict: EventDict) -> EventDict:
        # the core fields first, in schema order: a person reads them left to right
        ordered = {name: event_dict.pop(name, None) for name in CORE_FIELDS}
        ordered.update(event_dict)
        self._local.last = dict(ordered)
        return ordered


def _to_sink(
    _logger: object, _method: str, event_dict: EventDict
) -> tuple[tuple[EventDict], dict[str, Any]]:
    """Last processor: hand the event itself to :class:`_Sink` (which renders it)."""
    return (event_dict,), {}
