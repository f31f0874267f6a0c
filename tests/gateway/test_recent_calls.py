"""The console's error rates: calls and failures of the last minutes, by facility."""

from __future__ import annotations

from gateway.recent_calls import BUCKET_SECONDS, RecentCalls
from tests.fake_clock import Clock


def test_counts_calls_and_failures_by_facility() -> None:
    recent = RecentCalls(window=900, clock=Clock())
    for ok in (True, True, False, True):
        recent.record("F001", ok)
    recent.record("F002", False)
    assert recent.counts() == {"F001": (4, 1), "F002": (1, 1)}


def test_calls_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    recent = RecentCalls(window=15 * BUCKET_SECONDS, clock=clock)
    recent.record("F001", False)  # failed in the morning
    clock.now += 10 * BUCKET_SECONDS
    recent.record("F001", True)
    assert recent.counts() == {"F001": (2, 1)}
    clock.now += 6 * BUCKET_SECONDS  # the failure is now 16 minutes old
    assert recent.counts() == {"F001": (1, 0)}
    recent.record("F001", True)
    assert recent.counts() == {"F001": (2, 0)}
    clock.now += 15 * BUCKET_SECONDS
    assert recent.counts() == {}  # nothing called lately: no rate, not 0%


def test_memory_is_bounded_by_the_window_whatever_the_traffic() -> None:
    clock = Clock()
    recent = RecentCalls(window=5 * BUCKET_SECONDS, clock=clock)
    for _ in range(1000):
        recent.record("F001", True)
        clock.now += 7.0
    assert len(recent._buckets["F001"]) <= 5
    calls, failures = recent.counts()["F001"]
    assert failures == 0 and 0 < calls <= 5 * BUCKET_SECONDS / 7 + 1
