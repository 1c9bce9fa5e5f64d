"""The fakes' own test hooks (their KV v2 and ZITADEL behaviour is held to the
real backends' by tests/contract/)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rotator.errors import VaultPermissionDenied, VerificationError, ZitadelUnavailable
from tests.fakes.fixtures import zitadel as zitadel  # noqa: PLC0414 (a fixture)
from tests.fakes.store import MemoryStore
from tests.fakes.zitadel import FakeZitadel


def test_the_engine_clock_is_zitadels_clock(zitadel: FakeZitadel) -> None:
    clock = zitadel.clock
    transport = zitadel.transport()
    user = transport.resolve_user("svc-reports")
    pat = transport.add_pat(user, clock.now() + timedelta(days=1))
    verifier = zitadel.verifier()
    verifier.verify_pat(pat.token, user.id)

    before = datetime.now(UTC)
    clock.sleep(2 * 86400)  # nobody waits ...
    assert datetime.now(UTC) - before < timedelta(seconds=5)
    # ... but for ZITADEL two days passed: the PAT expired
    assert clock.offset >= timedelta(days=2)
    with pytest.raises(VerificationError):
        verifier.verify_pat(pat.token, user.id)
    # and the rotator's own token was renewed on the way: calls still work
    assert transport.list_pats(user) != []


def test_zitadel_faults_use_the_emulators_rules(zitadel: FakeZitadel) -> None:
    transport = zitadel.transport()
    user = transport.resolve_user("svc-billing")
    zitadel.set_faults(rules=[{"method": "ListKeys", "code": "unavailable", "count": 2}])
    for _ in range(2):
        with pytest.raises(ZitadelUnavailable):
            transport.list_keys(user)
    assert transport.list_keys(user) == []


def test_the_memory_store_counts_calls_and_fails_on_request() -> None:
    store = MemoryStore()
    store.write("a/b", {"v": 1}, cas=0)
    store.fail_next("read", VaultPermissionDenied("read: permission denied (403)", status=403))
    with pytest.raises(VaultPermissionDenied):
        store.read("a/b")
    assert store.read("a/b") is not None
    assert (store.calls["write"], store.calls["read"]) == (1, 2)
    assert store.paths() == ["a/b"]
