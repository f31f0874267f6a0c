"""Federated study search across all 111 facilities: end-to-end latency through the gateway.

Starts the simulated city (every facility answering after --latency-ms) and the gateway, each in
its own process, and times QIDO-RS study searches from a third (this one) over HTTP. Then takes
5 facilities down, lets their breakers open, and times the same searches again.

    python bench/federation.py            # 200 queries per phase
    python bench/federation.py --quick    # under a minute

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.types import DicomWebEndpoint, DimseEndpoint
from bench.common import (
    BENCH_ENV,
    cpu_seconds,
    percentile,
    service_headers,
    timed_queries,
    wait_ready,
)
from gateway.config import Settings
from gateway.core import open_core
from gateway.registry import load_registry
from gateway.seed_import import import_seed
from seeds.generator import generate
from tests.city import City, huren_command, start_simulator, stop_process
from tests.ports import free_port


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--data-dir", type=Path, help="reuse a seeded data dir")
    args = ap.parse_args()
    n = 60 if args.quick else args.queries

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="huren-bench-"))
    if not (data_dir / "seed" / "manifest.json").exists():
        t = time.monotonic()
        generate(data_dir, patients=args.patients, seed=1)
        print(f"seeded {args.patients} residents in {time.monotonic() - t:.1f} s", flush=True)

    async def prepare() -> None:
        async with open_core(Settings(data_dir=data_dir), probe=False) as core:
            await import_seed(core.store, core.archive, core.registry, data_dir)

    asyncio.run(prepare())
    registry = load_registry()
    sim, control = start_simulator(data_dir, latency_ms=args.latency_ms)
    port = free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "HUREN_FEDERATION_DEADLINE": "1.0",
        "HUREN_BREAKER_RESET": "3600",
    }
    auth = service_headers(data_dir)
    gateway = subprocess.Popen(
        huren_command(data_dir, "serve", "--port", str(port)),
        env=env,
    )
    try:
        wait_ready(port)
        url = f"http://127.0.0.1:{port}/dicomweb/studies"
        direct = next(f for f in registry if isinstance(f.imaging, DicomWebEndpoint))
        assert isinstance(direct.imaging, DicomWebEndpoint)
        print(
            f"fan-out to {len(registry)} facilities, {args.latency_ms:.0f} ms upstream latency each"
        )

        asyncio.run(
            timed_queries(url, 10, headers=auth)
        )  # warm up: connections, associations, caches
        direct_ms, _, _ = asyncio.run(timed_queries(f"{direct.imaging.url}/studies", n))
        print(f"  direct to one facility ({direct.id}): p50 {statistics.median(direct_ms):.1f} ms")
        cpu = (cpu_seconds(gateway.pid), cpu_seconds(sim.pid))
        all_ms, count, warning = asyncio.run(timed_queries(url, n, headers=auth))
        gateway_cpu = (cpu_seconds(gateway.pid) - cpu[0]) / n * 1000
        sim_cpu = (cpu_seconds(sim.pid) - cpu[1]) / n * 1000
        assert not warning, warning
        print(
            f"  all up:   p50 {percentile(all_ms, 50):.1f} ms  p99 {percentile(all_ms, 99):.1f} ms"
            f"  ({n} queries, {count} studies each)"
        )

        print(f"  CPU per query: gateway {gateway_cpu:.1f} ms, simulated city {sim_cpu:.1f} ms")
        dead = [f.id for f in registry if isinstance(f.imaging, DicomWebEndpoint)][:3] + [
            f.id for f in registry if isinstance(f.imaging, DimseEndpoint)
        ][:2]
        city = City(data_dir, f"http://127.0.0.1:{control}", sim)
        for fid in dead:
            city.fault(fid, "down")
        opening, _, _ = asyncio.run(
            timed_queries(url, 4, headers=auth)
        )  # breakers open after 3 failures
        dead_ms, count_dead, warning = asyncio.run(timed_queries(url, n, headers=auth))
        assert all(fid in warning for fid in dead), warning
        print(
            f"  5 dead: p50 {percentile(dead_ms, 50):.1f} ms p99 {percentile(dead_ms, 99):.1f} ms;"
            f" {count_dead} studies each; before breakers opened: {[round(x) for x in opening]} ms"
        )
        figures = {
            "facilities": len(registry),
            "upstream_latency_ms": args.latency_ms,
            "queries": n,
            "direct_p50_ms": round(statistics.median(direct_ms), 1),
            "fanout_p50_ms": round(percentile(all_ms, 50), 1),
            "fanout_p99_ms": round(percentile(all_ms, 99), 1),
            "gateway_cpu_ms_per_query": round(gateway_cpu, 1),
            "simulator_cpu_ms_per_query": round(sim_cpu, 1),
            "dead5_p50_ms": round(percentile(dead_ms, 50), 1),
            "dead5_p99_ms": round(percentile(dead_ms, 99), 1),
            "dead5_p50_change_ms": round(percentile(dead_ms, 50) - percentile(all_ms, 50), 1),
        }
        print(json.dumps(figures))
    finally:
        gateway.terminate()
        gateway.wait(15)
        stop_process(sim)


if __name__ == "__main__":
    main()
