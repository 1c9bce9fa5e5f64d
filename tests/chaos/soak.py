"""The soak loop: seeded steps of (move the clocks, pick faults, run rotator
processes while killing, racing, restarting ZITADEL and sealing Vault), each
followed by the invariant checks of ``checks.py``.

Everything random comes from one ``random.Random(seed)``: the step log plus the
seed replay a run (``CHAOS_SEED=...``), up to the timing of real processes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos import checks
from tests.chaos.world import ZITADEL_TIMEOUT_S, Proc, World

#: Methods a fault may hit, v2 and v1 (each config uses its own), plus OAuth.
METHODS = ["AddKey", "RemoveKey", "ListKeys", "AddPersonalAccessToken",
           "RemovePersonalAccessToken", "ListPersonalAccessTokens", "GetUserByID", "ListUsers",
           "AddMachineKey", "RemoveMachineKey", "ListMachineKeys",
           "GetUserByLoginNameGlobal", "AddSecret", "RemoveSecret", "GenerateMachineSecret",
           "RemoveMachineSecret", "token", "userinfo", "discovery"]
#: Methods that change something: "slow"/"lost"/"drop" make sense only there
#: (and at the token endpoint, which issues a token).
ACTING = ["AddKey", "RemoveKey", "AddPersonalAccessToken", "RemovePersonalAccessToken",
          "AddMachineKey", "RemoveMachineKey", "AddSecret", "RemoveSecret",
          "GenerateMachineSecret", "RemoveMachineSecret", "token"]
CODES = ["unavailable", "resource_exhausted", "internal", "deadline_exceeded"]
#: A one-shot command that has not finished by then is a hang (a violation).
ONE_SHOT_DEADLINE_S = 120.0


@dataclass(frozen=True)
class Profile:
    steps: int
    hours: tuple[float, float]  # clock advance per step
    targets_per_kind: int


CI = Profile(steps=24, hours=(4.0, 12.0), targets_per_kind=1)
LONG = Profile(steps=420, hours=(8.0, 16.0), targets_per_kind=2)  # ~210 days


@dataclass
class Figures:
    steps: int = 0
    simulated_days: float = 0.0
    rotations: int = 0
    processes: int = 0
    faults_injected: int = 0
    slow_or_lost_rules: int = 0
    kills: int = 0
    daemon_kills: int = 0
    emulator_restarts: int = 0
    seals: int = 0
    races: int = 0
    violations: int = 0

    def line(self) -> str:
        return " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in vars(self).items())


@dataclass
class Soak:
    world: World
    seed: int
    profile: Profile
    log: Callable[[str], None] = print
    figures: Figures = field(default_factory=Figures)
    violations: list[tuple[int, checks.Violation]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    needles: dict[str, str] = field(default_factory=dict)
    daemons: dict[str, list[Proc]] = field(default_factory=lambda: {"v1": [], "v2": []})

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> None:
        self._bootstrap()
        for i in range(1, self.profile.steps + 1):
            self._step(i)
        self._converge()

    def _note(self, text: str) -> None:
        self.steps.append(text)
        self.log(text)

    def _record(self, step: int, found: list[checks.Violation]) -> None:
        for violation in found:
            self.violations.append((step, violation))
            self._note(f"  VIOLATION {violation}")
        self.figures.violations = len(self.violations)

    def _bootstrap(self) -> None:
        """Fault-free first rotation of every target; a failure here is the
        harness's, not a finding."""
        for api in ("v1", "v2"):
            proc = self.world.spawn(api, "rotate", "--all", label=f"bootstrap-{api}")
            code = proc.wait(timeout=ONE_SHOT_DEADLINE_S)
            if code != 0:
                raise RuntimeError(f"bootstrap rotate ({api}) exited {code}: "
                                   + proc.err.read_text(errors="replace")[-2000:])
        found = checks.check_step(self.world)
        if found:
            raise RuntimeError(f"bootstrap left the world inconsistent: {found}")
        self.needles.update(checks.secret_needles(self.world))
        self._note(f"seed={self.seed} bootstrap ok: {len(self.world.targets)} targets")

    def _faults(self) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.2:
            return {}
        rules = []
        for _ in range(rng.randint(1, 3)):
            mode = rng.choices(["fail", "slow", "lost", "drop"], [0.55, 0.2, 0.15, 0.1])[0]
            method = rng.choice(METHODS) if mode == "fail" else rng.choice(ACTING)
            rule: dict[str, Any] = {"method": method, "mode": mode,
                                    "rate": round(rng.uniform(0.1, 0.3), 2),
                                    "code": rng.choice(CODES)}
            if mode == "slow":
                rule["latency_ms"] = ZITADEL_TIMEOUT_S * 1000 + rng.randint(300, 1500)
            if mode != "fail":
                rule["count"] = rng.randint(1, 3)  # slow answers cost real seconds
                self.figures.slow_or_lost_rules += 1
            rules.append(rule)
        spec: dict[str, Any] = {"rules": rules, "seed": rng.randrange(2**31)}
        if rng.random() < 0.4:
            spec["list_lag_ms"] = rng.randint(500, 5000)
        return spec

    def _step(self, i: int) -> None:
        rng, world = self.rng, self.world
        hours = rng.uniform(*self.profile.hours)
        world.advance(hours * 3600)
        self.figures.steps = i
        self.figures.simulated_days = world.offset_s / 86400
        spec = self._faults()
        world.set_faults(spec)
        plan: list[str] = []
        procs: list[Proc] = []
        for api in ("v1", "v2"):
            procs.append(self._one_shot(api, plan))
            if rng.random() < 0.2:  # two rotators at once
                procs.append(self._one_shot(api, plan))
                self.figures.races += 1
            self._daemon_moves(api, plan)
        events: list[tuple[float, str, Any]] = []
        for proc in procs:
            if rng.random() < 0.25:
                events.append((rng.uniform(0.3, 4.0), "kill", proc))
        if rng.random() < 0.08:
            events.append((rng.uniform(0.2, 3.0), "emulator-kill", rng.uniform(0.3, 2.0)))
        if rng.random() < 0.08:
            events.append((rng.uniform(0.2, 3.0), "seal", rng.uniform(0.5, 3.0)))
        for daemon in [d for ds in self.daemons.values() for d in ds]:
            if rng.random() < 0.12:
                events.append((rng.uniform(0.2, 4.0), "daemon-kill", daemon))
        self._note(f"step {i}: +{hours:.1f}h day {self.figures.simulated_days:.2f} "
                   f"faults={checks_spec(spec)} procs={plan} "
                   f"events={[(round(t, 1), kind) for t, kind, _ in sorted(events, key=_first)]}")
        self._play(sorted(events, key=_first), procs)
        self._settle()
        self._record(i, checks.check_step(world))
        self.needles.update(checks.secret_needles(world))

    def _one_shot(self, api: str, plan: list[str]) -> Proc:
        rng = self.rng
        targets = [t.name for t in self.world.targets if t.api == api]
        choice = rng.choices(["once", "rotate", "force"], [0.6, 0.2, 0.2])[0]
        if choice == "once":
            args = ["run", "--once"]
        elif choice == "rotate":
            args = ["rotate", "--all"]
        else:
            args = ["rotate", rng.choice(targets), "--force"]
        plan.append(f"{api}:{' '.join(args)}")
        self.figures.processes += 1
        return self.world.spawn(api, *args, label=f"{api}-{choice}")

    def _daemon_moves(self, api: str, plan: list[str]) -> None:
        running = [d for d in self.daemons[api] if d.alive()]
        self.daemons[api] = running
        wanted = 1 if self.rng.random() < 0.7 else 0
        if running and self.rng.random() < 0.05:
            wanted = 2  # a second daemon without HA: two rotators racing
        while len(self.daemons[api]) < wanted:
            self.daemons[api].append(self.world.spawn(api, "run", label=f"{api}-daemon"))
            self.figures.processes += 1
            plan.append(f"{api}:daemon")

    def _play(self, events: list[tuple[float, str, Any]], procs: list[Proc]) -> None:
        started = time.monotonic()
        for at, kind, arg in events:
            delay = at - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
            if kind == "kill" and arg.alive():
                arg.kill()
                self.figures.kills += 1
            elif kind == "daemon-kill" and arg.alive():
                arg.kill()
                self.figures.daemon_kills += 1
            elif kind == "emulator-kill":
                self.world.kill_emulator()
                self.figures.emulator_restarts += 1
                time.sleep(arg)
                self.world.start_emulator()
            elif kind == "seal":
                self.world.bao.seal()
                self.figures.seals += 1
                time.sleep(arg)
                self.world.bao.unseal()
        for proc in procs:
            left = ONE_SHOT_DEADLINE_S - (time.monotonic() - proc.started)
            if proc.wait(timeout=max(1.0, left)) is None:
                proc.kill()
                self._record(self.figures.steps, [checks.Violation(
                    "hang", proc.label, f"still running after {ONE_SHOT_DEADLINE_S:.0f}s")])

    def _settle(self) -> None:
        """ZITADEL up and without faults, Vault unsealed: the checks see the world
        as a consumer would once the outage is over."""
        if not self.world.emulator.alive:
            self.world.start_emulator()
        self.world.clear_faults()
        if self.world.bao.health().get("sealed"):
            self.world.bao.unseal()

    def _converge(self) -> None:
        """Fault-free convergence: daemons stopped, the clock past every safe
        horizon (timeout + list lag), two reconcile passes; then no orphan and
        every credential audited."""
        for daemon in [d for ds in self.daemons.values() for d in ds]:
            daemon.kill()
        self._settle()
        self.world.advance(600)
        for _ in range(2):
            for api in ("v1", "v2"):
                proc = self.world.spawn(api, "run", "--once", label=f"{api}-converge")
                proc.wait(timeout=ONE_SHOT_DEADLINE_S)
        self._note("converge: two fault-free `run --once` passes")
        final = self.profile.steps + 1
        self._record(final, checks.check_step(self.world, final=True))
        self.needles.update(checks.secret_needles(self.world))
        self._record(final, checks.check_leaks(self.world.outputs(), self.needles, set()))
        self.figures.rotations = sum(
            path.read_text(errors="replace").count('"credential.promoted"')
            for path in self.world.audit_files.values() if path.exists())
        self.figures.faults_injected = _fired(self.world)

    def report(self) -> str:
        lines = [f"chaos soak seed={self.seed} (replay: CHAOS_SEED={self.seed})",
                 self.figures.line()]
        if self.violations:
            by_kind = checks.summarize([v for _, v in self.violations])
            lines.append(f"violations by class: {by_kind}")
            lines += [f"  step {step}: {v}" for step, v in self.violations]
        return "\n".join(lines)


def _first(event: tuple[float, str, Any]) -> float:
    return event[0]


def checks_spec(spec: dict[str, Any]) -> str:
    rules = ",".join(f"{r['method']}/{r['mode']}/{r['rate']}" for r in spec.get("rules", []))
    lag = spec.get("list_lag_ms")
    return f"[{rules}{f' lag={lag}ms' if lag else ''}]"


def _fired(world: World) -> int:
    """Faults fired are counted by the emulator per configuration; the soak
    counts them at each reconfiguration instead (see World.set_faults)."""
    return world.faults_fired
