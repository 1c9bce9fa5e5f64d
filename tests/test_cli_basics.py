"""CLI basics an operator expects: ``--version``, shell completion, ``validate``
that reads the files the configuration names (``--json`` too), and a bad key
file that is a configuration error (exit 2) whatever is wrong with it."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rotator import __version__
from rotator.keys import build_key_file, generate_key_pair, key_file_json
from tests.harness.openbao import OpenBao
from tests.harness.pki import make_pki
from tests.test_cli import offline_config, rotator, write_config

VAULT = "http://127.0.0.1:1"


def test_version() -> None:
    run = rotator("--version")
    assert (run.code, run.stdout) == (0, f"rotator {__version__}\n")


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nospace -o default -o bashdefault -F _python_argcomplete rotator"),
        ("zsh", "#compdef rotator"),
        ("fish", "complete --command rotator"),
    ],
)
def test_completion_scripts_for_bash_zsh_and_fish(shell: str, marker: str) -> None:
    run = rotator("completion", shell)
    assert run.code == 0, run.output
    assert marker in run.stdout


def test_completion_offers_commands_and_the_configured_target_names(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, VAULT))
    out = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        rotator(
            env={
                "_ARGCOMPLETE": "1",
                "COMP_LINE": line,
                "COMP_POINT": str(len(line)),
                "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
                "ROTATOR_CONFIG": str(path),
            }
        )
        return out.read_text().split("\v")

    assert complete("rotator sta") == ["status "]
    assert {"billing", "reports"} <= set(complete("rotator rotate "))
    assert {"billing", "reports"} <= set(complete("rotator verify "))


# --------------------------------------------------------------------------- validate


def test_validate_checks_the_key_file_and_says_so(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, VAULT))
    run = rotator("--config", str(path), "validate")
    assert (run.code, run.stdout, run.stderr) == (0, "config OK: 2 targets, 1 file checked\n", "")


def _bad_pem(tmp_path: Path) -> str:
    """A key file whose fields are all there, and whose PEM does not parse."""
    pair = generate_key_pair()
    expires = datetime.now(UTC) + timedelta(days=1)
    key_file = dict(build_key_file("7", "2", pair.private_key_pem, expires))
    key_file["key"] = "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----"
    return key_file_json(key_file)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("not json {", "is not JSON (a ZITADEL key file, as downloaded, is a JSON object)"),
        ("[1, 2]", "is not a JSON object"),
        ('{"type": "serviceaccount"}', "key file lacks keyId, key, userId"),
        ("BAD_PEM", "key file 7: 'key' is not a PEM private key"),
    ],
)
def test_a_bad_key_file_is_a_configuration_error_whatever_is_wrong(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    key = tmp_path / "admin-key.json"
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, VAULT))
    if content is None:
        key.unlink()
    else:
        key.write_text(_bad_pem(tmp_path) if content == "BAD_PEM" else content)
    run = rotator("--config", str(path), "validate")
    assert run.code == 2
    assert run.stdout == ""
    assert run.stderr == (
        f"rotator: error: {path}: zitadel.credentials.key_file: {key} {problem}\n"
    )
    assert "bm90IGEga2V5" not in run.output  # never the file's content
    config_only = rotator("--config", str(path), "validate", "--config-only")
    assert (config_only.code, config_only.stdout) == (0, "config OK: 2 targets\n")

    as_json = rotator("--config", str(path), "validate", "--json")
    assert as_json.code == 2
    document = json.loads(as_json.stdout)
    assert document["ok"] is False
    assert document["files"] == [
        {"field": "zitadel.credentials.key_file", "path": str(key), "ok": False,
         "problem": problem},
    ]


def test_a_bad_pem_at_start_exits_2_not_3(tmp_path: Path, openbao: OpenBao) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, openbao.url))
    (tmp_path / "admin-key.json").write_text(_bad_pem(tmp_path))
    run = rotator("--config", str(path), "status", env={"VAULT_TOKEN": openbao.root_token})
    assert run.code == 2, run.output
    assert run.stderr == (
        f"rotator: error: {path}: zitadel.credentials.key_file: key file "
        f"{tmp_path / 'admin-key.json'}: key file 7: 'key' is not a PEM private key\n"
    )


def test_validate_reads_ca_files(tmp_path: Path) -> None:
    raw = offline_config(tmp_path, VAULT)
    (tmp_path / "pki").mkdir()
    raw["zitadel"]["tls"] = {"ca_file": str(make_pki(tmp_path / "pki").ca_file)}
    (tmp_path / "not-a-ca.pem").write_text("hello\n")
    raw["vault"]["ca_file"] = str(tmp_path / "not-a-ca.pem")
    path = write_config(tmp_path / "c.yaml", raw)
    run = rotator("--config", str(path), "validate")
    assert run.code == 2
    assert run.stderr == (
        f"rotator: error: {path}: vault.ca_file: {tmp_path / 'not-a-ca.pem'} holds no PEM "
        "certificate (-----BEGIN CERTIFICATE-----)\n"
    )
    document = json.loads(rotator("--config", str(path), "validate", "--json").stdout)
    assert [(f["field"], f["ok"]) for f in document["files"]] == [
        ("zitadel.credentials.key_file", True),
        ("zitadel.tls.ca_file", True),
        ("vault.ca_file", False),
    ]


def test_validate_json_of_a_malformed_config(tmp_path: Path) -> None:
    raw = offline_config(tmp_path, VAULT)
    raw["targets"][1]["kind"] = "pak"
    path = write_config(tmp_path / "c.yaml", raw)
    run = rotator("--config", str(path), "validate", "--json")
    assert run.code == 2
    assert json.loads(run.stdout) == {
        "ok": False,
        "config": str(path),
        "error": f"{path}: targets[1].kind: must be one of key, pat, secret (got 'pak')",
    }


def test_validate_json_of_a_good_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", offline_config(tmp_path, VAULT))
    run = rotator("--config", str(path), "validate", "--json")
    assert run.code == 0
    document = json.loads(run.stdout)
    assert (document["ok"], document["targets"]) == (True, ["billing", "reports"])
    assert os.path.samefile(document["files"][0]["path"], tmp_path / "admin-key.json")
