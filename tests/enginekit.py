"""Builds the Engine for the engine tests, two ways:

- :func:`build_kit`: the real thing, for the end-to-end tests and the crash
  runner.  Nothing is a fake: the transport speaks HTTP or gRPC to the emulator
  process, the store speaks HTTP to OpenBao.
- :func:`build_fast_kit`: the same Engine on the in-process fakes of
  tests/fakes (ZITADEL's domain model, an in-memory KV v2 store, one shared
  clock), for the protocol tests: milliseconds per test, no process.  Both
  fakes pass the contract suites in tests/contract/ with the real backends.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import hvac

from rotator.audit import AuditLog
from rotator.clock import OffsetClock
from rotator.engine import Engine
from rotator.failures import Backoff
from rotator.keys import KeyPair, generate_key_pair
from rotator.kinds import KeyOps, ops_for
from rotator.model import CredentialKind, Policy, Target
from rotator.ports import ZitadelTransport
from rotator.vault import VaultStore
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v1 import ManagementTransport
from rotator.zitadel.v2 import UserServiceTransport
from tests.fakes.store import MemoryStore
from tests.fakes.zitadel import FakeTransport, FakeZitadel, InProcessOidc, SharedClock

#: A policy for tests: verification gives up quickly so failures are fast.
TEST_POLICY = Policy(
    lifetime=timedelta(days=30),
    renew_before=timedelta(days=10),
    grace=timedelta(days=1),
    retire_margin=timedelta(hours=1),
    verify_timeout=timedelta(seconds=5),
)


@dataclass
class KitSpec:
    """Everything needed to rebuild the same engine in another process."""

    issuer: str
    grpc_target: str
    admin_key_file: str
    vault_url: str
    vault_token: str
    mount: str
    api: str = "v2"
    clock_offset_s: float = 0.0
    max_attempts: int = 5
    #: Machine users the targets rotate (fresh ones per test keep tests apart).
    key_user: str = "svc-billing"
    pat_user: str = "svc-reports"
    secret_user: str = "svc-payroll"
    #: The two identities of the ``twin-*`` targets (``users: [a, b]``).
    twin_users: tuple[str, ...] | list[str] = ()

    @classmethod
    def for_emulator(
        cls, emulator: Any, openbao: Any, mount: str, *, api: str = "v2", **kw: Any
    ) -> KitSpec:
        """The spec of an engine on ``emulator`` (a tests.harness Emulator) and a
        real OpenBao, with the KV v2 ``mount``; ``kw``: users, clock, attempts."""
        return cls(
            issuer=emulator.issuer,
            grpc_target=emulator.grpc_target,
            admin_key_file=str(emulator.admin_key_file),
            vault_url=openbao.url,
            vault_token=openbao.root_token,
            mount=mount,
            api=api,
            **kw,
        )

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, text: str) -> KitSpec:
        return cls(**json.loads(text))

    def key_target(self, **kw: Any) -> Target:
        return key_target(user=self.key_user, **kw)

    def pat_target(self, **kw: Any) -> Target:
        return pat_target(user=self.pat_user, **kw)

    def secret_target(self, **kw: Any) -> Target:
        return secret_target(user=self.secret_user, **kw)

    def target(self, kind: str, **kw: Any) -> Target:
        """``key``, ``pat``, ``secret``, or ``twin-<kind>`` over ``twin_users``."""
        if kind.startswith("twin-"):
            users = tuple(self.twin_users)
            base = self.target(kind.removeprefix("twin-"), name=kind, **kw)
            return replace(base, user=users[0], users=users)
        return {"key": self.key_target, "pat": self.pat_target, "secret": self.secret_target}[
            kind
        ](**kw)


@dataclass
class Kit:
    engine: Engine
    store: VaultStore
    transport: ZitadelTransport
    oidc: OidcClient
    clock: OffsetClock
    audit_stream: io.StringIO = field(default_factory=io.StringIO)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_stream.getvalue().splitlines()]

    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events()]


def make_transport(spec: KitSpec, tokens: TokenSource) -> ZitadelTransport:
    if spec.api == "v1":
        return ManagementTransport(spec.grpc_target, tokens, insecure=True)
    return UserServiceTransport(spec.issuer, tokens)


@contextmanager
def build_kit(spec: KitSpec, *, audit_stream: IO[str] | None = None) -> Iterator[Kit]:
    """``audit_stream``: where the audit lines go (the crash runner's stdout);
    by default a buffer that :meth:`Kit.events` reads."""
    clock = OffsetClock(timedelta(seconds=spec.clock_offset_s))
    admin_key = json.loads(Path(spec.admin_key_file).read_text())
    oidc = OidcClient(spec.issuer, clock=clock)
    tokens = TokenSource(oidc, lambda: admin_key, clock=clock)
    transport = make_transport(spec, tokens)
    store = VaultStore(hvac.Client(url=spec.vault_url, token=spec.vault_token), spec.mount)
    stream = io.StringIO()
    engine = Engine(
        transport,
        store,
        oidc,
        clock=clock,
        audit=AuditLog(audit_stream if audit_stream is not None else stream),
        backoff=Backoff(
            max_attempts=spec.max_attempts, base=timedelta(seconds=1), cap=timedelta(seconds=4)
        ),
    )
    try:
        yield Kit(engine, store, transport, oidc, clock, stream)
    finally:
        transport.close()
        oidc.close()


def key_target(name: str = "billing", user: str = "svc-billing", **kw: Any) -> Target:
    return Target(
        name=name,
        user=user,
        kind=CredentialKind.KEY,
        vault_path=f"zitadel/{name}",
        policy=kw.pop("policy", TEST_POLICY),
        **kw,
    )


def pat_target(name: str = "reports", user: str = "svc-reports", **kw: Any) -> Target:
    return Target(
        name=name,
        user=user,
        kind=CredentialKind.PAT,
        vault_path=f"zitadel/{name}",
        policy=kw.pop("policy", TEST_POLICY),
        **kw,
    )


def secret_target(name: str = "payroll", user: str = "svc-payroll", **kw: Any) -> Target:
    return Target(
        name=name,
        user=user,
        kind=CredentialKind.SECRET,
        vault_path=f"zitadel/{name}",
        policy=kw.pop("policy", TEST_POLICY),
        **kw,
    )


# -- the fast kit: the engine on the in-process fakes ----------------------------------------


@dataclass
class FastKit:
    """Like :class:`Kit`; ``zitadel`` plays the emulator (``set_faults``,
    ``state()``, ``add_user``) and ``clock`` is ZITADEL's clock too."""

    engine: Engine
    store: MemoryStore
    transport: FakeTransport
    oidc: InProcessOidc
    clock: SharedClock
    zitadel: FakeZitadel
    audit_stream: io.StringIO = field(default_factory=io.StringIO)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_stream.getvalue().splitlines()]

    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def advance(self, seconds: float) -> None:
        """Move the one clock the engine and ZITADEL share."""
        self.clock.advance(timedelta(seconds=seconds))


_KEY_POOL: list[KeyPair] = []
_KEY_POOL_LOCK = threading.Lock()
_KEY_POOL_SIZE = 4


def _pooled_key_pairs() -> Iterator[KeyPair]:
    """RSA 2048 generation costs more than a whole protocol step on the fakes; the
    protocol does not care which key material a new key has, only that ZITADEL
    registers it and a signature with it verifies.  A few real pairs, generated
    once per process, are handed out in turn (consecutive keys always differ)."""
    with _KEY_POOL_LOCK:
        while len(_KEY_POOL) < _KEY_POOL_SIZE:
            _KEY_POOL.append(generate_key_pair())
    return itertools.cycle(list(_KEY_POOL))


@contextmanager
def build_fast_kit(
    zitadel: FakeZitadel,
    store: MemoryStore,
    *,
    max_attempts: int = 5,
) -> Iterator[FastKit]:
    """The engine as :func:`build_kit` builds it, on the fakes.  Several kits
    may share one ``zitadel`` and ``store`` (racing engines)."""
    clock = zitadel.clock
    oidc = zitadel.verifier(clock)
    transport = zitadel.transport()
    stream = io.StringIO()
    engine = Engine(
        transport,
        store,
        oidc,
        clock=clock,
        audit=AuditLog(stream),
        backoff=Backoff(
            max_attempts=max_attempts, base=timedelta(seconds=1), cap=timedelta(seconds=4)
        ),
    )
    pairs = _pooled_key_pairs()
    key_ops = ops_for(CredentialKind.KEY)
    assert isinstance(key_ops, KeyOps)
    with _patched(key_ops, "generate", lambda: next(pairs)):
        try:
            yield FastKit(engine, store, transport, oidc, clock, zitadel, stream)
        finally:
            oidc.close()


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
