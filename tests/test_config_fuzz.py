"""Config fuzz: whatever the file holds, the loader either accepts it or
raises one ConfigError naming the file, on one line, without any environment
value.  Never another exception (a crash would be exit 1 with a traceback, or
worse, a config that passes ``validate`` and fails at rotation time).

Each case is the example config or a reference variant with one to three
seeded mutations: a value replaced by hostile YAML text (huge numbers, bad
dates, bad URLs, bad zones, bad unicode, deep nesting, aliases, tags), type
swaps, deleted, renamed or unknown keys, and raw byte damage.  A failure names
its seed: ``CONFIG_FUZZ_SEED=<seed> pytest tests/test_config_fuzz.py`` replays it.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.config import load_config
from rotator.errors import ConfigError

ROOT = Path(__file__).parent.parent
CASES = int(os.environ.get("CONFIG_FUZZ_CASES", "1000"))
SECRET = "hvs.FUZZ-secret-token-value"
ENV = {
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": SECRET,
    "HOOK": "https://hooks.example/T0/" + SECRET,
}
HOLE = "__HOSTILE__"
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

#: YAML text put where a value (or a key) was.
HOSTILE = [
    "null",
    "~",
    "true",
    "0",
    "-1",
    "1.5",
    ".inf",
    "-.inf",
    ".nan",
    "0x1F",
    "0o17",
    "1_000",
    "9" * 4301,
    "-" + "9" * 5000,
    "1e999",
    "12345678901234567890",
    "2026-02-30",
    "2026-13-01",
    "2026-12-20T25:00:00Z",
    "0000-01-01",
    "9999-12-31T23:59:59+14:00",
    "''",
    "' '",
    '"\\0"',
    '"\\ud800"',
    '"\\u202e\\u0000x"',
    '"\\x85"',
    "'" + "x" * 5000 + "'",
    "99999999999d",
    "3000000d",
    "3651d",
    "9" * 5000 + "d",
    "0s",
    "-1d",
    "1d1d",
    "1.5h",
    "1w",
    "http://[zz]:1",
    "http://[::1",
    "http://x:99999",
    "http://x:-1",
    "ftp://x",
    "http://",
    "'http://x/?q=1#f'",
    "https://user:pw@x",
    "'http://\\u0000x'",
    "Europe",
    "Europe/",
    "../../../etc/passwd",
    "/etc/localtime",
    "'Mars/Olympus'",
    "'\\0'",
    '"~a\\0b"',
    "'~nobody-here/x'",
    "'${NOPE}'",
    "'${VAULT_TOKEN}'",
    "'$${VAULT_TOKEN}'",
    "'${VAULT_TOKEN:-x}d'",
    "'${'",
    "'not a name'",
    "'* * * * * *'",
    "'61 25 32 13 8'",
    "'0 2 * * mon-xyz'",
    "[]",
    "{}",
    "[[[]]]",
    "{a: 1}",
    "[a, b]",
    "{? [a, b]: 1}",
    "{1: 2}",
    "{.nan: 1}",
    "[" * 3000 + "]" * 3000,
    "{a: " * 1200 + "1" + "}" * 1200,
    "&x [*x]",
    "*undefined",
    "!!binary aGVsbG8=",
    "!!python/name:os.system",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!timestamp 2026-02-30",
    "!!int abc",
    "!!float x",
    "!custom 1",
    "|\n    multi\n    line",
    "'tab\there'",
    '"\\t"',
]

#: Keys put into a mapping (known elsewhere, secret-looking, or odd).
KEYS = ["token", "private_key", "secret_id", "url", "targets", "x", "1", "true", "~", "'a.b'"]


def _variants() -> list[dict[str, Any]]:
    example = yaml.safe_load((ROOT / "config" / "rotator.example.yaml").read_text())
    approle = copy.deepcopy(example)
    approle["vault"]["auth"] = {
        "method": "approle",
        "role_id": "r",
        "secret_id_env": "SECRET_ID",
    }
    kube = copy.deepcopy(example)
    kube["vault"]["auth"] = {"method": "kubernetes", "role": "rotator"}
    kube["daemon"]["ha"] = {"enabled": True, "backend": "kubernetes", "lease_ttl": "15s"}
    recurring = copy.deepcopy(example)
    recurring["schedule"]["freeze"] = [
        {"cron": "0 0 * * 6", "timezone": "America/New_York", "duration": "2d"}
    ]
    recurring["notify"] = {"webhook_url": "${HOOK}", "format": "slack", "timeout": "3s"}
    minimal = {
        "zitadel": {"url": "https://z.example", "credentials": {"vault_path": "rotator/self"}},
        "targets": [
            {
                "name": "self",
                "user": "rotator",
                "kind": "key",
                "adopt": True,
                "vault_path": "rotator/self",
                "policy": {"lifetime": "7d", "renew_before": "2d"},
            }
        ],
    }
    return [example, approle, kube, recurring, minimal]


VARIANTS = _variants()


def _slots(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in the tree (dict values, list items), depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _slots(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, index)
            yield from _slots(value, (*path, index))


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        tree = tree[part]
    return tree


def _replace(rng: random.Random, tree: Any, path: tuple[Any, ...]) -> str | None:
    _parent(tree, path)[path[-1]] = HOLE
    return rng.choice(HOSTILE)


def _swap_type(rng: random.Random, tree: Any, path: tuple[Any, ...]) -> str | None:
    parent = _parent(tree, path)
    value = parent[path[-1]]
    parent[path[-1]] = rng.choice(
        [[value], {"value": value}, str(value), len(str(value)), None, not value]
    )
    return None


def _delete(rng: random.Random, tree: Any, path: tuple[Any, ...]) -> str | None:
    del _parent(tree, path)[path[-1]]
    return None


def _add_key(rng: random.Random, tree: Any, path: tuple[Any, ...]) -> str | None:
    parent = _parent(tree, path)
    target = parent if isinstance(parent, dict) else tree
    target[HOLE] = rng.choice(["x", 1, None, {"a": 1}])
    return rng.choice(KEYS + HOSTILE[:20])


def _rename(rng: random.Random, tree: Any, path: tuple[Any, ...]) -> str | None:
    parent = _parent(tree, path)
    if isinstance(parent, dict):
        parent[path[-1] + "_" if isinstance(path[-1], str) else HOLE] = parent.pop(path[-1])
        return "x" if not isinstance(path[-1], str) else None
    parent.append(copy.deepcopy(parent[path[-1]]))  # a duplicate list item
    return None


TreeMutation = Callable[[random.Random, Any, tuple[Any, ...]], "str | None"]
TREE_MUTATIONS: list[TreeMutation] = [
    _replace,
    _replace,
    _replace,
    _swap_type,
    _delete,
    _add_key,
    _rename,
]


def _damage(rng: random.Random, data: bytes) -> bytes:
    """Byte-level damage: truncation, invalid UTF-8, control bytes, BOMs, tabs, duplicates."""
    at = rng.randrange(len(data) + 1)
    head, tail = data[:at], data[at:]
    lines = data.splitlines(keepends=True)
    line = rng.randrange(len(lines))
    damages: list[Callable[[], bytes]] = [
        lambda: head,
        lambda: head + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9"]) + tail,
        lambda: head + bytes([rng.randrange(32)]) + tail,
        lambda: rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"---\n", b"%YAML 9.9\n"]) + data,
        lambda: head + b"\t" + tail,
        lambda: b"".join([*lines[: line + 1], lines[line], *lines[line + 1 :]]),
        lambda: head + b"\n---\n" + tail,
    ]
    return rng.choice(damages)()


def _case(seed: int) -> bytes:
    rng = random.Random(seed)
    tree = copy.deepcopy(rng.choice(VARIANTS))
    snippets: list[str] = []
    for _ in range(rng.randint(1, 3)):
        slots = list(_slots(tree))
        if not slots or HOLE in str(tree):
            break
        snippet = rng.choice(TREE_MUTATIONS)(rng, tree, rng.choice(slots))
        if snippet is not None:
            snippets.append(snippet)
    text = yaml.dump(tree, Dumper=_DUMPER, sort_keys=False)
    for snippet in snippets:
        text = text.replace(HOLE, snippet, 1)
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.15:
        data = _damage(rng, data)
    return data


def _check(path: Path, seed: int) -> str:
    try:
        load_config(path, env=ENV)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: "), f"seed {seed}: {message!r}"
        assert "\n" not in message, f"seed {seed}: {message!r}"
        assert SECRET not in message, f"seed {seed}: {message!r}"
        assert len(message) < 500, f"seed {seed}: {message!r}"
        return "error"
    except Exception as exc:
        pytest.fail(f"seed {seed}: {type(exc).__name__}: {str(exc)[:300]}")
    return "ok"


def test_mutated_configs_load_or_fail_with_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    replay = os.environ.get("CONFIG_FUZZ_SEED")
    seeds = [int(replay)] if replay else range(CASES)
    outcomes = {"ok": 0, "error": 0}
    for seed in seeds:
        path.write_bytes(_case(seed))
        outcomes[_check(path, seed)] += 1
    if not replay:
        # The mutations must reach the validator, not only the YAML parser,
        # and some mutants (a dropped optional key) are still valid.
        assert outcomes["ok"] > CASES // 50, outcomes
        assert outcomes["error"] > CASES // 2, outcomes


def test_the_unmutated_variants_are_valid(tmp_path: Path) -> None:
    path = tmp_path / "variant.yaml"
    for variant in VARIANTS:
        path.write_text(yaml.safe_dump(variant))
        load_config(path, env=ENV)
