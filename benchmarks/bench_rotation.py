"""Rotation throughput, latency and memory, against the emulator and a real
OpenBao (both started here, on loopback).  Prints figures; asserts nothing.

    ./scripts/bench [--targets N] [--api v2|v1|both]

What is measured, per API:
- a first rotation of N key targets and N PAT targets, one after another
  (what `rotator rotate --all` does): wall time per rotation, p50/p95/max;
- a reconcile pass over all 2N targets when nothing is due (the daemon's
  periodic pass): total and per target;
- `status` over all targets;
- the process's peak resident memory (ru_maxrss) at the end.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from rotator.model import Trigger
from rotator.report import Outcome
from tests.enginekit import KitSpec, build_kit, key_target, pat_target
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def describe(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return (
        f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.0f}ms "
        f"p95={p95 * 1000:.0f}ms max={ordered[-1] * 1000:.0f}ms"
    )


def bench(api: str, count: int, emulator: Emulator, bao: OpenBao) -> None:
    mount = bao.enable_kv()
    spec = KitSpec(
        issuer=emulator.issuer,
        grpc_target=emulator.grpc_target,
        admin_key_file=str(emulator.admin_key_file),
        vault_url=bao.url,
        vault_token=bao.root_token,
        mount=mount,
        api=api,
    )
    targets = []
    for i in range(count):
        suffix = uuid.uuid4().hex[:6]
        key_user = emulator.add_user(f"bench-key-{suffix}")["login_name"]
        pat_user = emulator.add_user(f"bench-pat-{suffix}")["login_name"]
        targets.append(key_target(name=f"key-{i}", user=key_user))
        targets.append(pat_target(name=f"pat-{i}", user=pat_user))

    with build_kit(spec) as kit:
        per_kind: dict[str, list[float]] = {"key": [], "pat": []}
        total = 0.0
        for target in targets:
            seconds, result = timed(lambda t=target: kit.engine.reconcile(t, trigger=Trigger.CLI))
            assert result.outcome is Outcome.ROTATED, result.error
            per_kind[target.kind.value].append(seconds)
            total += seconds
        print(f"[{api}] first rotation, keys : {describe(per_kind['key'])}")
        print(f"[{api}] first rotation, PATs : {describe(per_kind['pat'])}")
        print(f"[{api}] {len(targets)} rotations in {total:.1f}s "
              f"({len(targets) / total:.1f} rotations/s)")

        seconds, results = timed(
            lambda: [kit.engine.reconcile(t, trigger=Trigger.SCHEDULE) for t in targets]
        )
        assert all(r.outcome is Outcome.UP_TO_DATE for r in results)
        print(f"[{api}] idle reconcile pass over {len(targets)} targets: {seconds:.2f}s "
              f"({seconds / len(targets) * 1000:.0f}ms/target)")

        seconds, _ = timed(lambda: [kit.engine.status(t) for t in targets])
        print(f"[{api}] status of {len(targets)} targets: {seconds:.2f}s")
    bao.disable_kv(mount)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=25, help="targets per kind (default 25)")
    parser.add_argument("--api", choices=["v1", "v2", "both"], default="both")
    args = parser.parse_args()
    apis = ["v2", "v1"] if args.api == "both" else [args.api]
    with OpenBao.start() as bao, Emulator.running() as emulator:
        for api in apis:
            bench(api, args.targets, emulator, bao)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the rotator process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
