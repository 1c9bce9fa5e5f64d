"""``rotator inventory`` as a real process against the emulator and OpenBao,
over v1 and v2: a seeded instance with managed, unmanaged, never-expiring,
expiring and expired credentials across two orgs; table, JSON lines, exit
codes, ``--suggest``; an org the identity cannot read is reported as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao
from tests.test_cli import Run, rotator, write_config


@dataclass
class World:
    emulator: Emulator
    admin: Path  # config whose identity is rotator-admin (ORG_OWNER of acme only)
    viewer: Path  # config whose identity may read acme and globex
    env: dict[str, str]
    #: credential id -> what the test expects of it
    expected: dict[str, dict[str, Any]]
    secrets: list[str]  # secret values that must never be printed
    console: str  # the user name of the console-made user with a key and a secret
    vault: OpenBao
    mount: str
    api: str

    def run(self, config: Path, *args: str) -> Run:
        return rotator("--config", str(config), "inventory", *args, env=self.env)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(params=["v1", "v2"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, emulator: Emulator, openbao: OpenBao,
    kv_mount: str,
) -> World:
    api = request.param
    prefix = f"{api}{kv_mount[-4:]}-"  # the emulator is shared by the module: fresh names
    acme, globex = emulator.org_ids["acme"], emulator.org_ids["globex"]
    token = openbao.create_rotator_token(kv_mount)
    viewer = emulator.add_user(
        f"{prefix}viewer", roles=["ORG_OWNER_VIEWER"], key=True,
        memberships=[{"org": "globex", "roles": ["ORG_OWNER_VIEWER"]}],
    )
    (tmp_path / "viewer-key.json").write_text(json.dumps(viewer["key_file"]))
    billing = emulator.add_user(f"{prefix}billing")
    base: dict[str, Any] = {
        "zitadel": {"url": emulator.issuer, "api": api, "grpc_target": emulator.grpc_target,
                    "credentials": {"key_file": str(emulator.admin_key_file)}},
        "vault": {"url": openbao.url, "mount": kv_mount},
        "policy": {"verify_timeout": "20s"},
        "targets": [{"name": "billing", "user": billing["id"], "org_id": acme, "kind": "key",
                     "vault_path": f"zitadel/{prefix}billing"}],
    }
    admin = write_config(tmp_path / "admin.yaml", base)
    base["zitadel"]["credentials"] = {"key_file": str(tmp_path / "viewer-key.json")}
    viewer_config = write_config(tmp_path / "viewer.yaml", base)
    env = openbao.env(token)
    rotated = rotator("--config", str(admin), "rotate", "billing", "--json", env=env)
    assert rotated.code == 0, rotated.output
    managed_key = json.loads(rotated.stdout)[0]["credential_id"]

    now = datetime.now(UTC)
    console = emulator.add_user(f"{prefix}console", key=True, secret=True)  # 9999-12-31 key
    expiring = emulator.bulk(1, prefix=f"{prefix}soon-", pats_per_user=1,
                             expiration=_iso(now + timedelta(days=3)))
    expired = emulator.bulk(1, prefix=f"{prefix}old-", keys_per_user=1,
                            expiration=_iso(now - timedelta(days=2)))
    ledger = emulator.bulk(1, org="globex", prefix=f"{prefix}ledger-", pats_per_user=1,
                           expiration=_iso(now + timedelta(days=90)))
    expected = {
        managed_key: {"org_id": acme, "kind": "key", "flags": ["managed"],
                      "managed_by": "billing"},
        console["key_file"]["keyId"]: {"org_id": acme, "kind": "key",
                                       "flags": ["unmanaged", "never-expires"]},
        console["id"]: {"org_id": acme, "kind": "secret",
                        "flags": ["unmanaged", "never-expires"]},
        expiring["users"][0]["pats"][0]["id"]: {"org_id": acme, "kind": "pat",
                                                "flags": ["unmanaged", "expiring"]},
        expired["users"][0]["keys"][0]: {"org_id": acme, "kind": "key",
                                         "flags": ["unmanaged", "expired"]},
        ledger["users"][0]["pats"][0]["id"]: {"org_id": globex, "kind": "pat",
                                              "flags": ["unmanaged"]},
    }
    secrets = [console["client_secret"], console["key_file"]["key"],
               expiring["users"][0]["pats"][0]["token"], ledger["users"][0]["pats"][0]["token"]]
    return World(emulator, admin, viewer_config, env, expected, secrets, f"{prefix}console",
                 openbao, kv_mount, api)


def _records(run: Run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_json_lines_list_every_credential_of_both_orgs_with_its_flags(world: World) -> None:
    acme, globex = world.emulator.org_ids["acme"], world.emulator.org_ids["globex"]
    run = world.run(world.viewer, "--org", acme, "--org", globex, "--json")
    assert run.code == 0, run.output
    records = _records(run)
    orgs = {r["org_id"]: r for r in records if r["type"] == "org"}
    assert set(orgs) == {acme, globex}
    assert all(o["readable"] and o["error"] is None for o in orgs.values())
    found = {r["id"]: r for r in records if r["type"] == "credential"}
    for credential_id, want in world.expected.items():
        got = found[credential_id]
        assert {k: got[k] for k in want} == want, got
        assert got["expires_at"].endswith("Z")
    assert found[next(iter(world.expected))]["expires_in_seconds"] > 20 * 86400
    for secret in world.secrets:
        assert secret not in run.output


@pytest.mark.parametrize(
    ("fail_on", "code"),
    [("expired", 1), ("unmanaged,expiring", 1), ("never-expires", 1)],
)
def test_fail_on_a_present_category_exits_1(world: World, fail_on: str, code: int) -> None:
    run = world.run(world.viewer, "--org", world.emulator.org_ids["acme"], "--json",
                    "--fail-on", fail_on)
    assert run.code == code, run.output
    assert _records(run)  # the listing is printed all the same


def test_fail_on_an_absent_category_exits_0(world: World) -> None:
    globex = world.emulator.org_ids["globex"]
    run = world.run(world.viewer, "--org", globex, "--fail-on", "expired,expiring")
    assert run.code == 0, run.output


def test_the_table_shows_managed_targets_and_relative_expiry(world: World) -> None:
    run = world.run(world.viewer, "--org", world.emulator.org_ids["acme"])
    assert run.code == 0, run.output
    header, *lines = run.stdout.splitlines()
    assert header.split() == ["ORG", "USER", "KIND", "ID", "CREATED", "EXPIRES", "FLAGS"]
    managed = next(line for line in lines if "managed (billing)" in line)
    assert "(in 29d)" in managed or "(in 30d)" in managed
    assert any("unmanaged, expired" in line and "ago)" in line for line in lines)
    assert any("9999-12-31 23:59 UTC (never)" in line for line in lines)


def test_all_orgs_with_v1_is_a_usage_error(world: World) -> None:
    run = world.run(world.admin, "--all-orgs")
    if world.api == "v2":
        assert run.code == 0, run.output
        return
    assert run.code == 2, run.output
    (line,) = run.stderr.strip().splitlines()
    assert "--all-orgs" in line
    assert "v1 lists users per organization only" in line
    assert "--org" in line
    assert "v2" in line


def test_an_org_it_cannot_read_is_reported_not_empty(world: World) -> None:
    globex = world.emulator.org_ids["globex"]
    run = world.run(world.admin, "--org", globex, "--json")
    assert run.code == 3, run.output
    [org] = _records(run)
    assert org["readable"] is False
    assert "read" in org["error"]
    table = world.run(world.admin, "--org", globex)
    assert f"org {globex}: NOT READABLE" in table.stdout


def test_by_default_its_own_org_and_suggest_adopts_an_existing_secret(world: World) -> None:
    acme = world.emulator.org_ids["acme"]
    # someone already stored the console user's key where the suggestion points
    world.vault.client().secrets.kv.v2.create_or_update_secret(
        path=f"zitadel/{acme}/{world.console}/key", secret={"keyId": "x"}, mount_point=world.mount
    )
    run = world.run(world.admin, "--json", "--suggest")
    assert run.code == 0, run.output
    lines = run.stdout.splitlines()
    orgs = [json.loads(line) for line in lines if line.startswith("{") and '"org"' in line]
    assert [o["org_id"] for o in orgs] == [acme]
    stanzas = run.stdout[run.stdout.index("# targets to paste"):]
    assert "kind: secret" in stanzas
    assert "kind: pat" in stanzas
    assert "- name: billing" not in stanzas  # a managed credential gets no suggestion
    adopted = stanzas[stanzas.index(f"- name: {world.console}-key"):].split("\n  #")[0]
    assert f"vault_path: zitadel/{acme}/{world.console}/key" in adopted
    assert "adopt: true" in adopted
    assert stanzas.count("adopt: true") == 1
    for secret in world.secrets:
        assert secret not in run.output
