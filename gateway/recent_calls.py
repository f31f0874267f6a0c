"""Calls to each facility over the last minutes, and how many failed: the error rate an
operator reads on the console is about now, not about everything since the process started
(a facility that failed all morning and recovered at noon is healthy at one o'clock).

Counted in one-minute buckets per facility, so recording is O(1) and memory is bounded by
the window whatever the traffic. Per process: each gateway process counts its own calls.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

BUCKET_SECONDS: Final = 60


#: The console's error-rate column says "15 min" (gateway/console_views.py).
WINDOW_SECONDS: Final = 900.0


class RecentCalls:
    def __init__(
        self, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self._clock = clock
        # facility -> [bucket number, calls, failures], oldest first
        self._buckets: dict[str, deque[list[int]]] = {}

    def record(self, facility_id: str, ok: bool) -> None:
        now = int(self._clock() // BUCKET_SECONDS)
        buckets = self._buckets.setdefault(facility_id, deque())
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, 0, 0])
            self._forget(buckets, now)
        buckets[-1][1] += 1
        if not ok:
            buckets[-1][2] += 1

    def counts(self) -> dict[str, tuple[int, int]]:
        """(calls, failures) of each facility called within the window."""
        now = int(self._clock() // BUCKET_SECONDS)
        out = {}
        for fid, buckets in self._buckets.items():
            self._forget(buckets, now)
            calls = sum(b[1] for b in buckets)
            if calls:
                out[fid] = (calls, sum(b[2] for b in buckets))
        return out

    def _forget(self, buckets: deque[list[int]], now: int) -> None:
        # The current minute counts whole; the window reaches back over full minutes before it.
        oldest = now - int(self.window // BUCKET_SECONDS) + 1
        while buckets and buckets[0][0] < oldest:
            buckets.popleft()
