"""The ZITADEL emulator (tests/emulator) as a real process for the test suite.

Usage::

    def test_something(emulator: Emulator) -> None:      # one per test module
        emulator.issuer, emulator.grpc_target, emulator.admin_key_file
        emulator.user_ids["svc-billing"], emulator.org_ids["acme"]
        emulator.set_faults(rules=[{"method": "AddKey", "code": "unavailable", "count": 1}])
        emulator.advance(3600)                # ZITADEL's clock moves, nobody sleeps
        emulator.kill(); emulator.start()     # kill -9 and restart on the same ports
        emulator.state()                      # users, keys, PATs (no secrets)

    def test_lag(emulator_factory) -> None:              # special flags
        emu = emulator_factory(lag_ms=300, no_v2_keys=True)

    def test_tls(emulator_factory) -> None:              # HTTPS + gRPC over TLS
        emu = emulator_factory(tls=(cert_pem_file, key_pem_file))
        emu.issuer                            # https://127.0.0.1:P (the cert needs IP SAN)

    def test_one_port(emulator_factory) -> None:         # like ZITADEL: no second port
        emu = emulator_factory(grpc_port=False)
        emu.grpc_target == emu.issuer_target  # gRPC (v1, v2) on the issuer's port

Every emulator serves gRPC (v1 and v2), Connect and HTTP/1.1 on the issuer's
port (``issuer_target``); by default it also opens grpcio's own v1 listener on a
second port (``grpc_target``), which the older tests use.

The module-scoped ``emulator`` is shared by the tests of a module: a test that
sets faults or moves the clock should undo it (``emulator.reset()``).

Each emulator has a fresh state dir; it is restarted on the same ports so its
issuer stays valid.  No process outlives the run (finalisers, ``atexit``,
``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import die_with_parent, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0

_running: set[Emulator] = set()


class EmulatorError(RuntimeError):
    pass


@dataclass(eq=False)
class Emulator:
    """One ``python -m tests.emulator`` process and its state dir."""

    state_dir: Path
    http_port: int
    #: the extra gRPC-only v1 port (``--grpc-port``), 0 = none
    grpc_port: int
    lag_ms: int = 0
    no_v2_keys: bool = False
    seed: Path | None = None
    #: ``--rate-limit``: 429 past this many requests/s (0 = none).
    rate_limit: int = 0
    #: (certificate chain PEM file, private key PEM file): serve TLS on both ports.
    tls: tuple[Path, Path] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    endpoints: dict[str, Any] = field(default_factory=dict, repr=False)
    owns_dir: bool = True

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    def launch(
        cls,
        *,
        state_dir: Path | None = None,
        lag_ms: int = 0,
        no_v2_keys: bool = False,
        seed: Path | None = None,
        tls: tuple[Path, Path] | None = None,
        grpc_port: bool = True,
        rate_limit: int = 0,
    ) -> Emulator:
        """``grpc_port=False``: no second port; everything on the issuer's, like ZITADEL."""
        owns = state_dir is None
        emu = cls(
            state_dir=Path(tempfile.mkdtemp(prefix="zitadel-emu-")) if state_dir is None
            else state_dir,
            http_port=free_port(),
            grpc_port=free_port() if grpc_port else 0,
            lag_ms=lag_ms,
            no_v2_keys=no_v2_keys,
            seed=seed,
            tls=tls,
            rate_limit=rate_limit,
            owns_dir=owns,
        )
        for attempt in range(3):
            try:
                emu.start()
                return emu
            except EmulatorError:
                # another process may have grabbed a port between probe and bind
                if attempt == 2 or "already in use" not in emu.log_path.read_text(errors="replace"):
                    raise
                emu.http_port = free_port()
                emu.grpc_port = free_port() if emu.grpc_port else 0
        raise AssertionError("unreachable")

    @classmethod
    @contextlib.contextmanager
    def running(cls, **kwargs: Any) -> Iterator[Emulator]:
        emu = cls.launch(**kwargs)
        try:
            yield emu
        finally:
            emu.close()

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "tests.emulator", "--port", str(self.http_port),
                "--state-dir", str(self.state_dir)]
        if self.grpc_port:
            args += ["--grpc-port", str(self.grpc_port)]
        if self.lag_ms:
            args += ["--lag-ms", str(self.lag_ms)]
        if self.no_v2_keys:
            args.append("--no-v2-keys")
        if self.rate_limit:
            args += ["--rate-limit", str(self.rate_limit)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if self.tls is not None:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        return args

    @property
    def log_path(self) -> Path:
        return self.state_dir.with_name(self.state_dir.name + ".log")

    def start(self) -> None:
        """Start (or restart after stop/kill) on the same ports and state dir."""
        if self.process is not None and self.process.poll() is None:
            raise EmulatorError("emulator already running")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env=env,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - nothing else runs in the child
            )
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        self.endpoints = json.loads((self.state_dir / "endpoints.json").read_text())

    def _wait_ready(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            buffer = b""
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    chunk = os.read(self.process.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    buffer += chunk
                    if b"\n" in buffer:
                        line = buffer.split(b"\n", 1)[0].decode()
                        if line.startswith("ready "):
                            return
                        raise EmulatorError(f"unexpected emulator output {line!r}")
                elif self.process.poll() is not None:
                    break
        raise EmulatorError(
            f"emulator did not become ready (exit {self.process.poll()}); log tail:\n"
            + self.log_path.read_text(errors="replace")[-3000:]
        )

    def stop(self) -> None:
        """Graceful stop (SIGTERM); the state dir stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_pipe()

    def kill(self) -> None:
        """``kill -9``: no chance to flush or clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)
        self._close_pipe()

    def restart(self) -> None:
        self.stop()
        self.start()

    def start_again(self, attempts: int = 5) -> None:
        """``start()`` after a kill, retrying while another process briefly holds
        one of the ports (an outgoing connection may have been given it)."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except EmulatorError:
                if attempt == attempts - 1 or \
                        "already in use" not in self.log_path.read_text(errors="replace"):
                    raise
                time.sleep(0.5 * (attempt + 1))

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def close(self) -> None:
        """Stop and delete the state dir."""
        self.stop()
        _running.discard(self)
        if self.owns_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- where things are ---------------------------------------------------------

    @property
    def issuer(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """The extra v1 gRPC port, or the issuer's when there is none."""
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else self.issuer_target

    @property
    def issuer_target(self) -> str:
        """host:port of the issuer: gRPC (v1, v2), Connect, OIDC, as on ZITADEL."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def org_ids(self) -> dict[str, str]:
        return dict(self.endpoints["orgs"])

    @property
    def user_ids(self) -> dict[str, str]:
        return dict(self.endpoints["users"])

    @property
    def admin_key_file(self) -> Path:
        """Server-generated key file (§6.2) of ``rotator-admin`` (ORG_OWNER of acme)."""
        return self.state_dir / "admin-key.json"

    @property
    def introspection_client(self) -> dict[str, str]:
        """``{"client_id", "client_secret", "project_id"}`` of the seeded API app."""
        return dict(json.loads((self.state_dir / "introspector.json").read_text()))

    # -- admin API (/_emulator, not part of ZITADEL) ------------------------------

    def _admin(self, method: str, path: str, payload: Any = None, *,
               timeout: float = 10) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.issuer + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout,
                                        context=self._admin_tls()) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc

    def _admin_tls(self) -> ssl.SSLContext | None:
        """The control channel trusts exactly the certificates in the emulator's
        own chain file (pinned; no CA needed), so TLS tests keep their admin
        calls, even those whose certificate deliberately names another host."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls[0]))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False  # the pin, not the name, identifies the peer
        return context

    def set_faults(self, *, latency_ms: int = 0, rules: Sequence[dict[str, Any]] = (),
                   seed: int | None = None, list_lag_ms: int = 0,
                   rate_limit: int | None = None) -> dict[str, Any]:
        """Replace the fault configuration.  A rule: ``{"method": "AddKey" | "token" | "*",
        "code": "unavailable" | "resource_exhausted" | "internal" | "deadline_exceeded",
        "rate": 1.0, "count": N (only the next N calls), "latency_ms": 0,
        "mode": "fail" | "slow" | "lost" | "drop"}`` (``slow``/``lost``/``drop``: ZITADEL
        acts, then answers late / with ``code`` / not at all).  ``list_lag_ms``: new
        keys and PATs are missing from list answers for that long.  ``rate_limit``:
        429 past that many requests/s (0 = none; None = the ``--rate-limit``)."""
        spec: dict[str, Any] = {"latency_ms": latency_ms, "rules": list(rules),
                                "list_lag_ms": list_lag_ms}
        if rate_limit is not None:
            spec["rate_limit"] = rate_limit
        if seed is not None:
            spec["seed"] = seed
        return dict(self._admin("POST", "/_emulator/faults", spec))

    def faults(self) -> dict[str, Any]:
        return dict(self._admin("GET", "/_emulator/faults"))

    def clear_faults(self) -> None:
        self._admin("DELETE", "/_emulator/faults")

    def set_clock_offset(self, seconds: float) -> None:
        self._admin("POST", "/_emulator/clock", {"offset_seconds": seconds})

    def advance(self, seconds: float) -> None:
        self._admin("POST", "/_emulator/clock", {"advance_seconds": seconds})

    def clock(self) -> dict[str, Any]:
        """``{"offset_seconds": float, "now": RFC 3339}``"""
        return dict(self._admin("GET", "/_emulator/clock"))

    def reset(self) -> None:
        """No faults, no clock offset."""
        self.clear_faults()
        self.set_clock_offset(0)

    def state(self, *, tokens: bool = False) -> dict[str, Any]:
        """Orgs, users (roles, metadata), keys, PATs - ids and dates, no secrets."""
        return dict(self._admin("GET", "/_emulator/state" + ("?tokens=1" if tokens else "")))

    def add_user(
        self,
        username: str,
        *,
        org: str = "acme",
        roles: Sequence[str] = (),
        type: str = "machine",
        key: bool = False,
        secret: bool = False,
        memberships: Sequence[dict[str, Any]] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        """Create a user at runtime -> ``{"id", "org_id", "login_name"}`` plus
        ``"key_file"`` (a §6.2 key JSON dict) with ``key=True`` and
        ``"client_secret"`` with ``secret=True``."""
        payload = {"username": username, "org": org, "roles": list(roles), "type": type,
                   "key": key, "secret": secret, "memberships": list(memberships), **extra}
        return dict(self._admin("POST", "/_emulator/users", payload))

    def counters(self) -> dict[str, Any]:
        """``{"calls": {method: n}, "total", "rate_limited", "peak_concurrent_delays"}``:
        every request to ZITADEL's surfaces (not the admin API) since start or
        ``reset_counters()``."""
        return dict(self._admin("GET", "/_emulator/counters"))

    def reset_counters(self) -> None:
        self._admin("DELETE", "/_emulator/counters")

    def bulk(self, users: int, *, org: str = "acme", prefix: str = "bulk-",
             keys_per_user: int = 0, pats_per_user: int = 0, expiration: str | None = None,
             roles: Sequence[str] = ()) -> dict[str, Any]:
        """``users`` machine users ``<prefix>00000``... with credentials, in one
        transaction -> ``{"org_id", "users": [{"id", "username", "login_name",
        "keys": [id], "pats": [{"id", "token"}]}], ["private_key"]}`` (the keys
        share one key pair).  ``expiration``: RFC 3339, default 9999-12-31."""
        payload = {"users": users, "org": org, "prefix": prefix,
                   "keys_per_user": keys_per_user, "pats_per_user": pats_per_user,
                   "expiration": expiration, "roles": list(roles)}
        return dict(self._admin("POST", "/_emulator/bulk", payload, timeout=120))

    def set_user_state(self, user_id: str, state: str) -> None:
        """``ACTIVE``, ``INACTIVE``, ``LOCKED``, ..."""
        self._admin("POST", f"/_emulator/users/{user_id}/state", {"state": state})


@atexit.register
def _stop_all() -> None:
    for emu in list(_running):
        with contextlib.suppress(Exception):
            emu.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """A fresh, default-seeded emulator shared by one test module."""
    with Emulator.running() as emu:
        yield emu


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    """``emulator_factory(lag_ms=.., no_v2_keys=.., seed=.., tls=(cert, key),
    grpc_port=False)`` -> a fresh emulator, stopped when the test ends."""
    started: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        emu = Emulator.launch(**kwargs)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.close()
