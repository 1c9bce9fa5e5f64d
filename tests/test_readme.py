"""The README's install and first-run instructions are real: every `rotator`
command in its shell blocks parses with the CLI's own parser, every file it
points to exists, and the metrics table names every metric the daemon
exports."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rotator.cli import parser
from rotator.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_lines() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    lines = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [re.split(r"\s+#", line, maxsplit=1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def rotator_commands() -> list[list[str]]:
    commands = []
    for line in shell_lines():
        if line.startswith("rotator "):
            commands.append(shlex.split(line.split("|")[0].split(">")[0])[1:])
    return commands


def test_the_readme_shows_the_first_run_commands() -> None:
    names = {c[0] if c[0] != "--version" else "--version" for c in rotator_commands()}
    assert {"--version", "completion", "validate", "plan", "rotate", "run"} <= names


@pytest.mark.parametrize("argv", rotator_commands(), ids=" ".join)
def test_every_rotator_command_in_the_readme_parses(argv: list[str]) -> None:
    if argv == ["--version"]:
        with pytest.raises(SystemExit) as done:
            parser().parse_args(argv)
        assert done.value.code == 0
        return
    parser().parse_args(argv)


def test_every_file_the_install_steps_name_exists() -> None:
    named = set(
        re.findall(r"\b(config/vault/[a-z]+\.hcl|Dockerfile|helm/zitadel-rotator)\b", README)
    )
    assert {"config/vault/rotator.hcl", "config/vault/consumer.hcl", "Dockerfile"} <= named
    for path in named:
        assert (ROOT / path).exists(), path


def test_the_metrics_table_names_every_exported_metric() -> None:
    table = README.split("| zitadel-rotator | meaning | cert-manager |", 1)[1].split("\n\n")[0]
    documented = set(re.findall(r"`(rotator_[a-z_]+)", table))
    exported = set()
    for family in Metrics().registry.collect():
        exported.add(f"{family.name}_total" if family.type == "counter" else family.name)
    assert exported == documented
