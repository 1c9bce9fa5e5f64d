"""When things happen: pure functions over instants, no I/O.

ZITADEL's console sets a key's expiry to 00:00 of the chosen day ("a key
expires at midnight of that day"); the API stores whatever instant it is
given.  The rotator follows the console's convention so people reading the
console see the dates they expect, and stores the exact instant.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta

from rotator.model import Policy

_jitter = random.Random()  # noqa: S311 - jitter, not cryptography


def new_expiry(now: datetime, lifetime: timedelta) -> datetime:
    """00:00 UTC of the day ``lifetime`` ahead of ``now``.

    The credential therefore lives at most ``lifetime`` and at least
    ``lifetime - 1 day``.
    """
    day = (now.astimezone(UTC) + lifetime).date()
    return datetime.combine(day, time(0, 0), tzinfo=UTC)


def due_at(expires_at: datetime, policy: Policy) -> datetime:
    """When a credential expiring at ``expires_at`` should be replaced."""
    return expires_at - policy.renew_before


def safety_margin(policy: Policy) -> timedelta:
    """How long before expiry a rotation must start for the old credential to
    keep its full grace and still be retired ``retire_margin`` before expiry."""
    return policy.grace + policy.retire_margin


def retire_at(promoted_at: datetime, old_expires_at: datetime, policy: Policy) -> datetime:
    """When the previous credential is removed from ZITADEL.

    After ``grace`` so consumers can pick up the new one, but always at least
    ``retire_margin`` before the old credential's own expiry: an expired key
    left in ZITADEL is clutter an operator has to clean up by hand.  Never
    earlier than the promotion itself.
    """
    latest = old_expires_at - policy.retire_margin
    return max(promoted_at, min(promoted_at + policy.grace, latest))


def retry_delay(
    failures: int,
    *,
    base: timedelta,
    cap: timedelta,
    rng: random.Random | None = None,
) -> timedelta:
    """Exponential backoff with full jitter in [delay/2, delay] (failures >= 1)."""
    exponent = min(max(0, failures - 1), 30)
    delay = min(cap, base * (1 << exponent))
    fraction: float = 0.5 + (rng or _jitter).random() / 2
    return delay * fraction

