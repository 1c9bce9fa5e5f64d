"""Start-up cost: a command loads only what it uses.

The ``zitadel-client`` SDK takes seconds of CPU to import whole (~1,400
modules), grpc and the Vault/HTTP clients a good part of a second: commands
that do not call ZITADEL's management API must not load the SDK or grpc, and
one that does loads only the slice of the SDK the v2 transport uses
(rotator/zitadel/sdk.py).  Each command runs in a fresh interpreter (as from
the shell) that reports ``sys.modules`` at exit; nothing here is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.keys import build_key_file, generate_key_pair
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao

ROOT = Path(__file__).resolve().parent.parent

#: Runs the CLI in-process, then writes the names of all loaded modules to $MODULES_OUT.
_CLI_REPORTING_MODULES = """
import json, os, sys
from rotator.cli import main
code = 1
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
finally:
    with open(os.environ["MODULES_OUT"], "w") as out:
        json.dump(sorted(sys.modules), out)
sys.exit(code)
"""


def run_cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules loaded by ``rotator ARGV``; fails if the command fails."""
    out = tmp_path / "modules.json"
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MODULES_OUT": str(out)}
    done = subprocess.run(
        [sys.executable, "-c", _CLI_REPORTING_MODULES, *argv],
        capture_output=True,
        text=True,
        env={**full_env, **(env or {})},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return set(json.loads(out.read_text()))


def loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def live_config(tmp_path: Path, emulator: Emulator, vault_url: str, mount: str, api: str) -> Path:
    org = emulator.org_ids["acme"]
    return write_config(
        tmp_path,
        {
            "zitadel": {
                "url": emulator.issuer,
                "api": api,
                "grpc_target": emulator.grpc_target,
                "credentials": {"key_file": str(emulator.admin_key_file)},
            },
            "vault": {"url": vault_url, "mount": mount},
            "policy": {"verify_timeout": "20s"},
            "targets": [
                {"name": "billing", "user": "svc-billing", "org_id": org, "kind": "key"},
                {"name": "reports", "user": "svc-reports", "org_id": org, "kind": "pat"},
            ],
        },
    )


# --------------------------------------------------------------------------- no network at all


def test_help_loads_no_client_library(tmp_path: Path) -> None:
    modules = run_cli(tmp_path, "--help")
    for heavy in ("zitadel_client", "grpc", "hvac", "httpx", "cryptography", "structlog",
                  "apscheduler", "importlib.metadata"):  # the version: only for --version
        assert loaded(modules, heavy) == [], heavy


def test_validate_loads_neither_the_sdk_nor_grpc_nor_any_network_client(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "zitadel": {
                "url": "https://zitadel.example.com",
                "api": "v2",
                "credentials": {"key_file": "admin-key.json"},
            },
            "vault": {"url": "https://vault.example.com"},
            "targets": [{"name": "reports", "user": "svc-reports", "kind": "pat"}],
        },
    )
    modules = run_cli(tmp_path, "--config", str(config), "validate", "--config-only")
    for heavy in ("zitadel_client", "grpc", "hvac", "httpx", "requests", "cryptography",
                  "apscheduler"):  # cron windows: only a config that has one parses them
        assert loaded(modules, heavy) == [], heavy
    # the full validate also reads the key file (JSON, PEM): cryptography, still no client
    pair = generate_key_pair()
    key_file = build_key_file("1", "2", pair.private_key_pem, datetime(2030, 1, 1, tzinfo=UTC))
    (tmp_path / "admin-key.json").write_text(json.dumps(key_file))
    modules = run_cli(tmp_path, "--config", str(config), "validate")
    for heavy in ("zitadel_client", "grpc", "hvac", "httpx", "requests"):
        assert loaded(modules, heavy) == [], heavy


@pytest.mark.parametrize(
    ("argv", "one_shot"),
    [(["plan"], True), (["status"], True), (["run", "--once"], True), (["run"], False)],
)
def test_one_shot_commands_collect_cycles_rarely_and_the_daemon_as_python_does(
    tmp_path: Path, argv: list[str], one_shot: bool
) -> None:
    script = (
        "import gc, sys\nfrom rotator.cli import ONE_SHOT_GC_THRESHOLDS, main\n"
        "default = gc.get_threshold()\nmain(sys.argv[1:])\n"
        "print(gc.get_threshold() == ONE_SHOT_GC_THRESHOLDS, gc.get_threshold() == default)\n"
    )
    done = subprocess.run(  # the config is missing: the command stops right after parsing
        [sys.executable, "-c", script, "--config", str(tmp_path / "missing.yaml"), *argv],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )
    assert "missing.yaml" in done.stderr
    assert done.stdout.split() == [str(one_shot), str(not one_shot)]


# ------------------------------------------------------------------- against ZITADEL and Vault


@pytest.mark.parametrize("api", ["v1", "v2", "auto"])
def test_status_reads_vault_without_the_sdk_or_grpc(
    tmp_path: Path, emulator: Emulator, openbao: OpenBao, kv_mount: str, api: str
) -> None:
    config = live_config(tmp_path, emulator, openbao.url, kv_mount, api)
    modules = run_cli(tmp_path, "--config", str(config), "status", env=openbao.env())
    assert "hvac" in modules  # it did read Vault
    assert loaded(modules, "zitadel_client") == []
    assert loaded(modules, "grpc") == []
    assert loaded(modules, "apscheduler") == []  # no rotation window configured


def test_a_v2_rotation_loads_only_the_slice_of_the_sdk_it_uses(
    tmp_path: Path, emulator: Emulator, openbao: OpenBao, kv_mount: str
) -> None:
    config = live_config(tmp_path, emulator, openbao.url, kv_mount, "v2")
    modules = run_cli(tmp_path, "--config", str(config), "rotate", "reports", env=openbao.env())
    sdk = loaded(modules, "zitadel_client")
    assert "zitadel_client.api_client" in sdk  # the v2 transport was used
    # not the all-services client, the 200-model UserServiceApi, nor the JOSE
    # library only the SDK's own private-key login uses
    for unused in ("zitadel_client.zitadel", "zitadel_client.api.user_service_api", "authlib.jose"):
        assert unused not in modules
    assert loaded(modules, "apscheduler") == []  # no rotation window configured
    models = [m for m in sdk if m.startswith("zitadel_client.models.")]
    assert 0 < len(models) < 100, len(models)  # of ~1,350
    assert loaded(modules, "grpc") == []


# --------------------------------------------------------------------------- the slice and the rest


def test_the_whole_sdk_can_still_be_imported_after_the_slice(tmp_path: Path) -> None:
    """Code that wants all of the SDK in the same process gets all of it, with the
    very classes the slice loaded (isinstance and except clauses keep working)."""
    script = """
import sys
from rotator.zitadel import sdk
assert "zitadel_client.zitadel" not in sys.modules
import zitadel_client
from zitadel_client import Zitadel, ApiError
from zitadel_client.models import *
import zitadel_client.models as models
assert ApiError is sdk.ApiError
assert models.UserServiceAddKeyRequest is sdk.UserServiceAddKeyRequest
assert zitadel_client.UserServiceUser is sdk.UserServiceUser
assert UserServiceListUsersRequest is sdk.UserServiceListUsersRequest
assert len([m for m in sys.modules if m.startswith("zitadel_client.models.")]) > 1000
users = Zitadel.with_access_token("http://127.0.0.1:1", "t").users
assert type(users).__name__ == "UserServiceApi"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
