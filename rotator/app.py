"""Wiring: from a :class:`Config` to a working :class:`Engine`.

:func:`build` is the only place that knows which classes implement the
engine's interfaces.  It talks to the network (Vault check, the rotator's own
token, API detection for ``zitadel.api: auto``) so a broken environment fails
at start with one :class:`RotatorError`, not halfway through a rotation.

The rotator's own key is held in memory only: read from its file or from Vault
each time a new access token is needed (so a key rotated by the rotator
itself, or a re-mounted Kubernetes Secret, is picked up), never written
anywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from rotator import vault_auth
from rotator.audit import AuditLog, open_private_append
from rotator.cleartext import cleartext_urls
from rotator.clock import Clock, system_clock
from rotator.config import Config
from rotator.engine import Engine
from rotator.errors import (
    ConfigError,
    InvalidKeyFile,
    RotatorError,
    VaultError,
    ZitadelError,
    ZitadelUnavailable,
)
from rotator.failures import Backoff
from rotator.keys import check_key_file
from rotator.ports import InventoryTransport, ZitadelTransport
from rotator.ratelimit import LimitedTransport, RateLimiter
from rotator.vault import VaultStore
from rotator.zitadel.detect import choose_api
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.orgs import OrgDirectory, directory, sdk_lookup

KeyFileProvider = Callable[[], Mapping[str, Any]]


@dataclass
class App:
    """Everything one rotator process uses; :meth:`close` releases it."""

    config: Config
    engine: Engine
    store: VaultStore
    transport: ZitadelTransport
    oidc: OidcClient
    token_source: TokenSource
    audit: AuditLog
    clock: Clock
    #: "v1" or "v2": the ZITADEL API in use (detected when ``zitadel.api: auto``);
    #: the setting itself when not probed (``build(probe_api=False)``), "offline"
    #: when ZITADEL could not be reached.
    api: str
    #: Why ZITADEL could not be used (only with ``build(require_zitadel=False)``).
    zitadel_error: ZitadelError | None = None
    #: The rotator's own key file, read afresh (web keys: its own id_token exchange).
    key_file: KeyFileProvider | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):  # best effort at exit
                close()
        self._closers.clear()


def process_identity(config: Config) -> str:
    """This process's name in leases and rotation intents: configured, else host and pid."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return config.daemon.ha.identity or f"{host}-{os.getpid()}"


def check_audit_file(config: Config) -> None:
    """An audit file that cannot be appended to must stop us at start, not
    halfway through a rotation."""
    if config.audit.file is None:
        return
    path = Path(config.audit.file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_private_append(path):  # created 0600, as the audit log would
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot append to {path} ({exc.strerror})", file=config.source, field="audit.file"
        ) from None


# --------------------------------------------------------------------------- Vault


def connect_store(config: Config, clock: Clock) -> VaultStore:
    """A checked store: reachable, unsealed, logged in (``vault.auth``), mount is KV v2."""
    store = vault_auth.connect(config.vault, clock=clock)
    store.check()
    return store


# --------------------------------------------------------------------------- own identity


def key_file_provider(config: Config, store: VaultStore) -> KeyFileProvider:
    """Reads the rotator's own key file on every call (file or Vault), checked."""
    credentials = config.zitadel.credentials
    if credentials.key_file is not None:
        path = credentials.key_file

        def from_file() -> Mapping[str, Any]:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the key file {path} ({exc.strerror})",
                    file=config.source,
                    field="zitadel.credentials.key_file",
                ) from None
            except ValueError:
                raise ConfigError(
                    f"the key file {path} is not JSON",
                    file=config.source,
                    field="zitadel.credentials.key_file",
                ) from None
            try:
                return _checked(data, f"key file {path}")
            except InvalidKeyFile as exc:  # a bad key file is a configuration error (exit 2)
                raise ConfigError(
                    str(exc), file=config.source, field="zitadel.credentials.key_file"
                ) from None

        return from_file

    vault_path = credentials.vault_path
    assert vault_path is not None  # config guarantees exactly one

    def from_vault() -> Mapping[str, Any]:
        secret = store.read(vault_path)
        if secret is None:
            raise VaultError(
                "no key file stored here (zitadel.credentials.vault_path)", path=vault_path
            )
        # A rotated secret also carries the credential in grace under "previous".
        return _checked(
            {k: v for k, v in secret.data.items() if k != "previous"},
            f"key file at Vault path {vault_path}",
        )

    return from_vault


def _checked(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise InvalidKeyFile(f"{what} is not a JSON object")
    try:
        # Its numbers checked against each other, its primes not tested (~50 ms
        # of CPU at every start: ZITADEL refuses what a key with bad primes
        # signs); `rotator validate` tests them.
        check_key_file(data, test_primes=False)
    except InvalidKeyFile as exc:
        raise InvalidKeyFile(f"{what}: {exc}") from None
    return data


# --------------------------------------------------------------------------- ZITADEL


def tls_setting(config: Config) -> bool | str:
    """ZITADEL's TLS check for HTTP clients: off, on (system CAs) or a CA file."""
    tls = config.zitadel.tls
    if tls.insecure:
        return False
    return tls.ca_file or True


def _check_transport_settings(config: Config, api: str) -> None:
    zitadel = config.zitadel
    if api == "v1" and zitadel.tls.insecure and not zitadel.grpc_plaintext:
        raise ConfigError(
            "gRPC cannot skip certificate verification: use tls.ca_file with api v1",
            file=config.source,
            field="zitadel.tls.insecure",
        )


def make_transport(config: Config, api: str, token_source: Callable[[], str]) -> ZitadelTransport:
    zitadel = config.zitadel
    timeout = zitadel.timeout.total_seconds()
    if api == "v2":
        # only the slice of the SDK it uses, and only now (rotator/zitadel/sdk.py)
        from rotator.zitadel.sdk import TransportOptions  # noqa: PLC0415
        from rotator.zitadel.v2 import UserServiceTransport  # noqa: PLC0415

        options = TransportOptions(ca_cert_path=zitadel.tls.ca_file, insecure=zitadel.tls.insecure)
        return UserServiceTransport(
            zitadel.url, token_source, timeout=timeout, transport_options=options
        )
    from rotator.zitadel.v1 import ManagementTransport  # noqa: PLC0415 - grpc stubs

    _check_transport_settings(config, api)
    scheme = "http" if zitadel.grpc_plaintext else "https"
    transport: ZitadelTransport = ManagementTransport(
        f"{scheme}://{zitadel.grpc_target}",
        token_source,
        # An http:// ZITADEL has no certificate to check: the CA file is unused,
        # as on the OIDC and v2 paths (the transport would refuse the pair).
        ca_file=None if zitadel.grpc_plaintext else zitadel.tls.ca_file,
        timeout=timeout,
    )
    return transport


def org_directory(
    config: Config, token_source: Callable[[], str], limiter: RateLimiter
) -> OrgDirectory | None:
    """Resolves targets[].org (names, domains) once each; None when no target names one."""
    if not any(t.org for t in config.targets):
        return None
    from rotator.zitadel.sdk import TransportOptions  # noqa: PLC0415 - the SDK slice

    tls = config.zitadel.tls
    lookup = sdk_lookup(
        config.zitadel.url,
        token_source,
        timeout=config.zitadel.timeout.total_seconds(),
        options=TransportOptions(ca_cert_path=tls.ca_file, insecure=tls.insecure),
        call=limiter.call,
    )
    return directory(token_source, lookup)


#: The module of each API's management client (rotator/zitadel/sdk.py: the v2 SDK's
#: slice alone is ~0.2 s of CPU to import; v1's gRPC stubs are not light either).
_TRANSPORT_MODULES = {"v1": "rotator.zitadel.v1", "v2": "rotator.zitadel.v2"}


def _token_while_importing(token_source: TokenSource, module: str) -> None:
    """The own token (discovery and token exchange: two round trips to ZITADEL,
    time spent waiting) fetched on a thread while this one imports ``module``
    (time spent computing): one start-up pays the longer of the two, not both.
    The token fetch imports nothing, so the two never contend for an import lock."""
    fetched: Future[str] = Future()

    def fetch() -> None:
        try:
            fetched.set_result(token_source())
        except BaseException as exc:  # raised below, in the caller's thread
            fetched.set_exception(exc)

    # a daemon thread: Ctrl-C while ZITADEL is slow to answer is not held up by it
    threading.Thread(target=fetch, name="own-token", daemon=True).start()
    importlib.import_module(module)
    fetched.result()  # raises what token_source() raised


_TRANSPORT_METHODS = frozenset(
    name
    for protocol in (ZitadelTransport, InventoryTransport)
    for name in vars(protocol)
    if not name.startswith("_") and name != "close"
)


class DeferredTransport:
    """A :class:`ZitadelTransport` made on first use by ``factory``.

    The v2 SDK takes seconds to import, and ``status`` or ``verify`` never
    call the management API, so the real transport is built only when a
    method is called; every method is forwarded (``__getattr__``), so this
    class does not repeat the protocol.  Use :func:`offline_transport` for a
    ZITADEL that could not be reached at start.
    """

    def __init__(self, api: str, factory: Callable[[], ZitadelTransport]) -> None:
        #: "v1", "v2", "auto" (not probed yet) or "offline".
        self.api = api
        self._factory = factory
        self._transport: ZitadelTransport | None = None

    def __getattr__(self, name: str) -> Any:
        # Only called for what this class lacks; only the protocol's methods are forwarded.
        if name not in _TRANSPORT_METHODS:
            raise AttributeError(name)
        if self._transport is None:
            self._transport = self._factory()
        return getattr(self._transport, name)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def offline_transport(error: ZitadelError) -> DeferredTransport:
    """Stands in for ZITADEL when it could not be reached at start and the
    command only reads Vault: every call raises, naming the error from the start."""

    def unavailable() -> NoReturn:
        raise ZitadelUnavailable(f"not connected ({error})")

    return DeferredTransport("offline", unavailable)


# --------------------------------------------------------------------------- build


def build(
    config: Config,
    *,
    clock: Clock | None = None,
    audit: AuditLog | None = None,
    require_zitadel: bool = True,
    probe_api: bool = True,
    preload_transport: bool = False,
) -> App:
    """Connect everything; raises RotatorError (ConfigError, VaultError,
    ZitadelError) when the environment is not usable.

    With ``require_zitadel=False`` (commands that only read Vault, such as
    ``status``) a ZITADEL that cannot be reached at start is tolerated: the
    transport then refuses every call, and ``App.zitadel_error`` says why.
    With ``probe_api=False`` (commands that do not use the management API)
    ``zitadel.api: auto`` is resolved only if the transport is used.
    With ``preload_transport=True`` (a command that will call the management
    API at once, such as ``rotate``) the client of a configured ``zitadel.api``
    is imported while the rotator's own token is fetched, not after it.
    """
    clock = clock or system_clock()  # ROTATOR_CLOCK_OFFSET_FILE: testing hook (clock.py)
    check_audit_file(config)
    audit = audit or AuditLog(file=config.audit.file)
    for cleartext in cleartext_urls(config):
        audit.emit(
            "config.cleartext_url",
            field=cleartext.field,
            host=cleartext.host,
            warning=cleartext.warning,
        )
    closers: list[Callable[[], None]] = []
    try:
        store = connect_store(config, clock)
        provider = key_file_provider(config, store)
        provider()  # fail now, with a clear message, on an unusable own key
        # one request budget for every call to ZITADEL, from every thread
        limiter = RateLimiter(
            config.zitadel.rate_limit or None, burst=config.zitadel.rate_burst or None
        )
        oidc = OidcClient(
            config.zitadel.url,
            clock=clock,
            timeout=config.zitadel.timeout.total_seconds(),
            verify_tls=tls_setting(config),
            limiter=limiter,
        )
        closers.append(oidc.close)
        token_source = TokenSource(oidc, provider, clock=clock)
        zitadel_error: ZitadelError | None = None
        api: str
        transport: ZitadelTransport
        try:
            # the rotator's own identity works, or we stop here
            if preload_transport and config.zitadel.api in _TRANSPORT_MODULES:
                _token_while_importing(token_source, _TRANSPORT_MODULES[config.zitadel.api])
            else:
                token_source()

            def connect() -> ZitadelTransport:
                chosen = choose_api(
                    config.zitadel.api,
                    config.zitadel.url,
                    token_source,
                    audit=audit,
                    timeout=config.zitadel.timeout.total_seconds(),
                    verify=tls_setting(config),
                )
                _check_transport_settings(config, chosen)
                return DeferredTransport(
                    chosen,
                    lambda: LimitedTransport(
                        make_transport(config, chosen, token_source), limiter
                    ),
                )

            if require_zitadel and probe_api:
                transport = connect()
                api = transport.api
            else:
                # Probe the API only if something calls the management API.
                transport = DeferredTransport(config.zitadel.api, connect)
                api = config.zitadel.api
        except ZitadelError as exc:
            if require_zitadel:
                raise
            zitadel_error, api = exc, "offline"
            transport = offline_transport(exc)
        closers.append(transport.close)
    except RotatorError:
        for close in reversed(closers):
            close()
        raise
    engine = Engine(
        transport,
        store,
        oidc,
        clock=clock,
        audit=audit,
        state_prefix=config.vault.state_prefix,
        backoff=Backoff(
            max_attempts=config.daemon.max_attempts,
            base=config.daemon.retry_base,
            cap=config.daemon.retry_cap,
        ),
        identity=process_identity(config),
        # a create or a Vault write, with the clients' own retries
        intent_timeout=3 * max(config.zitadel.timeout, config.vault.timeout),
        own_key_id=lambda: str(provider().get("keyId", "")) or None,
        presence_interval=config.daemon.presence_interval,
        orgs=org_directory(config, token_source, limiter),
    )
    return App(
        config=config,
        engine=engine,
        store=store,
        transport=transport,
        oidc=oidc,
        token_source=token_source,
        audit=audit,
        clock=clock,
        api=api,
        zitadel_error=zitadel_error,
        key_file=provider,
        _closers=closers,
    )


__all__ = [
    "App",
    "DeferredTransport",
    "KeyFileProvider",
    "build",
    "check_audit_file",
    "connect_store",
    "key_file_provider",
    "make_transport",
    "offline_transport",
]
