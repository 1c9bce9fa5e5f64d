"""Everything the soak drives: one OpenBao, one emulator (state dir kept
across kill -9), the rotator configs, a shared clock offset, a webhook sink
and the rotator processes (CLI and daemon), each a real ``python -m rotator``.

Nothing here decides whether the rotator behaved: that is ``checks.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.harness.emulator import REPO_ROOT, Emulator
from tests.harness.openbao import OpenBao
from tests.harness.processes import die_with_parent, free_port

TOKEN_ENV = "CHAOS_VAULT_TOKEN"
MOUNT = "secret"
STATE_PREFIX = "zitadel-rotator"
#: ZITADEL deadline of every rotator call; "slow" faults answer beyond it.
ZITADEL_TIMEOUT_S = 2
#: The policy every target runs with: short lifetimes so that a few simulated
#: weeks hold many rotations.  A credential lives 2-3 days (midnight rounding)
#: and is due 36 h before its expiry.
POLICY = {"lifetime": "3d", "renew_before": "36h", "grace": "6h", "retire_margin": "2h",
          "verify_timeout": "8s"}
RETIRE_MARGIN_S = 2 * 3600


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # key | pat | secret
    api: str  # v1 | v2
    user: str  # user name in org acme (the first of two identities)
    user_id: str
    #: A two-identity target (``users: [a, b]``): both users and their ids.
    users: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()

    @property
    def all_user_ids(self) -> tuple[str, ...]:
        return self.user_ids or (self.user_id,)

    def config(self) -> dict[str, Any]:
        """The target's entry in the rotator's configuration."""
        who: dict[str, Any] = {"users": list(self.users)} if self.users else {"user": self.user}
        return {"name": self.name, **who, "kind": self.kind, "vault_path": self.vault_path}

    @property
    def vault_path(self) -> str:
        return f"chaos/{self.name}"

    @property
    def state_path(self) -> str:
        return f"{STATE_PREFIX}/targets/{self.name}"


class WebhookSink:
    """Collects every webhook body the rotators post."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sink.bodies.append(self.rfile.read(length))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Zygote:
    """The harness side of ``zygote.py``: spawns rotator processes by fork and
    learns their exit codes."""

    def __init__(self, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        with log.open("ab") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.zygote"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, cwd=REPO_ROOT, env=env,
                preexec_fn=die_with_parent)  # noqa: PLW1509
        assert self.popen.stdout is not None
        ready = self.popen.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"zygote did not start: {ready!r}; see {log}")
        self._cond = threading.Condition()
        self._pids: list[int] = []
        self.exits: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            words = raw.decode().split()
            with self._cond:
                if words[:1] == ["pid"]:
                    self._pids.append(int(words[1]))
                elif words[:1] == ["exit"]:
                    self.exits[int(words[1])] = int(words[2])
                self._cond.notify_all()

    def spawn(self, argv: list[str], env: dict[str, str], out: Path, err: Path) -> int:
        assert self.popen.stdin is not None
        line = json.dumps({"argv": argv, "env": env, "out": str(out), "err": str(err)})
        with self._cond:
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()
            if not self._cond.wait_for(lambda: bool(self._pids), timeout=30):
                raise RuntimeError("zygote did not fork")
            return self._pids.pop(0)

    def wait(self, pid: int, timeout: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self.exits, timeout=timeout)
            return self.exits.get(pid)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


@dataclass(eq=False)
class Proc:
    """One rotator process (a real OS process, forked by the zygote); stdout and
    stderr go to files, scanned for secrets."""

    label: str
    argv: list[str]
    pid: int
    zygote: Zygote = field(repr=False)
    out: Path
    err: Path
    started: float = field(default_factory=time.monotonic)
    killed: bool = False

    def kill(self) -> None:
        """SIGKILL this process (by its own pid) and wait until it is reaped."""
        if self.alive():
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.zygote.wait(self.pid, timeout=10)

    def alive(self) -> bool:
        return self.pid not in self.zygote.exits

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: the signal), or None while still running."""
        return self.zygote.wait(self.pid, timeout)

    @property
    def returncode(self) -> int | None:
        return self.zygote.exits.get(self.pid)


class World:
    """The systems under test and the controls the soak moves."""

    def __init__(self, root: Path, *, targets_per_kind: int) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.offset_file = root / "clock-offset"
        self.offset_s = 0.0
        self.offset_file.write_text("0")
        self.bao = _launch_openbao()
        self.emulator = Emulator.launch(state_dir=root / "zitadel")
        self.webhook = WebhookSink()
        self.targets: list[Target] = []
        for api in ("v2", "v1"):
            for kind in ("key", "pat", "secret"):
                for i in range(targets_per_kind):
                    user = f"svc-{kind}-{api}-{i}"
                    user_id = self.emulator.add_user(user, org="acme")["id"]
                    self.targets.append(Target(f"{kind}-{api}-{i}", kind, api, user, user_id))
                    if kind == "pat":
                        continue  # two identities work alike for every kind: keys and secrets
                    # and one target over two identities used in turn
                    users = (f"svc-{kind}-{api}-{i}a", f"svc-{kind}-{api}-{i}b")
                    ids = tuple(self.emulator.add_user(u, org="acme")["id"] for u in users)
                    self.targets.append(Target(f"twin-{kind}-{api}-{i}", kind, api, users[0],
                                               ids[0], users, ids))
        self.audit_files = {api: root / f"audit-{api}.jsonl" for api in ("v1", "v2")}
        self.configs = {api: self._write_config(api) for api in ("v1", "v2")}
        self.procs: list[Proc] = []
        self.zygote = Zygote(root / "zygote.log")
        self._seq = 0
        self.fault_spec: dict[str, Any] = {}
        self.faults_fired = 0

    # -- configuration ---------------------------------------------------------------

    def _write_config(self, api: str) -> Path:
        raw: dict[str, Any] = {
            "zitadel": {
                "url": self.emulator.issuer,
                "api": api,
                "credentials": {"key_file": str(self.emulator.admin_key_file)},
                "timeout": f"{ZITADEL_TIMEOUT_S}s",
            },
            "vault": {"url": self.bao.url, "mount": MOUNT, "timeout": "3s",
                      "auth": {"method": "token", "token_env": TOKEN_ENV}},
            "policy": dict(POLICY),
            "daemon": {"listen": "127.0.0.1:0", "reconcile_interval": "1s", "jitter": "0s",
                       "retry_base": "1s", "retry_cap": "2s"},
            "audit": {"file": str(self.audit_files[api])},
            "notify": {"webhook_url": self.webhook.url, "format": "generic",
                       "timeout": "2s"},
            "targets": [t.config() for t in self.targets if t.api == api],
        }
        if api == "v1":
            raw["zitadel"]["grpc_target"] = self.emulator.grpc_target
        path = self.root / f"rotator-{api}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    # -- clocks ------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the rotators' clock and ZITADEL's together."""
        self.offset_s += seconds
        # ZITADEL first: a rotator must never be ahead of it by the jump (it would
        # record a lost create as made after ZITADEL's clock says it was, and its
        # orphan would never be recognised); behind it by a moment is clock skew
        self.emulator.set_clock_offset(self.offset_s)
        tmp = self.offset_file.with_suffix(".tmp")
        tmp.write_text(repr(self.offset_s))
        os.replace(tmp, self.offset_file)  # atomic: a reader never sees half a number

    def now_s(self) -> float:
        """The simulated instant, epoch seconds."""
        return time.time() + self.offset_s

    # -- faults ------------------------------------------------------------------------

    def set_faults(self, spec: dict[str, Any]) -> None:
        self._count_fired()
        self.fault_spec = spec
        if self.emulator.alive:
            self.emulator._admin("POST", "/_emulator/faults", spec)

    def _count_fired(self) -> None:
        """Add the faults fired under the configuration about to be replaced."""
        if self.emulator.alive:
            rules = self.emulator.faults().get("rules", [])
            self.faults_fired += sum(int(r.get("fired", 0)) for r in rules)

    def clear_faults(self) -> None:
        self.set_faults({})

    def kill_emulator(self) -> None:
        self._count_fired()
        self.emulator.kill()

    def start_emulator(self) -> None:
        self.emulator.start_again()
        if self.fault_spec:  # faults live in memory: a restarted ZITADEL gets them again
            self.emulator._admin("POST", "/_emulator/faults", self.fault_spec)

    # -- processes ---------------------------------------------------------------------

    def spawn(self, api: str, *args: str, label: str) -> Proc:
        self._seq += 1
        stem = f"{self._seq:05d}-{label}"
        out, err = self.logs / f"{stem}.out", self.logs / f"{stem}.err"
        env = dict(os.environ)
        env.update({TOKEN_ENV: self.bao.root_token, "ROTATOR_CLOCK_OFFSET_FILE":
                    str(self.offset_file), "PYTHONPATH": str(REPO_ROOT)})
        env.pop("VAULT_TOKEN", None)
        argv = ["--config", str(self.configs[api]), *args]
        pid = self.zygote.spawn(argv, env, out, err)
        proc = Proc(label, argv, pid, self.zygote, out, err)
        self.procs.append(proc)
        return proc

    def outputs(self) -> Iterator[tuple[str, str]]:
        """(name, text) of every process output, audit file and webhook body."""
        for path in sorted(self.logs.iterdir()):
            yield path.name, path.read_text(errors="replace")
        for path in self.audit_files.values():
            if path.exists():
                yield path.name, path.read_text(errors="replace")
        for i, body in enumerate(self.webhook.bodies):
            yield f"webhook#{i}", body.decode(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.zygote.close()
        self.webhook.close()
        self.emulator.close()
        self.bao.stop()

    # -- reading what is there (for checks.py) -------------------------------------------

    def vault_read(self, path: str) -> dict[str, Any] | None:
        import hvac

        try:
            secret = self.bao.client().secrets.kv.v2.read_secret_version(
                path=path, mount_point=MOUNT, raise_on_deleted_version=False)
        except hvac.exceptions.InvalidPath:
            return None
        data = (secret.get("data") or {}).get("data")
        return dict(data) if data else None


def _launch_openbao() -> OpenBao:
    """A private OpenBao (the soak seals it); retried if its probed port was taken."""
    for attempt in range(3):
        try:
            return OpenBao.launch()
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def new_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="chaos-soak-"))


def dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


__all__ = ["POLICY", "RETIRE_MARGIN_S", "Proc", "Target", "World", "free_port", "new_root"]
