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
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from adapters.dul import Association
from adapters.types import DicomWebEndpoint, DimseEndpoint, NoImaging
from gateway.registry import load_registry
from tests.city import City, Client, bearer, open_gateway, token
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


# -- the HUREN private block (holder and recognition verdict) in C-FIND answers ---------------

#: The HUREN block's elements by offset, with the VR each is answered in (as in
#: dicom/verdict_elements.py): holder, mark, recognised, catalogue version, catalogue item,
#: reasons, valid until.
HUREN_VRS = {0x01: "LO", 0x02: "CS", 0x03: "CS", 0x04: "LO", 0x05: "LO", 0x06: "LO", 0x07: "DA"}
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND


def _study_query(nid: str, blocks: Sequence[tuple[int, str, Sequence[int]]] = ()) -> Dataset:
    """A STUDY-level identifier naming a patient; each block (number, creator, element
    offsets) is reserved in group 0011 with those elements asked for (empty values)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = nid
    ds.StudyInstanceUID = ""
    for block, creator, offsets in blocks:
        ds.add_new(Tag(0x0011, block), "LO", creator)
        for offset in offsets:
            ds.add_new(Tag(0x0011, block << 8 | offset), HUREN_VRS.get(offset, "LO"), None)
    return ds


def _pynetdicom_find(port: int, calling: str, query: Dataset, syntax: str) -> list[Dataset]:
    """C-FIND with pynetdicom (an SCU that is not the gateway's own code) on one transfer
    syntax; the pending answers, after a final Success."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(STUDY_FIND, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="HUREN")
    assert assoc.is_established
    answers: list[Dataset] = []
    statuses: list[int] = []
    try:
        for status, found in assoc.send_c_find(query, STUDY_FIND):
            assert status is not None, "no answer (association aborted or timed out)"
            statuses.append(int(status.Status))
            if found is not None:
                answers.append(found)
    finally:
        assoc.release()
    assert statuses and statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return answers


def _texts(ds: Dataset, tag: int) -> list[str] | None:
    """An answer element's values as text, however it was read: with its VR (explicit VR),
    or as UN bytes (implicit VR: the SCU does not know the private block's dictionary).
    None when the element is not in the answer at all."""
    if tag not in ds:
        return None
    value = ds[tag].value
    if value is None or value in ("", b""):
        return []
    if isinstance(value, bytes):
        return value.decode("utf-8").rstrip(" \x00").split("\\")
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _qido_block(study: dict[str, object], offset: int) -> list[str]:
    """A QIDO-RS study's element (0011,10xx) values ([] when it is not there)."""
    element = study.get(f"001110{offset:02X}")
    return [str(v) for v in element.get("Value", [])] if isinstance(element, dict) else []


def _patients_with_studies(city: City) -> list[tuple[str, list[str]]]:
    """Residents with studies at two facilities or more, each with the facilities that know
    them (whose workstations may ask for their studies)."""
    studies = city.studies()
    return [
        (str(p["national_id"]), sorted(p["records"]))
        for p in city.patients()
        if len({s["facility_id"] for s in studies if s["national_id"] == p["national_id"]}) >= 2
    ]


async def _qido(
    gateway: Gateway, nid: str, headers: dict[str, str]
) -> dict[str, dict[str, object]]:
    resp = await gateway.client.get("/dicomweb/studies", params={"PatientID": nid}, headers=headers)
    assert resp.status == 200, await resp.text()
    return {ds["0020000D"]["Value"][0]: ds for ds in await resp.json()}


async def _judged_for_the_asker(
    gateway: Gateway, city: City
) -> tuple[str, str, dict[str, dict[str, object]]]:
    """A resident, a facility that knows them, and QIDO-RS's answer to that facility's
    clinician, where a study's verdict depends on who asks: no recognition scope covers its
    holder and that facility (scope-not-covered), as a caller with no facility would not be
    told. A C-FIND judged for anyone but its caller then cannot match it."""
    for nid, facilities in _patients_with_studies(city):
        for asker in facilities:
            qido = await _qido(gateway, nid, bearer(city.data_dir, "clinician", facility=asker))
            if any("scope-not-covered" in _qido_block(ds, 0x06) for ds in qido.values()):
                return nid, asker, qido
    raise AssertionError("the seed has no study outside the scope of a facility asking for it")


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
async def test_c_find_answers_the_huren_block_as_qido_does(
    gateway: Gateway, city: City, syntax: str
) -> None:
    """A facility's workstation asks a patient's studies with the HUREN block's keys: every
    answer carries the holder and the verdict QIDO-RS gives the same facility's clinician for
    the same study (with proper VRs when the context is explicit VR); asked without them, the
    answers carry no private element at all."""
    nid, mine, qido = await _judged_for_the_asker(gateway, city)
    assert len(qido) >= 2
    query = _study_query(nid, [(0x10, "HUREN", sorted(HUREN_VRS))])
    answers = await asyncio.to_thread(
        _pynetdicom_find, gateway.port, f"{mine}WS", query, str(syntax)
    )
    assert {a.StudyInstanceUID for a in answers} == set(qido)
    for a in answers:
        study = qido[a.StudyInstanceUID]
        assert _texts(a, 0x00110010) == ["HUREN"]
        assert _texts(a, 0x00111001) == _qido_block(study, 0x01) != []
        assert _texts(a, 0x00111003) in (["YES"], ["NO"])
        assert _texts(a, 0x00111004) and _texts(a, 0x00111004) == _qido_block(study, 0x04)
        for offset in HUREN_VRS:
            assert _texts(a, 0x00111000 | offset) == _qido_block(study, offset), hex(offset)
        if syntax == ExplicitVRLittleEndian:
            assert all(
                a[0x00111000 | o].VR == vr for o, vr in HUREN_VRS.items() if a[0x00111000 | o].value
            )
    assert any("scope-not-covered" in (_texts(a, 0x00111006) or []) for a in answers)

    plain = await asyncio.to_thread(
        _pynetdicom_find, gateway.port, f"{mine}WS", _study_query(nid), str(syntax)
    )
    assert {a.StudyInstanceUID for a in plain} == set(qido)
    assert all(not any(int(t) >> 16 == 0x0011 for t in a.keys()) for a in plain)


async def test_c_find_answers_another_creator_block_with_no_value(
    gateway: Gateway, city: City
) -> None:
    """Another vendor's block at (0011,0010) asking (0011,1001) and (0011,1003) gets those with
    no value, never the gateway's data; HUREN reserved at (0011,0011) by the same query gets
    its elements there, at (0011,1101) and (0011,1103)."""
    nid, mine, qido = await _judged_for_the_asker(gateway, city)
    other = (0x10, "ACME 1.0", [0x01, 0x03])
    both = _study_query(nid, [other, (0x11, "HUREN", [0x01, 0x03])])
    answers = await asyncio.to_thread(
        _pynetdicom_find, gateway.port, f"{mine}WS", both, str(ExplicitVRLittleEndian)
    )
    assert {a.StudyInstanceUID for a in answers} == set(qido)
    for a in answers:
        study = qido[a.StudyInstanceUID]
        assert _texts(a, 0x00110010) == ["ACME 1.0"]
        assert _texts(a, 0x00111001) == [] and _texts(a, 0x00111003) == []
        assert _texts(a, 0x00110011) == ["HUREN"]
        assert _texts(a, 0x00111101) == _qido_block(study, 0x01) != []
        assert _texts(a, 0x00111103) == _qido_block(study, 0x03) != []
    alone = await asyncio.to_thread(
        _pynetdicom_find,
        gateway.port,
        f"{mine}WS",
        _study_query(nid, [other]),
        str(ImplicitVRLittleEndian),
    )
    assert len(alone) == len(qido)
    for a in alone:
        private = {int(t): _texts(a, t) for t in a.keys() if int(t) >> 16 == 0x0011}
        assert private == {0x00110010: ["ACME 1.0"], 0x00111001: [], 0x00111003: []}


@pytest.mark.parametrize("syntax", ["-xe", "-xi"])
async def test_findscu_asks_the_huren_block(
    gateway: Gateway, city: City, tmp_path: Path, syntax: str
) -> None:
    """dcmtk's findscu, which knows nothing of the block, asks (0011,1001) and (0011,1003)
    under the HUREN creator (-k "0011,0010=HUREN"): each answer carries what QIDO-RS answers
    the same caller (a trusted AE title: a service, whose verdict names no asking facility)."""
    nid, _ = _patients_with_studies(city)[0]
    qido = await _qido(gateway, nid, {})
    proc = await asyncio.to_thread(
        gateway.dcmtk,
        "findscu",
        keys=[
            "QueryRetrieveLevel=STUDY",
            f"PatientID={nid}",
            "StudyInstanceUID",
            "(0011,0010)=HUREN",
            "(0011,1001)",
            "(0011,1003)",
        ],
        extra=["-S", syntax, "-X", "-od", str(tmp_path)],
    )
    assert proc.returncode == 0, proc.stderr
    answers = _answers(tmp_path)
    assert {a.StudyInstanceUID for a in answers} == set(qido)
    for a in answers:
        study = qido[a.StudyInstanceUID]
        assert _texts(a, 0x00110010) == ["HUREN"]
        assert _texts(a, 0x00111001) == _qido_block(study, 0x01) != []
        assert _texts(a, 0x00111003) == _qido_block(study, 0x03) != []
        assert _texts(a, 0x00111004) is None  # not asked, not answered


async def test_c_find_says_yes_for_a_study_recognised_today(city: City, tmp_path: Path) -> None:
    """A chest CT acquired today at one hospital, asked by another's workstation (the seed's
    studies are all too old to count, so this is where a YES must come from): C-FIND answers
    it recognised, with the mark, the catalogue item and the last valid day, as QIDO-RS
    answers that facility's clinician."""
    from tests.test_recognition_e2e import (
        ASKER,
        CT_AT,
        _catalogue_for_today,
        _patient,
        store_fresh_ct,
    )

    person = _patient(city)
    nid = str(person["national_id"])
    catalogue = _catalogue_for_today(tmp_path)
    async with open_gateway(city, recognition_catalogue_path=catalogue) as (client, settings):
        ct = await store_fresh_ct(client, city, person)
        resp = await client.get(
            "/dicomweb/studies",
            params={"PatientID": nid},
            headers=bearer(city.data_dir, "clinician", facility=ASKER),
        )
        qido = {ds["0020000D"]["Value"][0]: ds for ds in await resp.json()}
        query = _study_query(nid, [(0x10, "HUREN", sorted(HUREN_VRS))])
        answers = await asyncio.to_thread(
            _pynetdicom_find,
            settings.dimse_port,
            f"{ASKER}WS",
            query,
            str(ExplicitVRLittleEndian),
        )
    assert {a.StudyInstanceUID for a in answers} == set(qido)
    for a in answers:
        for offset in HUREN_VRS:
            assert _texts(a, 0x00111000 | offset) == _qido_block(qido[a.StudyInstanceUID], offset)
    [fresh] = [a for a in answers if a.StudyInstanceUID == ct[0].StudyInstanceUID]
    assert _texts(fresh, 0x00111001) == [CT_AT]
    assert _texts(fresh, 0x00111002) == ["HR"] and _texts(fresh, 0x00111003) == ["YES"]
    assert _texts(fresh, 0x00111005) == ["CT-CHEST"] and _texts(fresh, 0x00111006) == []
    assert str(fresh[0x00111007].value) >= ct[0].StudyDate
