"""Chart values a newcomer gets wrong: the rotator's config is snake_case, the
chart's keys are camelCase; a snake_case key fails with the key to use
(scripts/chart-schema-hints keeps the schema's hints current)."""

from __future__ import annotations

import subprocess
import sys

from tests.test_chart import ROOT, Tools, ci_values, tools  # noqa: F401 - the fixture


def test_the_schema_hints_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart-schema-hints"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_snake_case_key_names_the_camel_case_one(tools: Tools) -> None:  # noqa: F811
    result = tools.helm_template(
        ci_values("default"),
        sets=["daemon.reconcile_interval=5m", "daemon.ha.lease_ttl=15s"],
    )
    assert result.returncode != 0
    problems = sorted(line for line in result.stderr.splitlines() if line.startswith("- at "))
    assert problems == [
        "- at '/daemon/ha/lease_ttl': value must be 'use daemon.ha.leaseTtl (the chart\\'s "
        "keys are camelCase)'",
        "- at '/daemon/reconcile_interval': value must be 'use daemon.reconcileInterval "
        "(the chart\\'s keys are camelCase)'",
    ]


def test_the_camel_case_key_is_accepted(tools: Tools) -> None:  # noqa: F811
    result = tools.helm_template(ci_values("default"), sets=["daemon.reconcileInterval=5m"])
    assert result.returncode == 0, result.stderr
    assert "reconcile_interval: 5m" in result.stdout
