"""Strict configuration: YAML in, frozen dataclasses out.

Two layers, so the rules can be tested without files:

* :func:`parse_config` is pure: it takes the already-parsed YAML tree, the
  name of the file it came from (for messages), the environment (for
  ``${VAR}`` references and defaults) and the directory relative paths are
  resolved against.  It raises :class:`ConfigError` naming the file and the
  dotted field of the *first* problem it meets.
* :func:`load_config` reads the file (rejecting duplicate YAML keys) and
  calls it.

Every way a file can be wrong, down to bytes that are not UTF-8, YAML nested
too deeply or a date that does not exist, is one ConfigError: the CLI turns
it into one line and exit code 2, never a traceback.  Every duration has an
upper bound (at most :data:`MAX_DURATION`), so no date computed from the
configuration can overflow later.  Messages quote values as written in the
file, so an expanded ``${VAR}`` never appears in one.  Each default is
declared once, on its dataclass field; the loader reads it from there.

Secrets never live in the configuration: there is no key for a token, a
private key or a secret id; only the *names* of environment variables and
paths of files that hold them.  ``${VAR}`` (or ``${VAR:-default}``) may be
used in any string value for non-secret settings; ``$${`` escapes a literal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args
from urllib.parse import urlsplit

import yaml

from rotator.errors import ConfigError
from rotator.model import Algorithm, CredentialKind, Policy, Schedule, Target
from rotator.webkeys import WebKeyTarget, check_target
from rotator.windows import FreezeWindow, RotationWindow

DEFAULT_CONFIG_PATH = "/etc/zitadel-rotator/config.yaml"
DEFAULT_K8S_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"

#: The closed sets of the configuration (the loader takes its choices from these).
ZitadelApi = Literal["v1", "v2", "auto"]
VaultAuthMethod = Literal["token", "approle", "kubernetes"]
HaBackend = Literal["vault", "kubernetes"]
NotifyFormat = Literal["generic", "slack"]

#: No duration in the file may exceed this (ten years): it keeps every date
#: computed from one (expiry, retry, deadline) far inside ``datetime``'s range.
MAX_DURATION = timedelta(days=3650)

# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TlsConfig:
    #: PEM bundle to trust instead of the system CAs.
    ca_file: str | None = None
    #: Skip certificate verification (local testing only).
    insecure: bool = False


@dataclass(frozen=True)
class ZitadelCredentials:
    """Where the rotator's own service-user key file comes from: exactly one is set."""

    key_file: str | None = None
    vault_path: str | None = None


@dataclass(frozen=True)
class ZitadelConfig:
    url: str
    api: ZitadelApi = "auto"
    grpc_target: str = ""  # host:port of the v1 gRPC API
    tls: TlsConfig = field(default_factory=TlsConfig)
    credentials: ZitadelCredentials = field(default_factory=ZitadelCredentials)
    timeout: timedelta = timedelta(seconds=10)
    #: Requests per second for every call to ZITADEL (management API and
    #: OAuth), shared by all threads; 0: no client-side limit (a 429 still
    #: slows the rotator down).  ZITADEL Cloud allows 50/s per client IP.
    rate_limit: int = 0
    #: Requests allowed at once above the rate (0: a quarter of ``rate_limit``, at least 1).
    rate_burst: int = 0

    @property
    def grpc_plaintext(self) -> bool:
        return self.url.startswith("http://")


@dataclass(frozen=True)
class VaultAuthConfig:
    method: VaultAuthMethod = "token"
    #: token: the environment variable holding the token (read at start, never stored).
    token_env: str = "VAULT_TOKEN"  # noqa: S105 - a variable name, not a token
    #: token: a file holding the token (takes precedence over ``token_env``).
    token_file: str | None = None
    #: approle / kubernetes: where the auth method is mounted (the loader's
    #: default is the method's name, Vault's own convention).
    mount_path: str | None = None
    #: approle: the role id (not secret) or a file holding it.
    role_id: str | None = None
    role_id_file: str | None = None
    #: approle: the secret id, from a file or an environment variable.
    secret_id_file: str | None = None
    secret_id_env: str | None = None
    #: kubernetes: the Vault role and the service-account JWT file.
    role: str | None = None
    jwt_file: str = DEFAULT_K8S_JWT_FILE


@dataclass(frozen=True)
class VaultConfig:
    url: str
    mount: str = "secret"
    state_prefix: str = "zitadel-rotator"
    namespace: str | None = None
    ca_file: str | None = None
    timeout: timedelta = timedelta(seconds=10)
    auth: VaultAuthConfig = field(default_factory=VaultAuthConfig)


@dataclass(frozen=True)
class HaConfig:
    enabled: bool = False
    backend: HaBackend = "vault"
    lease_ttl: timedelta = timedelta(seconds=30)
    #: vault: KV path of the lease (default ``<state_prefix>/leader``).
    lease_path: str | None = None
    #: kubernetes: Lease object name and namespace (default: the pod's namespace).
    lease_name: str = "zitadel-rotator"
    lease_namespace: str | None = None
    #: This replica's name in the lease (default: $HOSTNAME).
    identity: str | None = None


@dataclass(frozen=True)
class DaemonConfig:
    listen: str = "127.0.0.1:9102"
    reconcile_interval: timedelta = timedelta(minutes=5)
    max_attempts: int = 5
    retry_base: timedelta = timedelta(minutes=1)
    retry_cap: timedelta = timedelta(hours=1)
    jitter: timedelta = timedelta(seconds=30)
    misfire_grace: timedelta = timedelta(hours=1)
    #: Targets reconciled at once (each target is never run twice at once).
    concurrency: int = 8
    #: How often an idle target's credential is looked for in ZITADEL (one
    #: listing per org with v2, per user with v1); a credential removed by
    #: hand is replaced within this.
    presence_interval: timedelta = timedelta(hours=1)
    ha: HaConfig = field(default_factory=HaConfig)

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True)
class AuditConfig:
    file: str | None = None


@dataclass(frozen=True)
class NotifyConfig:
    #: May carry a secret (Slack): write it as ``${SLACK_WEBHOOK_URL}``.
    webhook_url: str | None = field(default=None, repr=False)
    format: NotifyFormat = "generic"
    expiry_threshold: timedelta = timedelta(days=7)
    timeout: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class InventoryConfig:
    """The daemon's periodic ``rotator inventory`` (off unless ``interval`` is set)."""

    interval: timedelta | None = None
    #: Org ids; empty: the rotator's own org.
    orgs: tuple[str, ...] = ()
    expiring: timedelta = timedelta(days=14)
    horizon: timedelta = timedelta(days=1825)
    #: At most this many per-credential expiry series (the soonest first).
    max_series: int = 500


@dataclass(frozen=True)
class Config:
    source: str
    zitadel: ZitadelConfig
    vault: VaultConfig
    policy: Policy
    targets: tuple[Target, ...]
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    inventory: InventoryConfig = field(default_factory=InventoryConfig)
    #: The default schedule (``schedule:``); see :meth:`schedule_for`.
    schedule: Schedule = field(default_factory=Schedule)
    #: Per-target schedules, in target order: (target name, effective schedule).
    target_schedules: tuple[tuple[str, Schedule], ...] = ()
    #: Legal but questionable settings, shown by ``rotator validate``.
    warnings: tuple[str, ...] = ()
    #: ``kind: webkey`` targets (the instance's token-signing keys; rotator/webkeys.py).
    webkey_targets: tuple[WebKeyTarget, ...] = ()

    def webkey_target(self, name: str) -> WebKeyTarget | None:
        return next((t for t in self.webkey_targets if t.name == name), None)

    @cached_property
    def _targets_by_name(self) -> dict[str, Target]:
        # the daemon looks its target up on every job: not a scan of 10,000
        by_name: dict[str, Target] = {}
        for target in self.targets:
            by_name.setdefault(target.name, target)
        return by_name

    def target(self, name: str) -> Target:
        found = self._targets_by_name.get(name)
        if found is not None:
            return found
        names = [t.name for t in self.targets] + [t.name for t in self.webkey_targets]
        known = ", ".join(names) or "none"
        raise ConfigError(f"no target named {name!r} (known: {known})", file=self.source)

    @cached_property
    def _schedules_by_name(self) -> dict[str, Schedule]:
        # plan asks for every target's: a scan each time was O(targets^2)
        by_name: dict[str, Schedule] = {}
        for target_name, schedule in self.target_schedules:
            by_name.setdefault(target_name, schedule)
        return by_name

    def schedule_for(self, name: str) -> Schedule:
        """Target windows replace the default windows; freezes add up."""
        return self._schedules_by_name.get(name, self.schedule)


# --------------------------------------------------------------------------- loading


#: libyaml's parser when PyYAML was built with it (a large file loads ~3x faster).
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses a key given twice in one mapping, an unhashable
    key, and a scalar Python cannot represent (an impossible date, a huge int)
    with a YAML error that points at the node instead of a bare ValueError."""


def _problem(node: yaml.Node, message: str) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, message, node.start_mark)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            raise _problem(key_node, "a key must be a plain value, not a list or mapping") from None
        if duplicate:
            raise _problem(key_node, f"duplicate key {_shown(key)}")
        seen.add(key)
    return loader.construct_mapping(node)


def _checked_scalar(construct: Any, what: str) -> Any:
    def constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, OverflowError):
            raise _problem(node, f"invalid {what} {_shown(node.value)}") from None

    return constructor


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    """A copy of the scalar's string.  The parser allocates each string between
    its node and mark objects, all garbage once loaded; a kept string would pin
    that memory (Python frees a block of small objects only when all of it is
    free): a 10,000-target file left ~45 MiB of RSS behind, ~14 MiB with copies."""
    value = loader.construct_scalar(node)
    return value.encode().decode() if value else value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:timestamp",
    _checked_scalar(yaml.SafeLoader.construct_yaml_timestamp, "date"),
)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:int", _checked_scalar(yaml.SafeLoader.construct_yaml_int, "integer")
)
_StrictLoader.add_constructor(
    "tag:yaml.org,2002:float", _checked_scalar(yaml.SafeLoader.construct_yaml_float, "number")
)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a key given twice is left to the YAML loader to point at."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate key")
    return found


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number YAML reads")


def _read_yaml(source: str) -> Any:
    """The file's YAML tree; every way it can fail is a ConfigError naming the file."""
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=source) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read ({exc.strerror or type(exc).__name__})", file=source
        ) from None
    if text.lstrip().startswith("{"):
        # JSON is YAML, and generated fleet configs often are JSON: the json module
        # reads 10,000 targets in ~10 ms where libyaml and the checks take ~1.3 s
        with contextlib.suppress(ValueError):  # not JSON after all: YAML's flow style
            return json.loads(text, object_pairs_hook=_json_object, parse_constant=_no_constant)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"invalid YAML: {where}{_one_line(problem)}", file=source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=source) from None


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raises ConfigError naming the file and the field."""
    source = os.fspath(path)
    raw = _read_yaml(source)
    return parse_config(
        raw,
        source=source,
        env=os.environ if env is None else env,
        base_dir=Path(source).resolve().parent,
    )


# --------------------------------------------------------------------------- validation

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$", re.ASCII)
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,62})$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REQUIRED: Any = object()

#: Keys people reach for that would put a secret into the file.
_SECRET_KEY_HINTS = {
    "token": "secrets never go in the config file: use token_env or token_file",
    "secret_id": "secrets never go in the config file: use secret_id_file or secret_id_env",
    "jwt": "secrets never go in the config file: use jwt_file",
    "key": "secrets never go in the config file: use key_file or vault_path",
    "private_key": "secrets never go in the config file: use key_file or vault_path",
    "password": "secrets never go in the config file",
}


_DURATION_SHAPE = "must be a duration like 30d, 12h, 90m, 45s or 1d12h"
#: More digits than any duration up to MAX_DURATION needs (in seconds: 9).
_MAX_DURATION_DIGITS = 10


def parse_duration(text: str, *, maximum: timedelta = MAX_DURATION) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``1d12h``, ``0s``, at most ``maximum``;
    raises ValueError (whose message does not repeat ``text``)."""
    match = _DURATION.match(text.strip()) if text.strip() else None
    if not match:
        raise ValueError(_DURATION_SHAPE)
    groups = [g or "0" for g in match.groups()]
    if any(len(g.lstrip("0")) > _MAX_DURATION_DIGITS for g in groups):
        raise ValueError(f"must be at most {format_duration(maximum)}")
    days, hours, minutes, seconds = (int(g) for g in groups)
    # Compare in integers: timedelta() itself overflows beyond 999999999 days.
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total > maximum.total_seconds():
        raise ValueError(f"must be at most {format_duration(maximum)}")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration` (whole seconds)."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


_MAX_SHOWN = 60


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_SHOWN else line[: _MAX_SHOWN - 3] + "..."


def _shown(value: Any) -> str:
    """A value as a message quotes it: as written in the file (``${VAR}``
    references unexpanded, so an error never shows an environment value),
    on one line and cut short."""
    if isinstance(value, str):
        return repr(_one_line(value))
    if isinstance(value, bool | int | float):
        text = str(value) if not isinstance(value, int) or abs(value) < 10**_MAX_SHOWN else "..."
        return _one_line(text)
    return _type_name(value)


@dataclass
class _Ctx:
    source: str
    env: Mapping[str, str]
    base_dir: Path | None

    def fail(self, path: str, message: str) -> NoReturn:
        raise ConfigError(message, file=self.source, field=path or None)

    def expand(self, value: str, path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.fail(path, f"environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)

    def resolve_path(self, value: str) -> str:
        expanded = os.path.expanduser(value)
        if self.base_dir is None or os.path.isabs(expanded):
            return expanded
        return str(self.base_dir / expanded)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


class _Section:
    """One YAML mapping being read: typed getters, and unknown keys are an error."""

    def __init__(self, ctx: _Ctx, raw: Any, path: str) -> None:
        self.ctx = ctx
        self.path = path
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            ctx.fail(path, f"must be a mapping (got {_type_name(raw)})")
        self.raw: dict[Any, Any] = raw
        self.used: set[str] = set()

    def sub(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def got(self, name: str) -> str:
        """``(got ...)`` with the value as written in the file (see :func:`_shown`)."""
        return f"(got {_shown(self.raw.get(name))})"

    def fail(self, name: str, message: str) -> NoReturn:
        """Fail on field ``name`` of this section."""
        self.ctx.fail(self.sub(name), message)

    def has(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        value = self.raw.get(name)
        if value is None:
            if default is _REQUIRED:
                self.fail(name, "is required")
            return default
        return value

    def text(self, name: str, default: Any = _REQUIRED, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if not isinstance(value, str):
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            hint = " (quote it)" if numeric else ""
            self.fail(name, f"must be a string (got {_type_name(value)}){hint}")
        if "$" in value:  # most values name no variable: 60,000 of them at 10,000 targets
            value = self.ctx.expand(value, self.sub(name))
        value = value.strip()
        if not value and default is _REQUIRED:
            self.fail(name, "must not be empty")
        if choices and value not in choices:
            self.fail(name, f"must be one of {', '.join(choices)} {self.got(name)}")
        return value or default

    def choice(self, name: str, default: Any = _REQUIRED, *, of: Any) -> Any:
        """A value of the ``Literal`` type ``of``."""
        return self.text(name, default, choices=get_args(of))

    def file(self, name: str, default: Any = None) -> Any:
        value = self.text(name, default)
        if not isinstance(value, str):
            return value
        if "\0" in value:  # no file system takes one (and os.path raises ValueError)
            self.fail(name, f"must not contain a NUL character {self.got(name)}")
        return self.ctx.resolve_path(value)

    def shown(self, name: str, value: Any) -> str:
        """``value`` as a message quotes it: as written, if it was written here."""
        return _shown(self.raw[name]) if self.raw.get(name) is not None else _shown(value)

    def env_name(self, name: str, default: Any = None) -> Any:
        value = self.text(name, default)
        if isinstance(value, str) and not _ENV_NAME.match(value):
            self.fail(name, f"must be an environment variable name {self.got(name)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false (got {_type_name(value)})")
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer (got {_type_name(value)})")
        if not minimum <= value <= maximum:
            self.fail(name, f"must be from {minimum} to {maximum} {self.got(name)}")
        return value

    def duration(
        self,
        name: str,
        default: Any,
        *,
        minimum: timedelta = timedelta(0),
        maximum: timedelta = MAX_DURATION,
    ) -> Any:
        value = self._get(name, default)
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str):
            self.fail(name, f"{_DURATION_SHAPE} (got {_type_name(value)})")
        try:
            parsed = parse_duration(self.ctx.expand(value, self.sub(name)), maximum=maximum)
        except ValueError as exc:
            self.fail(name, f"{exc} {self.got(name)}")
        if parsed < minimum:
            self.fail(name, f"must be at least {format_duration(minimum)} {self.got(name)}")
        return parsed

    def section(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.ctx, self.raw.get(name), self.sub(name))

    def items(self, name: str) -> Iterator[tuple[Any, str]]:
        self.used.add(name)
        value = self.raw.get(name)
        if value is None:
            return
        if not isinstance(value, list):
            self.ctx.fail(self.sub(name), f"must be a list (got {_type_name(value)})")
        for index, item in enumerate(value):
            yield item, f"{self.sub(name)}[{index}]"

    def done(self) -> None:
        for key in self.raw:
            if key in self.used:
                continue
            if not isinstance(key, str):
                self.ctx.fail(self.path, f"keys must be strings (got {_shown(key)})")
            key_path = self.sub(_one_line(key))
            hint = _SECRET_KEY_HINTS.get(key)
            if hint:
                self.ctx.fail(key_path, f"unknown key; {hint}")
            known = ", ".join(sorted(self.used))
            self.ctx.fail(key_path, f"unknown key (known here: {known})")


def parse_config(
    raw: Any,
    *,
    source: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate a parsed YAML tree into a :class:`Config` (pure: no file or network I/O)."""
    ctx = _Ctx(source=source, env=env or {}, base_dir=base_dir)
    if raw is None:
        ctx.fail("", "the file is empty")
    root = _Section(ctx, raw, "")
    zitadel = _zitadel(root.section("zitadel"))
    vault = _vault(root.section("vault"), ctx)
    warnings: list[str] = []
    defaults = _policy(root.section("policy"), Policy(), warnings)
    schedule = _schedule(root.section("schedule"), Schedule())
    webkeys: list[WebKeyTarget] = []
    targets, schedules = _targets(root, defaults, schedule, vault, zitadel, warnings, webkeys)
    daemon = _daemon(root.section("daemon"))
    audit = _audit(root.section("audit"))
    notify = _notify(root.section("notify"))
    inventory = _inventory(root.section("inventory"))
    root.done()
    return Config(
        source=source,
        zitadel=zitadel,
        vault=vault,
        policy=defaults,
        targets=targets,
        daemon=daemon,
        audit=audit,
        notify=notify,
        inventory=inventory,
        schedule=schedule,
        target_schedules=schedules,
        warnings=tuple(warnings),
        webkey_targets=tuple(webkeys),
    )


def _default(cls: type[Any], name: str) -> Any:
    """The dataclass field's default: each default is declared once, on the model."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    raise AssertionError(f"{cls.__name__}.{name} has no default")


_SECOND = timedelta(seconds=1)
#: Deadline of one call (ZITADEL, Vault, a webhook).
_CALL_TIMEOUT = {"minimum": _SECOND, "maximum": timedelta(minutes=10)}


def _url(section: _Section, name: str, default: Any = _REQUIRED, *, secret: bool = False) -> Any:
    value = section.text(name, default)
    if value is None:
        return None
    shown = "" if secret else f" {section.got(name)}"
    try:
        parts = urlsplit(value)
        hostname, _ = parts.hostname, parts.port  # both raise ValueError when malformed
    except ValueError:
        section.fail(name, f"has an invalid host or port{shown}")
    if parts.scheme not in ("http", "https") or not hostname:
        section.fail(name, f"must be an http:// or https:// URL{shown}")
    # Webhook URLs carry their credentials in the query (Teams, Google Chat);
    # server URLs (issuer, Vault) have no business with one.
    if parts.fragment or (parts.query and not secret):
        section.fail(name, "must not have a query or fragment")
    return str(value).rstrip("/")


def _zitadel(section: _Section) -> ZitadelConfig:
    url = _url(section, "url")
    api = section.choice("api", _default(ZitadelConfig, "api"), of=ZitadelApi)
    grpc_target = section.text("grpc_target", None)
    if grpc_target is None:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        grpc_target = f"{parts.hostname}:{port}"
    else:
        match = re.match(r"^[^\s:/]+:(\d{1,5})$", grpc_target)
        if not match or int(match.group(1)) > 65535:
            section.fail("grpc_target", f"must be host:port {section.got('grpc_target')}")
    tls_section = section.section("tls")
    tls = TlsConfig(
        ca_file=tls_section.file("ca_file"),
        insecure=tls_section.flag("insecure", _default(TlsConfig, "insecure")),
    )
    tls_section.done()
    cred_section = section.section("credentials")
    credentials = ZitadelCredentials(
        key_file=cred_section.file("key_file"),
        vault_path=_vault_path(cred_section, "vault_path", None),
    )
    if (credentials.key_file is None) == (credentials.vault_path is None):
        section.fail("credentials", "needs exactly one of key_file or vault_path")
    cred_section.done()
    timeout = section.duration("timeout", _default(ZitadelConfig, "timeout"), **_CALL_TIMEOUT)
    rate_limit = section.integer(
        "rate_limit", _default(ZitadelConfig, "rate_limit"), minimum=0, maximum=100_000
    )
    rate_burst = section.integer(
        "rate_burst", _default(ZitadelConfig, "rate_burst"), minimum=0, maximum=100_000
    )
    section.done()
    return ZitadelConfig(
        url=url,
        api=api,
        grpc_target=grpc_target,
        tls=tls,
        credentials=credentials,
        timeout=timeout,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
    )


def _vault_path(section: _Section, name: str, default: Any = _REQUIRED) -> Any:
    value = section.text(name, default)
    if value is None:
        return None
    segments = value.split("/")
    if value.startswith("/") or value.endswith("/") or any(s in ("", ".", "..") for s in segments):
        section.fail(
            name,
            "must be a relative KV path like team/app, without empty, . or .. parts "
            f"{section.got(name)}",
        )
    return value


def _vault(section: _Section, ctx: _Ctx) -> VaultConfig:
    url = _url(section, "url", ctx.env.get("VAULT_ADDR") or None)
    if url is None:
        section.fail("url", "is required (or set VAULT_ADDR)")
    mount = section.text("mount", _default(VaultConfig, "mount")).strip("/")
    if not mount:
        section.fail("mount", "must name a KV v2 mount, e.g. secret")
    state_prefix = _vault_path(section, "state_prefix", _default(VaultConfig, "state_prefix"))
    namespace = section.text("namespace", None)
    ca_file = section.file("ca_file")
    timeout = section.duration("timeout", _default(VaultConfig, "timeout"), **_CALL_TIMEOUT)
    auth = _vault_auth(section.section("auth"))
    section.done()
    return VaultConfig(
        url=url,
        mount=mount,
        state_prefix=state_prefix,
        namespace=namespace,
        ca_file=ca_file,
        timeout=timeout,
        auth=auth,
    )


def _vault_auth(section: _Section) -> VaultAuthConfig:
    method = section.choice("method", _default(VaultAuthConfig, "method"), of=VaultAuthMethod)
    if method == "token":
        auth = VaultAuthConfig(
            method=method,
            token_env=section.env_name("token_env", _default(VaultAuthConfig, "token_env")),
            token_file=section.file("token_file"),
        )
    elif method == "approle":
        auth = VaultAuthConfig(
            method=method,
            mount_path=section.text("mount_path", method).strip("/"),
            role_id=section.text("role_id", None),
            role_id_file=section.file("role_id_file"),
            secret_id_file=section.file("secret_id_file"),
            secret_id_env=section.env_name("secret_id_env"),
        )
        if (auth.role_id is None) == (auth.role_id_file is None):
            section.ctx.fail(section.path, "approle needs exactly one of role_id or role_id_file")
        if (auth.secret_id_file is None) == (auth.secret_id_env is None):
            section.ctx.fail(
                section.path, "approle needs exactly one of secret_id_file or secret_id_env"
            )
    else:
        auth = VaultAuthConfig(
            method=method,
            mount_path=section.text("mount_path", method).strip("/"),
            role=section.text("role"),
            jwt_file=section.file("jwt_file", _default(VaultAuthConfig, "jwt_file")),
        )
    section.done()
    return auth


#: Bounds of each policy duration, before the relations between them.
_POLICY_BOUNDS: dict[str, dict[str, timedelta]] = {
    "lifetime": {"minimum": timedelta(days=1), "maximum": MAX_DURATION},
    "renew_before": {"minimum": _SECOND},
    "grace": {},
    "retire_margin": {},
    "verify_timeout": {"minimum": _SECOND, "maximum": timedelta(hours=1)},
}


def _policy(section: _Section, base: Policy, warnings: list[str]) -> Policy:
    values = {
        name: section.duration(name, getattr(base, name), **bounds)
        for name, bounds in _POLICY_BOUNDS.items()
    }
    section.done()
    policy = replace(base, **values)
    where = section.path
    lifetime = format_duration(policy.lifetime)
    if policy.lifetime < timedelta(days=1):  # an inherited default can be below a bound
        section.fail(
            "lifetime",
            "must be at least 1d: expiry is rounded to 00:00 UTC, so a shorter lifetime "
            f"could end at once (got {lifetime})",
        )
    if policy.renew_before >= policy.lifetime:
        section.fail(
            "renew_before",
            f"must be less than lifetime ({format_duration(policy.renew_before)} >= "
            f"{lifetime}): every new credential would be due at once",
        )
    if policy.grace > policy.lifetime:
        section.fail("grace", f"must not exceed lifetime ({lifetime})")
    if policy.retire_margin >= policy.lifetime:
        section.fail(
            "retire_margin",
            f"must be less than lifetime ({lifetime}): every credential would be retired at once",
        )
    if policy.grace + policy.retire_margin >= policy.renew_before:
        warnings.append(
            f"{where}: grace + retire_margin "
            f"({format_duration(policy.grace + policy.retire_margin)})"
            f" is not less than renew_before ({format_duration(policy.renew_before)}): old "
            "credentials will be retired before their grace ends, to stay ahead of their expiry"
        )
    if policy.renew_before >= policy.lifetime - timedelta(days=1):
        warnings.append(
            f"{where}: renew_before ({format_duration(policy.renew_before)}) is within 1d of "
            f"lifetime ({lifetime}): with midnight rounding a new "
            "credential may be due right after it is created"
        )
    return policy


#: A window or a recurring freeze lasts at least a minute and at most a year.
_WINDOW_DURATION = {"minimum": timedelta(minutes=1), "maximum": timedelta(days=366)}


def _window(section: _Section) -> tuple[str, str, timedelta]:
    """Check and return ``(cron, timezone, duration)``; :mod:`rotator.windows` does the rest."""
    timezone = section.text("timezone", _default(RotationWindow, "timezone"))
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a zone *directory* such as "Europe" (IsADirectoryError).
        section.fail("timezone", f"unknown time zone {section.got('timezone')}")
    cron = section.text("cron")
    duration = section.duration("duration", _REQUIRED, **_WINDOW_DURATION)
    try:
        RotationWindow(cron=cron, duration=duration, timezone=timezone)
    except ValueError as exc:
        reason = str(exc).partition(": ")[2] or str(exc)
        section.fail("cron", f"invalid cron expression {section.got('cron')}: {_one_line(reason)}")
    section.done()
    return cron, timezone, duration


def _rotation_window(section: _Section) -> RotationWindow:
    cron, timezone, duration = _window(section)
    return RotationWindow(cron=cron, duration=duration, timezone=timezone)


def _instant(section: _Section, name: str) -> datetime:
    section.used.add(name)
    value = section.raw.get(name)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(section.ctx.expand(value, section.sub(name)))
        except ValueError:
            section.fail(name, f"must be an ISO date or date-time {section.got(name)}")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value is None:
        section.fail(name, "is required")
    section.fail(name, f"must be an ISO date or date-time (got {_type_name(value)})")


def _freeze(section: _Section) -> FreezeWindow:
    if section.has("cron"):
        cron, timezone, duration = _window(section)
        return FreezeWindow(cron=cron, duration=duration, timezone=timezone)
    start, end = _instant(section, "start"), _instant(section, "end")
    if end <= start:
        section.fail("end", "must be after start")
    section.done()
    return FreezeWindow(start=start, end=end)


def _schedule(section: _Section, base: Schedule) -> Schedule:
    windows = tuple(
        _rotation_window(_Section(section.ctx, item, path))
        for item, path in section.items("windows")
    )
    freeze = tuple(
        _freeze(_Section(section.ctx, item, path)) for item, path in section.items("freeze")
    )
    # A target's own `windows` replace the defaults; an explicit empty list
    # means "any time" for this target.
    own_windows = section.has("windows")
    section.done()
    return Schedule(windows=windows if own_windows else base.windows, freeze=base.freeze + freeze)


def _target_policy(section: _Section, defaults: Policy, warnings: list[str]) -> Policy:
    # Without overrides a target has the defaults, judged once already.
    return _policy(section, defaults, warnings) if section.raw else defaults


def _targets(  # noqa: PLR0917 - private helper, called once
    root: _Section,
    defaults: Policy,
    default_schedule: Schedule,
    vault: VaultConfig,
    zitadel: ZitadelConfig,
    warnings: list[str],
    webkeys: list[WebKeyTarget] | None = None,
) -> tuple[tuple[Target, ...], tuple[tuple[str, Schedule], ...]]:
    webkeys = [] if webkeys is None else webkeys
    targets: list[Target] = []
    schedules: list[tuple[str, Schedule]] = []
    names: dict[str, str] = {}
    paths: dict[str, str] = {}
    for item, path in root.items("targets"):
        section = _Section(root.ctx, item, path)
        name = section.text("name")
        if not _NAME.match(name):
            section.fail(
                "name",
                "must be lower-case letters, digits, '.', '_' or '-', at most 63 "
                f"{section.got('name')}",
            )
        if name in names:
            section.fail(
                "name", f"duplicate target name {section.shown('name', name)} (also {names[name]})"
            )
        names[name] = path
        kind = section.text("kind", choices=(*(k.value for k in CredentialKind), WEBKEY_KIND))
        if kind == WEBKEY_KIND:
            webkeys.append(_webkey_target(section, name, default_schedule, warnings))
            continue
        vault_path = _vault_path(section, "vault_path", f"zitadel/{name}")
        if vault_path in paths:
            section.fail(
                "vault_path",
                f"duplicate vault_path {section.shown('vault_path', vault_path)} "
                f"(also {paths[vault_path]})",
            )
        if vault_path == vault.state_prefix or vault_path.startswith(vault.state_prefix + "/"):
            section.fail(
                "vault_path",
                "must not be under vault.state_prefix: the rotator keeps its own state there "
                f"{section.shown('vault_path', vault_path)}",
            )
        if vault_path == zitadel.credentials.vault_path and kind != CredentialKind.KEY:
            section.fail(
                "kind", "the rotator's own credential (zitadel.credentials.vault_path) is a key"
            )
        paths[vault_path] = path
        own_warnings: list[str] = []
        schedule_section = section.section("schedule")
        schedule = (
            _schedule(schedule_section, default_schedule)
            if schedule_section.raw
            else default_schedule
        )
        user, users = _identities(section)
        if kind == "secret" and not users:
            warnings.append(
                f"{path} ({name}): kind secret with one user: each rotation regenerates the "
                "secret, which kills the old one at once; consumers holding it are refused "
                "at the token endpoint until they re-read Vault (tokens already issued keep "
                "working up to their lifetime). `users: [a, b]` (two machine users with the "
                "same grants) rotates without that gap"
            )
        target = Target(
            name=name,
            user=user,
            users=users,
            kind=CredentialKind(kind),
            vault_path=vault_path,
            org_id=section.text("org_id", None),
            org=section.text("org", None),
            adopt=section.flag("adopt", _default(Target, "adopt")),
            policy=_target_policy(section.section("policy"), defaults, own_warnings),
            schedule=schedule,
        )
        if target.org is not None and target.org_id is not None:
            section.fail("org", "give org (a name or domain) or org_id, not both")
        if target.org is not None and not target.org.strip():
            section.fail("org", "must not be empty")
        if target.policy != defaults:  # inherited defaults were judged once already
            warnings.extend(own_warnings)
        schedules.append((name, schedule))
        section.done()
        targets.append(target)
    if not targets and not webkeys:
        root.ctx.fail("targets", "at least one target is required")
    return tuple(targets), tuple(schedules)


def _identities(section: _Section) -> tuple[str, tuple[str, ...]]:
    """``user: a`` or ``users: [a, b]`` (two identities): the first user, and
    both (empty for one)."""
    if not section.has("users"):
        if not section.has("user"):
            section.fail("user", "is required (or `users: [a, b]`: two machine users used in turn)")
        return section.text("user"), ()
    if section.has("user"):
        section.fail("users", "and `user` are mutually exclusive: set one of them")
    names: list[str] = []
    for item, path in section.items("users"):
        if not isinstance(item, str) or not item.strip():
            got = _type_name(item)
            section.ctx.fail(
                path, f"must be a non-empty string: a user name, login name or id (got {got})"
            )
        names.append(section.ctx.expand(item, path).strip())
    if len(names) != 2:
        got = f"(got {len(names)}) {section.got('users')}"
        section.fail("users", f"must name exactly two machine users {got}")
    if names[0] == names[1]:
        section.fail("users", f"must name two different users {section.got('users')}")
    return names[0], (names[0], names[1])


def _daemon(section: _Section) -> DaemonConfig:
    listen = section.text("listen", _default(DaemonConfig, "listen"))
    match = re.match(r"^(\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+):(\d{1,5})$", listen)
    if not match or int(match.group(2)) > 65535:
        section.fail("listen", f"must be host:port {section.got('listen')}")
    day = timedelta(days=1)

    def duration(name: str, minimum: timedelta, maximum: timedelta) -> timedelta:
        value: timedelta = section.duration(
            name, _default(DaemonConfig, name), minimum=minimum, maximum=maximum
        )
        return value

    daemon = DaemonConfig(
        listen=listen,
        reconcile_interval=duration("reconcile_interval", _SECOND, day),
        max_attempts=section.integer(
            "max_attempts", _default(DaemonConfig, "max_attempts"), minimum=1, maximum=1000
        ),
        retry_base=duration("retry_base", _SECOND, day),
        retry_cap=duration("retry_cap", _SECOND, 30 * day),
        jitter=duration("jitter", timedelta(0), day),
        misfire_grace=duration("misfire_grace", _SECOND, 30 * day),
        presence_interval=duration("presence_interval", _SECOND, 30 * day),
        concurrency=section.integer(
            "concurrency", _default(DaemonConfig, "concurrency"), minimum=1, maximum=256
        ),
        ha=_ha(section.section("ha")),
    )
    if daemon.retry_cap < daemon.retry_base:
        section.fail("retry_cap", "must not be less than retry_base")
    section.done()
    return daemon


def _ha(section: _Section) -> HaConfig:
    ha = HaConfig(
        enabled=section.flag("enabled", _default(HaConfig, "enabled")),
        backend=section.choice("backend", _default(HaConfig, "backend"), of=HaBackend),
        lease_ttl=section.duration(
            "lease_ttl",
            _default(HaConfig, "lease_ttl"),
            minimum=timedelta(seconds=5),
            maximum=timedelta(hours=1),
        ),
        lease_path=_vault_path(section, "lease_path", None),
        lease_name=section.text("lease_name", _default(HaConfig, "lease_name")),
        lease_namespace=section.text("lease_namespace", None),
        identity=section.text("identity", None),
    )
    section.done()
    return ha


def _audit(section: _Section) -> AuditConfig:
    audit = AuditConfig(file=section.file("file"))
    section.done()
    return audit


def _inventory(section: _Section) -> InventoryConfig:
    interval: timedelta | None = None
    section.used.add("interval")
    if section.has("interval"):
        interval = section.duration("interval", None, minimum=timedelta(minutes=1))
    orgs: list[str] = []
    for item, where in section.items("orgs"):
        if not isinstance(item, str | int) or isinstance(item, bool) or not str(item).strip():
            section.ctx.fail(where, f"must be an organization id (got {_type_name(item)})")
        orgs.append(str(item).strip())
    inventory = InventoryConfig(
        interval=interval,
        orgs=tuple(dict.fromkeys(orgs)),
        expiring=section.duration("expiring", _default(InventoryConfig, "expiring")),
        horizon=section.duration(
            "horizon", _default(InventoryConfig, "horizon"), minimum=timedelta(days=1)
        ),
        max_series=section.integer(
            "max_series", _default(InventoryConfig, "max_series"), minimum=0, maximum=100_000
        ),
    )
    section.done()
    return inventory


def _notify(section: _Section) -> NotifyConfig:
    notify = NotifyConfig(
        webhook_url=_url(section, "webhook_url", None, secret=True),
        format=section.choice("format", _default(NotifyConfig, "format"), of=NotifyFormat),
        expiry_threshold=section.duration(
            "expiry_threshold", _default(NotifyConfig, "expiry_threshold")
        ),
        timeout=section.duration("timeout", _default(NotifyConfig, "timeout"), **_CALL_TIMEOUT),
    )
    section.done()
    return notify


# --------------------------------------------------------------------------- kind: webkey

WEBKEY_KIND = "webkey"
_RSA_BITS = (2048, 3072, 4096)
_RSA_HASHERS = ("sha256", "sha384", "sha512")
_CURVES = ("P256", "P384", "P521")
#: Why a web key target takes no user, vault_path, org_id or policy.
_NOT_FOR_WEBKEY = {
    "user": "it rotates the instance's token-signing keys, not a user's credential",
    "org_id": "web keys belong to the instance, not an organization",
    "vault_path": "the private key never leaves ZITADEL (only the rotator's state is in Vault)",
    "policy": "use every, publish_ahead and retain",
}


def _webkey_target(
    section: _Section, name: str, default_schedule: Schedule, warnings: list[str]
) -> WebKeyTarget:
    """A ``kind: webkey`` target; the rules beyond the shapes are
    :func:`rotator.webkeys.check_target`'s (``retain`` below 12h is refused
    unless ``force_short_retain: true``)."""
    for key, why in _NOT_FOR_WEBKEY.items():
        if key in section.raw:
            section.fail(key, f"not allowed for kind webkey: {why}")
    schedule_section = section.section("schedule")
    schedule = (
        _schedule(schedule_section, default_schedule) if schedule_section.raw else default_schedule
    )
    target = WebKeyTarget(
        name=name,
        every=section.duration(
            "every", _default(WebKeyTarget, "every"), minimum=timedelta(hours=1)
        ),
        publish_ahead=section.duration("publish_ahead", _default(WebKeyTarget, "publish_ahead")),
        retain=section.duration("retain", _default(WebKeyTarget, "retain")),
        algorithm=_algorithm(section),
        adopt=section.flag("adopt", _default(WebKeyTarget, "adopt")),
        schedule=schedule,
    )
    force = section.flag("force_short_retain", False)
    section.done()
    warnings.extend(check_target(target, file=section.ctx.source, force=force, where=section.path))
    return target


def _algorithm(parent: _Section) -> Algorithm:
    """``rsa: {bits, hasher}``, ``ecdsa: {curve}`` or ``ed25519`` (also as a
    bare word: ``algorithm: ecdsa`` takes the defaults)."""
    raw = parent.raw.get("algorithm")
    parent.used.add("algorithm")
    path = parent.sub("algorithm")
    kinds = ("rsa", "ecdsa", "ed25519")
    if raw is None:
        return Algorithm()
    if isinstance(raw, str):
        if raw not in kinds:
            parent.fail("algorithm", f"must be one of {', '.join(kinds)} {parent.got('algorithm')}")
        raw = {raw: None}
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in kinds:
        parent.ctx.fail(path, "must name exactly one of rsa, ecdsa or ed25519, e.g. "
                              "{rsa: {bits: 2048, hasher: sha256}}")
    kind = str(next(iter(raw)))
    section = _Section(parent.ctx, raw[kind], f"{path}.{kind}")
    if kind == "rsa":
        bits = section.integer("bits", 2048, minimum=1, maximum=1_000_000)
        if bits not in _RSA_BITS:
            section.fail("bits", f"must be one of 2048, 3072, 4096 {section.got('bits')}")
        hasher = section.text("hasher", "sha256", choices=_RSA_HASHERS)
        algorithm = Algorithm("rsa", bits=bits, hasher=hasher)
    elif kind == "ecdsa":
        algorithm = Algorithm("ecdsa", curve=section.text("curve", "P256", choices=_CURVES))
    else:
        algorithm = Algorithm("ed25519")
    section.done()
    return algorithm
