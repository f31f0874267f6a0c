"""The simulated facilities speak their protocols to clients nobody here wrote:
dcmtk (echoscu, findscu, getscu, storescu) for DIMSE, dicomweb-client for DICOMweb, fhirpy
for FHIR; and their faults look like real failures on the wire."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fhirpy import AsyncFHIRClient

from adapters.types import DicomWebEndpoint, DimseEndpoint, FhirEndpoint
from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.lab_codes import LabCodeMap
from gateway.registry import Facility, load_registry
from tests.city import City

REGISTRY = load_registry()
DCMTK = shutil.which("findscu") is not None
needs_dcmtk = pytest.mark.skipif(
    not DCMTK, reason="dcmtk is not installed (scripts/test installs it)"
)


def _with_studies(city: City, kind: type) -> list[Facility]:
    return [
        f
        for f in REGISTRY
        if isinstance(f.imaging, kind) and (city.data_dir / "seed" / "dicom" / f.id).is_dir()
    ]


def _seed_files(city: City, fid: str) -> list[Path]:
    return sorted((city.data_dir / "seed" / "dicom" / fid).rglob("*.dcm"))


def _dcmtk(
    tool: str,
    ep: DimseEndpoint,
    *,
    keys: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> None:
    """Run a dcmtk Query/Retrieve tool (Study Root) against a simulated PACS."""
    args = [tool, "-S", "-aec", ep.ae_title, *(a for k in keys for a in ("-k", k)), *extra]
    subprocess.run([*args, ep.host, str(ep.port)], check=True, timeout=60)


def _dimse(f: Facility) -> DimseEndpoint:
    assert isinstance(f.imaging, DimseEndpoint)
    return f.imaging


@needs_dcmtk
def test_echoscu_and_findscu_against_a_dimse_facility(city: City, tmp_path: Path) -> None:
    """C-ECHO succeeds; C-FIND STUDY by the facility's MRN finds that patient's studies."""
    f = _with_studies(city, DimseEndpoint)[0]
    ep = _dimse(f)
    subprocess.run(["echoscu", "-aec", ep.ae_title, ep.host, str(ep.port)], check=True, timeout=30)
    ds = pydicom.dcmread(_seed_files(city, f.id)[0], stop_before_pixels=True)
    _dcmtk(
        "findscu",
        ep,
        keys=[
            "QueryRetrieveLevel=STUDY",
            f"PatientID={ds.PatientID}",
            "StudyInstanceUID",
            "InstitutionName",
        ],
        extra=["-X", "-od", str(tmp_path)],
    )
    answers = [pydicom.dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
    assert ds.StudyInstanceUID in {a.StudyInstanceUID for a in answers}
    assert {a.InstitutionName for a in answers} == {f.name_zh}


@needs_dcmtk
def test_getscu_retrieves_byte_identical_pixel_data(city: City, tmp_path: Path) -> None:
    """C-GET of a study returns every instance with the seed's pixel data."""
    f = _with_studies(city, DimseEndpoint)[0]
    ep = _dimse(f)
    first = pydicom.dcmread(_seed_files(city, f.id)[0])
    study = [p for p in _seed_files(city, f.id) if p.parent.parent.name == first.StudyInstanceUID]
    _dcmtk(
        "getscu",
        ep,
        keys=["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.StudyInstanceUID}"],
        extra=["-od", str(tmp_path)],
    )
    got = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in tmp_path.iterdir()}
    assert len(got) == len(study)
    for path in study:
        want = pydicom.dcmread(path)
        assert got[want.SOPInstanceUID].PixelData == want.PixelData


@needs_dcmtk
def test_storescu_then_findscu_finds_the_stored_instance(city: City, tmp_path: Path) -> None:
    """C-STORE into a simulated PACS is then found by C-FIND."""
    source, target = _with_studies(city, DimseEndpoint)[:2]
    ep = _dimse(target)
    path = _seed_files(city, source.id)[0]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    sent = tmp_path / "sent.dcm"
    ds.save_as(sent)
    subprocess.run(
        ["storescu", "-aec", ep.ae_title, ep.host, str(ep.port), str(sent)], check=True, timeout=30
    )
    out = tmp_path / "find"
    out.mkdir()
    _dcmtk(
        "findscu",
        ep,
        keys=[
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={ds.StudyInstanceUID}",
            f"SeriesInstanceUID={ds.SeriesInstanceUID}",
            f"SOPInstanceUID={ds.SOPInstanceUID}",
        ],
        extra=["-X", "-od", str(out)],
    )
    assert [pydicom.dcmread(p).SOPInstanceUID for p in out.glob("rsp*.dcm")] == [ds.SOPInstanceUID]


def test_dicomweb_client_searches_retrieves_and_stores(city: City) -> None:
    """QIDO, WADO (byte-identical pixels) and STOW through dicomweb-client on a facility."""
    f = _with_studies(city, DicomWebEndpoint)[0]
    assert isinstance(f.imaging, DicomWebEndpoint)
    client = DICOMwebClient(url=f.imaging.url)
    want = pydicom.dcmread(_seed_files(city, f.id)[0])
    studies = client.search_for_studies(search_filters={"PatientID": want.PatientID})
    assert want.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in studies}
    got = client.retrieve_instance(
        want.StudyInstanceUID, want.SeriesInstanceUID, want.SOPInstanceUID
    )
    assert got.PixelData == want.PixelData and got.PatientName == want.PatientName
    other = _with_studies(city, DicomWebEndpoint)[1]
    assert isinstance(other.imaging, DicomWebEndpoint)
    want.SOPInstanceUID = want.SOPInstanceUID + ".7"
    want.file_meta.MediaStorageSOPInstanceUID = want.SOPInstanceUID
    answer = DICOMwebClient(url=other.imaging.url).store_instances([want])
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == want.SOPInstanceUID
    found = DICOMwebClient(url=other.imaging.url).search_for_instances(
        want.StudyInstanceUID,
        want.SeriesInstanceUID,
        search_filters={"SOPInstanceUID": want.SOPInstanceUID},
    )
    assert len(found) == 1


def test_stow_of_garbage_is_refused_per_instance(city: City) -> None:
    """A part that is not DICOM is listed in FailedSOPSequence with status 409."""
    f = _with_studies(city, DicomWebEndpoint)[0]
    assert isinstance(f.imaging, DicomWebEndpoint)
    body = b"--xx\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--xx--\r\n"
    req = urllib.request.Request(
        f"{f.imaging.url}/studies",
        data=body,
        method="POST",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=xx'},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 409
    assert "00081198" in json.loads(err.value.read())


async def test_fhirpy_searches_a_lab_system_by_national_id(city: City) -> None:
    """fhirpy finds a resident's Observations at a FHIR lab facility by chained identifier."""
    labs = [f for f in REGISTRY if isinstance(f.lab, FhirEndpoint)]
    fid, nid = None, None
    for f in labs:
        path = city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                if r["resourceType"] == "Observation":
                    fid = f
                    break
        if fid:
            break
    assert fid is not None and isinstance(fid.lab, FhirEndpoint)
    patients = [
        json.loads(x)
        for x in (city.data_dir / "seed" / "fhir" / f"{fid.id}.ndjson").read_text().splitlines()
    ]
    patient = next(r for r in patients if r["resourceType"] == "Patient")
    nid = next(i["value"] for i in patient["identifier"] if i["system"] == NATIONAL_ID_SYSTEM)
    client = AsyncFHIRClient(fid.lab.url)
    obs = (
        await client.resources("Observation")
        .search(**{"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"})
        .fetch_all()
    )
    assert obs and all(o["subject"]["reference"] == f"Patient/{patient['id']}" for o in obs)
    # LOINC, or a local code the city's ConceptMap maps to LOINC.
    codes = LabCodeMap.load()
    resources = [o.serialize() for o in obs]  # type: ignore[no-untyped-call]
    assert all(codes.standard_code(codes.translate(r)) for r in resources)


async def test_down_refuses_connections_and_garbage_answers_junk(city: City) -> None:
    """Down closes the port (connection refused); garbage answers bytes that are not HTTP."""
    f = _with_studies(city, DicomWebEndpoint)[0]
    assert isinstance(f.imaging, DicomWebEndpoint)
    port = int(f.imaging.url.split(":")[2].split("/")[0])
    try:
        city.fault(f.id, "down")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        city.fault(f.id, "garbage")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        assert data and not data.startswith(b"HTTP/")
    finally:
        city.reset()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_control_api_rejects_bad_faults(city: City) -> None:
    """Unknown facility -> 404; unknown mode -> 400."""
    for fid, body, code in (("F999", {"mode": "down"}, 404), ("F001", {"mode": "sideways"}, 400)):
        req = urllib.request.Request(
            f"{city.control_url}/_sim/faults/{fid}", data=json.dumps(body).encode(), method="PUT"
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == code
