"""ZITADEL's own TypeScript clients against the emulator (tests/ts): the
independent check that the emulator speaks ZITADEL's wire on its one port -
``@zitadel/node`` (v1 over gRPC), ``@zitadel/client``'s server transport (v2
over gRPC), connect-node (Connect binary and JSON over HTTP/2 and HTTP/1.1) -
and that its copy of ZITADEL's descriptors matches ``@zitadel/proto``.

The packages are pinned in tests/ts/package.json and package-lock.json and
installed here with ``npm ci`` when the lock file changed (a stamp in
node_modules), so a second run costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import wire
from tests.harness.emulator import Emulator

TS_DIR = Path(__file__).resolve().parent / "ts"
STAMP = TS_DIR / "node_modules" / ".installed-lock-sha256"


def install_ts_clients() -> None:
    """``npm ci`` unless node_modules already holds exactly package-lock.json."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is needed for the TypeScript conformance tests"
    digest = hashlib.sha256((TS_DIR / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=TS_DIR,
                   check=True, timeout=600, capture_output=True)
    STAMP.write_text(digest)


def emulator_descriptors() -> dict[str, list[dict[str, Any]]]:
    """Every message of the emulator's proto/ files: fields with number, type,
    short type name, repetition and (real) oneof."""
    out: dict[str, list[dict[str, Any]]] = {}
    pool = wire.pool()
    shared = ("zitadel_filter_v2.proto", "zitadel_object_v2.proto", "zitadel_metadata_v2.proto")
    for file_name in (*wire.FILES, *shared):
        for message in pool.FindFileByName(file_name).message_types_by_name.values():
            out[message.full_name] = [_field(f) for f in message.fields]
    return out


def _field(f: Any) -> dict[str, Any]:
    type_name = (f.message_type.name if f.message_type is not None
                 else f.enum_type.name if f.enum_type is not None else None)
    oneof = f.containing_oneof
    synthetic = oneof is not None and len(oneof.fields) == 1 and oneof.name == "_" + f.name
    return {"name": f.name, "number": f.number, "type": f.type, "type_name": type_name,
            "repeated": wire.is_repeated(f), "oneof": None if oneof is None or synthetic
            else oneof.name}


@pytest.fixture(scope="module")
def one_port() -> Iterator[Emulator]:
    install_ts_clients()
    with Emulator.running(grpc_port=False) as emu:
        yield emu


def test_zitadels_typescript_clients_work_against_the_emulator_on_one_port(
    one_port: Emulator, tmp_path: Path
) -> None:
    descriptors = tmp_path / "descriptors.json"
    descriptors.write_text(json.dumps(emulator_descriptors()))
    config = tmp_path / "emulator.json"
    config.write_text(json.dumps({
        "issuer": one_port.issuer,
        "adminKeyFile": str(one_port.admin_key_file),
        "users": {api: one_port.add_user(f"svc-ts-{api}")["id"] for api in ("v1", "v2")},
        "descriptors": str(descriptors),
    }))
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run([node, "--test", "--test-reporter=spec", "emulator.test.mjs"],
                          cwd=TS_DIR, env={"PATH": str(Path(node).parent),
                                           "EMULATOR_JSON": str(config)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
    passed = re.search(r"\bpass (\d+)", done.stdout)
    assert passed is not None, done.stdout
    assert int(passed.group(1)) >= 16, done.stdout  # all of them ran
    assert re.search(r"\bfail 0\b", done.stdout), done.stdout
