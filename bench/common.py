"""What the benchmarks share: timing HTTP queries, percentiles, process CPU and memory."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path

import aiohttp

#: The federated study search every benchmark times: a date range, so every facility answers.
QUERY = {"StudyDate": "20240101-20261231", "limit": "1000"}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def service_headers(data_dir: Path) -> dict[str, str]:
    """A backend service's bearer token (SMART system scopes) for a gateway on ``data_dir``:
    the benchmarks measure the search, not who may see it."""
    from gateway.tokens import dev_keys, mint

    pem, jwks = dev_keys(data_dir)
    token = mint(pem, jwks["keys"][0]["kid"], subject="bench", role="service")
    return {"Authorization": f"Bearer {token}"}


#: What every benchmark's gateway runs with: answers come from the facilities each time.
BENCH_ENV = {"HUREN_QUERY_CACHE_TTL": "0"}


async def timed_queries(
    url: str,
    n: int,
    *,
    concurrency: int = 1,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[list[float], int, str]:
    """Run n searches; return latencies (ms), studies in the last answer, and its Warning."""
    latencies: list[float] = []
    last_count, warning = 0, ""
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> None:
            nonlocal last_count, warning
            t = time.perf_counter()
            async with session.get(url, params=QUERY if params is None else params) as resp:
                body = await resp.read()
                assert resp.status == 200, (resp.status, body[:200])
                warning = resp.headers.get("Warning", "")
            latencies.append((time.perf_counter() - t) * 1000)
            last_count = len(json.loads(body))

        for _ in range(n // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies, last_count, warning


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gateway did not start")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
