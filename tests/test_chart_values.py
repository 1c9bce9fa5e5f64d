"""Chart values a newcomer gets wrong: the rotator's config is snake_case, the
chart's keys are camelCase; a snake_case key fails with the key to use
(scripts/chart-schema-hints keeps the schema's hints current)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_chart import (  # noqa: F401 - tools: the fixture
    ROOT,
    Tools,
    ci_values,
    load_rendered_config,
    render,
    tools,
    write_config,
)


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


WEBKEY = {"name": "signing", "kind": "webkey", "every": "90d", "publish_ahead": "1d",
          "retain": "90d", "algorithm": {"ecdsa": {"curve": "P384"}}}


def test_a_web_key_target_renders_into_a_config_the_rotator_loads(
    tools: Tools, tmp_path: Path  # noqa: F811
) -> None:
    values = yaml.safe_load(ci_values("default").read_text())
    values["targets"] = [*values["targets"], WEBKEY]
    path = tmp_path / "webkey-values.yaml"
    path.write_text(yaml.safe_dump(values))
    config = load_rendered_config(write_config(render(tools, path), tmp_path, "webkey"))
    (signing,) = config.webkey_targets
    assert (signing.name, signing.algorithm.kind, signing.algorithm.curve) == (
        "signing", "ecdsa", "P384")


def test_a_web_key_target_with_a_vault_path_is_refused_by_the_schema(
    tools: Tools, tmp_path: Path  # noqa: F811
) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump({"targets": [{**WEBKEY, "vault_path": "zitadel/signing"}]}))
    result = tools.helm_template(ci_values("default"), bad)
    assert result.returncode != 0
    assert "at '/targets/0'" in result.stderr, result.stderr
