"""The daemon against the ZITADEL emulator and a real OpenBao.

Credentials are made *due* by issuing them while both clocks (the rotator's
and the emulator's) are set 25 days back: with lifetime 30d and renew_before
10d they then expire in about 5 days of real time, so they are due now.
Daemons run in-process (a thread, stopped by ``stop_event``) where the test
needs to look inside, and as real ``python -m rotator run`` processes where
it kills or signals them.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rotator.app import App, build
from rotator.audit import AuditLog
from rotator.clock import OffsetClock
from rotator.config import load_config
from rotator.daemon import run_daemon
from rotator.lease import LeaseRecord, VaultLease
from rotator.model import Trigger
from rotator.report import Outcome
from tests.harness.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "ROTATOR_TEST_VAULT_TOKEN"
LEASE_TTL = 5.0
#: Documented takeover bound: the lease lapses ``ttl`` after the last renewal,
#: and a standby polls every ``ttl / 3``.
TAKEOVER_BOUND = LEASE_TTL + LEASE_TTL / 3
BACK = timedelta(days=25)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Setup:
    emulator: Any
    openbao: Any
    mount: str
    tmp: Path
    users: dict[str, str] = field(default_factory=dict)

    def user(self, kind: str) -> str:
        name = f"svc-{kind}-{uuid.uuid4().hex[:8]}"
        self.emulator.add_user(name, org="acme")
        return name

    def config(
        self,
        name: str,
        targets: list[dict[str, Any]],
        *,
        ha: bool = False,
        port: int | None = None,
        webhook: str | None = None,
        **daemon: Any,
    ) -> Path:
        raw: dict[str, Any] = {
            "zitadel": {
                "url": self.emulator.issuer,
                "api": "v2",
                "credentials": {"key_file": str(self.emulator.admin_key_file)},
                "timeout": "5s",
            },
            "vault": {
                "url": self.openbao.url,
                "mount": self.mount,
                "timeout": "5s",
                "auth": {"method": "token", "token_env": TOKEN_ENV},
            },
            "policy": {
                "lifetime": "30d",
                "renew_before": "10d",
                "grace": "1d",
                "verify_timeout": "10s",
            },
            "daemon": {
                "listen": f"127.0.0.1:{port or free_port()}",
                "reconcile_interval": "2s",
                "jitter": "0s",
                "retry_base": "1s",
                "retry_cap": "2s",
                "ha": {"enabled": ha, "lease_ttl": f"{int(LEASE_TTL)}s", "identity": name},
                **daemon,
            },
            "targets": targets,
        }
        if webhook:
            raw["notify"] = {"webhook_url": webhook, "format": "generic"}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def app(self, config: Path, *, back: timedelta = timedelta(0)) -> App:
        return build(
            load_config(config),
            clock=OffsetClock(-back),
            audit=AuditLog(stream=io.StringIO()),
        )

    def seed_due(self, config: Path) -> None:
        """Issue every target's credential 25 days ago: due now.

        The seeding identity is an org owner whose key is created 25 days ago
        too (ZITADEL does not accept a key before its creation time).
        """
        self.emulator.set_clock_offset(-BACK.total_seconds())
        try:
            admin = self.emulator.add_user(
                f"seeder-{uuid.uuid4().hex[:8]}", org="acme", roles=["ORG_OWNER"], key=True
            )
            key_file = self.tmp / "seeder-key.json"
            key_file.write_text(json.dumps(admin["key_file"]))
            raw = yaml.safe_load(config.read_text())
            raw["zitadel"]["credentials"] = {"key_file": str(key_file)}
            seed_config = self.tmp / f"seed-{config.name}"
            seed_config.write_text(yaml.safe_dump(raw, sort_keys=False))
            app = self.app(seed_config, back=BACK)
            try:
                for target in app.config.targets:
                    result = app.engine.reconcile(target, trigger=Trigger.CLI)
                    assert result.outcome is Outcome.ROTATED, result
            finally:
                app.close()
        finally:
            self.emulator.set_clock_offset(0)

    def live_keys(self, user: str) -> list[str]:
        user_id = next(u["id"] for u in self.emulator.state()["users"] if u["username"] == user)
        state = self.emulator.state()
        return [
            c["id"]
            for c in state["keys"] + state["pats"]
            if c["user_id"] == user_id and not c["removed_at"]
        ]


@pytest.fixture
def setup(
    emulator: Any, openbao: Any, kv_mount: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    monkeypatch.setenv(TOKEN_ENV, openbao.root_token)
    emulator.reset()
    yield Setup(emulator, openbao, kv_mount, tmp_path)
    emulator.reset()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


@dataclass
class InProcess:
    thread: threading.Thread
    stop: threading.Event
    code: list[int]

    def shutdown(self, timeout: float = 30) -> int:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.code[0]


def run_in_thread(app: App) -> InProcess:
    stop = threading.Event()
    code: list[int] = []

    def main() -> None:
        code.append(run_daemon(app, app.config, stop_event=stop))

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return InProcess(thread, stop, code)


# --------------------------------------------------------------------------- in-process


def test_daemon_rotates_what_became_due_once_and_metrics_show_it(setup: Setup) -> None:
    billing, reports = setup.user("key"), setup.user("pat")
    port = free_port()
    config = setup.config(
        "solo",
        [
            {"name": "billing", "user": billing, "kind": "key", "vault_path": "apps/billing"},
            {"name": "reports", "user": reports, "kind": "pat", "vault_path": "apps/reports"},
        ],
        port=port,
    )
    setup.seed_due(config)
    app = setup.app(config)
    before = {t.name: app.engine.status(t) for t in app.config.targets}
    assert {s.state for s in before.values()} == {"due"}
    daemon = run_in_thread(app)
    try:

        def rotated() -> bool:
            return all(
                app.engine.status(t).credential_id != before[t.name].credential_id
                for t in app.config.targets
            )

        wait_for(rotated, 60, "both due targets to rotate")
        time.sleep(2.5)  # one more periodic reconcile: nothing rotates again
        metrics = scrape(port)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    finally:
        assert daemon.shutdown() == 0
    after = {t.name: app.engine.status(t) for t in app.config.targets}
    app.close()

    for name, status in after.items():
        label = (("target", name),)
        assert status.state == "grace"
        assert status.previous_credential_id == before[name].credential_id
        assert status.expires_at is not None
        assert status.retire_at is not None
        assert status.last_success_at is not None
        assert metrics[("rotator_credential_expiration_timestamp_seconds", label)] == (
            status.expires_at.timestamp()
        )
        # the new credential's due time (no windows here); retirement is not a rotation
        assert status.next_rotation_at is not None
        assert metrics[("rotator_next_rotation_timestamp_seconds", label)] == (
            status.next_rotation_at.timestamp()
        )
        assert metrics[("rotator_last_success_timestamp_seconds", label)] == pytest.approx(
            status.last_success_at.timestamp()
        )
        assert metrics[("rotator_target_ready", label)] == 1
        assert metrics[("rotator_target_stuck", label)] == 0
        assert metrics[("rotator_rotations_total", (("outcome", "rotated"), *label))] == 1
        assert ("rotator_failures_total", label) not in metrics or metrics[
            ("rotator_failures_total", label)
        ] == 0
    assert metrics[("rotator_leader", ())] == 1
    assert ready.status_code == 200
    assert ready.json()["role"] == "active"
    assert len(setup.live_keys(billing)) == 2  # current + previous in grace: no orphan
    assert len(setup.live_keys(reports)) == 2


@dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook", bodies)
    server.shutdown()
    server.server_close()


def test_a_failed_rotation_reaches_the_webhook_and_the_exit_code(
    setup: Setup, receiver: Receiver
) -> None:
    user = setup.user("key")
    config = setup.config(
        "failing",
        [{"name": "billing", "user": user, "kind": "key", "vault_path": "apps/billing"}],
        webhook=receiver.url,
    )
    app = setup.app(config)
    setup.emulator.set_faults(rules=[{"method": "AddKey", "code": "unavailable", "rate": 1.0}])
    try:
        code = run_daemon(app, app.config, once=True)
    finally:
        app.close()
    assert code == 1
    [body] = receiver.bodies
    assert body["event"] == "rotation.failed"
    assert body["target"] == "billing"
    assert body["severity"] == "error"
    assert "unavailable" in body["error"]
    assert setup.live_keys(user) == []


def test_once_exits_4_when_a_target_is_stuck(setup: Setup) -> None:
    """A permanent cause (here: no such user) makes a target stuck after max_attempts."""
    config = setup.config(
        "stuck",
        [{"name": "billing", "user": "svc-nobody", "kind": "key", "vault_path": "apps/billing"}],
        max_attempts=1,
    )
    app = setup.app(config)
    try:
        assert run_daemon(app, app.config, once=True) == 4
        assert run_daemon(app, app.config, once=True) == 4  # stays stuck until forced
    finally:
        app.close()


def test_once_a_transient_fault_never_makes_a_target_stuck(setup: Setup) -> None:
    user = setup.user("key")
    config = setup.config(
        "transient",
        [{"name": "billing", "user": user, "kind": "key", "vault_path": "apps/billing"}],
        max_attempts=1,
    )
    app = setup.app(config)
    setup.emulator.set_faults(rules=[{"method": "AddKey", "code": "internal", "rate": 1.0}])
    try:
        assert run_daemon(app, app.config, once=True) == 1
        status = app.engine.status(app.config.targets[0])
        assert status.state == "failing"
        assert status.failures == 1
    finally:
        setup.emulator.clear_faults()
        app.close()


def test_once_exits_non_zero_when_a_target_could_not_even_be_looked_at(setup: Setup) -> None:
    """A cron job must not report success while nothing could be checked."""
    user = setup.user("key")
    hour = (time.gmtime().tm_hour - 3) % 24
    target = {
        "name": "billing",
        "user": user,
        "kind": "key",
        "vault_path": "apps/billing",
        "schedule": {"windows": [{"cron": f"0 {hour} * * *", "duration": "1h"}]},
    }
    config = setup.config("unlookable", [target])
    app = setup.app(config)
    try:
        with setup.openbao.sealed():
            assert run_daemon(app, app.config, once=True) == 1
    finally:
        app.close()


@pytest.mark.parametrize(
    ("schedule", "rotates"),
    [
        ({"windows": [{"cron": "* * * * *", "duration": "2h"}]}, True),  # always open
        # a window that opened 3 hours ago for one hour: closed now, opens again tomorrow
        ("closed-window", False),
        ({"freeze": [{"cron": "* * * * *", "duration": "2h"}]}, False),  # frozen now
    ],
)
def test_windows_and_freezes_hold_back_a_due_rotation(
    setup: Setup, receiver: Receiver, schedule: Any, rotates: bool
) -> None:
    if schedule == "closed-window":
        hour = (time.gmtime().tm_hour - 3) % 24
        schedule = {"windows": [{"cron": f"0 {hour} * * *", "duration": "1h"}]}
    user = setup.user("key")
    target = {
        "name": "billing",
        "user": user,
        "kind": "key",
        "vault_path": "apps/billing",
        "schedule": schedule,
    }
    config = setup.config("windows", [target], webhook=receiver.url)  # expiry_threshold 7d
    setup.seed_due(config)
    app = setup.app(config)
    try:
        before = app.engine.status(app.config.targets[0])
        assert run_daemon(app, app.config, once=True) == 0
        after = app.engine.status(app.config.targets[0])
    finally:
        app.close()
    assert (after.credential_id != before.credential_id) is rotates
    assert after.state == ("grace" if rotates else "due")
    # a credential held back within 7 days of its expiry is announced, once
    expected = [] if rotates else [("credential.expiring", before.credential_id)]
    assert [(b["event"], b["credential_id"]) for b in receiver.bodies] == expected


# --------------------------------------------------------------------------- processes


@dataclass
class Daemon:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.out.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def role(self) -> str | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
        except httpx.HTTPError:
            return None
        return str(response.json().get("role"))


def start_daemon(setup: Setup, config: Path, name: str, port: int) -> Daemon:
    out, err = setup.tmp / f"{name}.out", setup.tmp / f"{name}.err"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        TOKEN_ENV: setup.openbao.root_token,
        "PYTHONUNBUFFERED": "1",
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    }
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator", "--config", str(config), "run"],
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=ROOT,
        )
    daemon = Daemon(name, port, process, out, err)
    wait_for(lambda: daemon.role() or process.poll() is not None, 60, f"{name} to serve /readyz")
    assert process.poll() is None, err.read_text()
    return daemon


@pytest.fixture
def processes() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.process.poll() is None:
            d.process.kill()
            d.process.wait(10)


def completed(daemons: list[Daemon], target: str) -> list[dict[str, Any]]:
    return [
        e
        for d in daemons
        for e in d.events()
        if e.get("event") == "rotation.completed" and e.get("target") == target
    ]


def test_two_daemons_rotate_each_due_credential_once_and_a_standby_takes_over(
    setup: Setup, processes: list[Daemon]
) -> None:
    billing, reports = setup.user("key"), setup.user("pat")
    targets = [
        {"name": "billing", "user": billing, "kind": "key", "vault_path": "apps/billing"},
        {"name": "reports", "user": reports, "kind": "pat", "vault_path": "apps/reports"},
    ]
    ports = {"a": free_port(), "b": free_port()}
    configs = {n: setup.config(n, targets, ha=True, port=p) for n, p in ports.items()}
    setup.seed_due(configs["a"])
    processes.append(start_daemon(setup, configs["a"], "a", ports["a"]))
    processes.append(start_daemon(setup, configs["b"], "b", ports["b"]))
    a, b = processes

    wait_for(
        lambda: completed(processes, "billing") and completed(processes, "reports"),
        60,
        "both targets to rotate",
    )
    time.sleep(3)  # periodic reconciles on the active replica: nothing rotates again
    assert len(completed(processes, "billing")) == 1
    assert len(completed(processes, "reports")) == 1
    assert len(setup.live_keys(billing)) == 2  # the new key and the old one in grace
    assert len(setup.live_keys(reports)) == 2
    roles = {a.role(), b.role()}
    assert roles == {"active", "standby"}

    active, standby = (a, b) if a.role() == "active" else (b, a)
    active.process.kill()  # SIGKILL: no release, the lease must lapse
    killed_at = time.monotonic()
    wait_for(lambda: standby.role() == "active", TAKEOVER_BOUND + 5, "the standby to take over")
    took = time.monotonic() - killed_at
    print(f"takeover {took:.2f}s after SIGKILL (bound {TAKEOVER_BOUND:.2f}s)")
    assert took <= TAKEOVER_BOUND + 1.0, f"takeover took {took:.1f}s"
    assert any(e.get("event") == "daemon.active" for e in standby.events())

    standby.process.send_signal(signal.SIGTERM)
    assert standby.process.wait(30) == 0
    lease = setup.openbao.client().secrets.kv.v2.read_secret_version(
        path="zitadel-rotator/leader", mount_point=setup.mount, raise_on_deleted_version=True
    )
    record = LeaseRecord.from_data(lease["data"]["data"])
    assert record is not None
    assert record.holder == ""  # released on SIGTERM: a standby need not wait for the TTL
    assert len(completed(processes, "billing")) == 1


def test_sigterm_during_a_rotation_lets_it_finish_and_the_state_converges(
    setup: Setup, processes: list[Daemon]
) -> None:
    user = setup.user("key")
    port = free_port()
    config = setup.config(
        "slow",
        [{"name": "billing", "user": user, "kind": "key", "vault_path": "apps/billing"}],
        ha=True,
        port=port,
    )
    setup.seed_due(config)
    # every token exchange (the verify step) takes 1.5 s: SIGTERM lands mid-rotation
    setup.emulator.set_faults(
        rules=[{"method": "token", "code": "unavailable", "rate": 0.0, "latency_ms": 1500}]
    )
    daemon = start_daemon(setup, config, "slow", port)
    processes.append(daemon)
    wait_for(
        lambda: any(e.get("event") == "credential.created" for e in daemon.events()),
        60,
        "the rotation to start",
    )
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(60) == 0
    names = [e.get("event") for e in daemon.events()]
    assert "rotation.completed" in names  # the rotation in flight finished before exit
    assert names[-1] == "daemon.stopped"
    setup.emulator.clear_faults()

    # a fresh one-shot run finds nothing to do: converged
    app = setup.app(config)
    try:
        status = app.engine.status(app.config.targets[0])
        assert status.state == "grace"
        assert run_daemon(app, app.config, once=True) == 0
        assert app.engine.status(app.config.targets[0]).credential_id == status.credential_id
    finally:
        app.close()
    assert set(setup.live_keys(user)) == {status.credential_id, status.previous_credential_id}


def test_the_rotator_rotates_its_own_key_and_keeps_working(setup: Setup) -> None:
    """Self-rotation: the rotator's identity is read from the Vault path it rotates."""
    # An org owner whose key lives in Vault, adopted and rotated 25 days ago: due now.
    setup.emulator.set_clock_offset(-BACK.total_seconds())
    username = f"rotator-{uuid.uuid4().hex[:8]}"
    owner = setup.emulator.add_user(username, org="acme", roles=["ORG_OWNER"], key=True)
    setup.openbao.client().secrets.kv.v2.create_or_update_secret(
        path="apps/self", secret=owner["key_file"], mount_point=setup.mount
    )
    port = free_port()
    config = setup.config(
        "self",
        [
            {
                "name": "self",
                "user": username,
                "kind": "key",
                "vault_path": "apps/self",
                "adopt": True,
            }
        ],
        port=port,
    )
    raw = yaml.safe_load(config.read_text())
    raw["zitadel"]["credentials"] = {"vault_path": "apps/self"}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        seed = setup.app(config, back=BACK)
        try:
            target = seed.config.targets[0]
            result = seed.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
            assert result.outcome is Outcome.ROTATED, result
        finally:
            seed.close()
    finally:
        setup.emulator.set_clock_offset(0)

    app = setup.app(config)
    target = app.config.targets[0]
    before = app.engine.status(target)
    assert before.state == "due"
    def clocks(delta: timedelta) -> None:
        assert isinstance(app.clock, OffsetClock)
        app.clock.advance(delta)
        setup.emulator.set_clock_offset(app.clock.offset.total_seconds())

    with app.audit.capture() as events:
        daemon = run_in_thread(app)
        try:
            wait_for(lambda: app.engine.status(target).state == "grace", 60, "the self-rotation")
            rotated = app.engine.status(target)
            assert rotated.previous_credential_id == before.credential_id
            # past grace and past the 12 h life of every token minted with the old key:
            # retiring the old key needs a token, exchanged with the new key from Vault
            clocks(timedelta(days=1, hours=13))
            wait_for(
                lambda: app.engine.status(target).state == "ready", 30, "the old key's retirement"
            )
        finally:
            assert daemon.shutdown() == 0
            setup.emulator.set_clock_offset(0)
    app.close()
    names = [event["event"] for event in events]
    assert "credential.retired" in names
    assert "rotation.failed" not in names
    assert setup.live_keys(username) == [rotated.credential_id]
    tokens = setup.emulator.state(tokens=True)["access_tokens"]
    assert tokens[-1]["key_id"] == rotated.credential_id  # the latest token: the new key


def test_a_running_daemon_is_unready_while_vault_is_sealed(setup: Setup) -> None:
    user = setup.user("pat")
    port = free_port()
    config = setup.config(
        "sealed",
        [{"name": "reports", "user": user, "kind": "pat", "vault_path": "apps/r"}],
        port=port,
    )
    app = setup.app(config)
    daemon = run_in_thread(app)

    def readyz() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        except httpx.HTTPError:
            return None

    try:
        first = wait_for(readyz, 30, "/readyz")
        assert first.status_code == 200
        assert first.json()["role"] == "active"
        with setup.openbao.sealed():
            sealed = readyz()
            assert sealed is not None
            assert sealed.status_code == 503
            assert sealed.json()["checks"]["vault"].startswith("VaultUnavailable")
            assert sealed.json()["checks"]["scheduler"] == "ok"
        assert wait_for(lambda: (r := readyz()) and r.status_code == 200, 30, "ready again")
    finally:
        assert daemon.shutdown() == 0
        app.close()


def test_run_once_with_ha_skips_while_another_replica_leads(setup: Setup) -> None:
    user = setup.user("pat")
    config = setup.config(
        "cron",
        [{"name": "reports", "user": user, "kind": "pat", "vault_path": "apps/r"}],
        ha=True,
    )
    app = setup.app(config)
    other = VaultLease(app.store, "zitadel-rotator/leader", "other-replica", timedelta(minutes=5))
    try:
        assert other.try_acquire()
        assert run_daemon(app, app.config, once=True) == 0  # standby: nothing done
        assert app.engine.status(app.config.targets[0]).state == "missing"
        other.release()
        assert run_daemon(app, app.config, once=True) == 0
        assert app.engine.status(app.config.targets[0]).state == "ready"
        stored = app.store.read("zitadel-rotator/leader")
        assert stored is not None
        record = LeaseRecord.from_data(stored.data)
        assert record is not None
        assert record.holder == ""  # released when the pass ended
    finally:
        app.close()


def test_a_failed_attempt_is_retried_at_the_engines_backoff_time(setup: Setup) -> None:
    user = setup.user("key")
    port = free_port()
    # the periodic reconcile is far away: only the target's own job can retry
    config = setup.config(
        "retry",
        [{"name": "billing", "user": user, "kind": "key", "vault_path": "apps/billing"}],
        port=port,
        reconcile_interval="10m",
    )
    app = setup.app(config)
    setup.emulator.set_faults(rules=[{"method": "AddKey", "code": "unavailable", "count": 1}])
    daemon = run_in_thread(app)
    try:
        target = app.config.targets[0]
        wait_for(lambda: app.engine.status(target).state == "ready", 30, "the retry to succeed")
        metrics = scrape(port)
    finally:
        assert daemon.shutdown() == 0
        app.close()
    label = (("target", "billing"),)
    assert metrics[("rotator_failures_total", label)] == 1
    assert metrics[("rotator_retries_total", label)] == 1
    assert metrics[("rotator_rotations_total", (("outcome", "failed"), *label))] == 1
    assert metrics[("rotator_rotations_total", (("outcome", "rotated"), *label))] == 1
    assert metrics[("rotator_target_ready", label)] == 1
    assert len(setup.live_keys(user)) == 1


def test_rotator_run_survives_a_sealed_vault_at_start_and_starts_once_unsealed(
    setup: Setup, processes: list[Daemon]
) -> None:
    """Under Kubernetes an exit would be a crash loop: the daemon stays up, alive
    but not ready (with the reason), and starts as soon as Vault can be used."""
    user = setup.user("pat")
    port = free_port()
    config = setup.config(
        "sealed-start",
        [{"name": "reports", "user": user, "kind": "pat", "vault_path": "apps/r"}],
        port=port,
    )

    def get(path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        except httpx.HTTPError:
            return None

    with setup.openbao.sealed():
        daemon = start_daemon(setup, config, "sealed-start", port)
        processes.append(daemon)
        ready = wait_for(
            lambda: (r := get("/readyz")) is not None
            and "sealed" in r.json()["checks"]["startup"] and r,
            30, "/readyz to give the reason",
        )
        assert ready.status_code == 503
        assert ready.json()["role"] == "starting"
        alive = get("/healthz")
        assert alive is not None
        assert alive.status_code == 200
        wait_for(lambda: any(e.get("event") == "daemon.start_failed" for e in daemon.events()),
                 30, "a start_failed audit event")
        assert daemon.process.poll() is None  # still running
    wait_for(lambda: (r := get("/readyz")) is not None and r.status_code == 200, 90, "ready")
    wait_for(lambda: any(e.get("event") == "rotation.completed" for e in daemon.events()),
             60, "the first rotation")
    daemon.process.terminate()
    assert daemon.process.wait(30) == 0
