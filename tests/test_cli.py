"""The ``rotator`` command line, run as a real process (``python -m rotator``)
against a real OpenBao dev server and the ZITADEL emulator.

What a person at the terminal relies on: documented exit codes, one-line
errors naming the file and field, ``--dry-run`` and ``plan`` changing nothing,
``status`` reporting what ``rotate`` did, and no secret in any output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.keys import build_key_file, generate_key_pair, key_file_json
from tests.harness.openbao import OpenBao, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def rotator(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Run:
    """Run the CLI in a subprocess with exactly ``env`` (plus PATH)."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "rotator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def offline_config(tmp_path: Path, vault_url: str, *, mount: str = "secret") -> dict[str, Any]:
    """A valid config whose own key file exists (a fresh key nobody knows)."""
    pair = generate_key_pair()
    key_file = build_key_file(
        "1", "2", pair.private_key_pem, datetime.now(UTC) + timedelta(days=30)
    )
    (tmp_path / "admin-key.json").write_text(key_file_json(key_file))
    return {
        "zitadel": {
            "url": f"http://127.0.0.1:{free_port()}",
            "api": "v2",
            "credentials": {"key_file": "admin-key.json"},
            "timeout": "2s",
        },
        "vault": {"url": vault_url, "mount": mount, "timeout": "2s"},
        "targets": [
            {"name": "billing", "user": "svc-billing", "kind": "key"},
            {"name": "reports", "user": "svc-reports", "kind": "pat"},
        ],
    }


def assert_one_clean_line(run: Run) -> str:
    """stderr is one error line: no traceback, no Python exception dump."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.output
    assert lines[0].startswith("rotator: error: ")
    return lines[0]


# --------------------------------------------------------------------------- validate, usage


def test_validate_accepts_the_example_config() -> None:
    run = rotator(
        "--config",
        "config/rotator.example.yaml",
        "validate",
        env={"VAULT_ADDR": "http://127.0.0.1:8200"},
    )
    assert run.code == 0, run.output
    assert run.stdout == "config OK: 2 targets\n"


def test_config_option_after_the_subcommand_and_from_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, "http://127.0.0.1:1"))
    assert rotator("validate", "--config", str(path)).code == 0
    assert rotator("validate", env={"ROTATOR_CONFIG": str(path)}).code == 0


def test_validate_rejects_a_malformed_config_naming_file_and_field(tmp_path: Path) -> None:
    raw = offline_config(tmp_path, "http://127.0.0.1:1")
    raw["targets"][1]["kind"] = "pak"
    path = write_config(tmp_path / "bad.yaml", raw)
    run = rotator("--config", str(path), "validate")
    assert run.code == 2
    line = assert_one_clean_line(run)
    assert line == (f"rotator: error: {path}: targets[1].kind: must be one of key, pat (got 'pak')")
    assert run.stdout == ""


def test_a_malformed_config_stops_every_command_before_any_network(tmp_path: Path) -> None:
    raw = offline_config(tmp_path, "http://127.0.0.1:1")
    raw["policy"] = {"lifetime": "30d", "renew_before": "30d"}
    path = write_config(tmp_path / "bad.yaml", raw)
    for command in (["rotate", "--all"], ["status"], ["plan"], ["run", "--once"]):
        run = rotator("--config", str(path), *command)
        assert run.code == 2, (command, run.output)
        assert "policy.renew_before: must be less than lifetime" in assert_one_clean_line(run)


def test_missing_config_file(tmp_path: Path) -> None:
    run = rotator("--config", str(tmp_path / "nope.yaml"), "validate")
    assert run.code == 2
    assert assert_one_clean_line(run).endswith("nope.yaml: file not found")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rotate"], "rotate: name at least one TARGET, or --all"),
        (["rotate", "billing", "--all"], "give target names or --all, not both"),
        (["rotate", "nosuch"], "no target named 'nosuch' (known: billing, reports)"),
        (["verify", "nosuch"], "no target named 'nosuch'"),
    ],
)
def test_usage_errors_exit_2_before_connecting(
    tmp_path: Path, args: list[str], message: str
) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, "http://127.0.0.1:1"))
    run = rotator("--config", str(path), *args, env={"VAULT_TOKEN": "unused"})
    assert run.code == 2
    assert message in assert_one_clean_line(run)


def test_help_documents_the_exit_codes() -> None:
    run = rotator("--help")
    assert run.code == 0
    for line in (
        "0  success",
        "1  at least one target failed",
        "2  configuration or usage",
        "3  Vault or ZITADEL unreachable",
        "4  at least one target is stuck",
    ):
        assert line in run.stdout
    assert "3  Vault or ZITADEL" in rotator("rotate", "--help").stdout


# --------------------------------------------------------------------------- unreachable at start


def test_unreachable_vault_exits_3(tmp_path: Path) -> None:
    token = "hvs.never-printed-" + os.urandom(8).hex()
    path = write_config(
        tmp_path / "c.yaml", offline_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    )
    run = rotator("--config", str(path), "rotate", "--all", env={"VAULT_TOKEN": token})
    assert run.code == 3
    line = assert_one_clean_line(run)
    assert "cannot start" in line
    assert "Vault" in line
    assert token not in run.output


def test_vault_refusing_the_token_exits_3(tmp_path: Path, openbao: OpenBao) -> None:
    token = "hvs.not-a-real-token-" + os.urandom(8).hex()
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, openbao.url))
    run = rotator("--config", str(path), "status", env={"VAULT_TOKEN": token})
    assert run.code == 3
    assert "cannot start" in assert_one_clean_line(run)
    assert token not in run.output


def test_missing_vault_token_is_a_config_error(tmp_path: Path, openbao: OpenBao) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, openbao.url))
    run = rotator("--config", str(path), "status")
    assert run.code == 2
    assert "VAULT_TOKEN" in assert_one_clean_line(run)


def test_unreachable_zitadel_exits_3(tmp_path: Path, openbao: OpenBao) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, openbao.url))
    run = rotator("--config", str(path), "rotate", "--all", env=openbao.env())
    assert run.code == 3
    line = assert_one_clean_line(run)
    assert "cannot start: ZITADEL" in line
    assert openbao.root_token not in run.output


def test_status_works_while_zitadel_is_down(
    tmp_path: Path, openbao: OpenBao, kv_mount: str
) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, openbao.url, mount=kv_mount))
    run = rotator("--config", str(path), "status", "--json", env=openbao.env())
    assert run.code == 0, run.output
    rows = json.loads(run.stdout)
    assert [(r["target"], r["state"], r["vault_version"]) for r in rows] == [
        ("billing", "missing", None),
        ("reports", "missing", None),
    ]
    assert "ZITADEL not reachable" in run.stderr
