"""The dispatcher: targets run at their time on a bounded pool, due ones before the pass,
never two runs of one target at once."""

from __future__ import annotations

import threading
import time
from collections import Counter

from rotator.dispatch import Dispatcher


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_due_target_runs_before_a_long_pass() -> None:
    order: list[str] = []
    gate = threading.Event()

    def job(name: str) -> float | None:
        if name == "first":
            gate.wait()
        order.append(name)
        return None

    d = Dispatcher(job, workers=1)
    d.start()
    try:
        d.at("first", 0)
        wait_for(lambda: d.pending == 0)  # "first" is running, holding the only worker
        d.add_pass([f"idle-{i}" for i in range(1000)])
        d.at("urgent", 0)
        gate.set()
        wait_for(lambda: len(order) == 1002)
    finally:
        d.stop()
    assert order[:2] == ["first", "urgent"]


def test_a_target_never_runs_twice_at_once_and_reruns_when_asked_meanwhile() -> None:
    running: Counter[str] = Counter()
    overlap: list[str] = []
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    release = threading.Event()

    def job(name: str) -> float | None:
        with lock:
            running[name] += 1
            if running[name] > 1:
                overlap.append(name)
        if runs[name] == 0:
            release.wait()
        time.sleep(0.01)
        with lock:
            running[name] -= 1
            runs[name] += 1
        return None

    d = Dispatcher(job, workers=4)
    d.start()
    try:
        d.at("a", 0)
        wait_for(lambda: running["a"] == 1)
        d.at("a", 0)  # due again while it runs
        d.add_pass(["a", "b"])
        time.sleep(0.05)
        assert runs["a"] == 0
        release.set()
        wait_for(lambda: runs["a"] == 2 and runs["b"] == 1)
    finally:
        d.stop()
    assert overlap == []


def test_the_returned_delay_schedules_the_next_run() -> None:
    times: list[float] = []

    def job(name: str) -> float | None:
        times.append(time.monotonic())
        return 0.1 if len(times) < 3 else None

    d = Dispatcher(job, workers=2)
    d.start()
    try:
        d.at("t", 0)
        wait_for(lambda: len(times) == 3)
        assert d.scheduled("t") is None
    finally:
        d.stop()
    assert times[1] - times[0] >= 0.09
    assert times[2] - times[1] >= 0.09


def test_the_pass_reports_when_it_is_through() -> None:
    done = threading.Event()
    seen: list[str] = []
    d = Dispatcher(lambda name: seen.append(name) and None, workers=3)
    d.start()
    try:
        d.add_pass([f"t{i}" for i in range(50)], on_done=done.set)
        assert done.wait(5)
    finally:
        d.stop()
    assert sorted(seen) == sorted(f"t{i}" for i in range(50))


def test_a_job_that_raises_does_not_kill_its_worker() -> None:
    seen: list[str] = []

    def job(name: str) -> float | None:
        seen.append(name)
        if name == "bad":
            raise RuntimeError("bug")
        return None

    d = Dispatcher(job, workers=1)
    d.start()
    try:
        d.at("bad", 0)
        d.at("good", 0.01)
        wait_for(lambda: "good" in seen)
    finally:
        d.stop()
