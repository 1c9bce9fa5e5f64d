"""What the daemon keeps per target, measured in-process in a few seconds.

The daemon's own objects (:class:`rotator.daemon.Daemon`, its engine and
dispatcher, :class:`rotator.metrics.Metrics`) over the in-memory fakes of
tests/fakes: N idle PAT targets (one machine user and one PAT each, already
adopted, as in the scale benchmark), one reconcile pass on the daemon's
worker pool, then what is retained after it: VmRSS growth over the process
before the daemon existed, and with ``--trace`` the top allocations by
file:line (tracemalloc) retained by the daemon.

    python -m benchmarks.bench_memory 1000 10000 [--trace] [--arena-max 2]

Each N runs in a fresh subprocess (RSS of one run does not leak into the
next); ``--arena-max`` sets ``MALLOC_ARENA_MAX`` in its environment.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)
    assert found is not None
    return int(found[1]) / 1024


def measure(count: int, *, trace: bool, top: int, concurrency: int,  # noqa: PLR0915
            scrape: bool) -> dict[str, Any]:
    # imports here: the parent process only spawns children
    from rotator.app import App  # noqa: PLC0415
    from rotator.audit import AuditLog  # noqa: PLC0415
    from rotator.config import parse_config  # noqa: PLC0415
    from rotator.daemon import Daemon  # noqa: PLC0415
    from rotator.engine import Engine  # noqa: PLC0415
    from rotator.failures import Backoff  # noqa: PLC0415
    from rotator.model import Trigger  # noqa: PLC0415
    from tests.fakes.store import MemoryStore  # noqa: PLC0415
    from tests.fakes.zitadel import FakeZitadel, to_instant  # noqa: PLC0415

    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    zitadel = FakeZitadel(workdir / "zitadel")
    clock = zitadel.clock
    expires = clock.now() + timedelta(days=25)
    org_id = zitadel.org_ids["acme"]
    users = zitadel.domain.bulk_create(
        org_id, count, prefix="idle-", pats_per_user=1, expiration=to_instant(expires)
    )["users"]
    store = MemoryStore(mount="secret")
    for u in users:
        pat = u["pats"][0]
        store.write(f"zitadel/{u['username']}", {
            "token": pat["token"], "token_id": pat["id"], "user_id": u["id"],
            "expires_at": expires.isoformat()}, cas=0)
    key_file = workdir / "key.json"
    key_file.write_text("{}")
    document = {
        "zitadel": {"url": zitadel.issuer, "api": "v2",
                    "credentials": {"key_file": str(key_file)}},
        "vault": {"url": "http://127.0.0.1:8200", "mount": "secret",
                  "auth": {"method": "token", "token_env": "VAULT_TOKEN"}},
        "policy": {"lifetime": "30d", "renew_before": "10d", "grace": "1d"},
        "daemon": {"listen": "127.0.0.1:0", "concurrency": concurrency,
                   "reconcile_interval": "1h", "jitter": "0s"},
        "targets": [{"name": u["username"], "user": u["login_name"], "kind": "pat",
                     "vault_path": f"zitadel/{u['username']}", "adopt": True} for u in users],
    }
    config = parse_config(json.loads(json.dumps(document)), source="bench.yaml",
                          env={"VAULT_TOKEN": "x"})
    del document, users

    def build() -> App:
        transport = zitadel.transport()
        engine = Engine(
            transport, store, zitadel.verifier(clock), clock=clock,
            audit=AuditLog(open(os.devnull, "w")),  # noqa: SIM115 - lives as long as the app
            state_prefix=config.vault.state_prefix,
            backoff=Backoff(max_attempts=config.daemon.max_attempts,
                            base=config.daemon.retry_base, cap=config.daemon.retry_cap),
            presence_interval=config.daemon.presence_interval,
        )
        return App(config=config, engine=engine, store=store,  # type: ignore[arg-type]
                   transport=transport, oidc=None, token_source=None,  # type: ignore[arg-type]
                   audit=engine.audit, clock=clock, api="v2")

    # The adopting pass (the scale benchmark's `run --once`), on an engine thrown away.
    adopter = build()
    for target in config.targets:
        adopter.engine.reconcile(target, trigger=Trigger.SCHEDULE)
    del adopter
    gc.collect()
    if trace:
        tracemalloc.start(8)
    before_rss = rss_mib()
    before = tracemalloc.take_snapshot() if trace else None

    app = build()
    daemon = Daemon(app, config, lease=None)
    done = threading.Event()

    def scraper() -> None:  # as the scale benchmark does while it waits
        while not done.wait(1.0):
            daemon.metrics.render()

    if scrape:
        threading.Thread(target=scraper, daemon=True).start()
    daemon.start()
    started = time.perf_counter()
    gauges = daemon.metrics._series.gauges["next_rotation"]  # what the benchmark waits for
    deadline = started + 600
    # through: every target has its next run, and the pass summary is logged
    while len(gauges) < count or daemon.oplog._pass is not None:
        if time.perf_counter() > deadline:
            raise SystemExit(f"the pass did not finish: {len(gauges)}/{count} gauges, "
                             f"{daemon.dispatcher.pending} queued")
        time.sleep(0.05)
    wall = time.perf_counter() - started
    done.set()
    daemon.metrics.render()  # the benchmark's last scrape
    gc.collect()
    after_rss = rss_mib()
    out: dict[str, Any] = {"targets": count, "pass_s": round(wall, 2),
                           "rss_before": round(before_rss, 1), "rss_after": round(after_rss, 1),
                           "rss_growth": round(after_rss - before_rss, 1),
                           "threads": threading.active_count()}
    if trace:
        assert before is not None
        snapshot = tracemalloc.take_snapshot()
        diff = snapshot.compare_to(before, "lineno")
        out["traced_growth_mib"] = round(sum(d.size_diff for d in diff) / 2**20, 2)
        out["top"] = [
            f"{d.size_diff / 1024:9.0f} KiB {d.count_diff:+8d}  "
            f"{d.traceback[0].filename.removeprefix(str(ROOT) + '/')}:{d.traceback[0].lineno}"
            for d in diff[:top]
        ]
        out["top_by_root"] = _by_first_rotator_frame(snapshot, before, top)
    daemon.stop()
    return out


def _by_first_rotator_frame(snapshot: Any, before: Any, top: int) -> list[str]:
    """Growth grouped by the deepest frame in rotator/: which of our lines keeps it."""
    def group(snap: Any) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for stat in snap.statistics("traceback"):
            where = "?"
            for frame in reversed(stat.traceback):  # innermost last
                if "/rotator/" in frame.filename:
                    where = f"{frame.filename.split('/rotator/', 1)[1]}:{frame.lineno}"
                    break
            sizes[where] = sizes.get(where, 0) + stat.size
        return sizes

    now, then = group(snapshot), group(before)
    diff = sorted(((now.get(k, 0) - then.get(k, 0), k) for k in now | then), reverse=True)
    return [f"{size / 1024:9.0f} KiB  rotator/{where}" for size, where in diff[:top]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--trace", action="store_true", help="tracemalloc top allocations")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--arena-max", type=int, default=0,
                        help="MALLOC_ARENA_MAX for the measuring process (0: unset)")
    parser.add_argument("--scrape", action="store_true",
                        help="render /metrics every second during the pass, as the benchmark")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure(args.counts[0], trace=args.trace, top=args.top,
                         concurrency=args.concurrency, scrape=args.scrape)
        print(json.dumps(result))
        return 0
    env = dict(os.environ)
    env.pop("MALLOC_ARENA_MAX", None)
    if args.arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.arena_max)
    results = []
    for count in args.counts:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", str(count), "--child",
               "--top", str(args.top), "--concurrency", str(args.concurrency)]
        cmd += ["--trace"] * args.trace + ["--scrape"] * args.scrape
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                              check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{count} targets: RSS +{result['rss_growth']} MiB "
              f"({result['rss_before']} -> {result['rss_after']}), pass {result['pass_s']} s"
              + (f", traced +{result['traced_growth_mib']} MiB" if args.trace else ""),
              flush=True)
        for line in result.get("top", []):
            print("   ", line)
        if result.get("top_by_root"):
            print("  by the rotator line that allocated it:")
            for line in result["top_by_root"]:
                print("   ", line)
    if len(results) >= 2:
        small, big = results[0], results[-1]
        span = big["targets"] - small["targets"]
        per = (big["rss_growth"] - small["rss_growth"]) * 2**20 / span
        line = (f"per target between {small['targets']} and {big['targets']}: "
                f"RSS {per / 1024:.1f} KiB")
        if args.trace:
            traced = (big["traced_growth_mib"] - small["traced_growth_mib"]) * 2**20 / span
            line += f", traced {traced / 1024:.1f} KiB"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
