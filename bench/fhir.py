"""The lab side: HL7 v2 ORU^R01 ingest through the gateway's MLLP listener, acknowledged only
after the results are durable, on SQLite and on PostgreSQL (group commit, several senders).

And the FHIR face: Observation search for one patient across the city (every facility that
knows the patient asked in its own MRN, plus the gateway's own index), through HTTP, with the
simulated city answering after 20 ms.

    python bench/fhir.py            # 6,000 messages per backend
    python bench/fhir.py --quick    # 1,500

The senders hold one MLLP connection per HL7 v2 lab system in the registry (35), as the
city's feeds do: each lab system keeps its own connection and waits for each ACK.

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

# Run as a script, this file's folder comes first on the path and this file would be the
# package ``fhir`` that fhir.resources lives in: the project root takes its place.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome

from adapters.mllp import MllpConnection
from adapters.types import Hl7v2Feed
from bench.common import BENCH_ENV, percentile, service_headers, wait_ready
from gateway.config import Settings
from gateway.core import open_core
from gateway.registry import load_registry
from gateway.seed_import import import_seed
from seeds.generator import generate
from seeds.hl7_sender import control_id_of, messages_for_facility, parse_ack
from tests.city import huren_command, start_simulator, stop_process
from tests.ports import free_port

PG_ADMIN = os.environ.get("HUREN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def corpus(data_dir: Path, n: int) -> list[bytes]:
    """n distinct ORU^R01 messages from the seed's HL7 v2 facilities (control ids made unique)."""
    base: list[bytes] = []
    for f in load_registry():
        path = data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if isinstance(f.lab, Hl7v2Feed) and path.exists():
            base += messages_for_facility(
                path,
                sending_application=f.lab.sending_application,
                sending_facility=f.lab.sending_facility,
            )
    out = []
    for i in range(n):
        m = base[i % len(base)]
        control = control_id_of(m)
        out.append(m.replace(f"|{control}|".encode(), f"|{control}-{i}|".encode(), 1))
    return out


async def send_all(port: int, messages: list[bytes], connections: int) -> tuple[float, int]:
    async def sender(share: list[bytes]) -> int:
        ok = 0
        async with await MllpConnection.open("127.0.0.1", port, timeout=10) as conn:
            for m in share:
                code, _, _ = parse_ack(await conn.exchange(m, timeout=30))
                ok += code == "AA"
        return ok

    t = time.perf_counter()
    counts = await asyncio.gather(*(sender(messages[i::connections]) for i in range(connections)))
    return time.perf_counter() - t, sum(counts)


async def fresh_pg_database() -> tuple[str, str]:
    admin = await asyncpg.connect(PG_ADMIN)
    name = f"huren_bench_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


async def drop_pg_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def run_backend(
    data_dir: Path, database_url: str | None, messages: list[bytes], connections: int
) -> float:
    http, mllp = free_port(), free_port()
    env = {
        **os.environ,
        "HUREN_MLLP_PORT": str(mllp),
        "HUREN_DIMSE_PORT": str(free_port()),
        "HUREN_PROBE_INTERVAL": "3600",
    }
    if database_url:
        env["HUREN_DATABASE_URL"] = database_url
    gateway = subprocess.Popen(huren_command(data_dir, "serve", "--port", str(http)), env=env)
    try:
        wait_ready(http)
        asyncio.run(send_all(mllp, messages[:50], 1))  # warm up
        secs, ok = asyncio.run(send_all(mllp, messages[50:], connections))
        assert ok == len(messages) - 50, (ok, len(messages))
        return (len(messages) - 50) / secs
    finally:
        gateway.terminate()
        gateway.wait(15)


def observation_search(
    data_dir: Path, queries: int
) -> tuple[float, float, int, list[dict[str, Any]]]:
    """p50, p99 (ms) of Observation searches by national ID, the facilities asked, and one
    answer per resident."""

    async def prepare() -> None:  # the MPI learns each resident's MRNs, as from registration
        async with open_core(Settings(data_dir=data_dir), probe=False) as core:
            await import_seed(core.store, core.archive, core.registry, data_dir)

    asyncio.run(prepare())
    sim, _ = start_simulator(data_dir, latency_ms=20.0)
    http = free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "HUREN_MLLP_PORT": str(free_port()),
        "HUREN_DIMSE_PORT": str(free_port()),
    }
    gateway = subprocess.Popen(huren_command(data_dir, "serve", "--port", str(http)), env=env)
    try:
        wait_ready(http)
        patients = json.loads((data_dir / "seed" / "patients.json").read_text(encoding="utf-8"))
        people = sorted(patients, key=lambda p: -len(p["records"]))[:20]
        url = f"http://127.0.0.1:{http}/fhir/Observation"
        latencies: list[float] = []
        bundles: list[dict[str, Any]] = []

        async def run() -> None:
            async with aiohttp.ClientSession(headers=service_headers(data_dir)) as session:
                for i in range(queries + 10):
                    nid = people[i % len(people)]["national_id"]
                    t = time.perf_counter()
                    params = {"patient.identifier": f"urn:oid:2.16.156.10011.1.5|{nid}"}
                    async with session.get(url, params=params) as resp:
                        assert resp.status == 200
                        body = await resp.read()
                    if i < len(people):
                        bundles.append(json.loads(body))
                    if i >= 10:
                        latencies.append((time.perf_counter() - t) * 1000)

        asyncio.run(run())
        fhir_labs = {f.id for f in load_registry() if f.lab.kind == "fhir"}
        asked = max(len(set(p["records"]) & fhir_labs) for p in people)
        return percentile(latencies, 50), percentile(latencies, 99), asked, bundles
    finally:
        gateway.terminate()
        gateway.wait(15)
        stop_process(sim)


def validation_cost(bundles: list[dict[str, Any]]) -> tuple[float, float]:
    """What checking the answers with fhir.resources' pydantic models would cost: ms per
    resource, and ms for the largest answer. The gateway builds resources as plain JSON and
    does not pay this per search; the tests check every resource it emits with the models."""
    resources = [e["resource"] for b in bundles for e in b["entry"]]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for r in resources:
            if r["resourceType"] == "Observation":
                Observation.model_validate(r)
            else:
                OperationOutcome.model_validate(r)
        best = min(best, time.perf_counter() - t)
    per = best * 1000 / max(len(resources), 1)
    largest = max(len(b["entry"]) for b in bundles)
    return per, per * largest


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--messages", type=int, default=6000)
    feeds = sum(isinstance(f.lab, Hl7v2Feed) for f in load_registry())
    ap.add_argument("--connections", type=int, default=feeds)
    args = ap.parse_args()
    n = 1500 if args.quick else args.messages
    data_dir = Path(tempfile.mkdtemp(prefix="huren-bench-fhir-"))
    generate(data_dir, patients=60, seed=5)
    messages = corpus(data_dir, n)
    print(f"{len(messages)} ORU^R01 messages, {args.connections} MLLP connections, ACK after store")
    figures: dict[str, float | int] = {"messages": n, "connections": args.connections}
    rate = run_backend(data_dir / "sqlite", None, messages, args.connections)
    print(f"  SQLite:     {rate:,.0f} messages/s")
    figures["hl7_ingest_sqlite_msg_s"] = round(rate)
    url, name = asyncio.run(fresh_pg_database())
    try:
        (data_dir / "pg").mkdir()
        rate = run_backend(data_dir / "pg", url, messages, args.connections)
    finally:
        asyncio.run(drop_pg_database(name))
    print(f"  PostgreSQL: {rate:,.0f} messages/s")
    figures["hl7_ingest_postgresql_msg_s"] = round(rate)
    p50, p99, asked, bundles = observation_search(data_dir, 30 if args.quick else 100)
    print(
        f"  FHIR Observation search, one patient (up to {asked} facilities + the index):"
        f" p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    per, largest = validation_cost(bundles)
    print(
        f"  fhir.resources validation: {per:.3f} ms a resource; {largest:.1f} ms for the"
        f" largest answer ({largest / p50:.0%} of the search's p50), not paid at run time"
    )
    figures |= {
        "observation_search_p50_ms": round(p50, 1),
        "observation_search_p99_ms": round(p99, 1),
        "validation_ms_per_resource": round(per, 3),
        "validation_largest_answer_ms": round(largest, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
