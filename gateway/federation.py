"""Fan one query out to many facilities: a concurrency cap, a deadline, a breaker each.

Every facility asked gets an outcome (ok, timeout, error, skipped) returned beside the merged
results, so a face can say which facilities did not answer instead of giving a silently short
answer. One slow or dead facility never stalls the rest: each call is bounded by the deadline
of the whole fan-out, and a facility whose breaker is open is not called at all.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from adapters.errors import UpstreamError

from .breaker import BreakerState, CircuitBreaker
from .metrics import UPSTREAM_CALLS, UPSTREAM_SECONDS, set_breaker_state
from .recent_calls import RecentCalls

log = logging.getLogger(__name__)

T = TypeVar("T")


class OutcomeStatus(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Outcome:
    facility_id: str
    status: OutcomeStatus
    elapsed_ms: float
    detail: str | None = None
    count: int = 0

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "facility": self.facility_id,
            "status": self.status.value,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }
        if self.status is OutcomeStatus.OK:
            out["count"] = self.count
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(slots=True)
class FederatedResult(Generic[T]):
    items: list[tuple[str, T]] = field(default_factory=list)  # (facility_id, item)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status is not OutcomeStatus.OK]

    @property
    def complete(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class FederationPolicy:
    """Tunables; see `gateway.config.Settings` for where each comes from."""

    deadline: float = 2.0  # seconds for the whole fan-out
    concurrency: int = 64  # upstream calls in flight at once
    failure_threshold: int = 3  # consecutive failures that open a breaker
    reset_after: float = 15.0  # seconds an open breaker waits before one trial


Call = Callable[[str], Awaitable[Sequence[T]]]


class Federation:
    """The fan-out engine; one per gateway process, shared by both faces."""

    def __init__(self, policy: FederationPolicy | None = None) -> None:
        self.policy = policy or FederationPolicy()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._slots = asyncio.Semaphore(self.policy.concurrency)
        #: Calls and failures of the last minutes, by facility (the console's error rates).
        self.recent = RecentCalls()

    def breaker(self, facility_id: str) -> CircuitBreaker:
        b = self._breakers.get(facility_id)
        if b is None:
            b = CircuitBreaker(self.policy.failure_threshold, self.policy.reset_after)
            self._breakers[facility_id] = b
        return b

    def breaker_states(self) -> dict[str, BreakerState]:
        return {fid: b.state for fid, b in self._breakers.items()}

    async def fan_out(
        self,
        facility_ids: Iterable[str],
        call: Call[T],
        *,
        deadline: float | None = None,
        operation: str = "query",
    ) -> FederatedResult[T]:
        """Run ``call(facility_id)`` for each facility; never raises for an upstream's sake."""
        budget = self.policy.deadline if deadline is None else deadline
        expires = time.monotonic() + budget
        result: FederatedResult[T] = FederatedResult()
        ids = list(dict.fromkeys(facility_ids))
        async with asyncio.TaskGroup() as tg:
            for fid in ids:
                tg.create_task(self._one(fid, call, expires, operation, result))
        # Keep the answer's order stable: registry order, whatever order facilities answered in.
        order = {fid: i for i, fid in enumerate(ids)}
        result.items.sort(key=lambda pair: order[pair[0]])
        result.outcomes = {fid: result.outcomes[fid] for fid in ids}
        return result

    async def _one(
        self, fid: str, call: Call[T], expires: float, operation: str, result: FederatedResult[T]
    ) -> None:
        breaker = self.breaker(fid)
        start = time.monotonic()
        if not breaker.allow():
            result.outcomes[fid] = Outcome(fid, OutcomeStatus.SKIPPED, 0.0, "circuit breaker open")
            UPSTREAM_CALLS.labels(fid, operation, "skipped").inc()
            return
        status, detail = OutcomeStatus.OK, None
        items: Sequence[T] = ()
        try:
            async with asyncio.timeout_at(_loop_time(expires)):
                async with self._slots:
                    items = await call(fid)
        except TimeoutError:
            status, detail = OutcomeStatus.TIMEOUT, "no answer within the deadline"
        except UpstreamError as exc:
            status, detail = OutcomeStatus.ERROR, exc.detail
        except Exception as exc:  # an adapter bug must not sink the whole fan-out
            log.exception("adapter failed", extra={"facility": fid, "operation": operation})
            status, detail = OutcomeStatus.ERROR, f"internal error ({type(exc).__name__})"
        elapsed = time.monotonic() - start
        if status is OutcomeStatus.OK:
            breaker.record_success()
            result.items.extend((fid, item) for item in items)
        else:
            breaker.record_failure()
        set_breaker_state(fid, breaker.state.value)
        self.recent.record(fid, status is OutcomeStatus.OK)
        UPSTREAM_CALLS.labels(fid, operation, status.value).inc()
        UPSTREAM_SECONDS.labels(operation).observe(elapsed)
        result.outcomes[fid] = Outcome(fid, status, elapsed * 1000, detail, len(items))


def _loop_time(monotonic_deadline: float) -> float:
    """Translate a time.monotonic() instant to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
