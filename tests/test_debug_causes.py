"""``--debug`` prints the cause chain under an error: one line per wrapped
exception, its type and its message, scrubbed of URLs' paths and queries and
of anything secret-shaped (rotator/causes.py)."""

from __future__ import annotations

from pathlib import Path

from rotator.causes import cause_lines, scrub
from tests.harness.processes import free_port
from tests.test_cli import offline_config, rotator, write_config


def test_without_debug_an_error_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.yaml", offline_config(tmp_path, f"http://127.0.0.1:{port}"))
    run = rotator("status", "--config", str(config), env={"VAULT_TOKEN": "x" * 20})
    assert run.code == 3
    assert [line for line in run.stderr.splitlines() if line.startswith("rotator: ")] == [
        f"rotator: error: cannot start: Vault at auth/token/lookup-self: token lookup-self: "
        f"cannot connect to Vault at http://127.0.0.1:{port}: connection refused "
        "(nothing listens on that port?)"
    ]


def test_debug_adds_the_cause_chain_down_to_the_os_error(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.yaml", offline_config(tmp_path, f"http://127.0.0.1:{port}"))
    run = rotator("status", "--debug", "--config", str(config), env={"VAULT_TOKEN": "x" * 20})
    assert run.code == 3
    debug = [line for line in run.stderr.splitlines() if line.startswith("rotator: debug: ")]
    pool = f"HTTPConnectionPool(host='127.0.0.1', port={port})"
    conn = f"HTTPConnection(host='127.0.0.1', port={port})"
    refused = f"{conn}: Failed to establish a new connection: [Errno 111] Connection refused"
    retries = (
        f'{pool}: Max retries exceeded with url: [path] (Caused by NewConnectionError("{refused}"))'
    )
    assert debug == [
        f"rotator: debug: caused by: requests.exceptions.ConnectionError: {retries}",
        f"rotator: debug: caused by: urllib3.exceptions.MaxRetryError: {retries}",
        f"rotator: debug: caused by: urllib3.exceptions.NewConnectionError: {refused}",
        "rotator: debug: caused by: ConnectionRefusedError: [Errno 111] Connection refused",
    ]
    assert "lookup-self" not in "\n".join(debug)  # the path stays out, whatever it is
    assert "Traceback" not in run.stderr


def test_scrub_keeps_addresses_and_drops_paths_queries_and_tokens() -> None:
    text = (
        "POST https://hooks.example.com:8443/services/T000/B000/XXXXsecret?token=abc failed; "
        "Authorization: Bearer s3cr3t-token-value eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.sig"
    )
    assert scrub(text) == (
        "POST https://hooks.example.com:8443 failed; Authorization: Bearer [redacted] [redacted]"
    )


def test_an_error_that_wraps_nothing_has_no_cause_lines() -> None:
    assert cause_lines(ValueError("plain")) == []


def test_each_link_once_outermost_first() -> None:
    outer = RuntimeError("outer")
    inner = OSError(111, "Connection refused")
    outer.__cause__ = inner
    outer.__context__ = inner  # the same link twice is shown once
    assert cause_lines(outer) == [
        "caused by: ConnectionRefusedError: [Errno 111] Connection refused"
    ]
