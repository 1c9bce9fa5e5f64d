"""``kind: webkey`` targets in the configuration: defaults, the algorithm
forms, and every refusal naming the file and the field (the rules beyond the
shapes are rotator.webkeys.check_target's, the same ones ``validate`` shows)."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rotator.config import Config, parse_config
from rotator.errors import ConfigError
from rotator.model import Algorithm

SOURCE = "config.yaml"
BASE: dict[str, Any] = {
    "zitadel": {"url": "http://127.0.0.1:8080", "credentials": {"key_file": "admin-key.json"}},
    "vault": {"url": "http://127.0.0.1:8200"},
}


def parse(*targets: dict[str, Any]) -> Config:
    raw = {**copy.deepcopy(BASE), "targets": list(targets)}
    return parse_config(raw, source=SOURCE, env={}, base_dir=Path("/etc/rot"))


def webkey(**fields: Any) -> dict[str, Any]:
    return {"name": "signing", "kind": "webkey", **fields}


def test_a_webkey_target_alone_is_a_config_with_the_documented_defaults() -> None:
    config = parse(webkey())
    assert config.targets == ()
    (target,) = config.webkey_targets
    assert (target.every, target.publish_ahead, target.retain) == (
        timedelta(days=90), timedelta(days=1), timedelta(days=90))
    assert target.algorithm == Algorithm("rsa", bits=2048, hasher="sha256")
    assert target.adopt is False
    assert config.warnings == ()
    assert config.webkey_target("signing") is target
    assert config.webkey_target("billing") is None


def test_webkey_targets_sit_beside_key_targets_and_share_the_name_space() -> None:
    key = {"name": "billing", "user": "svc", "kind": "key"}
    config = parse(key, webkey(every="30d", publish_ahead="2d", retain="14d", adopt=True))
    assert [t.name for t in config.targets] == ["billing"]
    (target,) = config.webkey_targets
    assert (target.every, target.publish_ahead, target.retain, target.adopt) == (
        timedelta(days=30), timedelta(days=2), timedelta(days=14), True)
    with pytest.raises(ConfigError) as err:
        parse(key, webkey(name="billing"))
    assert str(err.value) == ("config.yaml: targets[1].name: duplicate target name 'billing' "
                              "(also targets[0])")


@pytest.mark.parametrize(("written", "expected"), [
    ({"rsa": {"bits": 4096, "hasher": "sha512"}}, Algorithm("rsa", bits=4096, hasher="sha512")),
    ({"rsa": None}, Algorithm("rsa")),
    ({"ecdsa": {"curve": "P521"}}, Algorithm("ecdsa", curve="P521")),
    ("ecdsa", Algorithm("ecdsa", curve="P256")),
    ("ed25519", Algorithm("ed25519")),
    ({"ed25519": {}}, Algorithm("ed25519")),
])
def test_algorithms(written: Any, expected: Algorithm) -> None:
    assert parse(webkey(algorithm=written)).webkey_targets[0].algorithm == expected


def test_windows_and_freezes_are_read_for_activation() -> None:
    schedule = {"windows": [{"cron": "0 9 * * 1-5", "duration": "8h"}]}
    (target,) = parse(webkey(schedule=schedule)).webkey_targets
    assert len(target.schedule.windows) == 1


def test_publish_ahead_below_the_jwks_max_age_is_a_warning() -> None:
    config = parse(webkey(publish_ahead="4m"))
    assert config.warnings == (
        "targets[0].publish_ahead (4m) is below the JWKS cache max-age of 5m: relying parties "
        "with a cached JWKS may reject tokens signed by the new key",)


def test_retain_below_12h_is_refused_unless_forced() -> None:
    with pytest.raises(ConfigError) as err:
        parse(webkey(retain="11h59m"))
    assert str(err.value) == (
        "config.yaml: targets[0].retain: must be at least 12h, ZITADEL's longest token "
        "lifetime (got 11h59m): tokens the previous key signed would stop verifying; set "
        "force_short_retain: true to accept that")
    forced = parse(webkey(retain="1h", force_short_retain=True)).webkey_targets[0]
    assert forced.retain == timedelta(hours=1)
    assert parse(webkey(retain="12h")).webkey_targets[0].retain == timedelta(hours=12)


@pytest.mark.parametrize(("fields", "message"), [
    ({"user": "svc"}, "targets[0].user: not allowed for kind webkey: it rotates the instance's "
                      "token-signing keys, not a user's credential"),
    ({"vault_path": "zitadel/x"}, "targets[0].vault_path: not allowed for kind webkey: the "
     "private key never leaves ZITADEL (only the rotator's state is in Vault)"),
    ({"org_id": "1"}, "targets[0].org_id: not allowed for kind webkey: web keys belong to the "
                      "instance, not an organization"),
    ({"policy": {"lifetime": "30d"}}, "targets[0].policy: not allowed for kind webkey: use "
                                      "every, publish_ahead and retain"),
    ({"every": "1d", "publish_ahead": "1d"},
     "targets[0].every: must be longer than publish_ahead (1d <= 1d)"),
    ({"every": "30m"}, "targets[0].every: must be at least 1h (got '30m')"),
    ({"publish_ahead": "soon"}, "targets[0].publish_ahead: must be a duration like 30d, 12h, "
                                "90m, 45s or 1d12h (got 'soon')"),
    ({"algorithm": {"rsa": {"bits": 1024}}},
     "targets[0].algorithm.rsa.bits: must be one of 2048, 3072, 4096 (got 1024)"),
    ({"algorithm": {"rsa": {"hasher": "md5"}}},
     "targets[0].algorithm.rsa.hasher: must be one of sha256, sha384, sha512 (got 'md5')"),
    ({"algorithm": {"ecdsa": {"curve": "P512"}}},
     "targets[0].algorithm.ecdsa.curve: must be one of P256, P384, P521 (got 'P512')"),
    ({"algorithm": "dsa"}, "targets[0].algorithm: must be one of rsa, ecdsa, ed25519 (got 'dsa')"),
    ({"algorithm": {"rsa": {}, "ed25519": {}}}, "targets[0].algorithm: must name exactly one of "
     "rsa, ecdsa or ed25519, e.g. {rsa: {bits: 2048, hasher: sha256}}"),
    ({"algorithm": {"ecdsa": {"bits": 256}}},
     "targets[0].algorithm.ecdsa.bits: unknown key (known here: curve)"),
    ({"force_short_retain": "yes"}, "targets[0].force_short_retain: must be true or false "
                                    "(got a string)"),
    ({"rotate": "90d"}, "targets[0].rotate: unknown key (known here: adopt, algorithm, every, "
                        "force_short_retain, kind, name, publish_ahead, retain, schedule)"),
])
def test_refusals_name_the_file_and_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(webkey(**fields))
    assert str(err.value) == f"config.yaml: {message}"
