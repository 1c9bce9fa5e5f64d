"""A pytest plugin: every audit event emitted in the test process must
validate against config/audit.schema.json (audit schema v1).

It wraps :meth:`AuditLog.emit` for the whole session, validates each event as
written (the JSON a SIEM would parse), and fails the session at the end if
any did not.  Validation is cheap (a compiled validator, about 50 µs an event).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from rotator.audit import AuditLog

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "audit.schema.json"

_validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
_invalid: list[str] = []
_seen = [0]


def problems(event: dict[str, Any]) -> list[str]:
    """What is wrong with ``event`` (as written) against the schema; [] if valid."""
    document = json.loads(json.dumps(event, default=str))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
        for e in _validator.iter_errors(document)
    ]


def pytest_configure(config: pytest.Config) -> None:
    original = AuditLog.emit

    def checked(self: AuditLog, event: str, **fields: Any) -> dict[str, Any]:
        record = original(self, event, **fields)
        _seen[0] += 1
        found = problems(record)
        if found:
            _invalid.append(f"{event}: {'; '.join(found)}")
        return record

    AuditLog.emit = checked  # type: ignore[method-assign]
    config.add_cleanup(lambda: setattr(AuditLog, "emit", original))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _invalid and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _invalid:
        terminalreporter.section("audit events that do not validate against audit schema v1")
        for line in dict.fromkeys(_invalid):
            terminalreporter.write_line(line)
    elif _seen[0]:
        terminalreporter.write_line(f"audit schema v1: {_seen[0]} events validated")
