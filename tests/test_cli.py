"""The ``rotator`` command line, run as a real process (``python -m rotator``)
against a real OpenBao dev server and the ZITADEL emulator.

What a person at the terminal relies on: documented exit codes, one-line
errors naming the file and field, ``--dry-run`` and ``plan`` changing nothing,
``status`` reporting what ``rotate`` did, and no secret in any output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import yaml

from rotator.keys import build_key_file, generate_key_pair, key_file_json
from tests.harness.audit_schema import problems
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao
from tests.harness.processes import free_port

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


def test_validate_accepts_the_example_config(tmp_path: Path) -> None:
    example = tmp_path / "rotator.yaml"
    example.write_text((ROOT / "config" / "rotator.example.yaml").read_text())
    env = {"VAULT_ADDR": "http://127.0.0.1:8200"}
    # validate reads the key file the example names (next to it): absent first
    missing = rotator("--config", str(example), "validate", env=env)
    assert missing.code == 2
    assert missing.stderr == (
        f"rotator: error: {example}: zitadel.credentials.key_file: "
        f"{tmp_path / 'admin-key.json'} does not exist\n"
    )
    pair = generate_key_pair()
    key_file = build_key_file("1", "2", pair.private_key_pem, datetime.now(UTC) + timedelta(1))
    (tmp_path / "admin-key.json").write_text(key_file_json(key_file))
    run = rotator("--config", str(example), "validate", env=env)
    assert run.code == 0, run.output
    assert run.stdout == "config OK: 3 targets, 1 file checked\n"


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
    assert line == (
        f"rotator: error: {path}: targets[1].kind: "
        "must be one of key, pat, secret, webkey (got 'pak')"
    )
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
    token = openbao.create_rotator_token("secret")
    run = rotator("--config", str(path), "rotate", "--all", env=openbao.env(token))
    assert run.code == 3
    line = assert_one_clean_line(run)
    assert "cannot start: ZITADEL" in line
    assert token not in run.output


def test_status_works_while_zitadel_is_down(
    tmp_path: Path, openbao: OpenBao, kv_mount: str
) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, openbao.url, mount=kv_mount))
    token = openbao.create_rotator_token(kv_mount)
    run = rotator("--config", str(path), "status", "--json", env=openbao.env(token))
    assert run.code == 0, run.output
    rows = json.loads(run.stdout)
    assert [(r["target"], r["state"], r["vault_version"]) for r in rows] == [
        ("billing", "missing", None),
        ("reports", "missing", None),
    ]
    assert "ZITADEL not reachable" in run.stderr


# --------------------------------------------------------------------------- against the emulator


def credentials(emulator: Emulator) -> Any:
    """Every key and PAT the emulator knows (ids, expiry, removal): no secrets."""
    state = emulator.state()
    return {"keys": state["keys"], "pats": state["pats"]}


@dataclass
class Setup:
    """A config for billing (key) and reports (PAT) on a fresh mount, and its environment."""

    path: Path
    env: dict[str, str]
    mount: str
    audit_file: Path
    vault: OpenBao

    def run(self, *args: str) -> Run:
        return rotator("--config", str(self.path), *args, env=self.env)

    def secret(self, path: str) -> dict[str, Any]:
        response = self.vault.client().secrets.kv.v2.read_secret_version(
            path=path, mount_point=self.mount, raise_on_deleted_version=True
        )
        data: dict[str, Any] = response["data"]["data"]
        return data

    def versions(self, *, index: bool = False) -> dict[str, int]:
        """Current version of every secret in the mount (targets and rotator state);
        ``index``: the status index's shards too (a cache every pass rewrites)."""
        client = self.vault.client()
        found: dict[str, int] = {}

        def walk(prefix: str) -> None:
            try:
                keys = client.secrets.kv.v2.list_secrets(path=prefix, mount_point=self.mount)
            except hvac.exceptions.InvalidPath:
                return
            for key in keys["data"]["keys"]:
                if key.endswith("/"):
                    walk(prefix + key)
                else:
                    meta = client.secrets.kv.v2.read_secret_metadata(
                        path=prefix + key, mount_point=self.mount
                    )
                    if index or "/index/" not in prefix + key:
                        found[prefix + key] = meta["data"]["current_version"]

        walk("")
        return found


@pytest.fixture
def setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    emulator: Emulator,
    openbao: OpenBao,
    kv_mount: str,
) -> Setup:
    """``zitadel.api`` is v1 unless parametrized: the v2 SDK alone takes ~2 s to
    import, in every CLI process; the tests marked ``auto`` cover v2."""
    api = getattr(request, "param", "v1")
    org = emulator.org_ids["acme"]
    targets = [
        {"name": "billing", "user": "svc-billing", "org_id": org, "kind": "key"},
        {"name": "reports", "user": "svc-reports", "org_id": org, "kind": "pat"},
    ]
    return online_setup(
        tmp_path, emulator, openbao, kv_mount, api=api, targets=targets, daemon={"max_attempts": 2}
    )


def online_setup(
    tmp_path: Path,
    emulator: Emulator,
    openbao: OpenBao,
    kv_mount: str,
    *,
    api: str,
    targets: list[dict[str, Any]],
    **sections: Any,
) -> Setup:
    """The CLI against ``emulator`` and OpenBao: ``targets`` (and further config
    ``sections``) in tmp_path/rotator.yaml, a token with the shipped policy alone
    (no `default`), the audit in tmp_path/audit.jsonl."""
    token = openbao.create_rotator_token(kv_mount)
    raw = {
        "zitadel": {
            "url": emulator.issuer,
            "api": api,
            "grpc_target": emulator.grpc_target,
            "credentials": {"key_file": str(emulator.admin_key_file)},
        },
        "vault": {"url": openbao.url, "mount": kv_mount},
        "policy": {"verify_timeout": "20s"},
        "targets": targets,
        **sections,
        "audit": {"file": "audit.jsonl"},
    }
    path = write_config(tmp_path / "rotator.yaml", raw)
    return Setup(path, openbao.env(token), kv_mount, tmp_path / "audit.jsonl", openbao)


AUTO = pytest.mark.parametrize("setup", ["auto"], indirect=True)


@AUTO
def test_rotate_all_then_status_shows_both_targets(setup: Setup) -> None:
    rotated = setup.run("rotate", "--all", "--json")
    assert rotated.code == 0, rotated.output
    results = {r["target"]: r for r in json.loads(rotated.stdout)}
    assert {t: r["outcome"] for t, r in results.items()} == {
        "billing": "rotated",
        "reports": "rotated",
    }

    status = setup.run("status", "--json")
    assert status.code == 0, status.output
    rows = {r["target"]: r for r in json.loads(status.stdout)}
    assert set(rows) == {"billing", "reports"}
    for name, kind in (("billing", "key"), ("reports", "pat")):
        row = rows[name]
        assert row["kind"] == kind
        assert row["state"] == "ready"
        assert row["credential_id"] == results[name]["credential_id"]
        assert row["vault_version"] == 1
        assert row["vault_path"] == f"zitadel/{name}"
        # Midnight UTC, 30 days out (the default lifetime).
        # midnight UTC (plus the rotation's own microseconds, which tell its
        # credential apart from any other expiring that night)
        assert re.search(r"T00:00:00(\.\d{1,6})?\+00:00$", row["expires_at"]), row["expires_at"]
    assert setup.secret("zitadel/billing")["keyId"] == rows["billing"]["credential_id"]
    assert setup.secret("zitadel/reports")["token_id"] == rows["reports"]["credential_id"]

    table = setup.run("status")
    assert table.code == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "TARGET",
        "KIND",
        "CREDENTIAL",
        "EXPIRES",
        "NEXT",
        "ROTATION",
        "VAULT",
        "STATE",
    ]
    *rows, source = lines
    assert [line.split()[0] for line in rows] == ["billing", "reports"]
    assert source.startswith("from the status index as of ")  # `rotate` filed both


def test_dry_run_and_plan_change_nothing(setup: Setup, emulator: Emulator) -> None:
    # Before any rotation: a dry run says what it would do and writes nothing.
    before = (setup.versions(index=True), credentials(emulator))
    dry = setup.run("rotate", "--all", "--dry-run", "--json")
    assert dry.code == 0, dry.output
    assert {r["outcome"] for r in json.loads(dry.stdout)} == {"dry_run"}
    assert all(
        any(a.startswith("rotate now") for a in r["actions"]) for r in json.loads(dry.stdout)
    )
    assert (setup.versions(index=True), credentials(emulator)) == before == ({}, before[1])

    assert setup.run("rotate", "--all").code == 0
    before = (setup.versions(index=True), credentials(emulator))
    assert before[0]  # the rotation wrote secrets and state

    for args in (
        ["rotate", "--all", "--dry-run"],
        ["rotate", "billing", "--dry-run"],
        ["plan"],
        ["plan", "--json", "--horizon", "400d"],
        ["status"],
    ):
        run = setup.run(*args)
        assert run.code == 0, (args, run.output)
        assert (setup.versions(index=True), credentials(emulator)) == before, args

    plan = json.loads(setup.run("plan", "--json").stdout)
    assert {t["target"]: t["outcome"] for t in plan["targets"]} == {
        "billing": "dry_run",
        "reports": "dry_run",
    }
    # 90 days of 30-day credentials renewed 10 days ahead: each target rotates again.
    assert {r["target"] for r in plan["rotations"]} == {"billing", "reports"}


def test_rotate_refuses_to_remove_a_credential_still_in_grace_unless_forced(
    setup: Setup,
) -> None:
    assert setup.run("rotate", "billing").code == 0
    second = setup.run("rotate", "billing", "--json")
    assert second.code == 0, second.output
    [result] = json.loads(second.stdout)
    in_grace = result["previous_credential_id"]
    retire_at = json.loads(setup.run("status", "billing", "--json").stdout)[0]["retire_at"]

    dry = setup.run("rotate", "billing", "--dry-run")
    assert dry.code == 0, dry.output
    assert (
        f"refuse to rotate: previous key {in_grace} is still in grace until {retire_at}; "
        "`rotator rotate --force billing` removes it now"
    ) in dry.stdout
    forced_dry = setup.run("rotate", "billing", "--dry-run", "--force")
    assert f"removes key {in_grace} now; it is still in grace until {retire_at}" in (
        forced_dry.stdout
    )

    before = setup.versions(index=True)
    refused = setup.run("rotate", "billing")
    assert refused.code == 1
    assert refused.stderr.splitlines()[-1] == (
        f"rotator: billing: refused: billing: previous key {in_grace} is still in grace "
        f"until {retire_at} (consumers may still use it); rotating now would remove it at "
        "once: `rotator rotate --force billing` to do it anyway"
    )
    assert setup.versions(index=True) == before  # not even the status index
    assert setup.run("rotate", "billing", "--force").code == 0


def test_verify_proves_the_stored_credentials_work(setup: Setup) -> None:
    assert setup.run("rotate", "--all").code == 0
    for name, what in (("billing", "key"), ("reports", "PAT")):
        run = setup.run("verify", name)
        assert run.code == 0, run.output
        assert run.stdout.startswith(f"{name}: {what} ")
        assert "works" in run.stdout


def test_run_once_rotates_what_has_no_credential(setup: Setup) -> None:
    run = setup.run("run", "--once")
    assert run.code == 0, run.output
    states = {r["target"]: r["state"] for r in json.loads(setup.run("status", "--json").stdout)}
    assert states == {"billing": "ready", "reports": "ready"}
    before = setup.versions()
    again = setup.run("run", "--once")
    assert again.code == 0, again.output
    assert setup.versions() == before  # nothing was due: nothing written


def test_a_failing_target_exits_1_then_stuck_exits_4_until_force(
    setup: Setup, emulator: Emulator
) -> None:
    try:
        emulator.set_faults(
            rules=[
                {"method": m, "code": "permission_denied"} for m in ("AddKey", "AddMachineKey")
            ]
        )
        first = setup.run("rotate", "billing")
        assert first.code == 1, first.output
        assert setup.run("status", "billing").code == 1  # failing, will be retried
        second = setup.run("rotate", "billing")  # max_attempts: 2
        assert second.code == 4, second.output
        assert setup.run("status", "billing").code == 4
        refused = setup.run("rotate", "billing")
        assert refused.code == 4
        assert "rotate --force billing" in refused.stdout
    finally:
        emulator.clear_faults()
    forced = setup.run("rotate", "--force", "billing")
    assert forced.code == 0, forced.output
    assert setup.run("status", "billing").code == 0


@AUTO
def test_no_secret_in_any_output_or_the_audit_file(setup: Setup, emulator: Emulator) -> None:
    outputs = [
        setup.run("rotate", "--all"),
        setup.run("--log-format", "console", "rotate", "--all", "--force"),
        setup.run("status"),
        setup.run("status", "--json"),
        setup.run("plan", "--json"),
        setup.run("verify", "billing"),
        setup.run("verify", "reports"),
        setup.run("run", "--once"),
        # debug logging turns on every library logger but the wire-level ones
        setup.run("--debug", "rotate", "--all", "--force"),
    ]
    assert all(run.code == 0 for run in outputs), [run.output for run in outputs]
    captured = "".join(run.output for run in outputs) + setup.audit_file.read_text()

    key_file = setup.secret("zitadel/billing")
    pat = setup.secret("zitadel/reports")
    admin_key = json.loads(emulator.admin_key_file.read_text())
    secrets_ = {
        "PAT": pat["token"],
        "previous PAT": pat.get("previous", {}).get("token"),
        "Vault token": setup.env["VAULT_TOKEN"],
        "root token": setup.vault.root_token,
    }
    for name, value in secrets_.items():
        if value:
            assert value not in captured, name
    assert "PRIVATE KEY" not in captured
    for pem in (key_file["key"], admin_key["key"]):
        body = "".join(pem.strip().splitlines()[1:-1])
        assert body[:40] not in captured.replace("\n", "")
    assert "audit" in setup.audit_file.read_text()  # the file is really written
    # every event these processes wrote is audit schema v1
    events = [json.loads(line) for line in setup.audit_file.read_text().splitlines()]
    assert {e["actor"]["trigger"] for e in events} == {"cli", "schedule"}
    assert [(e["event"], problems(e)) for e in events if problems(e)] == []


def test_plan_exits_2_when_windows_cannot_be_kept(setup: Setup) -> None:
    assert setup.run("rotate", "--all").code == 0
    raw = yaml.safe_load(setup.path.read_text())
    # Only on 30 February: never.
    raw["targets"][0]["schedule"] = {"windows": [{"cron": "0 0 30 2 *", "duration": "1h"}]}
    write_config(setup.path, raw)
    assert setup.run("validate").code == 0  # legal, but cannot be kept

    before = setup.versions()
    plan = setup.run("plan", "--horizon", "40d")
    assert plan.code == 2, plan.output
    problems = [line for line in plan.stderr.splitlines() if line.startswith("rotator: plan:")]
    assert problems
    assert all(line.startswith("rotator: plan: billing at ") for line in problems)
    assert "never fires" in problems[0]
    assert setup.versions() == before


def test_an_unwritable_audit_file_stops_before_any_network(tmp_path: Path) -> None:
    raw = offline_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    (tmp_path / "not-a-dir").write_text("")
    raw["audit"] = {"file": "not-a-dir/audit.jsonl"}
    path = write_config(tmp_path / "c.yaml", raw)
    run = rotator("--config", str(path), "rotate", "--all", env={"VAULT_TOKEN": "unused"})
    assert run.code == 2
    assert f"{path}: audit.file: cannot append to" in assert_one_clean_line(run)


@AUTO
def test_the_rotator_rotates_its_own_key_kept_in_vault(setup: Setup, emulator: Emulator) -> None:
    """``zitadel.credentials.vault_path`` listed as a target: every run reads its
    identity from Vault, so after rotating itself it authenticates with the new key."""
    own = emulator.add_user(f"rotator-self-{os.urandom(3).hex()}", roles=["ORG_OWNER"], key=True)
    setup.vault.client().secrets.kv.v2.create_or_update_secret(
        path="zitadel/rotator", secret=own["key_file"], mount_point=setup.mount
    )
    raw = yaml.safe_load(setup.path.read_text())
    raw["zitadel"]["credentials"] = {"vault_path": "zitadel/rotator"}
    raw["targets"].append(
        {
            "name": "self",
            "user": own["id"],
            "kind": "key",
            "vault_path": "zitadel/rotator",
            "adopt": True,
        }
    )
    write_config(setup.path, raw)
    first_key = own["key_file"]["keyId"]

    first = setup.run("rotate", "self", "--json")
    assert first.code == 0, first.output
    [result] = json.loads(first.stdout)
    assert result["outcome"] == "rotated"
    assert result["previous_credential_id"] == first_key
    second_key = result["credential_id"]
    assert setup.secret("zitadel/rotator")["keyId"] == second_key

    # A new process: its identity is now the rotated key, read from Vault.
    # (--force: the first key is still in grace, and this rotation removes it.)
    second = setup.run("rotate", "self", "--force", "--json")
    assert second.code == 0, second.output
    [result] = json.loads(second.stdout)
    assert result["previous_credential_id"] == second_key
    minted = [
        t["key_id"]
        for t in emulator.state(tokens=True)["access_tokens"]
        if t["user_id"] == own["id"]
    ]
    assert minted.count(first_key) == 1  # run 1 authenticated with it
    assert minted.count(second_key) == 2  # run 1 verified it, run 2 authenticated with it
    live = {
        k["id"]
        for k in credentials(emulator)["keys"]
        if k["user_id"] == own["id"] and not k["removed_at"]
    }
    assert first_key not in live
    assert {second_key, result["credential_id"]} <= live

    third = setup.run("verify", "self")
    assert third.code == 0, third.output


def test_the_demo_runs_and_ends_with_a_status_table_of_rotated_targets() -> None:
    """scripts/demo is the README's first command: it must work with no manual step."""
    process = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "demo")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a hung demo can be stopped with its servers
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate()
        raise
    assert process.returncode == 0, output[-3000:]
    tail = output[output.rindex("rotated targets (rotator status)") :].splitlines()
    assert tail[1].split()[:3] == ["TARGET", "KIND", "CREDENTIAL"]
    assert [line.split()[0] for line in tail[2:4]] == ["billing", "reports"]
    assert all(line.split()[-1] == "ready" for line in tail[2:4])
    assert "PRIVATE KEY" not in output
    work = re.search(r"(/\S+/rotator-demo\.\w+)", output)
    assert work is not None
    assert not Path(work.group(1)).exists()  # cleaned up on exit


def test_status_reads_the_index_shows_its_age_and_fresh_reads_the_state(setup: Setup) -> None:
    """``rotate`` files what it changed into the status index; ``status`` reads it
    (saying as of when), ``--fresh`` reads every target's own state instead."""
    assert setup.run("rotate", "--all").code == 0
    index = [p for p in setup.versions(index=True) if p.startswith("zitadel-rotator/index/")]
    assert index  # shards of the index, next to the state

    table = setup.run("status")
    assert table.code == 0, table.output
    assert re.search(r"from the status index as of \S+ \S+ UTC \((now|\d+m ago)\) "
                     r"\(2 targets\)", table.stdout), table.stdout

    # The state changes behind the index's back (another process, not filed yet):
    state = setup.secret("zitadel-rotator/targets/billing")
    state.update(failures=1, last_error="simulated failure", last_error_class="transient")
    setup.vault.client().secrets.kv.v2.create_or_update_secret(
        path="zitadel-rotator/targets/billing", secret=state, mount_point=setup.mount
    )
    cached = {r["target"]: r for r in json.loads(setup.run("status", "--json").stdout)}
    assert cached["billing"]["state"] == "ready"  # the index's view: a cache
    fresh = setup.run("status", "--fresh", "--json")
    assert fresh.code == 1, fresh.output  # a failing target
    rows = {r["target"]: r for r in json.loads(fresh.stdout)}
    assert rows["billing"]["state"] == "failing"
    assert rows["billing"]["last_error"] == "simulated failure"
    assert "read from 2 target states in Vault" in setup.run("status", "--fresh").stdout
    assert setup.run("plan", "--fresh").code == 0

    # run --once reads every state and files what changed: the index catches up,
    # and the pass's start is recorded as the age of every summary
    before = {p: v for p, v in setup.versions(index=True).items() if "/index/" in p}
    once = setup.run("run", "--once")
    assert once.code == 0, once.output  # the failure is cleared by a good pass
    after = {p: v for p, v in setup.versions(index=True).items() if "/index/" in p}
    assert after["zitadel-rotator/index/pass"] == before.get("zitadel-rotator/index/pass", 0) + 1
    cached, fresh = (setup.run("status", "--json"), setup.run("status", "--json", "--fresh"))
    assert json.loads(cached.stdout) == json.loads(fresh.stdout)
    assert {r["state"] for r in json.loads(cached.stdout)} == {"ready"}
