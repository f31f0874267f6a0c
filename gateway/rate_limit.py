"""Rate limits per user and per facility, counted in the shared cache (Redis when
configured, so every gateway process counts together), in fixed windows."""

from __future__ import annotations

import math
import time
from typing import Final

from .cache import Cache
from .errors import TooManyRequests
from .tokens import Principal

WINDOW_SECONDS: Final = 60


class RateLimiter:
    def __init__(
        self, cache: Cache, *, per_user: int, per_facility: int, per_share: int = 0
    ) -> None:
        """Limits are requests per minute; 0 turns that limit off. A resident's share has
        its own (a phone stepping through a CT asks for dozens of images a second)."""
        self._cache = cache
        self._per_user = per_user
        self._per_facility = per_facility
        self._per_share = per_share

    async def check(self, p: Principal) -> None:
        """Count one request of ``p``; raise TooManyRequests when over a limit."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        limits: list[tuple[str, int, str]] = []
        per_user = self._per_share if p.subject.startswith("share:") else self._per_user
        if per_user:
            limits.append((f"rate:u:{p.subject}:{window}", per_user, "this user"))
        if self._per_facility and p.facility_id:
            key = f"rate:f:{p.facility_id}:{window}"
            limits.append((key, self._per_facility, p.facility_id))
        if not limits:
            return
        counts = await self._cache.incr_many([k for k, _, _ in limits], ttl=2 * WINDOW_SECONDS)
        for (_, limit, whom), n in zip(limits, counts, strict=True):
            if n > limit:
                raise TooManyRequests(
                    f"more than {limit} requests a minute from {whom}", retry_after=retry_after
                )
