"""``rotator run`` (the daemon process, not ``--once``) with a ``kind: webkey``
target and the periodic inventory: ZITADEL's clock and the rotator's are moved
together (the clock-offset file of tests/test_webkey_cli.py) and the daemon's
own reconcile passes advance the web key from create to activation, while
/metrics carries the inventory's counts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tests.harness.processes import free_port
from tests.test_daemon import ROOT, scrape, wait_for
from tests.test_webkey_cli import WebKeySetup, wk  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def daemon(wk: WebKeySetup, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:  # noqa: F811
    raw = yaml.safe_load(wk.path.read_text())
    port = free_port()
    raw["daemon"] = {"listen": f"127.0.0.1:{port}", "reconcile_interval": "1s",
                     "jitter": "0s"}
    raw["inventory"] = {"interval": "1m"}
    wk.path.write_text(yaml.safe_dump(raw))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **wk.env,
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    with (tmp_path / "run.out").open("wb") as out, (tmp_path / "run.err").open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "rotator", "--config", str(wk.path),
                                    "run"], stdout=out, stderr=err, env=env, cwd=ROOT)
    yield process, port
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _created(setup: WebKeySetup) -> list[str]:
    return [e["key_id"] for e in setup.audit() if e["event"] == "webkey.created"]


def test_the_daemon_advances_a_web_key_as_the_clock_moves_and_exports_the_inventory(
    wk: WebKeySetup, daemon: tuple[subprocess.Popen[bytes], int],  # noqa: F811
) -> None:
    process, port = daemon

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        assert process.poll() is None, "the daemon exited"
        try:
            return scrape(port)
        except Exception:  # not serving yet
            return None

    def inventory_counts() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        got = metrics() or {}
        return {k: v for k, v in got.items() if k[0] == "rotator_inventory_credentials"}

    counts = wait_for(inventory_counts, 90, "rotator_inventory_credentials on /metrics")
    labels = {dict(k[1])["kind"] for k in counts}
    assert "key" in labels  # the rotator's own key, at least
    assert all(v >= 0 for v in counts.values())
    initial = wait_for(lambda: [k for k, s in wk.keys().items() if s == "ACTIVE"], 30,
                       "an active web key")[0]
    assert _created(wk) == [], "nothing is due before every (30d)"

    wk.advance(timedelta(days=31))
    (new,) = wait_for(lambda: _created(wk), 60, "the daemon to create a web key")
    assert wk.keys()[new] == "INITIAL"
    assert wk.signing_kid() == initial, "not signing before publish_ahead"

    wk.advance(timedelta(days=1, minutes=1))
    wait_for(lambda: wk.keys().get(new) == "ACTIVE", 60, "the daemon to activate it")
    assert wk.signing_kid() == new
    assert wk.keys()[initial] == "INACTIVE"
    assert any(e["event"] == "webkey.activated" and e["key_id"] == new for e in wk.audit())
