"""The federation core against the simulated city, over real sockets.

Every facility of the registry is served by the simulator (a child process); the gateway's
adapters reach them over DICOMweb, DIMSE and FHIR, and faults are injected per facility.
"""

from __future__ import annotations

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
        data_dir=city.data_dir, federation_deadline=DEADLINE, breaker_failures=3, breaker_reset=60
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
    person = max(patients, key=lambda p: len(p["records"]))  # type: ignore[arg-type]
    nid = str(person["national_id"])
    result = await core.imaging.search_studies({"PatientID": nid})
    assert result.complete and result.items
    for fid, ds in result.items:
        assert ds["00100020"]["Value"][0] == person["records"][fid]  # type: ignore[index]
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
