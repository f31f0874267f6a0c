"""Orthanc (a real PACS, from Debian) as a facility of the city: registered once through
DICOMweb and once through DIMSE, its studies come back through the gateway's federated search
beside the simulated facilities', and retrieve byte-identical either way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from gateway.registry import default_registry_path
from tests.city import City, Client, open_gateway
from tests.orthanc import OrthancServer


def _registry_with_orthanc(path: Path, orthanc: OrthancServer) -> Path:
    """The city's registry plus Orthanc twice: F112 over DICOMweb, F113 over DIMSE."""
    raw = json.loads(default_registry_path().read_text(encoding="utf-8"))
    base = {"level": "二级", "kind": "general", "district": "新北区", "alliances": []}
    raw["facilities"] += [
        {
            **base,
            "id": "F112",
            "name_zh": "测试医院(DICOMweb)",
            "name_en": "Orthanc over DICOMweb",
            "mrn_issuer": "CZ-F112",
            "imaging": {"kind": "dicomweb", "url": orthanc.dicomweb_url},
            "lab": {"kind": "none"},
        },
        {
            **base,
            "id": "F113",
            "name_zh": "测试医院(DIMSE)",
            "name_en": "Orthanc over DIMSE",
            "mrn_issuer": "CZ-F113",
            "imaging": {
                "kind": "dimse",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "ae_title": orthanc.aet,
            },
            "lab": {"kind": "none"},
        },
    ]
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
async def stocked(orthanc: OrthancServer, city: City, tmp_path: Path) -> list[pydicom.Dataset]:
    """A new study uploaded to Orthanc: copies of seed instances under fresh UIDs."""
    study, series = generate_uid(), generate_uid()
    out: list[pydicom.Dataset] = []
    for i, path in enumerate(sorted((city.data_dir / "seed" / "dicom").rglob("*.dcm"))[:3]):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        target = tmp_path / f"{i}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(ds)
    assert await asyncio.to_thread(orthanc.upload, sorted(tmp_path.glob("*.dcm"))) == 3
    return out


@pytest.fixture
async def client(city: City, orthanc: OrthancServer, tmp_path: Path) -> AsyncIterator[Client]:
    registry = _registry_with_orthanc(tmp_path / "facilities.json", orthanc)
    async with open_gateway(city, probe=True, federation_deadline=3.0, registry_path=registry) as (
        c,
        _,
    ):
        yield c


async def test_orthanc_study_found_by_federated_search_both_ways(
    client: Client,
    stocked: list[pydicom.Dataset],
) -> None:
    """QIDO across 113 facilities finds the Orthanc study through F112 and F113, beside others."""
    study = stocked[0].StudyInstanceUID
    resp = await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
    assert resp.status == 200 and "Warning" not in resp.headers, resp.headers.get("Warning")
    holders = sorted(s["00111001"]["Value"][0] for s in await resp.json())
    assert holders == ["F112", "F113"]
    everything = await (await client.get("/dicomweb/studies", params={"limit": "1000"})).json()
    assert len({s["00111001"]["Value"][0] for s in everything}) > 10
    ready = await (await client.get("/readyz")).json()
    assert {f["id"]: f["reachable"] for f in ready["facilities"]}.keys() >= {"F112", "F113"}
    assert all(f["reachable"] for f in ready["facilities"] if f["id"] in ("F112", "F113"))


@pytest.mark.parametrize("fid", ["F112", "F113"])
async def test_orthanc_study_retrieves_byte_identical(
    client: Client,
    stocked: list[pydicom.Dataset],
    fid: str,
) -> None:
    """WADO-RS through the gateway, relayed from Orthanc's DICOMweb or fetched by C-GET."""
    headers = {"Authorization": client.session.headers["Authorization"]}
    dw = DICOMwebClient(url=str(client.make_url(f"/facilities/{fid}/dicomweb")), headers=headers)
    got = await asyncio.to_thread(dw.retrieve_study, stocked[0].StudyInstanceUID)
    assert {g.SOPInstanceUID: g.PixelData for g in got} == {
        d.SOPInstanceUID: d.PixelData for d in stocked
    }
    series = await asyncio.to_thread(dw.search_for_series, stocked[0].StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [stocked[0].SeriesInstanceUID]


async def test_orthanc_metadata_bulk_data_is_served_by_the_gateway(
    client: Client,
    stocked: list[pydicom.Dataset],
    orthanc: OrthancServer,
) -> None:
    """Orthanc's own bulk data URLs never reach the client: they point at the gateway."""
    ds = stocked[0]
    meta = await (
        await client.get(f"/facilities/F112/dicomweb/studies/{ds.StudyInstanceUID}/metadata")
    ).json()
    uris = [e["BulkDataURI"] for m in meta for e in m.values() if "BulkDataURI" in e]
    assert uris and all(u.startswith(str(client.make_url("/facilities/F112/"))) for u in uris)
    assert not any(str(orthanc.http_port) in u for u in uris)
