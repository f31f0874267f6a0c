"""A year of the city's cross-institution look-ups, replayed through the HTTP API.

Each look-up is a doctor at one facility looking up a resident's studies at another facility:
``GET /facilities/{holder}/dicomweb/studies?PatientID={national id}``, with the doctor's
bearer token, for a resident under the doctor's facility's care. The gateway authenticates,
checks the care relationship, asks the holder (its answer is reused for a short while, as a
doctor's repeated look-ups are), writes the audit record, counts the look-up, and answers.

    python bench/lookups.py            # 1,020,293 on PostgreSQL; shorter runs for the rest
    python bench/lookups.py --quick    # 30,000 on PostgreSQL

Runs, in one go, against the simulated city:
1. PostgreSQL with audit: the full replay; then exactly that many cross-institution audit
   records must exist, and the look-up counters (fast store and recounted from the audit)
   must say the same; /admin/stats/lookups over the whole year is timed.
2. SQLite with audit, and PostgreSQL with audit turned off: the same look-ups, fewer of them,
   for the rates (and so what the audit costs).
3. PostgreSQL with the gateway killed (SIGKILL) midway and restarted: every look-up that was
   answered must have its audit record.

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from bench.common import percentile, wait_ready
from bench.fhir import drop_pg_database, fresh_pg_database
from gateway.config import Settings
from gateway.core import open_core
from gateway.seed_import import import_seed
from gateway.tokens import dev_keys, mint
from seeds.generator import generate
from tests.city import huren_command, start_simulator, stop_process
from tests.ports import free_port

CITY_LOOKUPS = 1_020_293
#: Look-ups each gateway answers before it is measured (its holders' answers get cached).
WARM_UP = 2000
#: Alternating rounds of the audit-cost comparison.
ROUNDS = 10
#: Every gateway started, so none outlives the benchmark.
GATEWAYS: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True, slots=True)
class Lookup:
    requester: str
    holder: str
    national_id: str


def plan(data_dir: Path) -> list[Lookup]:
    """Every (requester, holder, resident) where the resident is registered at the
    requester and has studies at another facility, the holder."""
    patients = json.loads((data_dir / "seed" / "patients.json").read_text("utf-8"))
    studies = json.loads((data_dir / "seed" / "studies.json").read_text("utf-8"))
    held: dict[str, set[str]] = {}
    for s in studies:
        held.setdefault(s["national_id"], set()).add(s["facility_id"])
    out = []
    for p in patients:
        for holder in sorted(held.get(p["national_id"], ())):
            for requester in sorted(p["records"]):
                if requester != holder:
                    out.append(Lookup(requester, holder, p["national_id"]))
    return out


def requests_for(data_dir: Path, lookups: list[Lookup]) -> list[bytes]:
    """One ready HTTP/1.1 request per planned look-up (its doctor's token included)."""
    pem, jwks = dev_keys(data_dir)
    kid = jwks["keys"][0]["kid"]
    tokens = {
        f: mint(pem, kid, subject=f"doctor-{f}", role="clinician", facility=f, lifetime=86400)
        for f in {lk.requester for lk in lookups}
    }
    return [
        (
            f"GET /facilities/{lk.holder}/dicomweb/studies?PatientID={lk.national_id} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {tokens[lk.requester]}\r\n"
            "X-Request-Id: {rid}\r\n\r\n"
        ).encode()
        for lk in lookups
    ]


class Replay:
    """Keep-alive connections sending look-ups one after another, as fast as answered."""

    def __init__(self, port: int, requests: list[bytes], n: int, connections: int) -> None:
        self.port = port
        self.requests = requests
        self.n = n
        self.connections = connections
        self.next = 0
        self.answered: list[int] = []
        self.failed = 0
        self.rng = random.Random(7)
        #: Set once half of the look-ups are answered.
        self.halfway = asyncio.Event()

    async def run(self, stop_after: int | None = None) -> None:
        await asyncio.gather(*(self._worker(stop_after) for _ in range(self.connections)))

    async def _worker(self, stop_after: int | None) -> None:
        reader = writer = None
        while self.next < self.n and (stop_after is None or len(self.answered) < stop_after):
            i = self.next
            self.next += 1
            request = self.requests[self.rng.randrange(len(self.requests))]
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                assert reader is not None
                writer.write(request.replace(b"{rid}", str(i).encode()))
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                self.failed += 1
                self._retry(i)
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                raise RuntimeError(f"look-up {i} answered {status}")
            self.answered.append(i)
            if 2 * len(self.answered) >= self.n:
                self.halfway.set()
        if writer is not None:
            writer.close()

    def _retry(self, i: int) -> None:
        # Not answered: it is sent again under a new number (the first may be audited,
        # but it was never answered).
        self.n += 1


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


def prepare(city_dir: Path, gateway_dir: Path, database_url: str | None) -> Path:
    """A gateway data dir on the city's seed: archive and MPI imported (as registration feeds
    and uploads would have filled them)."""
    gateway_dir.mkdir()
    (gateway_dir / "seed").symlink_to(city_dir / "seed")
    dev_keys(city_dir)  # one key pair for every run: the doctors' tokens are minted once
    (gateway_dir / "keys").symlink_to(city_dir / "keys")

    async def run() -> None:
        settings = Settings(data_dir=gateway_dir, database_url=database_url)
        async with open_core(settings, probe=False) as core:
            await import_seed(core.store, core.archive, core.registry, gateway_dir)

    asyncio.run(run())
    return gateway_dir


def start_gateway(data_dir: Path, port: int, database_url: str | None, audit: bool) -> Any:
    env = {
        **os.environ,
        "HUREN_PORT": str(port),
        "HUREN_MLLP_PORT": str(free_port()),
        "HUREN_DIMSE_PORT": str(free_port()),
        "HUREN_PROBE_INTERVAL": "3600",
        "HUREN_LOG_LEVEL": "WARNING",
        "HUREN_AUDIT": "1" if audit else "0",
        # The limits are counted (that is part of the cost) but set above the load.
        "HUREN_RATE_LIMIT_USER": "1000000000",
        "HUREN_RATE_LIMIT_FACILITY": "1000000000",
        "HUREN_QUERY_CACHE_TTL": "60",
    }
    if database_url:
        env["HUREN_DATABASE_URL"] = database_url
    if os.environ.get("BENCH_REDIS_URL"):
        env["HUREN_REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
    proc = subprocess.Popen(huren_command(data_dir, "serve"), env=env)
    GATEWAYS.append(proc)
    wait_ready(port)
    return proc


def regulator_get(data_dir: Path, port: int, path: str) -> tuple[dict[str, Any], float]:
    pem, jwks = dev_keys(data_dir)
    tok = mint(pem, jwks["keys"][0]["kid"], subject="regulator", role="regulator")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {tok}"}
    )
    t = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as resp:
        body = json.loads(resp.read())
    return body, (time.perf_counter() - t) * 1000


async def audited(database_url: str) -> tuple[int, set[str]]:
    """Cross-institution audit records, and the request ids of all records."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        n = await conn.fetchval("SELECT count(*) FROM audit_event WHERE cross_institution")
        ids = {r[0] for r in await conn.fetch("SELECT request_id FROM audit_event")}
    finally:
        await conn.close()
    return int(n), ids


@dataclass
class Gateway:
    """A gateway process on its own data dir and database, warmed up."""

    data_dir: Path
    database_url: str | None
    audit: bool
    port: int = 0
    proc: Any = None

    def start(self, requests: list[bytes], connections: int, *, warm: bool = True) -> Gateway:
        self.port = self.port or free_port()
        self.proc = start_gateway(self.data_dir, self.port, self.database_url, self.audit)
        if warm:  # the holders' answers cached, as in a gateway that has been running
            asyncio.run(Replay(self.port, requests, WARM_UP, connections).run())
        return self

    def rate(self, requests: list[bytes], n: int, connections: int) -> float:
        run = Replay(self.port, requests, n, connections)
        t = time.perf_counter()
        asyncio.run(run.run())
        seconds = time.perf_counter() - t
        assert len(run.answered) == n and run.failed == 0, (len(run.answered), run.failed)
        return n / seconds

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def killed_midway(
    data_dir: Path, database_url: str, requests: list[bytes], n: int, connections: int
) -> tuple[Replay, int]:
    """Replay ``n`` look-ups; at half of them answered, SIGKILL the gateway while look-ups
    are in flight, start it again, and go on (what was cut off is sent again)."""
    port = free_port()
    proc = start_gateway(data_dir, port, database_url, True)
    run = Replay(port, requests, n, connections)
    killed_at = 0

    async def killer() -> None:
        nonlocal proc, killed_at
        await run.halfway.wait()
        proc.send_signal(signal.SIGKILL)
        killed_at = len(run.answered)
        await asyncio.to_thread(proc.wait)
        proc = await asyncio.to_thread(start_gateway, data_dir, port, database_url, True)

    async def both() -> None:
        await asyncio.gather(run.run(), killer())

    asyncio.run(both())
    proc.terminate()
    proc.wait(30)
    return run, killed_at


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lookups", type=int, default=CITY_LOOKUPS)
    ap.add_argument("--side", type=int, default=150_000, help="look-ups of the other runs")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--patients", type=int, default=120)
    args = ap.parse_args()
    n = 30_000 if args.quick else args.lookups
    side = 15_000 if args.quick else args.side
    data_dir = Path(tempfile.mkdtemp(prefix="huren-bench-lookups-"))
    generate(data_dir, patients=args.patients, seed=11)
    lookups = plan(data_dir)
    requests = requests_for(data_dir, lookups)
    print(
        f"{len(lookups)} (doctor's facility, holder, resident) look-ups to draw from, "
        f"{len({lk.requester for lk in lookups})} requesting facilities, "
        f"{args.connections} connections"
    )
    sim, _ = start_simulator(data_dir)
    figures: dict[str, Any] = {"lookups": n, "connections": args.connections}
    databases: list[str] = []

    def database() -> str:
        url, name = asyncio.run(fresh_pg_database())
        databases.append(name)
        return url

    try:
        # 1. PostgreSQL, audit on: the whole replay, then the records and counters checked.
        url = database()
        pg = Gateway(prepare(data_dir, data_dir / "pg", url), url, True)
        pg.start(requests, args.connections, warm=False)  # exactly n look-ups: none before
        rate = pg.rate(requests, n, args.connections)
        print(f"  PostgreSQL, audit on: {n:,} look-ups at {rate:,.0f}/s, {n / rate / 60:.1f} min")
        figures["pg_audit_lookups_s"] = round(rate)
        figures["pg_replay_minutes"] = round(n / rate / 60, 2)
        cross, _ = asyncio.run(audited(url))
        today = date.today()
        span = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"
        stats = f"/admin/stats/lookups?{span}&group_by=total"
        counters, _ = regulator_get(pg.data_dir, pg.port, stats)
        recount, _ = regulator_get(pg.data_dir, pg.port, stats + "&source=audit")
        print(
            f"  audit: {cross:,} cross-institution records, counters {counters['total']:,},"
            f" recounted from the audit {recount['total']:,} (look-ups: {n:,})"
        )
        assert cross == counters["total"] == recount["total"] == n
        figures["audited_cross_institution"] = cross
        year = f"from={today - timedelta(days=364)}&to={today}"
        for group in ("day", "requester", "holder", "pair", "total"):
            times = [
                regulator_get(
                    pg.data_dir, pg.port, f"/admin/stats/lookups?{year}&group_by={group}"
                )[1]
                for _ in range(7)
            ]
            p50 = percentile(times, 50)
            print(f"  /admin/stats/lookups over a year by {group}: p50 {p50:.1f} ms")
            figures[f"stats_year_{group}_ms"] = round(p50, 1)

        # 2. What the audit costs: audit on and off, and SQLite, in alternating rounds (the
        # machine is shared: a ratio from runs far apart in time would measure the neighbours).
        pg.stop()
        on_url, off_url = database(), database()
        on = Gateway(prepare(data_dir, data_dir / "pg-on", on_url), on_url, True)
        off = Gateway(prepare(data_dir, data_dir / "pg-off", off_url), off_url, False)
        lite = Gateway(prepare(data_dir, data_dir / "sqlite", None), None, True)
        for gw in (on, off, lite):
            gw.start(requests, args.connections)
        rounds: dict[str, list[float]] = {"on": [], "off": [], "sqlite": []}
        for _ in range(ROUNDS):
            for name, gw in (("on", on), ("off", off), ("sqlite", lite)):
                rounds[name].append(gw.rate(requests, side // ROUNDS, args.connections))
        for gw in (on, off, lite):
            gw.stop()
        on_rate, off_rate, lite_rate = (percentile(rounds[k], 50) for k in ("on", "off", "sqlite"))
        # Each round's on and off ran back to back: the median of their ratios.
        cost = 1 - percentile([a / b for a, b in zip(rounds["on"], rounds["off"], strict=True)], 50)
        print(
            f"  {ROUNDS} alternating rounds of {side // ROUNDS:,} look-ups, medians:"
            f" PostgreSQL audit on {on_rate:,.0f}/s, off {off_rate:,.0f}/s"
            f" (the audit costs {cost:.0%}); SQLite audit on {lite_rate:,.0f}/s"
        )
        figures |= {
            "pg_audit_on_round_lookups_s": round(on_rate),
            "pg_audit_off_round_lookups_s": round(off_rate),
            "sqlite_audit_on_round_lookups_s": round(lite_rate),
            "audit_cost": round(cost, 3),
        }

        # 3. Killed midway and restarted: every answered look-up has its record.
        kill_url = database()
        kill_dir = prepare(data_dir, data_dir / "pg-kill", kill_url)
        run, killed_at = killed_midway(kill_dir, kill_url, requests, side, args.connections)
        _, ids = asyncio.run(audited(kill_url))
        missing = [i for i in run.answered if str(i) not in ids]
        print(
            f"  SIGKILL with {killed_at:,} answered and look-ups in flight, restarted:"
            f" {len(run.answered):,} answered in all, {run.failed} cut off and sent again,"
            f" {len(missing)} answered without an audit record"
        )
        assert not missing
        figures |= {
            "kill_answered": len(run.answered),
            "kill_cut_off": run.failed,
            "kill_missing_audit": len(missing),
        }
    finally:
        for proc in GATEWAYS:
            if proc.poll() is None:
                proc.kill()
        stop_process(sim)
        for name in databases:
            asyncio.run(drop_pg_database(name))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
