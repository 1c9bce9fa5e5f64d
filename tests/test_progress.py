"""Progress on a terminal: ``rotate`` over several targets draws done/total,
failures so far, rate and ETA on stderr when stderr is a terminal (a real
pseudo-terminal here), and nothing when it is not; stdout is the same either way.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from rotator.cli import _each
from rotator.progress import progress
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao


def run(argv: list[str], env: dict[str, str], *, stderr_tty: bool) -> tuple[int, str, str]:
    """``python -m rotator ARGV``: stdout a pipe; stderr a 100-column pseudo-terminal or a pipe."""
    command = [sys.executable, "-m", "rotator", *argv]
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    if not stderr_tty:
        done = subprocess.run(
            command, capture_output=True, text=True, env=full_env, timeout=120, check=False
        )
        return done.returncode, done.stdout, done.stderr
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL, env=full_env
    )
    os.close(terminal)
    pipe = process.stdout
    assert pipe is not None
    stdout: list[bytes] = []
    reader = threading.Thread(target=lambda: stdout.append(pipe.read()))
    reader.start()
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other side closed: the process is gone
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            # it exited between the select and the poll: what it wrote last may still be unread
            seen += _drain(controller)
            break
    os.close(controller)
    code = process.wait(timeout=30)
    reader.join(timeout=30)
    return code, b"".join(stdout).decode(), seen.decode(errors="replace")


def _drain(controller: int) -> bytes:
    data = b""
    while select.select([controller], [], [], 0.5)[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def config(tmp_path: Path, emulator: Emulator, vault_url: str, mount: str) -> Path:
    org = emulator.org_ids["acme"]
    raw: dict[str, Any] = {
        "zitadel": {
            "url": emulator.issuer,
            "api": "v2",
            "credentials": {"key_file": str(emulator.admin_key_file)},
        },
        "vault": {"url": vault_url, "mount": mount},
        "policy": {"verify_timeout": "20s"},
        "targets": [
            {"name": "billing", "user": "svc-billing", "org_id": org, "kind": "key"},
            {"name": "reports", "user": "svc-reports", "org_id": org, "kind": "pat"},
            # fails at once: no such user
            {"name": "ghost", "user": "svc-nobody", "org_id": org, "kind": "pat"},
        ],
    }
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_rotate_shows_progress_on_a_terminal_and_nothing_otherwise(
    tmp_path: Path, emulator: Emulator, openbao: OpenBao, kv_mount: str
) -> None:
    argv = ["--config", str(config(tmp_path, emulator, openbao.url, kv_mount)), "rotate"]
    env = openbao.env()

    code, stdout, terminal = run([*argv, "--all", "--json"], env, stderr_tty=True)
    assert code == 1, terminal  # ghost failed
    assert "rotate 0/3" in terminal
    assert "rotate 3/3" in terminal
    assert "1 failed" in terminal  # failures so far
    assert "targets/s" in terminal  # rate
    assert "ETA" in terminal
    on_terminal = {r["target"]: r["outcome"] for r in json.loads(stdout)}
    assert on_terminal == {"billing": "rotated", "reports": "rotated", "ghost": "failed"}

    # --force: the credentials rotated above are still in grace
    code, stdout, stderr = run([*argv, "--all", "--force", "--json"], env, stderr_tty=False)
    assert code == 1
    assert "targets/s" not in stderr
    assert "\r" not in stderr
    # stderr is the audit trail, one JSON object per line, and one line per error
    lines = stderr.splitlines()
    assert [line for line in lines if not line.startswith("{")] == [
        line for line in lines if line.startswith("rotator: ghost:")
    ]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert {e["event"] for e in events} >= {"rotation.started", "rotation.completed"}
    assert [r["target"] for r in json.loads(stdout)] == ["billing", "reports", "ghost"]


def test_one_target_draws_no_bar_even_on_a_terminal(
    tmp_path: Path, emulator: Emulator, openbao: OpenBao, kv_mount: str
) -> None:
    argv = ["--config", str(config(tmp_path, emulator, openbao.url, kv_mount)), "rotate"]
    code, _stdout, terminal = run([*argv, "reports"], openbao.env(), stderr_tty=True)
    assert code == 0, terminal
    assert "targets/s" not in terminal


def test_each_reports_every_result_as_it_finishes_from_the_pool() -> None:
    reported: list[int] = []
    lock = threading.Lock()
    last_reported = threading.Event()

    def report(result: int) -> None:
        with lock:
            reported.append(result)
        if result == 16:
            last_reported.set()

    def square(n: int) -> int:
        # the first items finish only once the last one has been reported
        if n != 4:
            assert last_reported.wait(timeout=30)
        return n * n

    results = _each(square, [1, 2, 3, 4], 4, progress=report)
    assert results == [1, 4, 9, 16]  # in the items' order
    assert reported[0] == 16  # ... but reported as they finish
    assert sorted(reported) == [1, 4, 9, 16]


def test_no_bar_when_the_stream_is_not_a_terminal_or_there_is_one_item() -> None:
    with progress("rotate", 10, failed=bool, stream=io.StringIO()) as advance:
        assert advance is None
    with progress("rotate", 1, failed=bool) as one:
        assert one is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_final_count_is_drawn_even_when_every_item_finishes_at_once() -> None:
    screen = _Terminal()
    with progress("rotate", 3, failed=bool, stream=screen) as advance:
        assert advance is not None
        for result in (False, True, False):  # well within tqdm's 0.1 s redraw interval
            advance(result)
    assert "rotate 3/3" in screen.getvalue()
    assert "1 failed" in screen.getvalue()
