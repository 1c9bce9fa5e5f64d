"""A claim's deadline, enforced at the last moment before a request leaves.

An intent in the state gives its owner the target until a deadline; after it,
another rotator may take the rotation over.  A client secret is regenerated in
place and ZITADEL's ``AddSecret`` takes no precondition, so a regeneration sent
*after* our claim lapsed can land after the new owner's and silently replace
the secret it stored and promoted.  Waits sit between the engine and the wire
(the rate limiter, throttled retries, a token exchange), so checking the
deadline in the engine is not enough: :func:`guard` records it for the calls
the engine makes, and the transport layer calls :func:`check` right before
each request goes out.  Outside a guard, :func:`check` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from rotator.errors import ClaimLapsed


@dataclass(frozen=True)
class _Fence:
    send_before: datetime
    now: Callable[[], datetime]
    what: str


_current: ContextVar[_Fence | None] = ContextVar("rotator_fence", default=None)


@contextmanager
def guard(send_before: datetime, now: Callable[[], datetime], what: str) -> Iterator[None]:
    """Within the block, no ZITADEL request leaves at or after ``send_before``."""
    token = _current.set(_Fence(send_before, now, what))
    try:
        yield
    finally:
        _current.reset(token)


def check() -> None:
    """Raise ClaimLapsed if the guard in force forbids sending now."""
    fence = _current.get()
    if fence is not None and fence.now() >= fence.send_before:
        raise ClaimLapsed(
            f"{fence.what}: not sent, the claim on the rotation lapsed at "
            f"{fence.send_before.isoformat()} (another rotator may have taken it over); "
            "the next attempt starts it again"
        )
