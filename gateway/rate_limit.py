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
    def __init__(self, cache: Cache, *, per_user: int, per_facility: int) -> None:
        """Limits are requests per minute; 0 turns that limit off."""
        self._cache = cache
        self._per_user = per_user
        self._per_facility = per_facility

    async def check(self, p: Principal) -> None:
        """Count one request of ``p``; raise TooManyRequests when over a limit."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        if self._per_user:
            n = await self._cache.incr(f"rate:u:{p.subject}:{window}", ttl=2 * WINDOW_SECONDS)
            if n > self._per_user:
                raise TooManyRequests(
                    f"more than {self._per_user} requests a minute from this user",
                    retry_after=retry_after,
                )
        if self._per_facility and p.facility_id:
            key = f"rate:f:{p.facility_id}:{window}"
            n = await self._cache.incr(key, ttl=2 * WINDOW_SECONDS)
            if n > self._per_facility:
                raise TooManyRequests(
                    f"more than {self._per_facility} requests a minute from {p.facility_id}",
                    retry_after=retry_after,
                )
