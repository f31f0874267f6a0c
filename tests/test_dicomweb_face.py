"""WADO-RS and QIDO below study level through the gateway, with dicomweb-client, for each
kind of facility (DICOMweb PACS, DIMSE PACS, the gateway's own archive); and bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from adapters.types import DicomWebEndpoint, DimseEndpoint, NoImaging
from gateway.registry import load_registry
from tests.city import City, Client, bearer, open_gateway

REGISTRY = load_registry()
KINDS = {"dicomweb": DicomWebEndpoint, "dimse": DimseEndpoint, "archive": NoImaging}


@pytest.fixture
async def client(city: City) -> AsyncIterator[Client]:
    async with open_gateway(city) as (c, _):
        yield c


def _study_of_kind(city: City, kind: str) -> tuple[str, Path]:
    """A facility of that kind with a seeded study: (facility id, study folder)."""
    for f in REGISTRY:
        root = city.data_dir / "seed" / "dicom" / f.id
        if isinstance(f.imaging, KINDS[kind]) and root.is_dir():
            studies = sorted(p for p in root.iterdir() if p.is_dir())
            # A study with more than one series exercises the series level.
            best = max(studies, key=lambda s: len(list(s.iterdir())))
            return f.id, best
    raise AssertionError(f"no {kind} facility with studies")


def _seed_instances(study_dir: Path) -> dict[str, pydicom.Dataset]:
    out: dict[str, pydicom.Dataset] = {}
    for path in study_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        out[ds.SOPInstanceUID] = ds
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("through", ["facility", "federated"])
async def test_retrieve_study_series_and_instance_byte_identical(
    client: Client,
    city: City,
    kind: str,
    through: str,
) -> None:
    """dicomweb-client retrieves a study, a series and an instance; pixels match the seed."""
    fid, study_dir = _study_of_kind(city, kind)
    study = study_dir.name
    seeded = _seed_instances(study_dir)
    path = f"/facilities/{fid}/dicomweb" if through == "facility" else "/dicomweb"
    dw = DICOMwebClient(url=str(client.make_url(path)), headers=bearer(city.data_dir))

    got = await asyncio.to_thread(dw.retrieve_study, study)
    assert {ds.SOPInstanceUID for ds in got} == set(seeded)
    for ds in got:
        want = seeded[ds.SOPInstanceUID]
        assert ds.PixelData == want.PixelData and ds.PatientID == want.PatientID

    series = await asyncio.to_thread(dw.search_for_series, study)
    assert {s["0020000E"]["Value"][0] for s in series} == {
        ds.SeriesInstanceUID for ds in seeded.values()
    }
    assert all(s["00111001"]["Value"] == [fid] for s in series)
    one = series[0]["0020000E"]["Value"][0]
    instances = await asyncio.to_thread(dw.search_for_instances, study, one)
    want_in_series = {u for u, ds in seeded.items() if ds.SeriesInstanceUID == one}
    assert {i["00080018"]["Value"][0] for i in instances} == want_in_series
    assert instances[0]["00081190"]["Value"][0].endswith(
        f"/series/{one}/instances/{instances[0]['00080018']['Value'][0]}"
    )

    sop = sorted(want_in_series)[0]
    inst = await asyncio.to_thread(dw.retrieve_instance, study, one, sop)
    assert inst.PixelData == seeded[sop].PixelData
    meta = await asyncio.to_thread(dw.retrieve_series_metadata, study, one)
    assert {m["00080018"]["Value"][0] for m in meta} == want_in_series
    assert all("7FE00010" not in m or "Value" not in m["7FE00010"] for m in meta)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/dicomweb/studies/1.2.abc", 400),
        ("/dicomweb/studies/1.2.3/series/01.2/instances", 400),
        ("/dicomweb/studies/" + "1." * 40 + "1", 400),
        ("/dicomweb/studies/1.2.3.4.5.6.7.8.9", 404),
        ("/facilities/F999/dicomweb/studies/1.2.3", 404),
        ("/facilities/F001/dicomweb/studies/1.2.3.999/series", 200),
        ("/facilities/F001/dicomweb/studies/1.2.3.999", 404),
    ],
)
async def test_bad_retrievals_get_dicom_errors(client: Client, path: str, status: int) -> None:
    """Malformed UIDs are 400, unknown studies and facilities 404, in DICOM JSON."""
    resp = await client.get(path)
    assert resp.status == status, await resp.text()
    if status >= 400:
        assert resp.content_type == "application/dicom+json"
        assert (await resp.json())[0]["00000902"]["Value"][0]


async def test_retrieve_from_a_down_facility_is_502_then_503(client: Client, city: City) -> None:
    """A facility that is down answers 502; once its breaker opens, 503 with Retry-After."""
    fid, study_dir = _study_of_kind(city, "dicomweb")
    city.fault(fid, "down")
    statuses = []
    for _ in range(4):
        resp = await client.get(f"/facilities/{fid}/dicomweb/studies/{study_dir.name}")
        statuses.append(resp.status)
    assert statuses[:3] == [502, 502, 502] and statuses[3] == 503
    assert resp.headers["Retry-After"] == "30"


async def test_accept_negotiation(client: Client, city: City) -> None:
    """A rendered type on a retrieval is 406; a transfer syntax the instances are not stored in
    gets them as Explicit VR Little Endian, the syntax every client takes."""
    fid, study_dir = _study_of_kind(city, "dicomweb")
    url = f"/facilities/{fid}/dicomweb/studies/{study_dir.name}"
    resp = await client.get(url, headers={"Accept": "image/jpeg"})
    assert resp.status == 406
    resp = await client.get(
        url,
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )
    assert resp.status == 200
    body = await resp.read()
    assert b"transfer-syntax=1.2.840.10008.1.2.1\r\n" in body


async def test_unfound_study_while_a_facility_is_down_is_503_not_404(
    client: Client,
    city: City,
) -> None:
    """A study no answering facility holds is only 'not found' when every facility answered."""
    fid, _ = _study_of_kind(city, "dicomweb")
    city.fault(fid, "down")
    resp = await client.get("/dicomweb/studies/1.2.3.4.5.6.7.8.9.10")
    assert resp.status == 503
    assert "did not answer" in (await resp.json())[0]["00000902"]["Value"][0]
