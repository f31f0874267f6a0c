"""A hospital the gateway does not know joins the city: Orthanc as its PACS and a simulated
lab system, registered by its integrator through the admin API, checked, put live, and then
found in federated DICOMweb and FHIR searches — with no restart. The same hospital with a
wrong AE title, an unreachable URL or a DICOMweb endpoint that answers other JSON fails its
check, naming the problem; bad registrations change nothing. The console shows the city."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.audit import CITY_TZ
from gateway.identity import NATIONAL_ID_SYSTEM
from seeds.sim_fhir import FhirStore, add_routes, capability_statement
from tests.browser import artifacts_dir
from tests.city import City, Client, bearer, open_gateway
from tests.orthanc import OrthancServer

NEW = "F112"
MRN = "F112-00001"
LOINC = "http://loinc.org"


@dataclass
class Hospital:
    client: Client
    city: City
    orthanc: OrthancServer
    lab_url: str
    nid: str
    study: str
    integrator: dict[str, str]
    admin: dict[str, str]
    service: dict[str, str]  # a backend client: reads patients' records


def _study(tmp: Path, nid: str) -> tuple[str, list[Path]]:
    """Two CT images of a resident at the new hospital, name in Chinese (ISO_IR 192)."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in (1, 2):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "王^新", MRN, "CZ-F112"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate = ds.SeriesDate = datetime.now(CITY_TZ).strftime("%Y%m%d")
        ds.StudyTime, ds.Modality, ds.BodyPartExamined = "090000", "CT", "CHEST"
        ds.StudyDescription, ds.SeriesNumber, ds.InstanceNumber = "胸部CT平扫", 1, n
        ds.AccessionNumber, ds.StudyID = f"F112A{n}", "1"
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = bytes(range(256)) * 2
        path = tmp / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


def _lab(nid: str) -> list[dict[str, Any]]:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {"system": f"urn:huren:mrn:{NEW}", "value": MRN},
            {"system": NATIONAL_ID_SYSTEM, "value": nid},
        ],
    }
    observation = {
        "resourceType": "Observation",
        "id": "f112-hgb-1",
        "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": datetime.now(CITY_TZ).replace(microsecond=0).isoformat(),
        "valueQuantity": {"value": 131, "unit": "g/L"},
    }
    report = {
        "resourceType": "DiagnosticReport",
        "id": "f112-r1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": observation["effectiveDateTime"],
        "result": [{"reference": "Observation/f112-hgb-1"}],
    }
    return [patient, observation, report]


def _registration(**changes: Any) -> dict[str, Any]:
    return {
        "id": NEW,
        "name_zh": "常州市新北区新桥医院",
        "name_en": "Xinqiao Hospital, Xinbei District",
        "level": "二级甲等",
        "kind": "general",
        "district": "新北区",
        "alliances": ["A05"],
        "mrn_issuer": "CZ-F112",
        "workstations": ["F112WS"],
        "imaging": {"kind": "none"},
        "lab": {"kind": "none"},
        **changes,
    }


@pytest.fixture
async def h(city: City, orthanc: OrthancServer, tmp_path: Path) -> AsyncIterator[Hospital]:
    """A hospital the gateway does not know: Orthanc (holding a resident's CT) and a lab
    system; the gateway on the city, with an admin's token by default."""
    nid = str(city.patients()[0]["national_id"])
    study, paths = _study(tmp_path, nid)
    await asyncio.to_thread(orthanc.upload, paths)
    app = web.Application()
    add_routes(app, FhirStore(_lab(nid)), capability_statement("新桥医院检验系统"))
    async with TestServer(app) as lab, open_gateway(city, role="admin") as (client, _):
        try:
            yield Hospital(
                client=client,
                city=city,
                orthanc=orthanc,
                lab_url=str(lab.make_url("/fhir")),
                nid=nid,
                study=study,
                integrator=bearer(city.data_dir, "integrator", facility=NEW, subject="it-f112"),
                admin=bearer(city.data_dir, "admin", subject="ops"),
                service=bearer(city.data_dir, "service"),
            )
        finally:
            # The city's data dir outlives this test: later gateways must not meet F112.
            from gateway.facility_admin import facility_check, facility_registration
            from gateway.storage import patient_identity
            from gateway.web import CORE

            async with client.app[CORE].store.engine.begin() as conn:
                await conn.execute(facility_registration.delete())
                await conn.execute(facility_check.delete())
                await conn.execute(
                    patient_identity.delete().where(
                        patient_identity.c.system == f"urn:huren:mrn:{NEW}"
                    )
                )


async def _studies(h: Hospital, **params: str) -> list[dict[str, Any]]:
    resp = await h.client.get("/dicomweb/studies", params=params, headers=h.service)
    assert resp.status == 200, await resp.text()
    found: list[dict[str, Any]] = await resp.json()
    return found


async def test_a_new_hospital_registers_passes_its_check_and_is_searched(h: Hospital) -> None:
    body = _registration(
        imaging={"kind": "dicomweb", "url": h.orthanc.dicomweb_url},
        lab={"kind": "fhir", "url": h.lab_url},
    )
    resp = await h.client.post("/admin/facilities", json=body, headers=h.integrator)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["status"] == "pending"
    # Pending: federated searches do not ask it yet, nor does its own endpoint answer.
    assert await _studies(h, StudyInstanceUID=h.study) == []
    own = await h.client.get(
        f"/facilities/{NEW}/dicomweb/studies",
        params={"StudyInstanceUID": h.study},
        headers=h.service,
    )
    assert own.status == 200 and await own.json() == []
    metadata = await h.client.get(
        f"/facilities/{NEW}/dicomweb/studies/{h.study}/metadata", headers=h.service
    )
    assert metadata.status == 404

    resp = await h.client.post(f"/admin/facilities/{NEW}/check", headers=h.integrator)
    report = await resp.json()
    assert resp.status == 200, report
    assert report["passed"], [i for i in report["items"] if not i["passed"]]
    assert report["status"] == "live"
    names = {i["name"] for i in report["items"]}
    assert {"dicomweb.qido-studies", "dicomweb.wado-instance", "fhir.capability"} <= names
    page = await h.client.get(report["report_url"], params={"format": "html"})
    assert page.status == 200 and NEW in await page.text()

    # Live, with no restart: the study is found by the city-wide search.
    found = await _studies(h, StudyInstanceUID=h.study)
    assert [ds["00111001"]["Value"][0] for ds in found] == [NEW]
    # Once the city's MPI links the hospital's MRN to the resident (its PIX feed), the
    # resident's searches reach the new hospital too.
    from gateway.web import CORE

    core = h.client.app[CORE]
    await core.store.link_identity(
        h.nid, f"urn:huren:mrn:{NEW}", MRN, facility_id=NEW, source="test: PIX feed"
    )
    by_person = await _studies(h, PatientID=h.nid)
    assert h.study in {ds["0020000D"]["Value"][0] for ds in by_person}
    bundle = await (
        await h.client.get(
            "/fhir/Observation",
            params={"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{h.nid}"},
            headers=h.service,
        )
    ).json()
    sources = {e["resource"]["meta"]["source"] for e in bundle["entry"] if "meta" in e["resource"]}
    assert f"urn:huren:facility:{NEW}" in sources

    # The registration and the check are in the audit trail, as the integrator's.
    events = await (
        await h.client.get("/fhir/AuditEvent", params={"agent": "it-f112"}, headers=h.admin)
    ).json()
    described = [e["resource"].get("outcomeDesc", "") for e in events["entry"]]
    assert any("registered" in d for d in described) and any(
        "checked: passed" in d for d in described
    )


@pytest.mark.parametrize("problem", ["wrong AE title", "unreachable URL", "not DICOM JSON"])
async def test_a_broken_hospital_fails_its_check_naming_the_problem(
    h: Hospital, strict_orthanc: OrthancServer, problem: str
) -> None:
    async def other_json(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    junk = web.Application()
    junk.router.add_get("/dicomweb/studies", other_json)
    async with TestServer(junk) as server:
        imaging = {
            "wrong AE title": {
                "kind": "dimse",
                "host": "127.0.0.1",
                "port": strict_orthanc.dicom_port,
                "ae_title": "NOT-ORTHANC",
            },
            "unreachable URL": {"kind": "dicomweb", "url": "http://127.0.0.1:9/dicomweb"},
            "not DICOM JSON": {"kind": "dicomweb", "url": str(server.make_url("/dicomweb"))},
        }[problem]
        resp = await h.client.post(
            "/admin/facilities", json=_registration(imaging=imaging), headers=h.admin
        )
        assert resp.status == 201, await resp.text()
        report = await (
            await h.client.post(f"/admin/facilities/{NEW}/check", headers=h.admin)
        ).json()
    assert not report["passed"] and report["status"] == "pending"
    failed = " ".join(f"{i['detail']} {i['fix']}" for i in report["items"] if not i["passed"])
    expected = {
        "wrong AE title": "AE title",
        "unreachable URL": "connect",
        "not DICOM JSON": "not DICOM JSON",
    }[problem]
    assert expected.lower() in failed.lower(), failed


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"imaging": {"kind": "dicomweb", "url": "ftp://pacs"}}, 400),
        ({"colour": "red"}, 400),
        ({"level": "四级"}, 400),
        ({"alliances": ["A99"]}, 400),
        ({"id": "F001"}, 403),  # the integrator's token names F112, not F001
        ({"credentials": {"username": "u"}}, 400),
    ],
)
async def test_bad_registrations_are_refused_and_change_nothing(
    h: Hospital, change: dict[str, Any], status: int
) -> None:
    before = await (await h.client.get("/admin/facilities", headers=h.admin)).json()
    resp = await h.client.post(
        "/admin/facilities", json=_registration(**change), headers=h.integrator
    )
    assert resp.status == status, await resp.text()
    after = await (await h.client.get("/admin/facilities", headers=h.admin)).json()
    assert after == before


async def test_duplicates_other_facilities_and_credentials(h: Hospital) -> None:
    body = _registration(credentials={"username": "huren", "password": "s3cret-pw"})
    assert (await h.client.post("/admin/facilities", json=body, headers=h.admin)).status == 201
    again = await h.client.post("/admin/facilities", json=body, headers=h.admin)
    assert again.status == 409
    shown = await (await h.client.get(f"/admin/facilities/{NEW}", headers=h.admin)).text()
    assert "s3cret-pw" not in shown and json.loads(shown)["has_credentials"] is True
    other = await h.client.put(
        "/admin/facilities/F001", json=_registration(id="F001"), headers=h.integrator
    )
    assert other.status == 403
    regulator = bearer(h.city.data_dir, "regulator", subject="wjw")
    denied = await h.client.post("/admin/facilities", json=body, headers=regulator)
    assert denied.status == 403
    disabled = await h.client.post(f"/admin/facilities/{NEW}/disable", headers=h.integrator)
    assert (await disabled.json())["status"] == "disabled"
    live = await h.client.post(
        f"/admin/facilities/{NEW}/go-live", json={"reason": "paper check done"}, headers=h.admin
    )
    assert (await live.json())["status"] == "live"
    by_integrator = await h.client.post(
        f"/admin/facilities/{NEW}/go-live", json={"reason": "x"}, headers=h.integrator
    )
    assert by_integrator.status == 403


async def test_openapi_documents_the_admin_routes(h: Hospital) -> None:
    doc = await (await h.client.get("/openapi.json", headers={"Authorization": ""})).json()
    assert doc["openapi"].startswith("3.")
    routes = {
        (r.method, r.resource.canonical)
        for r in h.client.app.router.routes()
        if r.resource is not None
    }
    for path, operations in doc["paths"].items():
        for method in operations:
            assert (method.upper(), path) in routes, (method, path)


async def test_the_console_shows_the_city_in_a_browser(h: Hospital, laptop: Any) -> None:
    from selenium.webdriver.common.by import By

    doctor = bearer(h.city.data_dir, "clinician", facility="F003", subject="dr-li")
    for holder in ("F007", "F012"):  # some cross-institution look-ups to chart
        resp = await h.client.get(
            f"/facilities/{holder}/dicomweb/studies",
            params={"PatientID": "320412200011169134"},
            headers=doctor,
        )
        assert resp.status == 200
    await asyncio.sleep(1.5)  # counted once a second
    url = str(h.client.make_url("/admin"))
    token = h.admin["Authorization"]
    shots = artifacts_dir("console")

    def look() -> dict[str, Any]:
        laptop.execute_cdp_cmd("Network.enable", {})
        laptop.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": token}})
        laptop.get(url)
        seen = {
            "facilities": len(laptop.find_elements(By.CSS_SELECTOR, "#facility-table tr.facility")),
            "bars": len(laptop.find_elements(By.CSS_SELECTOR, "svg#lookups-chart g.day")),
            "cells": len(laptop.find_elements(By.CSS_SELECTOR, "svg#heatmap rect.cell")),
            "width": laptop.execute_script("return window.innerWidth"),
        }
        laptop.save_screenshot(str(shots / "console.png"))
        heat = laptop.find_element(By.CSS_SELECTOR, "svg#heatmap")
        laptop.execute_script("arguments[0].scrollIntoView()", heat)
        laptop.save_screenshot(str(shots / "console-heatmap.png"))
        return seen

    seen = await asyncio.to_thread(look)
    assert seen["facilities"] >= 111 and seen["bars"] >= 300 and seen["cells"] >= 1
    assert (shots / "console.png").stat().st_size > 20_000
    regulator = bearer(h.city.data_dir, "regulator", subject="wjw")
    page = await (await h.client.get("/admin", headers=regulator)).text()
    assert "320412200011169134" not in page and "dr-li" not in page


async def test_the_cli_registers_and_checks_and_a_running_gateway_sees_it(
    h: Hospital, tmp_path: Path
) -> None:
    """`huren facility add|check` beside a running gateway on the embedded defaults: the
    gateway sees the change by itself (no Redis to carry a message, no restart)."""
    from tests.city import huren_command

    body = _registration(imaging={"kind": "dicomweb", "url": h.orthanc.dicomweb_url})
    path = tmp_path / "f112.json"
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")

    def run(*args: str) -> Any:
        import subprocess

        return subprocess.run(
            huren_command(h.city.data_dir, "facility", *args),
            capture_output=True,
            text=True,
            timeout=120,
        )

    added = await asyncio.to_thread(run, "add", str(path))
    assert added.returncode == 0, added.stderr
    assert "pending" in added.stdout

    async def status() -> str | None:
        resp = await h.client.get(f"/admin/facilities/{NEW}", headers=h.admin)
        return str((await resp.json())["status"]) if resp.status == 200 else None

    for _ in range(50):
        if await status() == "pending":
            break
        await asyncio.sleep(0.2)
    assert await status() == "pending"
    checked = await asyncio.to_thread(run, "check", NEW)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "PASS" in checked.stdout and "dicomweb.qido-studies" in checked.stdout
    for _ in range(50):
        if await status() == "live":
            break
        await asyncio.sleep(0.2)
    assert await status() == "live"
    again = await asyncio.to_thread(run, "add", str(path))
    assert again.returncode == 2 and "update" in again.stderr and "Traceback" not in again.stderr
