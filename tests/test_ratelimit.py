"""The shared request budget: a token bucket that backs off when ZITADEL throttles."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from rotator import fence
from rotator.errors import ClaimLapsed, ZitadelNotFound, ZitadelUnavailable
from rotator.ratelimit import RateLimiter, further_request
from rotator.zitadel.v2 import _paginate


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float | None, burst: int | None = None) -> tuple[RateLimiter, FakeTime]:
    t = FakeTime()
    return RateLimiter(rate, burst=burst, clock=t.clock, sleep=t.sleep), t


def test_the_bucket_lets_a_burst_through_then_paces_at_the_rate() -> None:
    bucket, t = limiter(40, burst=10)
    for _ in range(10):
        bucket.acquire()
    assert t.now == 0.0
    for _ in range(400):
        bucket.acquire()
    assert t.now == pytest.approx(400 / 40, rel=0.01)  # 400 more at 40/s


def test_a_throttled_answer_halves_the_rate_and_is_retried_not_raised() -> None:
    bucket, _t = limiter(40)
    answers = iter([ZitadelUnavailable("quota", code="resource_exhausted"), "ok"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    assert bucket.call(call) == "ok"
    assert bucket.throttled == 1
    assert bucket.rate < 40
    # answered calls bring it back up to the configured rate, not beyond
    for _ in range(10_000):
        bucket.call(lambda: None)
    assert bucket.rate == 40


def test_without_a_configured_rate_it_only_slows_down_when_throttled() -> None:
    bucket, t = limiter(None)
    for _ in range(1000):
        bucket.acquire()
    assert t.now == 0.0
    bucket.throttled_by_server()
    assert bucket.rate < 1_000_000


def test_other_errors_pass_through_at_once() -> None:
    bucket, _ = limiter(10)
    calls = 0

    def missing() -> None:
        nonlocal calls
        calls += 1
        raise ZitadelNotFound("gone", code="not_found")

    with pytest.raises(ZitadelNotFound):
        bucket.call(missing)
    down = ZitadelUnavailable("down", code="unavailable")
    with pytest.raises(ZitadelUnavailable):
        bucket.call(lambda: (_ for _ in ()).throw(down))
    assert calls == 1


def test_threads_share_one_budget() -> None:
    bucket = RateLimiter(200, burst=1)
    done: list[float] = []
    import time

    start = time.monotonic()

    def worker() -> None:
        for _ in range(25):
            bucket.acquire()
        done.append(time.monotonic() - start)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert max(done) >= 99 / 200 * 0.9  # 100 requests at 200/s: about half a second


def test_throttled_answers_to_calls_already_in_flight_cut_the_rate_once() -> None:
    bucket, t = limiter(40)
    for _ in range(16):  # sixteen workers' calls, all answered 429 at once
        bucket.throttled_by_server()
    assert bucket.throttled == 16
    assert bucket.rate == 20
    t.now += 1.0  # a second later the server still throttles: that is news
    bucket.throttled_by_server()
    assert bucket.rate == 10


def test_without_a_configured_rate_a_429_halves_the_rate_measured_over_the_last_second() -> None:
    bucket, t = limiter(None)
    for _ in range(120):  # 120 calls in 2 s: 60 in the last second
        bucket.acquire()
        t.now += 2 / 120
    bucket.throttled_by_server()
    assert bucket.rate == pytest.approx(30, abs=1)


def test_by_default_no_one_second_window_sees_more_than_a_quarter_above_the_rate() -> None:
    bucket, t = limiter(40)
    sent: list[float] = []
    for _ in range(200):
        bucket.acquire()
        sent.append(t.now)
    busiest = max(sum(1 for s in sent if start <= s < start + 1.0) for start in sent)
    assert busiest <= 40 * 1.25  # ZITADEL's own window, e.g. 50/s, is not crossed at 40
    assert bucket.burst == 10


def test_a_call_that_waited_past_its_claim_is_not_sent() -> None:
    bucket, t = limiter(1, burst=1)
    start = datetime(2026, 12, 1, tzinfo=UTC)

    def now() -> datetime:
        return start + timedelta(seconds=t.now)

    sent: list[str] = []
    with fence.guard(start + timedelta(seconds=1.5), now, "regenerating a secret"):
        bucket.call(lambda: sent.append("first"))  # the burst: sent at once
        bucket.call(lambda: sent.append("second"))  # waited 1 s: still within the claim
        with pytest.raises(ClaimLapsed, match="regenerating a secret: not sent"):
            bucket.call(lambda: sent.append("third"))  # would leave at 2 s
    bucket.call(lambda: sent.append("unguarded"))
    assert sent == ["first", "second", "unguarded"]


class _Counting(RateLimiter):
    def __init__(self) -> None:
        super().__init__(1000, burst=1000)
        self.taken = 0
        self._count_lock = threading.Lock()

    def acquire(self) -> None:
        with self._count_lock:
            self.taken += 1
        super().acquire()


def test_every_page_of_a_listing_takes_a_token_whichever_thread_fetches_it() -> None:
    items = list(range(4500))

    def page(offset: int) -> tuple[list[int], int | None]:
        return items[offset : offset + 1000], len(items)

    bucket = _Counting()
    # five pages: the first on the call's own token, four fetched side by side
    assert bucket.call(lambda: list(_paginate(page, 1000))) == items
    assert bucket.taken == 5
    further_request()  # outside a limited call: no budget to take from
    assert bucket.taken == 5


def test_a_claim_that_lapses_after_a_throttled_attempt_reports_the_throttled_answer() -> None:
    # ZITADEL may have carried out what it answered 429: the caller must not
    # take the lapsed claim for "nothing was sent"
    bucket, t = limiter(1, burst=1)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    sent: list[int] = []

    def regenerate() -> None:
        sent.append(1)
        raise ZitadelUnavailable("quota", code="resource_exhausted")

    with (
        fence.guard(start + timedelta(seconds=0.5), lambda: start + timedelta(seconds=t.now),
                    "regenerating a secret"),
        pytest.raises(ZitadelUnavailable) as raised,
    ):
        bucket.call(regenerate)  # throttled, then the wait for a token outlasts the claim
    assert raised.value.code == "resource_exhausted"
    assert sent == [1]
