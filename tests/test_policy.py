"""When credentials expire, fall due and retire: the pure rules."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from rotator import policy as rules
from rotator.model import Policy

D = timedelta(days=1)
H = timedelta(hours=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("now", "lifetime", "expected"),
    [
        ("2026-11-23T18:00:00+00:00", 30 * D, "2026-12-23T00:00:00+00:00"),
        ("2026-11-23T00:00:00+00:00", 30 * D, "2026-12-23T00:00:00+00:00"),
        ("2026-11-23T23:59:59+00:00", 2 * D, "2026-11-25T00:00:00+00:00"),
        # a local evening that is already tomorrow in UTC counts in UTC
        ("2026-11-23T23:30:00-02:00", 1 * D, "2026-11-25T00:00:00+00:00"),
        ("2026-12-31T12:00:00+00:00", 1 * D, "2027-01-01T00:00:00+00:00"),
    ],
)
def test_new_credentials_expire_at_midnight_utc_of_the_day_lifetime_ahead(
    now: str, lifetime: timedelta, expected: str
) -> None:
    expiry = rules.new_expiry(at(now), lifetime)
    assert expiry == at(expected)
    assert expiry.tzinfo is not None
    assert (expiry.hour, expiry.minute, expiry.second, expiry.microsecond) == (0, 0, 0, 0)
    assert lifetime - D < expiry - at(now) <= lifetime


def test_a_credential_is_due_renew_before_its_expiry() -> None:
    policy = Policy(renew_before=10 * D)
    assert rules.due_at(at("2026-12-23T00:00:00+00:00"), policy) == at("2026-12-13T00:00:00+00:00")


def test_the_old_credential_retires_after_grace() -> None:
    policy = Policy(grace=1 * D, retire_margin=H)
    promoted = at("2026-12-13T00:00:00+00:00")
    assert rules.retire_at(promoted, at("2026-12-23T00:00:00+00:00"), policy) == promoted + D


def test_retirement_is_always_before_the_old_expiry_even_with_a_long_grace() -> None:
    policy = Policy(grace=5 * D, retire_margin=H)
    promoted = at("2026-12-21T00:00:00+00:00")
    old_expiry = at("2026-12-23T00:00:00+00:00")
    assert rules.retire_at(promoted, old_expiry, policy) == old_expiry - H


def test_an_already_expired_old_credential_retires_at_once() -> None:
    policy = Policy(grace=D, retire_margin=H)
    promoted = at("2026-12-24T00:00:00+00:00")
    assert rules.retire_at(promoted, at("2026-12-23T00:00:00+00:00"), policy) == promoted


def test_retry_delay_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    base, cap = timedelta(minutes=1), timedelta(hours=1)
    delays = [rules.retry_delay(n, base=base, cap=cap, rng=rng) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(cap, base * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] <= cap

