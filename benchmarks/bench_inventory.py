"""``rotator inventory`` on a large instance, through the real CLI.

Starts the emulator (no injected latency) and OpenBao, bulk-seeds machine
users with credentials (admin API, one transaction), runs
``python -m rotator inventory --json`` as a subprocess and prints wall time,
ZITADEL calls (emulator counters, per method) and calls per 1,000
credentials.  Targets (issue 15): 10,000 credentials in <= 10 s, <= 3
ZITADEL calls per 1,000 credentials on v2.  Asserts nothing.

    ./scripts/bench inventory [--users 5000] [--keys-per-user 1] [--pats-per-user 1]
                              [--api v2|v1|both]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao

ROOT = Path(__file__).resolve().parent.parent


def run_inventory(emu: Emulator, bao: OpenBao, mount: str, workdir: Path, api: str) -> None:
    config = workdir / f"inventory-{api}.yaml"
    config.write_text(yaml.safe_dump({
        "zitadel": {"url": emu.issuer, "api": api, "grpc_target": emu.grpc_target,
                    "credentials": {"key_file": str(emu.admin_key_file)}},
        "vault": {"url": bao.url, "mount": mount},
        # a configuration needs a target; it never ran, so it manages nothing
        "targets": [{"name": "x", "user": "rotator-admin", "kind": "pat",
                     "vault_path": "zitadel/x"}],
    }))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **bao.env()}
    emu.reset_counters()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rotator", "--config", str(config), "inventory", "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    wall = time.perf_counter() - started
    counters = emu.counters()
    credentials = sum(1 for line in done.stdout.splitlines() if '"type": "credential"' in line)
    calls: dict[str, int] = counters["calls"]
    management = {m: n for m, n in calls.items() if m not in ("token", "discovery", "keys")}
    total = sum(management.values())
    print(f"  {api}: exit {done.returncode}, {credentials} credentials in {wall:.2f} s "
          f"(CLI start-up and login included)")
    print(f"  {api}: ZITADEL management calls {total} "
          f"({1000 * total / max(credentials, 1):.2f} per 1,000 credentials): "
          f"{json.dumps(management, sort_keys=True)}; OAuth {calls.get('token', 0)} token")
    if done.returncode not in (0, 1):
        print(done.stderr[-2000:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/bench inventory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--keys-per-user", type=int, default=1)
    parser.add_argument("--pats-per-user", type=int, default=1)
    parser.add_argument("--api", choices=("v1", "v2", "both"), default="both")
    args = parser.parse_args(argv)
    n = args.users * (args.keys_per_user + args.pats_per_user)
    print(f"inventory benchmark: {args.users} machine users, {n} credentials, no latency",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp, \
            OpenBao.start() as bao, Emulator.running() as emu:
        started = time.perf_counter()
        emu.bulk(args.users, prefix="inv-", keys_per_user=args.keys_per_user,
                 pats_per_user=args.pats_per_user)
        print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)
        mount = bao.enable_kv()
        for api in ("v2", "v1") if args.api == "both" else (args.api,):
            run_inventory(emu, bao, mount, Path(tmp), api)
    return 0


if __name__ == "__main__":
    sys.exit(main())
