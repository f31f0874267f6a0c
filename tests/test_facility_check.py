"""The go-live conformance check (gateway/facility_check.py) against real systems: Orthanc over
DICOMweb and DIMSE, loopback servers that answer the wrong thing, a simulated FHIR lab, and the
gateway's own HL7 v2 lab feed, which answers test messages (MSH-11 T) without storing them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from adapters.mllp import send_and_wait_ack
from adapters.types import (
    DicomWebEndpoint,
    DimseEndpoint,
    FhirEndpoint,
    Hl7v2Feed,
    ImagingEndpoint,
    LabEndpoint,
    NoImaging,
    NoLab,
)
from gateway.facility_check import (
    CheckItem,
    CheckReport,
    _Charsets,
    build_test_message,
    check_facility,
    main,
    report_page,
)
from gateway.lab_codes import LabCodeMap
from gateway.lab_feed import LabFeed
from gateway.registry import Facility, default_registry_path, load_registry
from gateway.storage import Store, database_url_for, lab_result
from seeds.sim_fhir import FhirStore, add_routes, capability_statement
from tests.orthanc import OrthancServer
from tests.ports import free_port

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
IMAGING_NAMES = {
    "dicomweb": [
        "dicomweb.qido-studies",
        "dicomweb.qido-series",
        "dicomweb.qido-instances",
        "dicomweb.wado-instance",
        "dicomweb.rendered",
        "dicom.charset",
    ],
    "dimse": [
        "dimse.c-echo",
        "dimse.c-find.study",
        "dimse.c-find.series",
        "dimse.c-find.image",
        "dimse.c-get",
        "dicom.charset",
    ],
}


def _facility(
    imaging: ImagingEndpoint | None = None, lab: LabEndpoint | None = None, fid: str = "F900"
) -> Facility:
    return Facility(
        id=fid,
        name_zh="自检测试医院",
        name_en="Check test hospital",
        short_name_zh=None,
        level="二级",
        kind="general",
        district="新北区",
        alliances=(),
        mrn_issuer=f"CZ-{fid}",
        workstations=(),
        imaging=imaging or NoImaging("none"),
        lab=lab or NoLab("none"),
    )


async def _check(facility: Facility, **kwargs: Any) -> CheckReport:
    async with aiohttp.ClientSession() as session:
        return await check_facility(facility, session=session, timeout=10.0, **kwargs)


def _items(report: CheckReport) -> dict[str, CheckItem]:
    return {item.name: item for item in report.items}


def _failed(report: CheckReport) -> list[str]:
    return [f"{i.name}: {i.detail}" for i in report.items if not i.passed]


# -- test data in Orthanc -------------------------------------------------------------------


def _ct(path: Path, name: str, charset: str | None) -> None:
    """A small CT image of a made-up patient, ``name`` encoded in ``charset``."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.PatientID = f"CHK{path.stem}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.Modality, ds.InstanceNumber = "20250101", "CT", 1
    ds.StudyDescription = "自检" if charset else "CHECK"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 50).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _stock(orthanc: OrthancServer, folder: Path) -> None:
    """Three studies: an ASCII name, a Chinese one in ISO_IR 192, one in GB18030."""
    folder.mkdir(parents=True, exist_ok=True)
    _ct(folder / "ascii.dcm", "CHECK^ASCII", None)
    _ct(folder / "utf8.dcm", "张^三", "ISO_IR 192")
    _ct(folder / "gb18030.dcm", "李^四", "GB18030")
    assert orthanc.upload(sorted(folder.glob("*.dcm"))) == 3


@pytest.fixture(scope="module")
def stocked(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> OrthancServer:
    _stock(orthanc, tmp_path_factory.mktemp("check-dicom"))
    return orthanc


def _default_encoding(orthanc: OrthancServer, value: str | None = None) -> str:
    """Orthanc's DefaultEncoding (used for C-FIND answers); set it when ``value`` is given."""
    url = f"{orthanc.base_url}/tools/default-encoding"
    if value is not None:
        req = urllib.request.Request(url, data=value.encode(), method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode().strip().strip('"'))


# -- Orthanc --------------------------------------------------------------------------------


async def test_orthanc_over_dicomweb_passes(stocked: OrthancServer) -> None:
    """QIDO-RS at three levels, WADO-RS, rendered and character sets: all pass."""
    report = await _check(_facility(DicomWebEndpoint("dicomweb", stocked.dicomweb_url)))
    assert [i.name for i in report.items] == IMAGING_NAMES["dicomweb"]
    assert report.passed, _failed(report)
    items = _items(report)
    assert "application/dicom+json" in items["dicomweb.qido-studies"].detail
    assert "SOPInstanceUID matches" in items["dicomweb.wado-instance"].detail
    assert "image/jpeg" in items["dicomweb.rendered"].detail
    charset = items["dicom.charset"].detail
    assert "non-ASCII text" in charset and "GB18030" in charset and "ISO_IR 192" in charset
    assert all(i.fix is None and i.ms >= 0 for i in report.items)
    text = json.dumps(report.as_json(), ensure_ascii=False)
    assert "张" not in text and "李" not in text and "CHK" not in text  # no patient data


async def test_orthanc_over_dimse_passes_and_latin1_answers_fail_charset(
    stocked: OrthancServer,
) -> None:
    """C-ECHO, C-FIND at three levels and C-GET pass. Orthanc answers C-FIND in its
    DefaultEncoding: Latin1 drops the Chinese names (the charset probe says so, and how to fix
    it); Utf8 keeps them (all pass)."""
    facility = _facility(DimseEndpoint("dimse", "127.0.0.1", stocked.dicom_port, stocked.aet))
    before = await asyncio.to_thread(_default_encoding, stocked)
    try:
        await asyncio.to_thread(_default_encoding, stocked, "Latin1")
        latin1 = _items(await _check(facility))
        await asyncio.to_thread(_default_encoding, stocked, "Utf8")
        report = await _check(facility)
    finally:
        await asyncio.to_thread(_default_encoding, stocked, before)

    assert [n for n, i in latin1.items() if not i.passed] == ["dicom.charset"]
    assert "lost its letters" in latin1["dicom.charset"].detail
    assert "ISO_IR 192" in (latin1["dicom.charset"].fix or "")

    assert [i.name for i in report.items] == IMAGING_NAMES["dimse"]
    assert report.passed, _failed(report)
    items = _items(report)
    assert "C-ECHO status 0x0000" in items["dimse.c-echo"].detail
    assert "SOPInstanceUID matches" in items["dimse.c-get"].detail
    assert "non-ASCII text" in items["dicom.charset"].detail


async def test_a_wrong_called_ae_title_is_a_rejected_association(
    strict_orthanc: OrthancServer,
) -> None:
    """The PACS rejects an association to another AE title: the echo fails naming the
    rejection and its reason, the fix names the AE title, the rest is skipped."""
    wrong = _facility(DimseEndpoint("dimse", "127.0.0.1", strict_orthanc.dicom_port, "NOTORTHANC"))
    report = await _check(wrong)
    items = _items(report)
    echo = items["dimse.c-echo"]
    assert not report.passed and not echo.passed
    assert "rejected the association" in echo.detail and "called AE title" in echo.detail
    assert echo.fix is not None and "AE title" in echo.fix and "'NOTORTHANC'" in echo.fix
    for name in IMAGING_NAMES["dimse"][1:]:
        assert not items[name].passed and items[name].detail.startswith("skipped:")

    right = _facility(
        DimseEndpoint("dimse", "127.0.0.1", strict_orthanc.dicom_port, strict_orthanc.aet)
    )
    report = await _check(right)
    items = _items(report)
    assert items["dimse.c-echo"].passed
    # An empty archive: the search works, the rest has nothing to probe.
    assert items["dimse.c-find.study"].passed and "0 studies" in items["dimse.c-find.study"].detail
    assert "store a test study first" in items["dimse.c-find.series"].detail
    assert items["dicom.charset"].passed and "ASCII only" in items["dicom.charset"].detail


async def test_an_empty_dicomweb_archive_fails_the_study_probes(
    strict_orthanc: OrthancServer,
) -> None:
    report = await _check(_facility(DicomWebEndpoint("dicomweb", strict_orthanc.dicomweb_url)))
    items = _items(report)
    assert items["dicomweb.qido-studies"].passed
    for name in ("dicomweb.qido-series", "dicomweb.wado-instance", "dicomweb.rendered"):
        assert items[name].detail == "no study to probe: store a test study first"
    assert items["dicom.charset"].passed and "names are ASCII only" in items["dicom.charset"].detail


def _empty(orthanc: OrthancServer) -> None:
    with urllib.request.urlopen(f"{orthanc.base_url}/studies", timeout=10) as resp:
        studies = json.loads(resp.read())
    for study in studies:
        req = urllib.request.Request(f"{orthanc.base_url}/studies/{study}", method="DELETE")
        with urllib.request.urlopen(req, timeout=10):
            pass


async def test_a_long_study_answer_is_cut_after_the_first_few(
    strict_orthanc: OrthancServer, tmp_path: Path
) -> None:
    """More studies than the check reads: it takes the first five and aborts the rest of the
    C-FIND (sparing the PACS), then goes on to pass on a fresh association."""
    for n in range(7):
        _ct(tmp_path / f"s{n}.dcm", f"CHECK^N{n}", None)
    try:
        assert await asyncio.to_thread(strict_orthanc.upload, sorted(tmp_path.glob("*.dcm"))) == 7
        o = strict_orthanc
        report = await _check(_facility(DimseEndpoint("dimse", "127.0.0.1", o.dicom_port, o.aet)))
        assert report.passed, _failed(report)
        study = _items(report)["dimse.c-find.study"].detail
        assert "5 studies (the first 5 read)" in study
        assert "names are ASCII only" in _items(report)["dicom.charset"].detail
        report = await _check(_facility(DicomWebEndpoint("dicomweb", o.dicomweb_url)))
        assert report.passed, _failed(report)
        assert ": 5 found" in _items(report)["dicomweb.qido-studies"].detail
    finally:
        await asyncio.to_thread(_empty, strict_orthanc)


# -- unreachable and wrong answers ------------------------------------------------------------


async def test_unreachable_systems_fail_naming_the_connection() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/dicom-web"
    report = await _check(
        _facility(
            DicomWebEndpoint("dicomweb", url), FhirEndpoint("fhir", f"http://127.0.0.1:{port}/fhir")
        )
    )
    items = _items(report)
    qido = items["dicomweb.qido-studies"]
    assert not qido.passed and "cannot connect" in qido.detail and url in qido.detail
    assert qido.fix and "base URL" in qido.fix and "firewall" in qido.fix
    assert items["dicomweb.wado-instance"].detail.startswith("skipped:")
    assert items["dicom.charset"].detail.startswith("skipped:")
    assert "cannot connect" in items["fhir.capability"].detail
    assert items["fhir.search-observation"].detail.startswith("skipped:")

    report = await _check(_facility(DimseEndpoint("dimse", "127.0.0.1", port, "PACS")))
    echo = _items(report)["dimse.c-echo"]
    assert "cannot connect" in echo.detail and f"127.0.0.1:{port}" in echo.detail
    assert echo.fix and "firewall" in echo.fix


async def test_a_silent_server_times_out_within_the_bound() -> None:
    """Nothing answers: the probe fails at its own deadline, naming it."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            started = asyncio.get_running_loop().time()
            report = await check_facility(
                _facility(DicomWebEndpoint("dicomweb", f"http://127.0.0.1:{port}/dw")),
                session=session,
                timeout=0.5,
            )
            assert asyncio.get_running_loop().time() - started < 5
    finally:
        server.close()
    qido = _items(report)["dicomweb.qido-studies"]
    assert not qido.passed and "no answer" in qido.detail and "0.5 s" in qido.detail


@pytest.fixture
async def served() -> AsyncIterator[list[TestServer]]:
    servers: list[TestServer] = []
    yield servers
    for server in servers:
        await server.close()


async def _serve(servers: list[TestServer], app: web.Application) -> str:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    servers.append(server)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"ok": true}', "application/json"),
        (b'["x"]', "application/json"),
        (b'[{"PatientName": "x"}]', "application/dicom+json"),
        (b"<html><body>Login</body></html>", "text/html"),
        (b"\x00\x01garbage", "application/octet-stream"),
    ],
)
async def test_dicomweb_answers_that_are_not_dicom_json_fail(
    served: list[TestServer], body: bytes, content_type: str
) -> None:
    async def studies(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/dicom-web/studies", studies)
    base = await _serve(served, app)
    report = await _check(_facility(DicomWebEndpoint("dicomweb", f"{base}/dicom-web")))
    qido = _items(report)["dicomweb.qido-studies"]
    assert not qido.passed and not report.passed
    assert "not DICOM JSON" in qido.detail
    if content_type == "application/json" or content_type.endswith("dicom+json"):
        assert "answers JSON that is not DICOM JSON (PS3.18 F.2)" in qido.detail
    assert qido.fix and "DICOMweb" in qido.fix


async def test_a_404_names_the_base_url(served: list[TestServer]) -> None:
    base = await _serve(served, web.Application())
    report = await _check(_facility(DicomWebEndpoint("dicomweb", f"{base}/nothing-here")))
    qido = _items(report)["dicomweb.qido-studies"]
    assert "HTTP 404" in qido.detail and qido.fix and "base URL" in qido.fix


# -- FHIR -----------------------------------------------------------------------------------

_LAB: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "urn:huren:mrn:F900", "value": "CHK1"}],
    },
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-01-01T08:00:00+08:00",
        "valueQuantity": {"value": 5.0, "unit": "mmol/L"},
    },
    {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24331-1"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-01-01T08:00:00+08:00",
        "result": [{"reference": "Observation/o1"}],
    },
]


async def test_a_fhir_lab_passes(served: list[TestServer]) -> None:
    app = web.Application()
    add_routes(app, FhirStore(_LAB), capability_statement("Test lab"))
    base = await _serve(served, app)
    report = await _check(_facility(lab=FhirEndpoint("fhir", f"{base}/fhir")))
    assert [i.name for i in report.items] == [
        "fhir.capability",
        "fhir.search-observation",
        "fhir.search-diagnosticreport",
    ]
    assert report.passed, _failed(report)
    items = _items(report)
    assert "FHIR 4.0.1" in items["fhir.capability"].detail
    assert "searchset" in items["fhir.search-observation"].detail


async def test_a_fhir_lab_answering_html_fails(served: list[TestServer]) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!DOCTYPE html><html><body>LIS</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/fhir/{tail:.*}", page)
    base = await _serve(served, app)
    report = await _check(_facility(lab=FhirEndpoint("fhir", f"{base}/fhir")))
    capability = _items(report)["fhir.capability"]
    assert not report.passed and not capability.passed
    assert "HTML" in capability.detail and "CapabilityStatement" in capability.detail
    assert capability.fix and "lab.url" in capability.fix
    assert not _items(report)["fhir.search-observation"].passed


async def test_a_fhir_server_of_another_version_or_without_search_fails(
    served: list[TestServer],
) -> None:
    stu3 = {**capability_statement("Old lab"), "fhirVersion": "3.0.2"}
    no_search = capability_statement("Read-only lab")
    for resource in no_search["rest"][0]["resource"]:
        resource["interaction"] = [{"code": "read"}]
    expectations = [(stu3, "not R4"), (no_search, "does not list search-type")]
    for capability, expected in expectations:
        app = web.Application()
        add_routes(app, FhirStore(_LAB), capability)
        base = await _serve(served, app)
        report = await _check(_facility(lab=FhirEndpoint("fhir", f"{base}/fhir")))
        item = _items(report)["fhir.capability"]
        assert not item.passed and expected in item.detail


async def test_the_command_line_checks_a_registered_facility(
    served: list[TestServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """python -m gateway.facility_check F900 --registry … --html …: the JSON report on stdout,
    the page written, exit 0 when all passed."""
    app = web.Application()
    add_routes(app, FhirStore(_LAB), capability_statement("Test lab"))
    base = await _serve(served, app)
    raw = json.loads(default_registry_path().read_text(encoding="utf-8"))
    raw["facilities"].append(
        {
            "id": "F900",
            "name_zh": "自检测试医院",
            "name_en": "Check test hospital",
            "level": "二级",
            "kind": "general",
            "district": "新北区",
            "alliances": [],
            "mrn_issuer": "CZ-F900",
            "imaging": {"kind": "none"},
            "lab": {"kind": "fhir", "url": f"{base}/fhir"},
        }
    )
    registry = tmp_path / "facilities.json"
    registry.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    page = tmp_path / "report.html"
    args = ["F900", "--registry", str(registry), "--html", str(page), "--lang", "en"]
    assert await asyncio.to_thread(main, args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["facility"] == "F900" and printed["passed"] is True
    assert "PASS" in page.read_text(encoding="utf-8")
    assert await asyncio.to_thread(main, ["F999", "--registry", str(registry)]) == 2


async def test_a_broken_chain_is_reported_not_raised(
    served: list[TestServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in one chain of probes fails that chain's item; the other chain still reports."""

    async def broken(self: object) -> list[CheckItem]:
        raise RuntimeError("bug")

    monkeypatch.setattr("gateway.facility_check._DimseCheck.run", broken)
    app = web.Application()
    add_routes(app, FhirStore(_LAB), capability_statement("Test lab"))
    base = await _serve(served, app)
    report = await _check(
        _facility(
            DimseEndpoint("dimse", "127.0.0.1", free_port(), "PACS"),
            FhirEndpoint("fhir", f"{base}/fhir"),
        )
    )
    items = _items(report)
    assert not report.passed and not items["dimse.internal"].passed
    assert "RuntimeError" in items["dimse.internal"].detail
    assert items["fhir.capability"].passed


# -- HL7 v2 ---------------------------------------------------------------------------------


@pytest.fixture
async def feed(tmp_path: Path) -> AsyncIterator[tuple[Store, int]]:
    store = await Store.open(database_url_for(tmp_path, None))
    lab_feed = LabFeed(load_registry(), store, LabCodeMap.load())
    port = free_port()
    await lab_feed.start("127.0.0.1", port)
    try:
        yield store, port
    finally:
        await lab_feed.stop()
        await store.close()


def _hl7_facility() -> Facility:
    return next(f for f in load_registry() if isinstance(f.lab, Hl7v2Feed))


async def _stored_results(store: Store) -> int:
    async with store._engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(lab_result))).scalar()
    return int(count or 0)


async def test_hl7_test_message_is_acknowledged_and_not_stored(
    feed: tuple[Store, int],
) -> None:
    store, port = feed
    facility = _hl7_facility()
    report = await _check(facility, mllp=("127.0.0.1", port))
    item = _items(report)["hl7.test-message"]
    assert item.passed, item.detail
    assert item.protocol == "HL7v2" and item.detail.startswith("AA") and "not stored" in item.detail
    assert await store.hl7_messages() == []
    assert await _stored_results(store) == 0


async def test_hl7_test_message_from_an_unregistered_facility_fails(
    feed: tuple[Store, int],
) -> None:
    store, port = feed
    stranger = dataclasses.replace(
        _hl7_facility(), lab=Hl7v2Feed("hl7v2", "NOLIS", "NOT-REGISTERED")
    )
    report = await _check(stranger, mllp=("127.0.0.1", port))
    item = _items(report)["hl7.test-message"]
    assert not item.passed and "AR" in item.detail and "unknown sending facility" in item.detail
    assert item.fix and "'NOT-REGISTERED'" in item.fix
    assert await store.hl7_messages() == []  # a test message is not kept, even refused


async def test_production_messages_are_still_stored_or_kept(feed: tuple[Store, int]) -> None:
    """Processing ID P as before: a registered feed's message is stored and AA; an unknown
    sender's is AR and kept, raw, as rejected."""
    store, port = feed
    facility = _hl7_facility()
    assert isinstance(facility.lab, Hl7v2Feed)
    now = datetime.now(UTC)
    message = build_test_message(facility, facility.lab, "PRODCHK1", now)
    production = message.replace(b"|PRODCHK1|T|", b"|PRODCHK1|P|")
    assert production != message
    ack = await send_and_wait_ack("127.0.0.1", port, production, timeout=10)
    assert b"MSA|AA|PRODCHK1" in ack
    stored = await store.hl7_messages(status="stored")
    assert [m["control_id"] for m in stored] == ["PRODCHK1"]
    assert await _stored_results(store) == 2  # the report and its observation

    stranger = build_test_message(
        facility, Hl7v2Feed("hl7v2", "NOLIS", "NOT-REGISTERED"), "PRODCHK2", now
    ).replace(b"|PRODCHK2|T|", b"|PRODCHK2|P|")
    ack = await send_and_wait_ack("127.0.0.1", port, stranger, timeout=10)
    assert b"MSA|AR|PRODCHK2" in ack
    assert len(await store.hl7_messages(status="rejected")) == 1


async def test_hl7_without_a_listener_is_not_checked() -> None:
    report = await _check(_hl7_facility())
    item = _items(report)["hl7.test-message"]
    assert not item.passed and item.detail.startswith("not checked") and item.fix
    assert not report.passed


# -- character sets -------------------------------------------------------------------------


def _dataset(name: bytes, charset: bytes | None) -> Dataset:
    """A dataset as read from the wire: raw elements, nothing decoded yet."""
    ds = Dataset()
    if charset is not None:
        ds[0x00080005] = RawDataElement(
            Tag(0x00080005), "CS", len(charset), charset, 0, False, True
        )
    ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(name), name, 0, False, True)
    return ds


IR58 = b"\x1b$)A"


@pytest.mark.parametrize(
    ("name", "charset"),
    [
        ("张^三".encode(), b"ISO_IR 192"),
        ("张^三".encode("gb18030"), b"GB18030"),
        (IR58 + "张".encode("gb2312") + b"^" + IR58 + "三".encode("gb2312"), b"\\ISO 2022 IR 58"),
    ],
)
def test_chinese_names_in_a_declared_set_pass(name: bytes, charset: bytes) -> None:
    charsets = _Charsets()
    charsets.look_dataset(_dataset(name, charset), "a test")
    item = charsets.item("DIMSE", "a test", 0.0)
    assert item.passed, item.detail
    assert "non-ASCII text in 1 of 1" in item.detail


@pytest.mark.parametrize(
    ("name", "charset", "expected"),
    [
        ("张^三".encode(), None, "SpecificCharacterSet (0008,0005) is absent"),
        ("张^三".encode("gb18030"), b"ISO_IR 192", "is not valid ISO_IR 192"),
        ("张^三".encode(), b"ISO_IR 100", "Chinese text but declared ISO_IR 100"),
        ("张^三".encode(), b"KLINGON", "not a defined term"),
        (b"^ ", b"ISO_IR 100", "lost its letters"),
        (b"??^??", b"ISO_IR 100", "lost its letters"),
    ],
)
def test_undeclared_or_wrong_character_sets_fail(
    name: bytes, charset: bytes | None, expected: str
) -> None:
    charsets = _Charsets()
    charsets.look_dataset(_dataset(name, charset), "a test")
    item = charsets.item("DIMSE", "a test", 0.0)
    assert not item.passed and expected in item.detail
    assert item.fix and "ISO_IR 192" in item.fix
    assert "张" not in item.detail and "三" not in item.detail


def test_ascii_names_pass_and_json_mojibake_fails() -> None:
    charsets = _Charsets()
    charsets.look_dataset(_dataset(b"CHECK^ASCII", None), "a test")
    assert charsets.item("DIMSE", "a test", 0.0).detail.startswith("names are ASCII only")

    charsets = _Charsets()
    garbled = "张三".encode().decode("latin-1")
    charsets.look_json(
        [{"00100010": {"vr": "PN", "Value": [{"Alphabetic": garbled}]}}], "QIDO answers"
    )
    item = charsets.item("DICOMweb", "QIDO answers", 0.0)
    assert not item.passed and "mojibake" in item.detail


# -- the report -----------------------------------------------------------------------------


def _report(passed: bool) -> CheckReport:
    items = (
        CheckItem("dimse.c-echo", "DIMSE", True, "association accepted", None, 12.5),
        CheckItem(
            "fhir.capability",
            "FHIR",
            passed,
            'answers <script>alert("x")</script> & more',
            None if passed else "fix <b>this</b>",
            3.0,
        ),
    )
    return CheckReport(
        facility="F900",
        passed=passed,
        started=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        items=items,
        facility_name="自检<测试>医院",
    )


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_report_page_escapes_and_shows_the_verdict(lang: str) -> None:
    for passed in (True, False):
        page = report_page(_report(passed), "zh" if lang == "zh" else "en")
        assert page.startswith("<!DOCTYPE html>") and "<style>" in page
        assert "<script>" not in page and "&lt;script&gt;" in page
        assert "<b>this</b>" not in page and "自检&lt;测试&gt;医院" in page
        assert ("PASS" if passed else "FAIL") in page
        assert ("FAIL" if passed else "PASS") not in page
        assert "✓" in page and ("✗" in page) is not passed
        assert "http://" not in page and "https://" not in page  # no external assets
    if lang == "zh":
        assert "通过" in page and "如何修复" in page


def test_as_json_round_trips() -> None:
    report = _report(False)
    data = report.as_json()
    assert json.loads(json.dumps(data)) == data
    assert data["passed"] is False and data["started"] == "2025-01-02T03:04:05+00:00"
    assert [i["name"] for i in data["items"]] == ["dimse.c-echo", "fhir.capability"]
    assert data["items"][1]["fix"] == "fix <b>this</b>"
