"""A fork server for rotator processes.

Importing the rotator costs seconds of CPU (zitadel-client builds ~1,200
pydantic models at import), which would eat the soak's whole CI budget in
start-ups.  This process imports it once and forks one child per command: each
child is a real, separate OS process running the real CLI entry point
(``rotator.cli.main``) with its own pid, environment, stdout and stderr - SIGKILL
hits it like any other.  The soak's harness talks to it over pipes:

    stdin:  {"argv": [...], "env": {...}, "out": PATH, "err": PATH}   one JSON per line
    stdout: "pid N" (answer to each request), "exit N CODE" (CODE < 0: killed by -CODE)

Single-threaded on purpose (select + waitpid WNOHANG): a fork never copies a
lock held by another thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys


def _preload() -> None:
    import rotator.app
    import rotator.cli
    import rotator.daemon
    import rotator.zitadel.v2

    with contextlib.suppress(ImportError):
        import rotator.zitadel.v1.transport  # noqa: F401


def _child(request: dict[str, object]) -> None:
    """In the forked child: become the rotator command; never returns."""
    code = 70
    try:
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # die with the zygote
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(str(request["out"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        err = os.open(str(request["err"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (out, err, devnull):
            os.close(fd)
        # fresh stream objects: nothing inherited from the zygote's buffers
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        sys.argv = ["rotator", *argv]
        from rotator.cli import main

        code = int(main(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    _preload()
    stdin = sys.stdin.buffer
    buffer = b""
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.05)
        if readable:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                return  # the harness is gone; children die with us (PDEATHSIG)
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request)
                print(f"pid {pid}", flush=True)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(f"exit {pid} {code}", flush=True)


if __name__ == "__main__":
    main()
