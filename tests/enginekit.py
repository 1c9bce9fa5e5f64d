"""Builds a real Engine against the emulator and OpenBao, for the engine tests
and the crash runner.  Nothing here is a fake: the transport speaks HTTP or
gRPC to the emulator process, the store speaks HTTP to OpenBao."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import hvac

from rotator.audit import AuditLog
from rotator.clock import OffsetClock
from rotator.engine import Engine
from rotator.failures import Backoff
from rotator.model import Policy, Target
from rotator.vault import VaultStore
from rotator.zitadel.base import CredentialKind, ZitadelTransport
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v1 import ManagementTransport
from rotator.zitadel.v2 import UserServiceTransport

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

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, text: str) -> KitSpec:
        return cls(**json.loads(text))

    def key_target(self, **kw: Any) -> Target:
        return key_target(user=self.key_user, **kw)

    def pat_target(self, **kw: Any) -> Target:
        return pat_target(user=self.pat_user, **kw)


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
    clock = OffsetClock(timedelta(seconds=spec.clock_offset_s))
    admin_key = json.loads(Path(spec.admin_key_file).read_text())
    oidc = OidcClient(spec.issuer, clock=clock)
    tokens = TokenSource(oidc, lambda: admin_key, clock=clock)
    transport = make_transport(spec, tokens)
    store = VaultStore(hvac.Client(url=spec.vault_url, token=spec.vault_token), spec.mount)
    stream = audit_stream if audit_stream is not None else io.StringIO()
    engine = Engine(
        transport,
        store,
        oidc,
        clock=clock,
        audit=AuditLog(stream),
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
