"""What the daemon tells its operator: where it listens, each target's next
run (at start and when it changes), one summary per reconcile pass, and why
``run --once`` exits non-zero (rotator/oplog.py)."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rotator.daemon import run_daemon
from rotator.oplog import exit_reasons, summarise, when
from rotator.report import Outcome, RotationResult
from tests.harness.processes import free_port
from tests.test_daemon import (  # noqa: F401 - fixtures
    Daemon,
    Setup,
    processes,
    setup,
    start_daemon,
    wait_for,
)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def messages(daemon: Daemon) -> list[str]:
    return [str(e["event"]) for e in log_lines(daemon.err) if e.get("logger")]


def test_the_daemon_logs_its_address_next_runs_and_a_summary_per_pass(
    setup: Setup,  # noqa: F811 - the fixture
    processes: list[Daemon],  # noqa: F811
) -> None:
    user = setup.user("key")
    port = free_port()
    target = {"name": "billing", "user": user, "kind": "key", "vault_path": "apps/billing"}
    config = setup.config("logs", [target], port=port, reconcile_interval="1s")
    daemon = start_daemon(setup, config, "logs", port)
    processes.append(daemon)
    wait_for(
        lambda: sum(m.startswith("reconcile pass: ") for m in messages(daemon)) >= 2,
        60,
        "two reconcile passes",
    )
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    lines = log_lines(daemon.err)
    said = [str(e["event"]) for e in lines if e.get("logger")]
    assert said[0] == f"health and metrics on http://127.0.0.1:{port}"

    # The first pass rotates the never-rotated target (no previous credential
    # to retire): its next run is the new key's due time, logged once.
    [scheduled] = [
        e for e in lines if e.get("logger") == "rotator.daemon" and "next run" in e["event"]
    ]
    at = datetime.fromisoformat(scheduled["next_run_at"])
    logged_at = datetime.fromisoformat(scheduled["timestamp"])
    assert scheduled["event"] == f"target billing: next run {when(at, logged_at)}"
    assert scheduled["target"] == "billing"

    passes = [e for e in lines if str(e["event"]).startswith("reconcile pass: ")]
    first, second = passes[0], passes[1]
    assert first["event"] == (
        "reconcile pass: 1 targets: rotated 1, retired 0, failed 0, stuck 0; "
        f"next due: billing at {when(at, datetime.fromisoformat(first['timestamp']))}"
    )
    assert (first["targets"], first["rotated"], first["next_target"]) == (1, 1, "billing")
    # The next pass changes nothing: no new "next run" line, a summary with 0 rotated.
    assert second["event"].startswith("reconcile pass: 1 targets: rotated 0, retired 0, ")
    assert said.count(scheduled["event"]) == 1


def test_run_once_says_why_it_exits_non_zero(
    setup: Setup,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = setup.user("key")
    target = {"name": "billing", "user": user, "kind": "key", "vault_path": "apps/billing"}
    config = setup.config("once", [target], retry_base="10m", retry_cap="10m")
    app = setup.app(config)
    setup.emulator.set_faults(rules=[{"method": "AddKey", "code": "unavailable", "rate": 1.0}])
    try:
        capsys.readouterr()
        assert run_daemon(app, app.config, once=True) == 1
        status = app.engine.status(app.config.targets[0])
        now = datetime.now(UTC)
        # A second run while backing off: it exits 1 again, and says so.
        assert run_daemon(app, app.config, once=True) == 1
    finally:
        setup.emulator.clear_faults()
        app.close()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rotator: ")]
    assert status.next_run_at is not None
    assert status.last_error is not None
    error = " ".join(status.last_error.split())
    line = f"rotator: billing: failed; next attempt {when(status.next_run_at, now)}: {error}"
    assert err == [line, line]
    assert "unavailable" in error


def test_exit_reasons_name_stuck_targets_and_repeated_failures() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    later = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    results = [
        RotationResult("ok", Outcome.UP_TO_DATE),
        RotationResult("billing", Outcome.STUCK, error="no user 'svc-billing'"),
        RotationResult("reports", Outcome.FAILED, error="Vault\nsealed", next_run_at=later),
    ]
    assert exit_reasons(results, now) == [
        "rotator: billing: stuck; `rotator rotate --force billing` once the cause is fixed: "
        "no user 'svc-billing'",
        "rotator: reports: failed; next attempt 2026-12-01T00:30:00Z (in 30m): Vault sealed",
    ]


def test_a_summary_counts_every_run_and_each_targets_latest_next_run() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    soon = datetime(2026, 12, 3, tzinfo=UTC)
    summary = summarise(
        [
            RotationResult("a", Outcome.FAILED, next_run_at=now),
            RotationResult("a", Outcome.ROTATED, next_run_at=soon),
            RotationResult("b", Outcome.RETIRED, next_run_at=datetime(2026, 12, 20, tzinfo=UTC)),
            RotationResult("c", Outcome.STUCK),
        ]
    )
    assert summary.line(now) == (
        "reconcile pass: 3 targets: rotated 1, retired 1, failed 1, stuck 1; "
        "next due: a at 2026-12-03T00:00:00Z (in 2d)"
    )
