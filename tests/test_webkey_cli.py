"""``kind: webkey`` through the real ``rotator`` process against the emulator
and OpenBao, with ZITADEL's clock and the rotator's moved together
(ROTATOR_CLOCK_OFFSET_FILE): rotate starts a cycle, status and plan show it,
``run --once`` activates and retires on time, ``--emergency`` warns and
deletes the compromised key, and a process killed between CreateWebKey and
the state write resumes without a second key."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from tests.emulator.support import access_token, sign_assertion, token_request
from tests.harness.audit_schema import problems
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao
from tests.test_cli import ROOT, Run, rotator, write_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class WebKeySetup:
    emu: Emulator
    path: Path
    env: dict[str, str]
    offset_file: Path
    key_file: dict[str, Any]
    audit_file: Path

    def run(self, *args: str) -> Run:
        return rotator("--config", str(self.path), *args, env=self.env)

    def advance(self, delta: timedelta) -> None:
        offset = float(self.emu.clock()["offset_seconds"]) + delta.total_seconds()
        self.emu.set_clock_offset(offset)
        self.offset_file.write_text(str(offset))

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=float(self.offset_file.read_text()))

    def keys(self) -> dict[str, str]:
        """kid -> state, from the emulator's ListWebKeys as the rotator's identity sees it."""
        token = access_token(self.emu.issuer, self.key_file)
        listed = httpx.post(f"{self.emu.issuer}/zitadel.webkey.v2.WebKeyService/ListWebKeys",
                            json={}, headers={"Authorization": f"Bearer {token}"}).json()
        return {k["id"]: k["state"].removeprefix("STATE_") for k in listed.get("webKeys", [])}

    def signing_kid(self) -> str:
        answer = token_request(self.emu.issuer, sign_assertion(self.key_file, self.emu.issuer),
                               scope="openid")
        return str(jwt.get_unverified_header(answer.json()["id_token"])["kid"])

    def audit(self) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in self.audit_file.read_text().splitlines()]
        for event in events:
            assert problems(event) == [], event
        return events


@pytest.fixture
def wk(tmp_path: Path, emulator_factory: Any, openbao: OpenBao, kv_mount: str) -> WebKeySetup:
    emu: Emulator = emulator_factory()
    owner = emu.add_user("webkey-rotator", roles=["IAM_OWNER"], key=True)
    key_path = tmp_path / "owner-key.json"
    key_path.write_text(json.dumps(owner["key_file"]))
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text(str(float(emu.clock()["offset_seconds"])))
    raw = {
        "zitadel": {"url": emu.issuer, "api": "v1", "grpc_target": emu.grpc_target,
                    "credentials": {"key_file": str(key_path)}},
        "vault": {"url": openbao.url, "mount": kv_mount},
        "targets": [
            {"name": "billing", "user": "svc-billing", "kind": "key"},
            {"name": "signing", "kind": "webkey", "every": "30d", "publish_ahead": "1d",
             "retain": "2d", "adopt": True},
        ],
        "audit": {"file": "audit.jsonl"},
    }
    path = write_config(tmp_path / "rotator.yaml", raw)
    env = {**openbao.env(openbao.create_rotator_token(kv_mount)),
           "ROTATOR_CLOCK_OFFSET_FILE": str(offset_file)}
    return WebKeySetup(emu, path, env, offset_file, owner["key_file"],
                       tmp_path / "audit.jsonl")


def _line(text: str, start: str) -> str:
    (line,) = [row for row in text.splitlines() if row.startswith(start)]
    return " ".join(line.split())


def test_rotate_status_plan_and_run_once_drive_a_full_cycle(wk: WebKeySetup) -> None:
    before = wk.keys()
    (initial,) = [k for k, s in before.items() if s == "ACTIVE"]

    began = wk.now()
    started = wk.run("rotate", "signing", "--json")
    assert started.code == 0, started.output
    (result,) = json.loads(started.stdout)
    (new,) = set(wk.keys()) - set(before)
    assert wk.keys()[new] == "INITIAL"  # published, not signing
    assert result["outcome"] == "up_to_date"
    assert result["credential_id"] == initial
    activate_at = wk.now() + timedelta(days=1)
    assert result["actions"][0].startswith("waiting: activation due at ")
    # publish_ahead after the key was seen published: between the command's start and end
    due = datetime.fromisoformat(result["next_run_at"])
    assert began + timedelta(days=1) - timedelta(seconds=1) <= due <= activate_at

    status = wk.run("status", "signing")
    assert status.code == 0, status.output
    row = _line(status.stdout, "signing ")
    assert row.startswith(f"signing {initial} ")
    assert f" published 3 activate {new} at " in row

    plan = wk.run("plan", "--horizon", "40d")
    assert plan.code == 0, plan.output
    steps = plan.stdout.split("web key steps in the next 40d:\n")[1].splitlines()
    assert steps[0].startswith(f"signing: next: activate {new} at ")
    assert [s.split()[3] for s in steps[1:]] == ["activate", "delete", "create", "activate",
                                                 "delete"]

    # not yet due: nothing signs with the new key
    assert wk.run("run", "--once").code == 0
    assert wk.signing_kid() == initial
    wk.advance(timedelta(days=1, minutes=1))
    assert wk.run("run", "--once").code == 0
    assert wk.signing_kid() == new
    assert wk.keys()[initial] == "INACTIVE"  # still published for retain
    # retain (2d) later the previous key goes (adopt: true), never before
    wk.advance(timedelta(days=1, hours=23))
    assert wk.run("run", "--once").code == 0
    assert initial in set(wk.keys())
    wk.advance(timedelta(hours=2))
    assert wk.run("run", "--once").code == 0
    assert initial not in set(wk.keys())
    events = [e["event"] for e in wk.audit() if e.get("target") == "signing"]
    for name in ("webkey.created", "webkey.published", "webkey.activated", "webkey.deleted"):
        assert events.count(name) == 1, events
    status = wk.run("status", "signing")
    assert _line(status.stdout, "signing ").startswith(f"signing {new} ")


def test_emergency_is_refused_for_other_kinds_and_warns_for_web_keys(wk: WebKeySetup) -> None:
    refused = wk.run("rotate", "--emergency", "billing")
    assert refused.code == 2
    assert refused.stderr == (
        "rotator: error: rotate --emergency is only for kind webkey targets, not billing "
        "(kind key): a compromised key or PAT is replaced with `rotator rotate --force`\n")
    (compromised,) = [k for k, s in wk.keys().items() if s == "ACTIVE"]
    # a normal cycle is under way (its key published, activation a day off) ...
    before = set(wk.keys())
    assert wk.run("rotate", "signing").code == 0
    (published,) = set(wk.keys()) - before

    # ... the emergency activates that key now instead of creating another
    run = wk.run("rotate", "--emergency", "signing")
    assert run.code == 0, run.output
    assert ("rotator: warning: signing: emergency rotation: the new key signs at once; relying "
            "parties with a cached JWKS reject new tokens until they refresh it (up to 5 min), "
            "and every token the compromised key signed stops verifying") in run.stderr
    assert compromised not in set(wk.keys())
    assert wk.signing_kid() == published
    assert set(wk.keys()) == before - {compromised} | {published}
    status = wk.run("status", "signing")
    assert status.code == 0, status.output
    assert "signing: WARNING: emergency rotation: the new key signs at once" in status.stdout
    deleted = [e for e in wk.audit() if e["event"] == "webkey.deleted"]
    assert [(e["key_id"], e["reason"]) for e in deleted] == [(compromised, "compromised")]
    # the danger passes with the JWKS cache's max-age
    wk.advance(timedelta(minutes=6))
    assert "WARNING" not in wk.run("status", "signing").stdout


CRASH_RUNNER = """
import os, sys
from rotator.zitadel import webkeys
create = webkeys.WebKeyClient.create
def create_then_die(self, algorithm):
    create(self, algorithm)
    os._exit(137)  # killed between CreateWebKey's answer and the state write
webkeys.WebKeyClient.create = create_then_die
from rotator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_process_killed_after_create_resumes_without_a_second_key(wk: WebKeySetup) -> None:
    before = set(wk.keys())
    env = {"PATH": "/usr/bin:/bin", **wk.env}
    killed = subprocess.run([sys.executable, "-c", CRASH_RUNNER, "--config", str(wk.path),
                             "rotate", "signing"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert killed.returncode == 137, killed.stderr
    (orphan,) = set(wk.keys()) - before
    # the killed process's claim holds until its deadline: no one acts meanwhile...
    yielded = wk.run("rotate", "signing")
    assert yielded.code == 1, yielded.output
    assert "web key target signing is run by" in yielded.output
    assert set(wk.keys()) - before == {orphan}
    wk.advance(timedelta(minutes=10))  # ... then another process takes over
    resumed = wk.run("rotate", "signing")
    assert resumed.code == 0, resumed.output
    assert set(wk.keys()) - before == {orphan}  # found, not created again
    wk.advance(timedelta(days=1, minutes=1))
    assert wk.run("run", "--once").code == 0
    assert wk.signing_kid() == orphan


def test_validate_online_names_the_role_web_keys_need(wk: WebKeySetup, tmp_path: Path) -> None:
    assert wk.run("validate", "--online").code == 0  # an IAM_OWNER identity reads web keys
    manager = wk.emu.add_user("org-only-rotator", roles=["ORG_USER_MANAGER"], key=True)
    key_path = tmp_path / "manager-key.json"
    key_path.write_text(json.dumps(manager["key_file"]))
    raw = yaml.safe_load(wk.path.read_text())
    raw["zitadel"]["credentials"]["key_file"] = str(key_path)
    wk.path.write_text(yaml.safe_dump(raw))

    refused = wk.run("validate", "--online")
    assert refused.code == 2, refused.output
    (line,) = [row for row in refused.stderr.splitlines() if "web keys" in row]
    assert line.startswith(f"rotator: error: {wk.path}: signing: the rotator's identity may not "
                           "read the instance's web keys (iam.web_key.read): grant it IAM_OWNER")
