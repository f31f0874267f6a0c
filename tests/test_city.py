"""The federation core against the simulated city, over real sockets.

Every facility of the registry is served by the simulator (a child process); the gateway's
adapters reach them over DICOMweb, DIMSE and FHIR, and faults are injected per facility.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.types import DicomWebEndpoint, DimseEndpoint, NoImaging
from gateway.config import Settings
from gateway.core import Core, open_core
from gateway.federation import OutcomeStatus
from gateway.registry import Registry, load_registry
from gateway.seed_import import import_seed
from tests.city import City

DEADLINE = 1.0


@pytest.fixture
async def core(city: City) -> AsyncIterator[Core]:
    settings = Settings(
        data_dir=city.data_dir,
        federation_deadline=DEADLINE,
        breaker_failures=3,
        breaker_reset=60,
        query_cache_ttl=0,  # faults are injected: every search must reach the facilities
    )
    async with open_core(settings, probe=False) as core:
        await import_seed(core.store, core.archive, core.registry, city.data_dir)
        yield core
    city.reset()


def _facilities_with_studies(data_dir: Path, registry: Registry, kind: type) -> list[str]:
    return [
        f.id
        for f in registry
        if isinstance(f.imaging, kind) and (data_dir / "seed" / "dicom" / f.id).is_dir()
    ]


async def test_search_reaches_every_facility_and_returns_many_facilities_studies(
    core: Core,
) -> None:
    """A study search with no filter asks all 111 facilities; all answer, many hold studies."""
    result = await core.imaging.search_studies({})
    assert len(result.outcomes) == 111
    assert result.complete, [o.as_json() for o in result.failures]
    holders = {fid for fid, _ in result.items}
    kinds = {type(core.registry[fid].imaging) for fid in holders}
    assert len(holders) >= 10
    assert kinds == {DicomWebEndpoint, DimseEndpoint, NoImaging}
    seed = core.settings.data_dir / "seed" / "dicom"
    seeded = {(fdir.name, s.name) for fdir in seed.iterdir() for s in fdir.iterdir() if s.is_dir()}
    found = {(fid, ds["0020000D"]["Value"][0]) for fid, ds in result.items}
    assert seeded <= found  # other tests may have stored more


async def test_national_id_finds_studies_at_every_facility_under_local_mrns(
    core: Core, city: City
) -> None:
    """The national ID number is translated to each facility's own MRN."""
    patients = city.patients()
    person = max(patients, key=lambda p: len(p["records"]))
    nid = str(person["national_id"])
    result = await core.imaging.search_studies({"PatientID": nid})
    assert result.complete and result.items
    for fid, ds in result.items:
        assert ds["00100020"]["Value"][0] == person["records"][fid]
    assert len({fid for fid, _ in result.items}) >= 1


async def test_failures_are_reported_per_facility_and_the_rest_still_answer(
    core: Core, city: City
) -> None:
    """Down, slow past the deadline and garbage each get an outcome; others' results arrive."""
    web = _facilities_with_studies(city.data_dir, core.registry, DicomWebEndpoint)
    dimse = _facilities_with_studies(city.data_dir, core.registry, DimseEndpoint)
    down, slow, garbage, garbage_dimse = web[0], web[1], web[2], dimse[0]
    down_dimse = next(
        f.id
        for f in core.registry
        if isinstance(f.imaging, DimseEndpoint) and f.id not in dimse[:2]
    )
    await core.imaging.search_studies({})  # associations are now pooled, then dropped below
    city.fault(down_dimse, "down")
    city.fault(down, "down")
    city.fault(slow, "ok", latency_ms=5000)
    city.fault(garbage, "garbage")
    city.fault(garbage_dimse, "garbage")

    start = time.monotonic()
    result = await core.imaging.search_studies({})
    elapsed = time.monotonic() - start

    assert elapsed < DEADLINE + 0.3
    outcomes = result.outcomes
    assert outcomes[down].status is OutcomeStatus.ERROR and "connect" in (
        outcomes[down].detail or ""
    )
    assert outcomes[slow].status is OutcomeStatus.TIMEOUT
    assert outcomes[garbage].status is OutcomeStatus.ERROR
    assert outcomes[garbage_dimse].status is OutcomeStatus.ERROR
    assert outcomes[down_dimse].status is OutcomeStatus.ERROR
    assert "internal error" not in (outcomes[down_dimse].detail or "")
    failed = {o.facility_id for o in result.failures}
    assert failed == {down, slow, garbage, garbage_dimse, down_dimse}
    holders = {fid for fid, _ in result.items}
    assert holders and not holders & failed
    assert web[3] in holders and dimse[1] in holders


async def test_breaker_opens_and_the_dead_facility_costs_nothing(core: Core, city: City) -> None:
    """After repeated failures a dead facility is skipped: not called, no time spent."""
    dead = _facilities_with_studies(city.data_dir, core.registry, DicomWebEndpoint)[0]
    city.fault(dead, "down")
    for _ in range(3):
        r = await core.imaging.search_studies({}, facility_ids=[dead])
        assert r.outcomes[dead].status is OutcomeStatus.ERROR
    r = await core.imaging.search_studies({}, facility_ids=[dead])
    assert r.outcomes[dead].status is OutcomeStatus.SKIPPED
    assert r.outcomes[dead].elapsed_ms == 0
    assert r.outcomes[dead].detail == "circuit breaker open"


async def test_readiness_probe_reports_all_facilities(core: Core, city: City) -> None:
    """The probe reaches all 111; a downed facility shows unreachable and the status degrades."""
    report = core.prober.report()
    assert report["status"] == "degraded"  # nothing probed yet
    await core.prober.probe()
    report = core.prober.report()
    assert report["status"] == "ready" and report["reachable"] == 111
    down = _facilities_with_studies(city.data_dir, core.registry, DimseEndpoint)[0]
    city.fault(down, "down")
    await core.prober.probe()
    report = core.prober.report()
    assert report["status"] == "degraded" and report["reachable"] == 110
    entry = next(f for f in report["facilities"] if f["id"] == down)  # type: ignore[attr-defined]
    assert entry["reachable"] is False and entry["name"] == core.registry[down].name_zh


def test_registry_matches_what_the_simulator_serves() -> None:
    """Sanity: the shipped registry is the one the city fixture runs (111 facilities)."""
    assert len(load_registry()) == 111


async def test_fan_out_never_blocks_the_event_loop(core: Core) -> None:
    """A 5 ms ticker keeps ticking while full fan-outs run: no blocking call on the loop."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    for _ in range(5):
        await core.imaging.search_studies({})
    stop.set()
    await tick
    # A blocking DIMSE or file call would stall the loop for the whole upstream round trip,
    # on every fan-out; a shared machine may pause the process once in a while.
    lags.sort()
    assert len(lags) > 5 and lags[-2] < 0.05 and lags[-1] < 0.5, lags[-3:]


async def test_hl7_feed_of_a_facility_is_sent_and_acknowledged(city: City) -> None:
    """The simulator pushes a facility's lab results as ORU^R01 over MLLP, each one ACKed."""
    from adapters.mllp import frame, read_frame
    from seeds.hl7_sender import control_id_of

    received: list[bytes] = []

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (message := await read_frame(reader)) is not None:
            received.append(message)
            control = control_id_of(message)
            msh = f"MSH|^~\\&|HUREN|HUREN|LIS|F|20261124||ACK^R01^ACK|A{control}|P|2.5.1"
            ack = f"{msh}\rMSA|AA|{control}\r"
            writer.write(frame(ack.encode()))
            await writer.drain()
        writer.close()

    registry = load_registry()
    feeds = [f for f in registry if f.lab.kind == "hl7v2"]
    fid = next(
        f.id
        for f in feeds
        if '"LAB"'
        in (
            (city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson").read_text(encoding="utf-8")
            if (city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson").exists()
            else ""
        )
    )
    server = await asyncio.start_server(receiver, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        body = await asyncio.to_thread(
            _post, f"{city.control_url}/_sim/hl7/{fid}?target=127.0.0.1:{port}"
        )
    assert body["accepted"] == len(received) > 0 and body["rejected"] == 0
    assert all(m.startswith(b"MSH|^~\\&|") and b"ORU^R01" in m for m in received)


def _post(url: str) -> dict[str, int]:
    import json
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60) as resp:
        data: dict[str, int] = json.loads(resp.read())
        return data
