"""The product's defaults against a ZITADEL that, like the real one, serves
everything on one port: no ``zitadel.grpc_target`` in the config, so the
rotator derives it from ``zitadel.url`` (plaintext here; TLS in test_tls.py).
The emulator opens no second port, so a v1 call that went anywhere else fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotator.config import load_config
from tests.harness.emulator import Emulator
from tests.harness.openbao import OpenBao
from tests.test_cli import rotator, write_config


@pytest.fixture(scope="module")
def one_port() -> Iterator[Emulator]:
    with Emulator.running(grpc_port=False) as emu:
        yield emu


@pytest.mark.parametrize("api", ["v1", "v2", "auto"])
def test_the_cli_rotates_over_the_issuers_port_with_grpc_target_unset(
    api: str, tmp_path: Path, one_port: Emulator, openbao: OpenBao, kv_mount: str
) -> None:
    users = {kind: one_port.add_user(f"svc-one-{api}-{kind}")["id"] for kind in ("key", "pat")}
    config = write_config(tmp_path / "rotator.yaml", {
        "zitadel": {"url": one_port.issuer, "api": api,
                    "credentials": {"key_file": str(one_port.admin_key_file)}},
        "vault": {"url": openbao.url, "mount": kv_mount},
        "policy": {"verify_timeout": "20s"},
        "targets": [{"name": "signer", "user": users["key"], "kind": "key"},
                    {"name": "reader", "user": users["pat"], "kind": "pat"}],
    })
    assert load_config(config).zitadel.grpc_target == one_port.issuer_target
    env = openbao.env(openbao.create_kv_token(kv_mount))

    rotated = rotator("--config", str(config), "rotate", "--all", "--json", env=env)

    assert rotated.code == 0, rotated.output
    assert {r["target"]: r["outcome"] for r in json.loads(rotated.stdout)} == {
        "signer": "rotated", "reader": "rotated"}
    state = one_port.state()
    live = {kind: [c for c in state[kind + "s"]
                   if c["user_id"] == users[kind] and not c.get("removed_at")]
            for kind in ("key", "pat")}
    assert (len(live["key"]), len(live["pat"])) == (1, 1)
    verified = rotator("--config", str(config), "verify", "signer", env=env)
    assert verified.code == 0, verified.output
