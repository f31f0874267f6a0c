"""Reachability of every facility, probed in the background for /readyz.

Probes go through a federation engine of their own, so they keep testing a facility whose
breaker the query path has opened (that is how recovery is noticed) and never count against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from .federation import Federation, FederationPolicy, OutcomeStatus
from .metrics import FACILITY_REACHABLE
from .registry import Registry
from .upstreams import Upstreams

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reachability:
    reachable: bool
    latency_ms: float
    detail: str | None
    checked_at: float


class Prober:
    def __init__(self, registry: Registry, upstreams: Upstreams, *, deadline: float = 3.0) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.deadline = deadline
        self.state: dict[str, Reachability] = {}
        # A breaker that never opens: the prober must always ask.
        self._federation = Federation(
            FederationPolicy(deadline=deadline, failure_threshold=1 << 30)
        )

    async def probe(self) -> dict[str, Reachability]:
        async def ping(fid: str) -> list[None]:
            await self.upstreams.imaging(fid).ping()
            lab = self.upstreams.lab(fid)
            if lab is not None:
                await lab.ping()
            return []

        result = await self._federation.fan_out(
            [f.id for f in self.registry], ping, deadline=self.deadline, operation="probe"
        )
        now = time.time()
        for fid, outcome in result.outcomes.items():
            ok = outcome.status is OutcomeStatus.OK
            self.state[fid] = Reachability(ok, outcome.elapsed_ms, outcome.detail, now)
            FACILITY_REACHABLE.labels(fid).set(1 if ok else 0)
        return self.state

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await self.probe()

    def report(self) -> dict[str, object]:
        """The /readyz body (DESIGN.md contract table)."""
        facilities = []
        for f in self.registry:
            r = self.state.get(f.id)
            entry: dict[str, object] = {
                "id": f.id,
                "name": f.name_zh,
                "reachable": bool(r and r.reachable),
            }
            if r is not None:
                entry["latency_ms"] = round(r.latency_ms, 1)
                if r.detail:
                    entry["detail"] = r.detail
            facilities.append(entry)
        all_ok = all(e["reachable"] for e in facilities)
        return {
            "status": "ready" if all_ok else "degraded",
            "reachable": sum(1 for e in facilities if e["reachable"]),
            "total": len(facilities),
            "facilities": facilities,
        }
