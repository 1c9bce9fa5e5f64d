"""The deferred ZITADEL transport of rotator.app: built on first use, every
protocol method forwarded, and an offline stand-in that refuses every call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rotator.app import DeferredTransport, offline_transport
from rotator.errors import ZitadelUnavailable
from rotator.model import Credential, CredentialKind, User
from rotator.ports import ZitadelTransport

USER = User(id="1", org_id="2", username="svc")


class Recording:
    """A stand-in transport that records calls."""

    api = "v2"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any) -> Any:
            self.calls.append((name, args))
            return [Credential("k", CredentialKind.KEY, USER.id, datetime(2030, 1, 1, tzinfo=UTC))]

        return method

    def close(self) -> None:
        self.closed = True


def test_the_transport_is_built_on_first_use_only_once() -> None:
    built: list[Recording] = []

    def factory() -> ZitadelTransport:
        built.append(Recording())
        return built[-1]

    transport = DeferredTransport("auto", factory)
    assert transport.api == "auto"
    transport.close()
    assert built == []  # neither reading api nor closing builds it

    assert [c.id for c in transport.list_keys(USER)] == ["k"]
    transport.remove_key(USER, "k")
    assert len(built) == 1
    assert built[0].calls == [("list_keys", (USER,)), ("remove_key", (USER, "k"))]
    transport.close()
    assert built[0].closed


def test_only_the_protocol_is_forwarded() -> None:
    transport = DeferredTransport("v1", Recording)
    with pytest.raises(AttributeError):
        transport.invalidate  # noqa: B018
    assert getattr(transport, "_transport") is None  # noqa: B009 - nothing was built


def test_offline_refuses_every_call_naming_the_start_error() -> None:
    transport = offline_transport(ZitadelUnavailable("connection refused", method="token"))
    assert transport.api == "offline"
    for call in (
        lambda: transport.resolve_user("svc"),
        lambda: transport.list_pats(USER),
        lambda: transport.add_pat(USER, datetime(2030, 1, 1, tzinfo=UTC)),
    ):
        with pytest.raises(ZitadelUnavailable, match=r"not connected .*connection refused"):
            call()
    transport.close()
