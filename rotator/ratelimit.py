"""One request budget for every call to ZITADEL, shared by all threads.

ZITADEL Cloud allows 50 requests/s per client IP and bans the IP for a
minute when that is exceeded for long (``shared/zitadel-api.md`` §13);
self-hosted instances may have quotas.  :class:`RateLimiter` is a token
bucket (``rate`` per second, ``burst`` at once: a quarter of a second's worth
unless configured, so no one-second window sees more than ``1.25 x rate``)
that also slows down by itself: a 429 / ``RESOURCE_EXHAUSTED`` halves the rate
it allows, and every call answered since creeps it back up (additive
increase, multiplicative decrease, as TCP does).  Without a configured rate
it only does the latter: the first 429 halves the rate it measured over the
last second.  The answers to calls that were already sent when the rate was
cut halve nothing more (for a second): a burst of throttled answers to
sixteen calls in flight is one signal, not sixteen.

:class:`LimitedTransport` puts every call of a ZITADEL transport through it
(a listing's every page: :func:`further_request`) and retries a throttled
call after the bucket allows it again, so a 429 is never a target failure.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar, cast

from rotator import fence
from rotator.errors import ClaimLapsed, ZitadelUnavailable
from rotator.model import Credential, CredentialKind, IssuedPat, IssuedSecret, User
from rotator.ports import InventoryTransport, ZitadelTransport

T = TypeVar("T")

#: With no configured rate, the limiter lets everything through until ZITADEL throttles.
UNLIMITED = 1_000_000.0
#: The lowest rate a run of throttled answers can push it to.
_FLOOR = 0.5
#: Throttled answers retried at most this often per call.
_THROTTLE_RETRIES = 8
#: The window over which the sending rate is measured, and after a cut in
#: which further throttled answers (to calls sent before it) cut nothing.
_WINDOW = 1.0


class RateLimiter:
    def __init__(
        self,
        rate: float | None = None,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = rate or UNLIMITED
        self.burst = float(burst or max(1, round(rate / 4)) if rate else 1_000)
        self._rate = self.limit
        self._tokens = self.burst
        self._clock, self._sleep = clock, sleep
        self._stamp = clock()
        self._lock = threading.Lock()
        #: When the calls of the last ``_WINDOW`` were let through.
        self._sent: deque[float] = deque()
        self._calm_until = float("-inf")
        #: How many calls were throttled by ZITADEL, and how long callers waited here.
        self.throttled = 0
        self.waited = 0.0

    @property
    def rate(self) -> float:
        """The rate allowed now (below ``limit`` after throttled answers)."""
        return self._rate

    def acquire(self) -> None:
        """Block until one request may go out."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1 - 1e-9:  # float dust must not make a caller spin
                    self._tokens -= 1
                    self._sent.append(now)
                    while self._sent[0] <= now - _WINDOW:
                        self._sent.popleft()
                    return
                wait = max((1 - self._tokens) / self._rate, 1e-6)
            self.waited += wait
            self._sleep(wait)

    def throttled_by_server(self) -> None:
        """ZITADEL answered 429: halve the rate and drain the bucket (once per
        window: later answers were sent before the cut)."""
        with self._lock:
            self.throttled += 1
            now = self._clock()
            if now < self._calm_until:
                return
            while self._sent and self._sent[0] <= now - _WINDOW:
                self._sent.popleft()
            # what was really sent, when that is less than the allowed rate (no limit set)
            sending = min(self._rate, self.limit, float(len(self._sent) or self._rate))
            self._rate = max(_FLOOR, sending / 2)
            self._tokens = min(self._tokens, 0.0)
            self._calm_until = now + _WINDOW

    def answered(self) -> None:
        """A call went through: creep back towards the configured rate."""
        if self._rate < self.limit:
            with self._lock:
                self._rate = min(self.limit, self._rate + max(0.05, self._rate / 50))

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` within the budget; a throttled answer is retried, not raised.
        Requests ``fn`` makes beyond its first take a token each too
        (:func:`further_request`)."""
        throttled: ZitadelUnavailable | None = None
        for attempt in range(_THROTTLE_RETRIES + 1):
            self.acquire()
            gate = None
            try:
                fence.check()  # the wait may have outlasted the rotation's claim
                gate = _further.set(self.acquire)
                result = fn()
            except ClaimLapsed:
                if throttled is not None:
                    # Not "nothing was sent": ZITADEL may have carried out the
                    # attempt it answered 429 (a regeneration then killed the old
                    # secret).  Report that answer, as for any lost one.
                    raise throttled from None
                raise
            except ZitadelUnavailable as exc:
                if exc.code != "resource_exhausted" or attempt == _THROTTLE_RETRIES:
                    raise
                self.throttled_by_server()
                throttled = exc
                continue
            finally:
                if gate is not None:
                    _further.reset(gate)
            self.answered()
            return result
        raise AssertionError("unreachable")  # pragma: no cover


#: While a limited call runs: how a further request of it waits for its token.
_further: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "rotator_ratelimit_further", default=None
)


def further_request() -> None:
    """A transport calls this before each request of one call beyond its first
    (a listing's second and later pages, from any thread that copied the
    caller's context): within a :meth:`RateLimiter.call` it waits for a token."""
    acquire = _further.get()
    if acquire is not None:
        acquire()


class LimitedTransport:
    """A :class:`~rotator.ports.ZitadelTransport` whose every call goes through
    one :class:`RateLimiter`."""

    def __init__(self, inner: ZitadelTransport, limiter: RateLimiter) -> None:
        self.inner, self.limiter = inner, limiter
        self.api = inner.api

    def resolve_user(self, user: str, org_id: str | None = None) -> User:
        return self.limiter.call(lambda: self.inner.resolve_user(user, org_id))

    def add_key(self, user: User, public_key_pem: bytes, expires_at: datetime) -> Credential:
        return self.limiter.call(lambda: self.inner.add_key(user, public_key_pem, expires_at))

    def list_keys(self, user: User) -> list[Credential]:
        return self.limiter.call(lambda: self.inner.list_keys(user))

    def remove_key(self, user: User, key_id: str) -> None:
        self.limiter.call(lambda: self.inner.remove_key(user, key_id))

    def add_pat(self, user: User, expires_at: datetime) -> IssuedPat:
        return self.limiter.call(lambda: self.inner.add_pat(user, expires_at))

    def list_pats(self, user: User) -> list[Credential]:
        return self.limiter.call(lambda: self.inner.list_pats(user))

    def remove_pat(self, user: User, pat_id: str) -> None:
        self.limiter.call(lambda: self.inner.remove_pat(user, pat_id))

    def add_secret(self, user: User) -> IssuedSecret:
        return self.limiter.call(lambda: self.inner.add_secret(user))

    def remove_secret(self, user: User) -> bool:
        return self.limiter.call(lambda: self.inner.remove_secret(user))

    def list_org_credentials(self, kind: CredentialKind, org_id: str) -> list[Credential] | None:
        return self.limiter.call(lambda: self.inner.list_org_credentials(kind, org_id))

    def list_machine_users(self, org_id: str | None) -> list[User]:
        return self.limiter.call(lambda: _inventory(self.inner).list_machine_users(org_id))

    def org_has_readable_users(self, org_id: str) -> bool:
        return self.limiter.call(lambda: _inventory(self.inner).org_has_readable_users(org_id))

    def close(self) -> None:
        self.inner.close()


def _inventory(transport: ZitadelTransport) -> InventoryTransport:
    """The inner transport's inventory listings (both real transports have them)."""
    if not hasattr(transport, "list_machine_users"):
        raise TypeError(f"{type(transport).__name__} cannot list machine users")
    return cast("InventoryTransport", transport)
