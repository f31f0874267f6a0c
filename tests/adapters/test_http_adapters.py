"""The FHIR lab and DICOMweb adapters against simulated facilities: answers, paging, failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.dicomweb import DicomWebImaging
from adapters.errors import UpstreamProtocolError, UpstreamUnavailable
from adapters.fhir import FhirLab
from adapters.types import DicomWebEndpoint, FhirEndpoint, StudyQuery
from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.registry import Facility, load_registry
from tests.city import City

REGISTRY = load_registry()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


def _lab_with_results(city: City) -> tuple[Facility, str, int]:
    """A FHIR lab facility, a resident's national ID there, and their Observation count."""
    for f in REGISTRY:
        path = city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if not isinstance(f.lab, FhirEndpoint) or not path.exists():
            continue
        resources = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for patient in (r for r in resources if r["resourceType"] == "Patient"):
            ref = f"Patient/{patient['id']}"
            n = sum(
                1
                for r in resources
                if r["resourceType"] == "Observation" and r["subject"]["reference"] == ref
            )
            if n > 3:
                nid = next(
                    i["value"] for i in patient["identifier"] if i["system"] == NATIONAL_ID_SYSTEM
                )
                return f, nid, n
    raise AssertionError("no FHIR lab facility with results in the seed")


async def test_fhir_lab_search_follows_next_links(
    city: City, session: aiohttp.ClientSession
) -> None:
    """A search paged 2 at a time returns every match, across pages."""
    f, nid, n = _lab_with_results(city)
    assert isinstance(f.lab, FhirEndpoint)
    lab = FhirLab(f.lab, session)
    await lab.ping()
    found = await lab.search(
        "Observation", {"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}", "_count": "2"}
    )
    assert len(found) == n
    assert len({o["id"] for o in found}) == n


async def test_fhir_lab_failures_are_typed(city: City, session: aiohttp.ClientSession) -> None:
    """Down -> UpstreamUnavailable; garbage -> UpstreamProtocolError; a 400 -> UpstreamError 400."""
    f, _, _ = _lab_with_results(city)
    assert isinstance(f.lab, FhirEndpoint)
    lab = FhirLab(f.lab, session)
    with pytest.raises(Exception) as bad:
        await lab.search("Observation", {"no-such-param": "x"})
    assert getattr(bad.value, "status", None) == 400
    try:
        await asyncio.to_thread(city.fault, f.id, "down")
        with pytest.raises(UpstreamUnavailable):
            await lab.ping()
        await asyncio.to_thread(city.fault, f.id, "garbage")
        with pytest.raises(UpstreamProtocolError):
            await lab.search("Observation", {})
    finally:
        await asyncio.to_thread(city.reset)


async def test_dicomweb_imaging_search_and_garbage(
    city: City, session: aiohttp.ClientSession
) -> None:
    """QIDO through the adapter matches the seed; garbage is a protocol error, not a crash."""
    f = next(
        f
        for f in REGISTRY
        if isinstance(f.imaging, DicomWebEndpoint)
        and (city.data_dir / "seed" / "dicom" / f.id).is_dir()
    )
    assert isinstance(f.imaging, DicomWebEndpoint)
    pacs = DicomWebImaging(f.imaging, session)
    studies = await pacs.search_studies(StudyQuery(match={"StudyDate": "20000101-"}, limit=2))
    assert 0 < len(studies) <= 2
    seeded = {p.name for p in (city.data_dir / "seed" / "dicom" / f.id).iterdir()}
    assert {s["0020000D"]["Value"][0] for s in studies} <= seeded
    try:
        await asyncio.to_thread(city.fault, f.id, "garbage")
        with pytest.raises(UpstreamProtocolError):
            await pacs.search_studies(StudyQuery())
    finally:
        await asyncio.to_thread(city.reset)


async def test_a_large_answer_arriving_in_pieces_is_read_whole(
    session: aiohttp.ClientSession,
) -> None:
    """A QIDO answer of hundreds of instances comes in many TCP reads: all of it is read
    (an early version took what had arrived and called the rest "not JSON")."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from adapters.http import get_json

    answer = [{"00080018": {"vr": "UI", "Value": [f"1.2.3.{i}"]}} for i in range(3000)]
    body = json.dumps(answer).encode()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/dicom+json"})
        await resp.prepare(request)
        for start in range(0, len(body), 16 * 1024):
            await resp.write(body[start : start + 16 * 1024])
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/instances", slow)
    async with TestServer(app) as server:
        found = await get_json(session, server.make_url("/instances"), accept="application/json")
    assert found == answer
