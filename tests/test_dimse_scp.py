"""The gateway's DIMSE SCP with dcmtk's echoscu, findscu, getscu, movescu and storescu:
every facility of the city behind one AE title, whatever protocol each facility speaks."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from adapters.dul import Association
from adapters.types import DicomWebEndpoint, DimseEndpoint, NoImaging
from gateway.registry import load_registry
from tests.city import City, Client, open_gateway, token
from tests.ports import free_port

pytestmark = pytest.mark.skipif(shutil.which("findscu") is None, reason="dcmtk is not installed")
REGISTRY = load_registry()
KINDS = {"dicomweb": DicomWebEndpoint, "dimse": DimseEndpoint, "archive": NoImaging}


class Gateway:
    def __init__(self, client: Client, port: int, mover_port: int) -> None:
        self.client = client
        self.port = port
        self.mover_port = mover_port

    def dcmtk(
        self,
        tool: str,
        *,
        keys: Sequence[str] = (),
        extra: Sequence[str] = (),
        files: Sequence[str] = (),
        aec: str = "HUREN",
    ) -> subprocess.CompletedProcess[str]:
        """Run a dcmtk tool against the gateway's SCP (peer and port before any files)."""
        args = [tool, "-aet", "VIEWER", "-aec", aec, *(a for k in keys for a in ("-k", k)), *extra]
        return subprocess.run(
            [*args, "127.0.0.1", str(self.port), *files], capture_output=True, text=True, timeout=60
        )


@pytest.fixture
async def gateway(city: City) -> AsyncIterator[Gateway]:
    mover = free_port()
    destinations = f"STORESCP=127.0.0.1:{mover}"
    async with open_gateway(
        city, move_destinations=destinations, trusted_calling_aes="VIEWER,MODALITY"
    ) as (client, settings):
        yield Gateway(client, settings.dimse_port, mover)


def _study_of_kind(city: City, kind: str) -> tuple[str, Path]:
    for f in REGISTRY:
        root = city.data_dir / "seed" / "dicom" / f.id
        if isinstance(f.imaging, KINDS[kind]) and root.is_dir():
            return f.id, sorted(p for p in root.iterdir() if p.is_dir())[0]
    raise AssertionError(kind)


def _answers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


async def test_echoscu(gateway: Gateway) -> None:
    """C-ECHO answers success."""
    proc = await asyncio.to_thread(gateway.dcmtk, "echoscu")
    assert proc.returncode == 0, proc.stderr


async def test_findscu_study_level_finds_a_resident_at_every_facility(
    gateway: Gateway, city: City, tmp_path: Path
) -> None:
    """C-FIND STUDY by national ID returns the person's studies from every facility, each under
    that facility's MRN, with InstitutionName and RetrieveAETitle HUREN."""
    person = max(city.patients(), key=lambda p: len(p["records"]))
    proc = await asyncio.to_thread(
        gateway.dcmtk,
        "findscu",
        keys=[
            "QueryRetrieveLevel=STUDY",
            f"PatientID={person['national_id']}",
            "StudyInstanceUID",
            "InstitutionName",
            "ModalitiesInStudy",
            "RetrieveAETitle",
        ],
        extra=["-S", "-X", "-od", str(tmp_path)],
    )
    assert proc.returncode == 0, proc.stderr
    answers = _answers(tmp_path)
    assert answers
    records = person["records"]
    names = {f.name_zh: f.id for f in REGISTRY}
    for a in answers:
        fid = names[a.InstitutionName]
        assert a.PatientID == records[fid]
        assert a.RetrieveAETitle == "HUREN"


async def test_findscu_patient_series_and_image_levels(
    gateway: Gateway, city: City, tmp_path: Path
) -> None:
    """Patient Root PATIENT level, then SERIES and IMAGE levels of a study held by a DIMSE PACS."""
    _, study_dir = _study_of_kind(city, "dimse")
    ds = pydicom.dcmread(next(study_dir.rglob("*.dcm")), stop_before_pixels=True)
    out = tmp_path / "patient"
    out.mkdir()
    proc = await asyncio.to_thread(
        gateway.dcmtk,
        "findscu",
        keys=["QueryRetrieveLevel=PATIENT", f"PatientID={ds.PatientID}", "PatientName"],
        extra=["-P", "-X", "-od", str(out)],
    )
    assert proc.returncode == 0, proc.stderr
    assert [a.PatientID for a in _answers(out)] == [ds.PatientID]
    out = tmp_path / "series"
    out.mkdir()
    await asyncio.to_thread(
        gateway.dcmtk,
        "findscu",
        keys=[
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={ds.StudyInstanceUID}",
            "SeriesInstanceUID",
            "Modality",
        ],
        extra=["-S", "-X", "-od", str(out)],
    )
    want_series = {p.name for p in study_dir.iterdir()}
    assert {a.SeriesInstanceUID for a in _answers(out)} == want_series
    out = tmp_path / "image"
    out.mkdir()
    await asyncio.to_thread(
        gateway.dcmtk,
        "findscu",
        keys=[
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={ds.StudyInstanceUID}",
            f"SeriesInstanceUID={ds.SeriesInstanceUID}",
            "SOPInstanceUID",
        ],
        extra=["-S", "-X", "-od", str(out)],
    )
    want = {p.stem for p in (study_dir / ds.SeriesInstanceUID).glob("*.dcm")}
    assert {a.SOPInstanceUID for a in _answers(out)} == want


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_getscu_retrieves_byte_identical_instances(
    gateway: Gateway, city: City, tmp_path: Path, kind: str
) -> None:
    """C-GET of a study, wherever it is held, returns every instance with the seed's pixels."""
    _, study_dir = _study_of_kind(city, kind)
    proc = await asyncio.to_thread(
        gateway.dcmtk,
        "getscu",
        keys=["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_dir.name}"],
        extra=["-S", "-od", str(tmp_path)],
    )
    assert proc.returncode == 0, proc.stderr
    want = {p.stem: pydicom.dcmread(p).PixelData for p in study_dir.rglob("*.dcm")}
    got = {
        pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).PixelData for p in tmp_path.iterdir()
    }
    assert got == want


async def test_movescu_sends_a_study_to_a_configured_destination(
    gateway: Gateway, city: City, tmp_path: Path
) -> None:
    """C-MOVE to STORESCP (configured) delivers the study; an unknown destination is refused."""
    _, study_dir = _study_of_kind(city, "dicomweb")
    scp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(tmp_path), str(gateway.mover_port)]
    )
    try:
        time.sleep(0.5)
        proc = await asyncio.to_thread(
            gateway.dcmtk,
            "movescu",
            keys=["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_dir.name}"],
            extra=["-S", "-aem", "STORESCP"],
        )
        assert proc.returncode == 0, proc.stderr
        bad = await asyncio.to_thread(
            gateway.dcmtk,
            "movescu",
            keys=["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_dir.name}"],
            extra=["-S", "-aem", "NOWHERE"],
        )
        assert bad.returncode != 0 or "Move Destination Unknown" in bad.stderr + bad.stdout
    finally:
        scp.terminate()
        scp.wait(10)
    assert {pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.iterdir()} == {
        p.stem for p in study_dir.rglob("*.dcm")
    }


@pytest.mark.parametrize("kind", ["archive", "dicomweb", "dimse"])
async def test_storescu_into_a_facility_then_found(
    gateway: Gateway, city: City, tmp_path: Path, kind: str
) -> None:
    """C-STORE to the AE title F0xx stores into that facility; QIDO then finds it there."""
    fid = next(f.id for f in REGISTRY if isinstance(f.imaging, KINDS[kind]))
    ds = pydicom.dcmread(next((city.data_dir / "seed" / "dicom").rglob("*.dcm")))
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = await asyncio.to_thread(gateway.dcmtk, "storescu", aec=fid, files=[str(path)])
    assert proc.returncode == 0, proc.stderr
    resp = await gateway.client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}
    )
    found = await resp.json()
    assert [s["00111001"]["Value"][0] for s in found] == [fid]


async def test_c_store_without_a_facility_or_with_garbage_is_refused(gateway: Gateway) -> None:
    """Storing to HUREN from an unknown AE, or bytes that are not DICOM: failure statuses."""
    ct = "1.2.840.10008.5.1.4.1.1.2"
    for called, expected in (("HUREN", 0xA700), ("F001", 0xC000)):
        assoc = await Association.open(
            "127.0.0.1",
            gateway.port,
            calling_ae="MODALITY",
            called_ae=called,
            abstract_syntaxes=[ct],
        )
        status = await assoc.c_store(
            assoc.context_for(ct), ct, "1.2.3.4", b"\x08\x00\x18\x00garbage!", 1
        )
        await assoc.release()
        assert status == expected
    # And the SCP still answers.
    assert (await asyncio.to_thread(gateway.dcmtk, "echoscu")).returncode == 0


async def test_findscu_below_study_level_without_a_study_is_refused(
    gateway: Gateway, tmp_path: Path
) -> None:
    """SERIES level with no StudyInstanceUID: an Identifier-does-not-match failure, not a crash."""
    proc = await asyncio.to_thread(
        gateway.dcmtk,
        "findscu",
        keys=["QueryRetrieveLevel=SERIES", "SeriesInstanceUID"],
        extra=["-S", "-X", "-od", str(tmp_path)],
    )
    assert "0xa900" in (proc.stderr + proc.stdout).lower() or not list(tmp_path.glob("rsp*"))
    assert (await asyncio.to_thread(gateway.dcmtk, "echoscu")).returncode == 0


async def test_dimse_takes_only_registered_callers_and_applies_the_same_rules(
    gateway: Gateway, city: City
) -> None:
    """An unknown calling AE is refused at association; a facility's registered workstation
    sees its own patients' studies city-wide, not a stranger's (0x0124, audited); a bearer
    token sent by user identity negotiation is not needed for that, and a forged one fails."""
    refused = await asyncio.to_thread(
        subprocess.run,
        ["echoscu", "-aet", "NOBODY", "-aec", "HUREN", "127.0.0.1", str(gateway.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "Rejected" in refused.stderr or "rejected" in refused.stderr.lower()

    studies = city.studies()
    person = next(
        p
        for p in city.patients()
        if len(p["records"]) >= 2 and any(s["national_id"] == p["national_id"] for s in studies)
    )
    nid = str(person["national_id"])
    mine = sorted(person["records"])[0]
    stranger = next(f.id for f in REGISTRY if f.id not in person["records"])

    def find(calling: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "findscu",
                "-v",
                "-S",
                "-aet",
                calling,
                "-aec",
                "HUREN",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"PatientID={nid}",
                "-k",
                "StudyInstanceUID",
                "127.0.0.1",
                str(gateway.port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = await asyncio.to_thread(find, f"{mine}WS")
    assert ok.returncode == 0, ok.stderr
    assert "StudyInstanceUID" in ok.stderr or "0020,000d" in ok.stderr.lower()
    denied = await asyncio.to_thread(find, f"{stranger}WS")
    assert "Status: 0x124" in denied.stderr, denied.stderr  # Refused: Not Authorized

    admin = {"Authorization": f"Bearer {token(city.data_dir, 'admin')}"}
    resp = await gateway.client.get(
        "/fhir/AuditEvent", params={"agent": f"ae:{stranger}WS"}, headers=admin
    )
    events = (await resp.json())["entry"]
    assert events and events[0]["resource"]["outcome"] == "4"
    assert events[0]["resource"]["entity"][-1]["what"]["display"] == "dimse:C-FIND"
    resp = await gateway.client.get(
        "/fhir/AuditEvent", params={"agent": f"ae:{mine}WS"}, headers=admin
    )
    assert (await resp.json())["entry"][0]["resource"]["outcome"] == "0"

    # A forged token in user identity negotiation: the association is refused.
    from adapters.dul import Association

    with pytest.raises(Exception, match="rejected"):
        await Association.open(
            "127.0.0.1",
            gateway.port,
            calling_ae=f"{mine}WS",
            called_ae="HUREN",
            abstract_syntaxes=["1.2.840.10008.1.1"],
            user_identity=b"not.a.jwt",
        )
