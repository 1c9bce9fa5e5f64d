"""The configuration is strict: every mistake names the file and the dotted
field, and nothing runs.  The rules are tested on the pure parser; file-level
behaviour (YAML syntax, duplicate keys, relative paths) through load_config."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.config import (
    Config,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from rotator.errors import ConfigError
from rotator.model import CredentialKind, Policy

SOURCE = "config.yaml"

MINIMAL: dict[str, Any] = {
    "zitadel": {"url": "http://127.0.0.1:8080", "credentials": {"key_file": "admin-key.json"}},
    "vault": {"url": "http://127.0.0.1:8200"},
    "targets": [
        {"name": "billing", "user": "svc-billing", "kind": "key", "vault_path": "zitadel/billing"},
        {"name": "reports", "user": "svc-reports", "kind": "pat"},
    ],
}


def parse(raw: Any, env: dict[str, str] | None = None) -> Config:
    return parse_config(raw, source=SOURCE, env=env or {}, base_dir=Path("/etc/rot"))


def with_(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one dotted path set (``targets.1.kind``); value DELETE removes it."""
    raw = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return raw


DELETE = object()


# --------------------------------------------------------------------------- what a good file means


def test_minimal_config_fills_documented_defaults() -> None:
    config = parse(MINIMAL)
    assert config.zitadel.api == "auto"
    assert config.zitadel.grpc_target == "127.0.0.1:8080"
    assert config.zitadel.credentials.key_file == "/etc/rot/admin-key.json"
    assert config.vault.mount == "secret"
    assert config.vault.state_prefix == "zitadel-rotator"
    assert config.vault.auth.method == "token"
    assert config.vault.auth.token_env == "VAULT_TOKEN"
    assert config.policy == Policy()
    assert config.daemon.listen_port == 9102
    assert config.audit.file is None
    assert config.notify.webhook_url is None
    assert config.warnings == ()


def test_targets_map_to_engine_targets_with_defaults_and_overrides() -> None:
    raw = with_("targets.0.policy", {"lifetime": "60d", "grace": "2d"})
    raw["policy"] = {"renew_before": "12d"}
    raw["targets"][0]["org_id"] = "123"
    raw["targets"][0]["adopt"] = True
    billing, reports = parse(raw).targets
    assert billing.kind is CredentialKind.KEY
    assert billing.org_id == "123"
    assert billing.adopt is True
    assert billing.policy == Policy(
        lifetime=timedelta(days=60), renew_before=timedelta(days=12), grace=timedelta(days=2)
    )
    assert reports.kind is CredentialKind.PAT
    assert reports.vault_path == "zitadel/reports"  # default: zitadel/<name>
    assert reports.policy == Policy(renew_before=timedelta(days=12))


def test_a_target_with_two_identities_names_both_and_uses_the_first_as_user() -> None:
    raw = with_("targets.1.users", ["svc-reports-a", "svc-reports-b"])
    del raw["targets"][1]["user"]
    billing, reports = parse(raw).targets
    assert reports.users == ("svc-reports-a", "svc-reports-b")
    assert reports.user == "svc-reports-a"
    assert reports.identities == ("svc-reports-a", "svc-reports-b")
    assert reports.two_identities
    assert billing.users == ()
    assert billing.identities == ("svc-billing",)
    assert not billing.two_identities


@pytest.mark.parametrize(
    ("users", "field", "fragment"),
    [
        (["svc-a"], "targets[1].users", "exactly two machine users (got 1)"),
        (["a", "b", "c"], "targets[1].users", "exactly two machine users (got 3)"),
        ([], "targets[1].users", "exactly two machine users (got 0)"),
        (["svc-a", "svc-a"], "targets[1].users", "two different users"),
        (["svc-a", 7], "targets[1].users[1]", "non-empty string"),
        (["svc-a", " "], "targets[1].users[1]", "non-empty string"),
        ("svc-a", "targets[1].users", "must be a list (got a string)"),
    ],
)
def test_users_must_be_two_distinct_names(users: Any, field: str, fragment: str) -> None:
    raw = with_("targets.1.users", users)
    del raw["targets"][1]["user"]
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert str(caught.value).startswith(f"{SOURCE}: {field}: "), caught.value
    assert fragment in str(caught.value)


def test_a_one_identity_secret_target_is_warned_about_and_a_two_identity_one_is_not() -> None:
    single = with_("targets.1.kind", "secret")
    warnings = [w for w in parse(single).warnings if "kind secret with one user" in w]
    assert len(warnings) == 1
    assert warnings[0].startswith("targets[1] (reports): ")
    assert "re-read Vault" in warnings[0]
    assert "users: [a, b]" in warnings[0]
    double = with_("targets.1.users", ["svc-reports-a", "svc-reports-b"])
    del double["targets"][1]["user"]
    double["targets"][1]["kind"] = "secret"
    config = parse(double)
    assert config.targets[1].kind is CredentialKind.SECRET
    assert not [w for w in config.warnings if "kind secret" in w]


def test_a_target_without_user_or_users_says_both() -> None:
    with pytest.raises(ConfigError, match=r"targets\[1\]\.user: is required \(or `users"):
        parse(with_("targets.1.user", DELETE))


def test_trailing_slash_of_issuer_is_dropped_and_https_grpc_defaults_to_443() -> None:
    config = parse(with_("zitadel.url", "https://id.example.com/"))
    assert config.zitadel.url == "https://id.example.com"
    assert config.zitadel.grpc_target == "id.example.com:443"
    assert not config.zitadel.grpc_plaintext


def test_env_references_expand_and_escape() -> None:
    raw = with_("zitadel.url", "http://${ZHOST}:${ZPORT:-8080}")
    raw["vault"]["mount"] = "kv-$${literal}"
    config = parse(raw, env={"ZHOST": "zitadel.local"})
    assert config.zitadel.url == "http://zitadel.local:8080"
    assert config.vault.mount == "kv-${literal}"


def test_vault_url_defaults_to_vault_addr() -> None:
    config = parse(with_("vault.url", DELETE), env={"VAULT_ADDR": "https://vault:8200"})
    assert config.vault.url == "https://vault:8200"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("0s", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "30", "1w", "d", "12h1d", "-1d", "1.5d", "30 d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


def test_windows_and_freezes_per_target_and_by_default() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["schedule"] = {
        "windows": [{"cron": "0 2 * * 1-5", "timezone": "Europe/Berlin", "duration": "4h"}],
        "freeze": [{"start": "2026-12-20", "end": "2027-01-04T00:00:00+00:00"}],
    }
    raw["targets"][1]["schedule"] = {
        "windows": [{"cron": "30 22 * * *", "duration": "1h"}],
        "freeze": [{"cron": "0 16 * * 5", "duration": "64h"}],
    }
    config = parse(raw)
    billing, reports = config.schedule_for("billing"), config.schedule_for("reports")
    assert billing.windows[0].timezone == "Europe/Berlin"
    assert billing.freeze[0].start == datetime(2026, 12, 20, tzinfo=UTC)
    assert reports.windows[0].cron == "30 22 * * *"  # replaces the default windows
    assert len(reports.freeze) == 2  # adds to the default freezes
    assert reports.freeze[1].cron == "0 16 * * 5"


def test_a_target_opts_out_of_the_default_windows_with_an_empty_list() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["schedule"] = {"windows": [{"cron": "0 2 * * 1-5", "duration": "4h"}]}
    raw["targets"][1]["schedule"] = {"windows": []}
    config = parse(raw)
    assert config.schedule_for("reports").windows == ()
    assert len(config.schedule_for("billing").windows) == 1


def test_questionable_but_legal_policy_is_a_warning() -> None:
    config = parse(with_("policy", {"lifetime": "2d", "renew_before": "1d", "grace": "1d"}))
    assert any("grace + retire_margin" in w for w in config.warnings)
    assert all(w.startswith("policy:") for w in config.warnings)


# --------------------------------------------------------------------------- malformed: table

BAD: list[tuple[str, Any, str, str]] = [
    # (dotted path to set, value, field named in the message, message fragment)
    ("zitadel.url", DELETE, "zitadel.url", "is required"),
    ("zitadel.url", "ftp://x", "zitadel.url", "http:// or https://"),
    ("zitadel.url", "http://x:99999", "zitadel.url", "invalid host or port"),
    ("zitadel.api", "v3", "zitadel.api", "must be one of v1, v2, auto (got 'v3')"),
    ("zitadel.grpc_target", "no-port", "zitadel.grpc_target", "host:port"),
    ("zitadel.credentials", {}, "zitadel.credentials", "exactly one of key_file or vault_path"),
    ("zitadel.credentials.vault_path", "a/b", "zitadel.credentials", "exactly one"),
    (
        "zitadel.credentials.private_key",
        "x",
        "zitadel.credentials.private_key",
        "secrets never go in the config file",
    ),
    ("zitadel.tls.insecure", "yes please", "zitadel.tls.insecure", "true or false"),
    ("zitadel.timeout", 10, "zitadel.timeout", "must be a duration"),
    ("zitadel.timeout", "0s", "zitadel.timeout", "at least 1s"),
    ("zitadel.colour", "blue", "zitadel.colour", "unknown key"),
    ("vault.url", DELETE, "vault.url", "is required (or set VAULT_ADDR)"),
    ("vault.auth.method", "ldap", "vault.auth.method", "one of token, approle, kubernetes"),
    ("vault.auth.token", "hvs.x", "vault.auth.token", "use token_env or token_file"),
    (
        "vault.auth",
        {"method": "approle", "role_id": "r"},
        "vault.auth",
        "secret_id_file or secret_id_env",
    ),
    (
        "vault.auth",
        {"method": "approle", "secret_id_env": "S"},
        "vault.auth",
        "role_id or role_id_file",
    ),
    ("vault.auth", {"method": "kubernetes"}, "vault.auth.role", "is required"),
    (
        "vault.auth",
        {"method": "token", "token_env": "not a name"},
        "vault.auth.token_env",
        "environment variable name",
    ),
    ("vault.state_prefix", "/abs", "vault.state_prefix", "relative KV path"),
    ("vault.mount", "/", "vault.mount", "must name a KV v2 mount"),
    ("policy.lifetime", "12h", "policy.lifetime", "at least 1d"),
    ("policy.renew_before", "30d", "policy.renew_before", "less than lifetime"),
    ("policy.renew_before", "0s", "policy.renew_before", "at least 1s"),
    ("policy.grace", "1 day", "policy.grace", "must be a duration"),
    ("policy.verify_timeout", "0s", "policy.verify_timeout", "at least 1s"),
    ("policy.jitter", "1m", "policy.jitter", "unknown key"),
    ("targets", DELETE, "targets", "at least one target"),
    ("targets", {"name": "x"}, "targets", "must be a list"),
    ("targets.1", "reports", "targets[1]", "must be a mapping (got a string)"),
    ("targets.1.kind", "pak", "targets[1].kind",
     "must be one of key, pat, secret, webkey (got 'pak')"),
    ("targets.1.kind", DELETE, "targets[1].kind", "is required"),
    ("targets.0.user", DELETE, "targets[0].user", "is required"),
    ("targets.0.user", "", "targets[0].user", "must not be empty"),
    ("targets.0.users", ["svc-a", "svc-b"], "targets[0].users", "mutually exclusive"),
    ("targets.0.org_id", 123, "targets[0].org_id", "must be a string (got an integer) (quote it)"),
    ("targets.1.name", "billing", "targets[1].name", "duplicate target name 'billing'"),
    ("targets.1.name", "Bad Name", "targets[1].name", "lower-case"),
    ("targets.1.vault_path", "zitadel/billing", "targets[1].vault_path", "duplicate vault_path"),
    ("targets.1.vault_path", "zitadel//x", "targets[1].vault_path", "relative KV path"),
    ("targets.1.vault_path", "zitadel-rotator/x", "targets[1].vault_path", "state_prefix"),
    ("targets.1.adopt", "true", "targets[1].adopt", "true or false"),
    ("targets.1.policy.lifetime", "10d", "targets[1].policy.renew_before", "less than lifetime"),
    ("targets.1.policy.lifetime", "0d12h", "targets[1].policy.lifetime", "at least 1d"),
    (
        "targets.1.schedule.windows",
        [{"cron": "0 2 * *", "duration": "1h"}],
        "targets[1].schedule.windows[0].cron",
        "invalid cron",
    ),
    (
        "targets.1.schedule.windows",
        [{"cron": "0 2 * * *", "duration": "1h", "timezone": "Mars/X"}],
        "targets[1].schedule.windows[0].timezone",
        "unknown time zone",
    ),
    (
        "targets.1.schedule.windows",
        [{"cron": "0 2 * * *"}],
        "targets[1].schedule.windows[0].duration",
        "is required",
    ),
    (
        "schedule.freeze",
        [{"start": "2026-12-20", "end": "2026-12-01"}],
        "schedule.freeze[0].end",
        "after start",
    ),
    (
        "schedule.freeze",
        [{"start": "christmas", "end": "2026-12-01"}],
        "schedule.freeze[0].start",
        "ISO date",
    ),
    ("targets.1.secret", "x", "targets[1].secret", "unknown key"),
    ("daemon.listen", "9102", "daemon.listen", "host:port"),
    ("daemon.max_attempts", 0, "daemon.max_attempts", "from 1 to 1000"),
    ("daemon.max_attempts", True, "daemon.max_attempts", "must be an integer"),
    ("daemon.retry_cap", "1s", "daemon.retry_cap", "not be less than retry_base"),
    ("daemon.ha.backend", "etcd", "daemon.ha.backend", "one of vault, kubernetes"),
    ("daemon.ha.lease_ttl", "1s", "daemon.ha.lease_ttl", "at least 5s"),
    ("notify.format", "teams", "notify.format", "one of generic, slack"),
    ("notify.webhook_url", "hooks.slack.com/T0/B0/XXXXsecret", "notify.webhook_url", "URL"),
    ("audit.path", "/var/log/a", "audit.path", "unknown key"),
    ("surprise", 1, "surprise", "unknown key"),
    ("zitadel.url", "${NOPE}", "zitadel.url", "environment variable NOPE is not set"),
    # bounds: nothing later overflows a datetime or an int
    ("policy.lifetime", "3000000d", "policy.lifetime", "at most 3650d"),
    ("policy.lifetime", "3651d", "policy.lifetime", "at most 3650d"),
    ("policy.lifetime", "99999999999d", "policy.lifetime", "at most 3650d"),
    ("policy.lifetime", "9" * 5000 + "d", "policy.lifetime", "at most 3650d"),
    ("policy.grace", "31d", "policy.grace", "must not exceed lifetime"),
    ("policy.retire_margin", "30d", "policy.retire_margin", "less than lifetime"),
    ("policy.verify_timeout", "2h", "policy.verify_timeout", "at most 1h"),
    ("zitadel.timeout", "11m", "zitadel.timeout", "at most 10m"),
    ("daemon.max_attempts", 10**5000, "daemon.max_attempts", "from 1 to 1000 (got ...)"),
    ("daemon.reconcile_interval", "2d", "daemon.reconcile_interval", "at most 1d"),
    ("daemon.ha.lease_ttl", "2h", "daemon.ha.lease_ttl", "at most 1h"),
    ("notify.expiry_threshold", "3651d", "notify.expiry_threshold", "at most 3650d"),
    ("zitadel.url", "http://[zz]:1", "zitadel.url", "invalid host or port"),
    ("zitadel.grpc_target", "host:99999", "zitadel.grpc_target", "host:port"),
    (
        "schedule.windows",
        [{"cron": "0 2 * * *", "duration": "1h", "timezone": "Europe"}],
        "schedule.windows[0].timezone",
        "unknown time zone (got 'Europe')",
    ),
    (
        "schedule.windows",
        [{"cron": "0 2 * * *", "duration": "1h", "timezone": "../../../etc/passwd"}],
        "schedule.windows[0].timezone",
        "unknown time zone",
    ),
    (
        "schedule.windows",
        [{"cron": "0 2 * * *", "duration": "367d"}],
        "schedule.windows[0].duration",
        "at most 366d",
    ),
    (
        "schedule.freeze",
        [{"start": "2026-02-30", "end": "2027-01-01"}],
        "schedule.freeze[0].start",
        "ISO date",
    ),
    ("vault", {"url": "http://v", 1: "x"}, "vault", "keys must be strings (got 1)"),
    ("audit.file", "~a\0b", "audit.file", "must not contain a NUL character"),
    ("zitadel.tls.ca_file", "ca\0.pem", "zitadel.tls.ca_file", "NUL character"),
]


@pytest.mark.parametrize(("path", "value", "field", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_malformed_config_names_file_and_field(
    path: str, value: Any, field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_(path, value))
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: {field}: "), message
    assert fragment in message
    assert caught.value.file == SOURCE
    assert caught.value.field == field


def test_webhook_url_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_("notify.webhook_url", "hooks.slack.com/T0/B0/XXXXsecret"))
    assert "XXXXsecret" not in str(caught.value)


def test_a_webhook_url_may_carry_its_credentials_in_the_query() -> None:
    teams = "https://prod.example.logic.azure.com/workflows/1/invoke?api-version=1&sig=abc"
    assert parse(with_("notify.webhook_url", teams)).notify.webhook_url == teams
    with pytest.raises(ConfigError, match=r"zitadel\.url: must not have a query"):
        parse(with_("zitadel.url", "https://zitadel.example.com/?x=1"))


def test_errors_name_environment_variables_never_their_values() -> None:
    token = "hvs.CAESIsecret-token-value"
    env = {"VAULT_TOKEN": token, "LOWER": "billing"}
    cases = [
        with_("vault.auth", {"method": "token", "token_env": "${VAULT_TOKEN}"}),
        with_("zitadel.api", "${VAULT_TOKEN}"),
        with_("policy.grace", "${VAULT_TOKEN}"),
        with_("targets.1.vault_path", "/${VAULT_TOKEN}"),
        with_("daemon.listen", "${VAULT_TOKEN}"),
        with_("targets.1.name", "${LOWER}"),
        with_("targets.1.vault_path", "zitadel/${LOWER}"),
        with_("zitadel.url", "${VAULT_TOKEN}"),
    ]
    for raw in cases:
        with pytest.raises(ConfigError) as caught:
            parse(raw, env=env)
        message = str(caught.value)
        assert token not in message
        assert "'billing'" not in message
        assert "${VAULT_TOKEN}" in message or "${LOWER}" in message, message


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^config\.yaml: must be a mapping \(got a list\)"):
        parse([1, 2])
    with pytest.raises(ConfigError, match=r"^config\.yaml: the file is empty"):
        parse(None)


# --------------------------------------------------------------------------- the file itself


def test_load_config_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["audit"] = {"file": "logs/audit.jsonl"}
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, env={})
    assert config.zitadel.credentials.key_file == str(tmp_path / "admin-key.json")
    assert config.audit.file == str(tmp_path / "logs/audit.jsonl")
    assert config.source == str(path)


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "zitadel:\n  url: http://other\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: invalid YAML: line \d+, .*duplicate key"):
        load_config(path, env={})


def test_a_json_config_reads_as_the_same_yaml_would(tmp_path: Path) -> None:
    as_yaml, as_json = tmp_path / "fleet.yaml", tmp_path / "fleet.json"
    as_yaml.write_text(yaml.safe_dump(MINIMAL))
    as_json.write_text(json.dumps(MINIMAL, indent=1))
    from_yaml, from_json = load_config(as_yaml, env={}), load_config(as_json, env={})
    assert replace(from_json, source=from_yaml.source) == from_yaml


def test_json_with_a_duplicate_key_is_refused_with_the_line_as_for_yaml(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    text = json.dumps(MINIMAL, indent=1)
    path.write_text(text[:-2] + ',\n "zitadel": {"url": "http://other"}\n}')
    with pytest.raises(ConfigError, match=r"dup\.json: invalid YAML: line \d+, .*duplicate key"):
        load_config(path, env={})


def test_flow_style_yaml_that_is_not_json_still_loads(tmp_path: Path) -> None:
    flow, block = tmp_path / "flow.yaml", tmp_path / "block.yaml"
    flow.write_text(yaml.safe_dump(MINIMAL, default_flow_style=True))  # {targets: [...
    block.write_text(yaml.safe_dump(MINIMAL))
    assert flow.read_text().startswith("{")
    assert replace(load_config(flow, env={}), source=str(block)) == load_config(block, env={})


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("zitadel:\n  url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML: line \d+, column \d+"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: " + "[" * 20000 + "]" * 20000 + "\n", "invalid YAML"),
        ("zitadel: {url: http://x, timeout: 2026-02-30}\n", "invalid date '2026-02-30'"),
        ("zitadel: {timeout: " + "9" * 4301 + "}\n", "invalid integer"),
        ("? [a, b]\n: 1\n", "a key must be a plain value"),
        ("? {a: 1}\n: 1\n", "a key must be a plain value"),
        ("zitadel: &x [*x]\n", "zitadel: must be a mapping"),
        ("zitadel: \x07\n", "invalid YAML"),
    ],
    ids=["deep", "bad-date", "huge-int", "list-key", "map-key", "recursive", "control-char"],
)
def test_hostile_yaml_is_one_config_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message
    assert "\n" not in message
    assert len(message) < 400


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("zitadel: {url: http://zürich}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte \d+\)"):
        load_config(path, env={})


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_config(tmp_path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.yaml: file not found"):
        load_config(tmp_path / "nothere.yaml", env={})


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "rotator.example.yaml"
    config = load_config(example, env={"VAULT_ADDR": "http://127.0.0.1:8200"})
    assert {t.name for t in config.targets} >= {"billing", "reports"}


def test_reference_documents_every_key() -> None:
    """config/reference.md has a row for every leaf key of the example file."""
    root = Path(__file__).parent.parent / "config"
    reference = (root / "reference.md").read_text()
    raw = yaml.safe_load((root / "rotator.example.yaml").read_text())

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}{k}.")]
        if isinstance(node, list) and node and isinstance(node[0], dict):
            return leaves(node[0], prefix[:-1] + "[].")
        return [prefix[:-1]]

    # A target's policy overrides are the policy keys, documented once.
    keys = [key.replace("targets[].policy.", "policy.") for key in leaves(raw, "")]
    missing = [key for key in keys if f"`{key}`" not in reference]
    assert not missing, missing
