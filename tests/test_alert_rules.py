"""The chart's alerts, run by promtool (Prometheus' own rule unit tests)
against metric series shaped like the rotator's: a rolled-back attempt that
its retry repairs is a normal recovery and pages nobody; failures in a row do;
a stuck target is TargetStuck's alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from rotator.metrics import Metrics
from tests.test_chart import TOOLS, Tools, ci_values, render, tools  # noqa: F401 - fixture

PROMTOOL = TOOLS / "bin" / "promtool"
TARGET = "billing"


def rules_and_selector(tools: Tools, tmp_path: Path) -> tuple[Path, str]:  # noqa: F811
    rule = render(tools, ci_values("ha-metrics")).one("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    expr = next(r["expr"] for r in rule["spec"]["groups"][0]["rules"])
    (selector,) = set(re.findall(r'\{(job="[^"]+",namespace="[^"]+")\}', expr))
    return path, selector


def series(selector: str, metric: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f'{metric}{{{selector},target="{TARGET}"{extra}}}', "values": values}


def promtool(rules: Path, tmp_path: Path, tests: list[dict[str, Any]]) -> str:
    spec = tmp_path / "tests.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alerts_read_metrics_the_rotator_exports() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    assert {"rotator_consecutive_failures", "rotator_target_stuck"} <= names


def test_a_repaired_rollback_does_not_page_but_failures_in_a_row_do(
    tools: Tools,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    rules, sel = rules_and_selector(tools, tmp_path)
    job = re.search(r'job="([^"]+)"', sel)
    namespace = re.search(r'namespace="([^"]+)"', sel)
    assert job is not None
    assert namespace is not None
    labels = {"namespace": namespace.group(1), "target": TARGET}
    recovery = {
        "interval": "1m",
        "input_series": [
            # minute 1: the attempt is rolled back (1 failure); minute 2: its retry rotates
            series(sel, "rotator_rotations_total", "0 1 1 1 1 1", outcome="rolled_back"),
            series(sel, "rotator_rotations_total", "0 0 1 1 1 1", outcome="rotated"),
            series(sel, "rotator_failures_total", "0 1 1 1 1 1"),
            series(sel, "rotator_consecutive_failures", "0 1 0 0 0 0"),
            series(sel, "rotator_target_stuck", "0x5"),
        ],
        "alert_rule_test": [
            {"eval_time": f"{m}m", "alertname": "RotationFailing", "exp_alerts": []}
            for m in range(6)
        ],
    }
    failing = {
        "interval": "1m",
        "input_series": [
            series(sel, "rotator_consecutive_failures", "0 1 2 3 3"),
            series(sel, "rotator_target_stuck", "0x4"),
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "RotationFailing", "exp_alerts": []},
            {
                "eval_time": "2m",
                "alertname": "RotationFailing",
                "exp_alerts": [
                    {
                        "exp_labels": {**labels, "severity": "warning", "team": "platform"},
                        "exp_annotations": {
                            "summary": f"Rotation of ZITADEL credential {TARGET} failed",
                            "description": (
                                f"The last 2 attempts to rotate target {TARGET} in "
                                f"{labels['namespace']} failed; the rotator retries with "
                                "backoff. See its audit log (kubectl logs) for the step and "
                                "error, or `rotator status`."
                            ),
                        },
                    }
                ],
            },
        ],
    }
    stuck = {
        "interval": "1m",
        "input_series": [
            series(sel, "rotator_consecutive_failures", "2 3 3"),
            series(sel, "rotator_target_stuck", "0 1 1"),
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "RotationFailing", "exp_alerts": []},
        ],
    }
    out = promtool(rules, tmp_path, [recovery, failing, stuck])
    assert "SUCCESS" in out
