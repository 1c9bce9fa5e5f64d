"""Failure classes and backoff: an outage never makes a target stuck, and the
credential's expiry always wins over the backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from rotator.errors import (
    CasConflict,
    RotatorError,
    VaultError,
    VaultUnavailable,
    VerificationError,
    VerificationReason,
    ZitadelNotFound,
    ZitadelPermissionDenied,
    ZitadelUnavailable,
)
from rotator.failures import Backoff, FailureClass, classify, clear, forgive_if_changed, record
from rotator.model import CredentialKind, Policy, Target
from rotator.state import CredentialRef, TargetState

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
TARGET = Target(name="billing", user="svc", kind=CredentialKind.KEY, vault_path="apps/billing")
BACKOFF = Backoff(
    max_attempts=3, base=timedelta(minutes=1), cap=timedelta(hours=1), rng=random.Random(1)
)


def fresh(expires_in: timedelta | None = timedelta(days=5)) -> TargetState:
    current = CredentialRef(id="k1", expires_at=NOW + expires_in) if expires_in else None
    return TargetState(target="billing", kind="key", user_id="u", current=current)


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (ZitadelUnavailable("down", code="unavailable"), FailureClass.TRANSIENT),
        (ZitadelUnavailable("429", code="resource_exhausted"), FailureClass.TRANSIENT),
        (VaultUnavailable("sealed"), FailureClass.TRANSIENT),
        (ZitadelNotFound("no user", code="not_found"), FailureClass.PERMANENT),
        (ZitadelPermissionDenied("no grant", code="permission_denied"), FailureClass.PERMANENT),
        (VaultError("holds a credential the rotator did not create"), FailureClass.PERMANENT),
        (
            VerificationError("never worked", reason=VerificationReason.TOKEN_REFUSED),
            FailureClass.PERMANENT,
        ),
        (CasConflict("another rotator won"), FailureClass.CONFLICT),
        (RotatorError("own key"), FailureClass.PERMANENT),
    ],
)
def test_errors_fall_into_three_classes(exc: RotatorError, cls: FailureClass) -> None:
    assert classify(exc) is cls


def test_transient_failures_never_make_a_target_stuck() -> None:
    state = fresh()
    for attempt in range(1, 50):
        failure = record(
            state, ZitadelUnavailable("down", code="unavailable"), TARGET, NOW, BACKOFF
        )
        assert failure.attempt == attempt
        assert not failure.stuck
        assert failure.next_attempt_at is not None
    assert state.failures == 49
    assert state.permanent_failures == 0
    assert state.last_error_class == "transient"


def test_permanent_failures_make_it_stuck_after_max_attempts_and_say_why() -> None:
    state = fresh()
    denied = ZitadelPermissionDenied("membership not found", code="permission_denied")
    outcomes = [record(state, denied, TARGET, NOW, BACKOFF).stuck for _ in range(3)]
    assert outcomes == [False, False, True]
    assert state.stuck
    assert state.next_attempt_at is None
    assert state.last_error is not None
    assert "membership not found" in state.last_error
    assert state.last_error_class == "permanent"


def test_transient_failures_between_permanent_ones_do_not_count_toward_stuck() -> None:
    state = fresh()
    denied = ZitadelPermissionDenied("no", code="permission_denied")
    down = ZitadelUnavailable("down", code="unavailable")
    for exc in (denied, down, down, denied, down):
        record(state, exc, TARGET, NOW, BACKOFF)
    assert (state.failures, state.permanent_failures, state.stuck) == (5, 2, False)


def test_the_backoff_grows_to_its_cap() -> None:
    state = fresh(expires_in=timedelta(days=365))
    waits = [
        record(state, VaultUnavailable("sealed"), TARGET, NOW, BACKOFF).next_attempt_at - NOW  # type: ignore[operator]
        for _ in range(12)
    ]
    assert waits[0] <= timedelta(minutes=1)
    assert max(waits) <= timedelta(hours=1)
    assert waits[-1] >= timedelta(minutes=30)  # [cap/2, cap] once capped


@pytest.mark.parametrize("left", [timedelta(hours=3), timedelta(minutes=70), timedelta(minutes=61)])
def test_the_expiry_wins_over_the_backoff(left: timedelta) -> None:
    """However long the outage, the next attempt comes before the old
    credential's retire margin, with time to spare for more attempts."""
    policy = Policy(retire_margin=timedelta(hours=1))
    target = Target(name="b", user="s", kind=CredentialKind.KEY, vault_path="p", policy=policy)
    state = fresh(expires_in=left)
    deadline = NOW + left - policy.retire_margin
    for _ in range(20):  # long into the outage: the plain backoff would be an hour
        failure = record(
            state, ZitadelUnavailable("down", code="unavailable"), target, NOW, BACKOFF
        )
    assert failure.next_attempt_at is not None
    assert failure.next_attempt_at - NOW <= max((deadline - NOW) / 2, timedelta(seconds=30))


def test_a_success_clears_every_count() -> None:
    state = fresh()
    for _ in range(3):
        record(state, ZitadelNotFound("gone", code="not_found"), TARGET, NOW, BACKOFF)
    assert state.stuck
    assert clear(state)
    assert (state.failures, state.permanent_failures, state.stuck) == (0, 0, False)
    assert (state.last_error, state.next_attempt_at) == (None, None)
    assert not clear(state)


def test_a_changed_target_is_forgiven_its_failures() -> None:
    state = fresh()
    for _ in range(3):
        record(state, ZitadelNotFound("no user svc", code="not_found"), TARGET, NOW, BACKOFF)
    forgive_if_changed(state, TARGET)
    assert state.stuck  # same target: still stuck
    fixed = Target(
        name="billing", user="svc-fixed", kind=CredentialKind.KEY, vault_path="apps/billing"
    )
    forgive_if_changed(state, fixed)
    assert not state.stuck
    assert state.failures == 0
