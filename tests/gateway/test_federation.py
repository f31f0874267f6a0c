"""The fan-out engine on its own: deadlines, outcomes and breakers, with in-process calls."""

from __future__ import annotations

import asyncio
import time

from adapters.errors import UpstreamProtocolError, UpstreamUnavailable
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.federation import Federation, FederationPolicy, OutcomeStatus
from tests.fake_clock import Clock


def test_breaker_opens_after_threshold_and_half_opens_after_reset() -> None:
    """Closed until N consecutive failures, open for reset_after, then one trial at a time."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_after=10, clock=clock)
    for _ in range(2):
        b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    # mypy keeps the CLOSED narrowing across record_failure(): the check is real.
    assert b.state is BreakerState.OPEN and not b.allow()  # type: ignore[comparison-overlap]
    clock.now += 10
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow()  # one trial only
    b.record_failure()
    assert b.state is BreakerState.OPEN  # the trial failed: open again, timer restarted
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.failures == 0


def test_success_resets_the_failure_count() -> None:
    """Failures must be consecutive to open the breaker."""
    b = CircuitBreaker(failure_threshold=2, reset_after=10, clock=Clock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is BreakerState.CLOSED


async def test_fan_out_reports_every_kind_of_outcome_within_the_deadline() -> None:
    """ok, timeout, error (upstream and adapter bug) each reported; the slow one is cut off."""
    fed = Federation(FederationPolicy(deadline=0.3))

    async def call(fid: str) -> list[str]:
        if fid == "slow":
            await asyncio.sleep(5)
        if fid == "down":
            raise UpstreamUnavailable("cannot connect")
        if fid == "garbage":
            raise UpstreamProtocolError("answer is not JSON")
        if fid == "bug":
            raise KeyError("oops")
        return [f"{fid}-1", f"{fid}-2"]

    start = time.monotonic()
    result = await fed.fan_out(["a", "slow", "down", "garbage", "bug", "b"], call)
    elapsed = time.monotonic() - start
    assert elapsed < 0.5
    status = {fid: o.status for fid, o in result.outcomes.items()}
    assert status == {
        "a": OutcomeStatus.OK,
        "slow": OutcomeStatus.TIMEOUT,
        "down": OutcomeStatus.ERROR,
        "garbage": OutcomeStatus.ERROR,
        "bug": OutcomeStatus.ERROR,
        "b": OutcomeStatus.OK,
    }
    assert [item for _, item in result.items] == ["a-1", "a-2", "b-1", "b-2"]
    assert result.outcomes["down"].detail == "cannot connect"
    assert result.outcomes["bug"].detail == "internal error (KeyError)"
    assert not result.complete and len(result.failures) == 4


async def test_open_breaker_skips_the_facility_without_calling_it() -> None:
    """After threshold failures the facility is skipped, costing no call and no time."""
    fed = Federation(FederationPolicy(deadline=1, failure_threshold=2, reset_after=60))
    calls: list[str] = []

    async def call(fid: str) -> list[int]:
        calls.append(fid)
        raise UpstreamUnavailable("refused")

    for _ in range(2):
        await fed.fan_out(["dead"], call)
    result = await fed.fan_out(["dead"], call)
    assert calls == ["dead", "dead"]
    assert result.outcomes["dead"].status is OutcomeStatus.SKIPPED
    assert result.outcomes["dead"].elapsed_ms == 0


async def test_concurrency_cap_is_respected() -> None:
    """No more than `concurrency` upstream calls are in flight at once."""
    fed = Federation(FederationPolicy(deadline=5, concurrency=3))
    in_flight = peak = 0

    async def call(fid: str) -> list[str]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return [fid]

    result = await fed.fan_out([f"F{i:03d}" for i in range(20)], call)
    assert peak == 3
    assert len(result.items) == 20
