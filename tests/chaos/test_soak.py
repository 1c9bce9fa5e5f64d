"""Issue 10 item 7: the chaos soak.  Real ``rotator run --once``, ``rotator
rotate`` and ``rotator run`` processes against the emulator process and a real
OpenBao, over many rotation cycles, under ZITADEL faults (10-30 % on random
methods, answers beyond ``zitadel.timeout`` after ZITADEL acted, lost answers,
list lag), SIGKILLs, two rotators at once, ZITADEL kill -9 + restart and Vault
seal/unseal; the invariants are checked after every step by ``checks.py``.

    CHAOS_SEED=1234 pytest tests/chaos          # replay a seed
    CHAOS_LONG=1 pytest tests/chaos -s          # >= 200 simulated days, figures printed
    CHAOS_STEPS=60 pytest tests/chaos -s        # CI profile with more steps
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Iterator

import pytest

from tests.chaos import checks
from tests.chaos.soak import CI, LONG, Profile, Soak
from tests.chaos.world import World, new_root
from tests.emulator.support import access_token, connect, in_days

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _profile() -> Profile:
    profile = LONG if os.environ.get("CHAOS_LONG") else CI
    if os.environ.get("CHAOS_STEPS"):
        profile = Profile(int(os.environ["CHAOS_STEPS"]), profile.hours, profile.targets_per_kind)
    return profile


@pytest.fixture
def world() -> Iterator[World]:
    root = new_root()
    built = World(root, targets_per_kind=_profile().targets_per_kind)
    try:
        yield built
    finally:
        built.close()
        if not os.environ.get("CHAOS_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def test_the_checks_see_an_orphan_a_dead_credential_and_a_leak(world: World) -> None:
    """The invariant checks can fail: a key planted on a target user by hand is
    an orphan nobody audited, a consumer secret that does not work is reported,
    and a secret in an output is a leak."""
    soak = Soak(world, seed=1, profile=Profile(0, (1, 1), 1), log=lambda _: None)
    soak.run()  # bootstrap + convergence, no chaos
    assert soak.violations == []
    key_target = next(t for t in world.targets if t.kind == "key")
    # a credential created behind the rotator's back on a target user
    admin_key = json.loads(world.emulator.admin_key_file.read_text())
    token = access_token(world.emulator.issuer, admin_key)
    added = connect(world.emulator.issuer, "AddKey", {
        "userId": key_target.user_id, "expirationDate": in_days(2).isoformat()}, token)
    assert added.status_code == 200
    kinds = {v.kind for v in checks.check_step(world, final=True)}
    assert {"orphan", "unaudited"} <= kinds
    # a consumer secret whose credential is gone
    secret = world.vault_read(key_target.vault_path)
    assert secret is not None
    connect(world.emulator.issuer, "RemoveKey",
            {"userId": key_target.user_id, "keyId": secret["keyId"]}, token)
    assert any(v.kind == "auth" and v.target == key_target.name
               for v in checks.check_step(world))
    leaked = [("out", f"oops {world.bao.root_token}")]
    assert [v.kind for v in checks.check_leaks(leaked, checks.secret_needles(world), set())] \
        == ["leak"]


#: CI: 24 steps fit in ~2 minutes; longer runs (CHAOS_LONG, CHAOS_STEPS) get ~20 s a step.
@pytest.mark.timeout(max(300, 20 * _profile().steps + 120))
def test_chaos_soak(world: World) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    soak = Soak(world, seed=seed, profile=_profile(),
                log=lambda line: sys.stderr.write(line + "\n"))
    try:
        soak.run()
    finally:
        report = soak.report()
        sys.stderr.write(report + "\n")
        print(report)
    assert not soak.violations, (
        f"{len(soak.violations)} invariant violations; replay with CHAOS_SEED={seed}\n"
        + report + "\nstep log:\n" + "\n".join(soak.steps))
