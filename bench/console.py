"""The operations console (/admin) with a year of the city's look-ups behind it.

A year of 1,020,293 cross-institution look-ups between the 111 facilities (a few busy
hospitals are asked most, as in the city) is written into the audit's look-up table; the
gateway starts, counts them (as after any restart on the embedded defaults), and the console
page is timed: the server-side time to the whole page, which is the first paint (the page is
HTML and inline SVG, nothing to load after it), p50 over repeated loads.

    python bench/console.py            # 1,020,293 look-ups, 30 loads
    python bench/console.py --quick    # 200,000 look-ups, 10 loads

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_ENV, percentile, wait_ready
from gateway.audit import CITY_TZ
from gateway.registry import load_registry
from gateway.storage import DATABASE_FILE, Store, database_url_for
from gateway.tokens import dev_keys, mint
from tests.city import huren_command
from tests.ports import free_port

LOOKUPS = 1_020_293


def write_year(data_dir: Path, n: int) -> int:
    """n look-ups over the last 366 days into audit_lookup; returns the pairs used."""
    asyncio.run(_create_tables(data_dir))
    ids = [f.id for f in load_registry()]
    rng = random.Random(2026)
    # Requesters and holders by weight: the big hospitals hold (and ask) most.
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(ids))]
    today = datetime.now(CITY_TZ).date()
    days = [(today - timedelta(days=d)).isoformat() for d in range(366)]
    requesters = rng.choices(ids, weights=weights[::-1], k=n)
    holders = rng.choices(ids, weights=weights, k=n)
    rows = []
    pairs = set()
    for i, (requester, holder) in enumerate(zip(requesters, holders, strict=True)):
        if requester == holder:
            holder = ids[(ids.index(holder) + 1) % len(ids)]
        pairs.add((requester, holder))
        rows.append((f"{i:032x}", rng.choice(days), requester, holder))
    db = sqlite3.connect(data_dir / DATABASE_FILE)
    with db:
        db.executemany(
            "INSERT INTO audit_lookup (event_id, day, requester, holder) VALUES (?, ?, ?, ?)",
            rows,
        )
    db.close()
    return len(pairs)


async def _create_tables(data_dir: Path) -> None:
    store = await Store.open(database_url_for(data_dir, None))
    await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, loads = (200_000, 10) if args.quick else (LOOKUPS, 30)
    data_dir = Path(tempfile.mkdtemp(prefix="huren-bench-console-"))
    t = time.monotonic()
    pairs = write_year(data_dir, n)
    print(
        f"wrote {n:,} look-ups over 366 days, {pairs:,} facility pairs,"
        f" in {time.monotonic() - t:.0f} s"
    )
    port = free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "HUREN_DIMSE_PORT": str(free_port()),
        "HUREN_MLLP_PORT": str(free_port()),
        "HUREN_PROBE_INTERVAL": "3600",
    }
    t = time.monotonic()
    gateway = subprocess.Popen(huren_command(data_dir, "serve", "--port", str(port)), env=env)
    try:
        wait_ready(port, timeout=300)
        print(f"gateway up, look-ups counted from the audit, in {time.monotonic() - t:.1f} s")
        pem, jwks = dev_keys(data_dir)
        token = mint(pem, jwks["keys"][0]["kid"], subject="bench-ops", role="admin")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin", headers={"Authorization": f"Bearer {token}"}
        )
        times, size = [], 0
        for i in range(loads + 2):
            t = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as resp:
                body = resp.read()
            if i >= 2:  # the first loads warm the process
                times.append((time.perf_counter() - t) * 1000)
            size = len(body)
        text = body.decode()
        assert text.count('class="facility') >= 111 and 'id="heatmap"' in text
        total = f"{n:,}"
        assert total in text, "the page shows the year's total"
    finally:
        gateway.terminate()
        gateway.wait(15)
    p50, p95 = percentile(times, 50), percentile(times, 95)
    print(
        f"  /admin with a year of {n:,} look-ups ({pairs:,} pairs in the heat map): p50"
        f" {p50:.0f} ms, p95 {p95:.0f} ms to the whole page ({size / 1e6:.2f} MB)"
    )
    print(
        json.dumps(
            {
                "lookups": n,
                "pairs": pairs,
                "console_p50_ms": round(p50, 1),
                "console_p95_ms": round(p95, 1),
                "page_bytes": size,
            }
        )
    )


if __name__ == "__main__":
    main()
