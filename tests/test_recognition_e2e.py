"""Mutual recognition end to end: a patient has a CT at one hospital (stored today through
STOW-RS) and a blood routine at another (sent today over its HL7 v2 feed); a clinician at a
third facility asks for recognised priors, sees the HR mark, re-tests one for an emergency
and accepts the other; the regulator's statistics and the AuditEvents show both. And every
bad decision or request is refused whole."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B.basic import Basic
from fhir.resources.R4B.bundle import Bundle
from pydicom.uid import generate_uid
from yarl import URL

from adapters.types import Hl7v2Feed
from gateway.audit import CITY_TZ
from gateway.recognition_catalogue import default_catalogue_path
from gateway.registry import load_registry
from tests.city import City, Client, bearer, open_gateway

REGISTRY = load_registry(None)
NID_SYSTEM = "urn:oid:2.16.156.10011.1.5"
LOINC = "http://loinc.org"
CT_AT, LAB_AT, ASKER = "F012", "F023", "F003"  # 三甲 PACS, 二甲 HL7 lab in the EQA, 三甲
DECISION = "urn:huren:CodeSystem/recognition-decision"
RETEST = "urn:huren:CodeSystem/retest-reason"
EXT = "urn:huren:StructureDefinition/recognition-decision-"
VERDICT = "urn:huren:StructureDefinition/recognition-verdict"


@dataclass
class Scene:
    client: Client
    city: City
    nid: str
    patient: str  # the gateway's Patient id
    ct_study: str
    cbc_day: str
    clinician: dict[str, str]


def _catalogue_for_today(tmp: Path) -> Path:
    """The shipped catalogue with this year's quality-control passes still running a year
    from today, so the test does not depend on the calendar (the rules are data)."""
    data = json.loads(default_catalogue_path().read_text(encoding="utf-8"))
    latest = max(q["valid_until"] for q in data["quality_control"])
    until = (datetime.now(CITY_TZ).date() + timedelta(days=365)).isoformat()
    for q in data["quality_control"]:
        if q["valid_until"] == latest:
            q["valid_until"] = until
    path = tmp / "recognition.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _patient(city: City) -> dict[str, Any]:
    """A resident registered at the asking facility and at the CT's facility."""
    return next(
        p
        for p in city.patients()
        if ASKER in p["records"] and CT_AT in p["records"] and LAB_AT not in p["records"]
    )


def _fresh_ct(city: City, mrn: str) -> list[pydicom.Dataset]:
    """A chest CT acquired today at CT_AT: a seed CT under new UIDs, dated today."""
    study = next(s for s in city.studies() if s["facility_id"] == CT_AT and s["modality"] == "CT")
    root = city.data_dir / "seed" / "dicom" / CT_AT / study["study_instance_uid"]
    today = datetime.now(CITY_TZ).strftime("%Y%m%d")
    uid, series = generate_uid(), dict[str, str]()
    out: list[pydicom.Dataset] = []
    for path in sorted(root.rglob("*.dcm"))[:3]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = uid
        ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.PatientID, ds.BodyPartExamined = mrn, "CHEST"
        out.append(ds)
    return out


def _fresh_cbc(city: City, person: dict[str, Any]) -> tuple[bytes, str]:
    """A blood routine (CBC panel) taken minutes ago at LAB_AT: its ORU^R01, and the day."""
    from seeds.hl7_sender import build_oru

    resources = [
        json.loads(line)
        for line in (city.data_dir / "seed" / "fhir" / f"{LAB_AT}.ndjson").read_text().splitlines()
        if line.strip()
    ]
    report = copy.deepcopy(
        next(
            r
            for r in resources
            if r["resourceType"] == "DiagnosticReport"
            and r["code"]["coding"][0]["code"] == "58410-2"
        )
    )
    wanted = {ref["reference"] for ref in report["result"]}
    observations = [copy.deepcopy(r) for r in resources if f"Observation/{r.get('id')}" in wanted]
    now = datetime.now(CITY_TZ).replace(microsecond=0)
    taken, issued = (now - timedelta(minutes=2)).isoformat(), now.isoformat()
    suffix = now.strftime("%H%M%S")
    report["id"] += f"-e2e{suffix}"
    report["identifier"][0]["value"] += f"-e2e{suffix}"
    report["effectiveDateTime"], report["issued"] = taken, issued
    report["subject"] = {"reference": "Patient/e2e"}
    for obs in observations:
        old = obs["id"]
        obs["id"] = f"{old}-e2e{suffix}"
        obs["effectiveDateTime"], obs["issued"] = taken, issued
        obs["subject"] = {"reference": "Patient/e2e"}
        for ref in report["result"]:
            if ref["reference"] == f"Observation/{old}":
                ref["reference"] = f"Observation/{obs['id']}"
    name = person["name"]
    patient = {
        "resourceType": "Patient",
        "id": "e2e",
        "identifier": [
            {"system": f"urn:huren:mrn:{LAB_AT}", "value": f"E2E{suffix}"},
            {"system": NID_SYSTEM, "value": person["national_id"]},
        ],
        "name": [{"use": "official", "family": name[0], "given": [name[1:]]}],
        "gender": "male" if person["sex"] == "M" else "female",
        "birthDate": person["birth_date"],
    }
    feed = REGISTRY[LAB_AT].lab
    assert isinstance(feed, Hl7v2Feed)
    message = build_oru(
        patient,
        report,
        observations,
        sending_application=feed.sending_application,
        sending_facility=feed.sending_facility,
        control_id=f"E2E-{suffix}",
        timestamp=issued,
    )
    return message, taken[:10]


async def store_fresh_ct(
    client: Client, city: City, person: dict[str, Any]
) -> list[pydicom.Dataset]:
    """A chest CT acquired today for the person at CT_AT, stored there through the gateway."""
    from tests.test_stow_face import _bytes, _multipart

    ct = _fresh_ct(city, person["records"][CT_AT])
    body, headers = _multipart(*(_bytes(ds) for ds in ct))
    resp = await client.post(f"/facilities/{CT_AT}/dicomweb/studies", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return ct


@pytest.fixture
async def scene(city: City, tmp_path: Path) -> AsyncIterator[Scene]:
    from adapters.mllp import MllpConnection
    from seeds.hl7_sender import parse_ack

    person = _patient(city)
    catalogue = _catalogue_for_today(tmp_path)
    async with open_gateway(city, recognition_catalogue_path=catalogue) as (client, settings):
        ct = await store_fresh_ct(client, city, person)
        message, cbc_day = _fresh_cbc(city, person)
        async with await MllpConnection.open("127.0.0.1", settings.mllp_port, timeout=10) as c:
            ack = parse_ack(await c.exchange(message, timeout=10))
        assert ack[0] == "AA", ack
        pix = await client.get(
            "/fhir/Patient", params={"identifier": f"{NID_SYSTEM}|{person['national_id']}"}
        )
        patient = (await pix.json())["entry"][0]["resource"]["id"]
        yield Scene(
            client=client,
            city=city,
            nid=person["national_id"],
            patient=patient,
            ct_study=ct[0].StudyInstanceUID,
            cbc_day=cbc_day,
            clinician=bearer(city.data_dir, "clinician", facility=ASKER, subject="dr-e2e"),
        )


def _verdict(resource: dict[str, Any]) -> dict[str, list[Any]]:
    ext = next(e for e in resource["extension"] if e["url"] == VERDICT)
    out: dict[str, list[Any]] = {}
    for part in ext["extension"]:
        value = next(v for k, v in part.items() if k.startswith("value"))
        out.setdefault(part["url"], []).append(value)
    return out


def _decision(
    patient: str, result: str, holder: str, code: str, reason: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Basic",
        "meta": {"profile": ["urn:huren:StructureDefinition/recognition-decision"]},
        "code": {"coding": [{"system": DECISION, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "extension": [
            {"url": EXT + "result", "valueReference": {"reference": result}},
            {"url": EXT + "holder", "valueReference": {"reference": f"Organization/{holder}"}},
        ],
    }
    if reason is not None:
        body["extension"].append({"url": EXT + "reason", "valueCodeableConcept": reason})
    return body


async def _priors(s: Scene, **params: str) -> dict[str, Any]:
    resp = await s.client.get(
        "/fhir/$recognized-priors",
        params={"patient": f"Patient/{s.patient}", **params},
        headers=s.clinician,
    )
    assert resp.status == 200, await resp.text()
    raw: dict[str, Any] = await resp.json()
    Bundle.model_validate(raw)
    return raw


async def test_priors_decisions_statistics_and_audit(scene: Scene) -> None:
    s = scene
    today = datetime.now(CITY_TZ).date().isoformat()

    # Before ordering a blood routine and a chest CT: the recognised priors, with the mark.
    cbc = await _priors(s, code=f"{LOINC}|58410-2")
    reports = [e["resource"] for e in cbc["entry"] if e["search"]["mode"] == "match"]
    assert reports, cbc
    report = reports[0]  # newest first: this morning's
    assert report["effectiveDateTime"][:10] == s.cbc_day
    assert report["meta"]["source"] == f"urn:huren:facility:{LAB_AT}"
    assert {"system": "urn:huren:CodeSystem/recognition-mark", "code": "HR"}.items() <= (
        report["meta"]["tag"][0].items()
    )
    verdict = _verdict(report)
    assert verdict["recognised"] == [True] and verdict["mark"] == ["HR"]
    assert verdict["catalogue"] and verdict["asker"] == [{"reference": f"Organization/{ASKER}"}]
    assert "reason" not in verdict

    ct = await _priors(s, modality="CT", bodySite="CHEST")
    studies = [e["resource"] for e in ct["entry"] if e["search"]["mode"] == "match"]
    study = next(r for r in studies if r["identifier"][0]["value"] == f"urn:oid:{s.ct_study}")
    assert _verdict(study)["mark"] == ["HR"] and _verdict(study)["recognised"] == [True]
    assert study["series"][0]["bodySite"]["display"] == "CHEST"

    # The clinician re-tests the CT (emergency) and accepts the blood routine.
    resp = await s.client.post(
        "/fhir/Basic",
        json=_decision(
            s.patient,
            f"ImagingStudy/{study['id']}",
            CT_AT,
            "retest",
            {"coding": [{"system": RETEST, "code": "04"}]},
        ),
        headers=s.clinician,
    )
    assert resp.status == 201, await resp.text()
    retest = await resp.json()
    Basic.model_validate(retest)
    assert _verdict(retest)["recognised"] == [True]
    resp = await s.client.post(
        "/fhir/Basic",
        json=_decision(s.patient, f"DiagnosticReport/{report['id']}", LAB_AT, "accept"),
        headers=s.clinician,
    )
    assert resp.status == 201, await resp.text()
    accept = await resp.json()
    location = URL(resp.headers["Location"])
    assert location.path == f"/fhir/Basic/{accept['id']}"
    read = await (await s.client.get(location.path, headers=s.clinician)).json()
    assert read["id"] == accept["id"] and read["code"]["coding"][0]["code"] == "accept"
    listed = await (
        await s.client.get(
            "/fhir/Basic", params={"patient": f"Patient/{s.patient}"}, headers=s.clinician
        )
    ).json()
    assert {e["resource"]["id"] for e in listed["entry"]} >= {retest["id"], accept["id"]}

    # The regulator's statistics count both.
    regulator = bearer(s.city.data_dir, "regulator", subject="wjw-e2e")
    stats = await (
        await s.client.get(
            "/admin/stats/recognition", params={"from": today, "to": today}, headers=regulator
        )
    ).json()
    assert stats["total"]["decisions"] >= 2
    assert stats["total"]["retests_avoided"] >= 1
    assert any(
        r["reason"] == "04" and r["counts_against_recognition"] for r in stats["retests_by_reason"]
    )
    holders = {r["facility"]: r for r in stats["by_holder"]}
    assert holders[LAB_AT]["accepted"] >= 1 and holders[CT_AT]["retests_counted"] >= 1
    items = {r["item"] for r in stats["by_item"]}
    assert {"58410-2", "CT-CHEST"} <= items

    # And the audit trail shows both decisions, as the clinician's.
    admin = bearer(s.city.data_dir, "admin", subject="ops-e2e")
    events = await (
        await s.client.get(
            "/fhir/AuditEvent", params={"patient": f"Patient/{s.patient}"}, headers=admin
        )
    ).json()
    described = [
        e["resource"].get("outcomeDesc", "")
        for e in events["entry"]
        if e["resource"]["agent"][0]["who"]["identifier"]["value"] == "dr-e2e"
    ]
    assert any(f"Basic/{retest['id']}: retest (04)" in d for d in described), described
    assert any(f"Basic/{accept['id']}: accept" in d for d in described), described


async def test_search_results_and_qido_carry_the_verdict(scene: Scene) -> None:
    """Every Observation a search answers has its verdict; the QIDO study says it in the
    private block, which a standard DICOMweb client reads past."""
    from dicomweb_client.api import DICOMwebClient

    s = scene
    raw = await (
        await s.client.get(
            "/fhir/Observation",
            params={"patient": f"Patient/{s.patient}", "code": f"{LOINC}|718-7"},
            headers=s.clinician,
        )
    ).json()
    Bundle.model_validate(raw)
    matches = [e["resource"] for e in raw["entry"] if e["search"]["mode"] == "match"]
    assert matches and all(_verdict(m)["catalogue"] for m in matches)
    fresh = [m for m in matches if m["effectiveDateTime"][:10] == s.cbc_day]
    assert fresh and _verdict(fresh[0])["recognised"] == [True]
    week_ago = (datetime.now(CITY_TZ).date() - timedelta(days=8)).isoformat()
    old = [m for m in matches if m["effectiveDateTime"][:10] < week_ago]
    for m in old:  # the seed's, if any: outside the 7-day window of a haemoglobin
        assert "outside-window" in {r["code"] for r in _verdict(m)["reason"]}

    resp = await s.client.get("/dicomweb/studies", params={"PatientID": s.nid}, headers=s.clinician)
    studies = {ds["0020000D"]["Value"][0]: ds for ds in await resp.json()}
    ct = studies[s.ct_study]
    assert ct["00111002"]["Value"] == ["HR"] and ct["00111003"]["Value"] == ["YES"]
    assert ct["00111005"]["Value"] == ["CT-CHEST"] and ct["00111004"]["Value"][0]
    # Every study of the patient is judged; a listing that names no patient is not.
    assert all("00111003" in ds for ds in studies.values())
    listing = await s.client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": s.ct_study}, headers=s.clinician
    )
    assert "00111003" not in (await listing.json())[0]

    client = DICOMwebClient(url=f"{s.client.make_url('/dicomweb')}", headers=s.clinician)
    import asyncio

    answers = await asyncio.to_thread(
        client.search_for_studies, search_filters={"PatientID": s.nid}
    )
    # A standard client reads past the private block: pydicom keeps it as unknown private
    # elements, and the study's own attributes are what they were.
    parsed = [pydicom.Dataset.from_json(one) for one in answers]
    assert s.ct_study in {ds.StudyInstanceUID for ds in parsed}
    assert all(ds[0x0011, 0x0010].value == "HUREN" for ds in parsed)


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ("no-reason", 400, "required"),
        ("unknown-reason", 400, "code-invalid"),
        ("other-without-text", 400, "required"),
        ("accept-with-reason", 400, "invalid"),
        ("unknown-decision", 400, "code-invalid"),
        ("unknown-result", 422, "processing"),
        ("unknown-holder", 400, "value"),
        ("not-a-result", 400, "invalid"),
        ("not-json", 400, "structure"),
    ],
)
async def test_bad_decisions_are_refused_and_nothing_is_stored(
    scene: Scene, change: str, status: int, code: str
) -> None:
    s = scene
    before = await (
        await s.client.get(
            "/fhir/Basic", params={"patient": f"Patient/{s.patient}"}, headers=s.clinician
        )
    ).json()
    retest = {"coding": [{"system": RETEST, "code": "04"}]}
    result = f"ImagingStudy/{CT_AT}-nonexistent"
    body: Any = {
        "no-reason": _decision(s.patient, result, CT_AT, "retest"),
        "unknown-reason": _decision(
            s.patient, result, CT_AT, "retest", {"coding": [{"system": RETEST, "code": "42"}]}
        ),
        "other-without-text": _decision(
            s.patient, result, CT_AT, "retest", {"coding": [{"system": RETEST, "code": "08"}]}
        ),
        "accept-with-reason": _decision(s.patient, result, CT_AT, "accept", retest),
        "unknown-decision": _decision(s.patient, result, CT_AT, "maybe"),
        "unknown-result": _decision(s.patient, result, CT_AT, "retest", retest),
        "unknown-holder": _decision(s.patient, result, "F999", "retest", retest),
        "not-a-result": _decision(s.patient, "Patient/x", CT_AT, "accept"),
        "not-json": "{not json",
    }[change]
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    resp = await s.client.post("/fhir/Basic", headers=s.clinician, **kwargs)
    assert resp.status == status, await resp.text()
    outcome = await resp.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == code
    after = await (
        await s.client.get(
            "/fhir/Basic", params={"patient": f"Patient/{s.patient}"}, headers=s.clinician
        )
    ).json()
    assert after["total"] == before["total"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"code": f"{LOINC}|12345-6"}, "code-invalid"),  # not in the catalogue
        ({"code": "http://snomed.info/sct|271737000"}, "code-invalid"),
        ({"modality": "PT", "bodySite": "CHEST"}, "code-invalid"),
        ({"facility": "F999"}, "value"),
        ({"date": "yesterday"}, "value"),
        ({"colour": "red"}, "not-supported"),
    ],
)
async def test_bad_prior_requests_get_an_operation_outcome(
    scene: Scene, params: dict[str, str], code: str
) -> None:
    resp = await scene.client.get(
        "/fhir/$recognized-priors",
        params={"patient": f"Patient/{scene.patient}", **params},
        headers=scene.clinician,
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["issue"][0]["code"] == code


async def test_recognition_operation_and_other_facilities(scene: Scene) -> None:
    """$recognition judges a result for the caller, or for another facility on another day:
    a lower-tier facility outside the alliance sees the same CT recognised (lower recognises
    higher); a week later the blood routine is outside its window."""
    s = scene
    raw = await _priors(s, code="58410-2")
    report = raw["entry"][0]["resource"]
    later = (datetime.now(CITY_TZ).date() + timedelta(days=30)).isoformat()
    resp = await s.client.post(
        "/fhir/DiagnosticReport/$recognition",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "resource", "resource": report},
                {"name": "date", "valueDate": later},
            ],
        },
        headers=s.clinician,
    )
    out = await resp.json()
    assert resp.status == 200, out
    params = {p["name"]: p for p in out["parameter"]}
    assert params["recognised"]["valueBoolean"] is False
    assert params["reason"]["valueCoding"]["code"] == "outside-window"
    assert params["mark"]["valueCode"] == "HR"  # the mark stays with the result

    resp = await s.client.post("/fhir/ImagingStudy/$recognition", json=report, headers=s.clinician)
    assert resp.status == 400


async def test_who_may_decide_and_who_reads_the_statistics(scene: Scene) -> None:
    """Only a clinician who may read the patient's records records a decision; statistics
    are for regulators and admins, and refuse what they do not understand."""
    s = scene
    body = _decision(s.patient, f"ImagingStudy/{CT_AT}-x", CT_AT, "accept")
    stranger = bearer(s.city.data_dir, "clinician", facility="F050", subject="dr-far")
    resident = bearer(s.city.data_dir, "resident", patient=s.patient, subject="me")
    regulator = bearer(s.city.data_dir, "regulator", subject="wjw")
    for headers in (stranger, resident, regulator):
        resp = await s.client.post("/fhir/Basic", json=body, headers=headers)
        assert resp.status == 403, await resp.text()
        assert (await resp.json())["resourceType"] == "OperationOutcome"
    resp = await s.client.get("/admin/stats/recognition", headers=s.clinician)
    assert resp.status == 403
    for params in ({"facility": "F999"}, {"from": "last week"}, {"colour": "red"}):
        resp = await s.client.get("/admin/stats/recognition", params=params, headers=regulator)
        assert resp.status == 400, (params, await resp.text())
    stats = await (await s.client.get("/admin/stats/recognition", headers=regulator)).json()
    assert stats["facilities_passing_quality_control"]["lab"] >= 26
    assert stats["catalogue"]


async def test_quality_control_about_to_end_is_warned_of(city: City, tmp_path: Path) -> None:
    """A facility whose imaging QC ends in ten days (the others a year on): the statistics,
    the console and the metrics name it, and only it, with the days left."""
    path = _catalogue_for_today(tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    soon = (datetime.now(CITY_TZ).date() + timedelta(days=10)).isoformat()
    ending = [q for q in data["quality_control"] if q["facility"] == CT_AT]
    for q in ending:
        if q["kind"] == "imaging":
            q["valid_until"] = max(q["passed"], soon)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    async with open_gateway(city, recognition_catalogue_path=path) as (client, _):
        regulator = bearer(city.data_dir, "regulator", subject="wjw")
        stats = await (await client.get("/admin/stats/recognition", headers=regulator)).json()
        assert stats["quality_control_lapsing"] == [
            {"facility": CT_AT, "kind": "imaging", "covered_until": soon, "days_left": 10}
        ]
        other = {"facility": "F001"}
        stats = await (
            await client.get("/admin/stats/recognition", params=other, headers=regulator)
        ).json()
        assert stats["quality_control_lapsing"] == []
        page = await (await client.get("/admin", params={"lang": "en"}, headers=regulator)).text()
        assert 'id="stat-qc">1<' in page and f"first {soon}" in page
        assert '<span class="probe" title="' in page and f">{CT_AT}</span>" in page
        metrics = await (await client.get("/metrics")).text()
        assert 'huren_recognition_qc_lapsing{kind="imaging"} 1.0' in metrics
        assert 'huren_recognition_qc_lapsing{kind="lab"} 0.0' in metrics
        assert 'huren_recognition_qc_days_left{kind="imaging"} 10.0' in metrics


async def test_conformance_resources_are_public_and_valid(scene: Scene) -> None:
    """The ValueSet of re-test reasons and the verdict's StructureDefinition are read without
    a token, as the CapabilityStatement that names them."""
    from fhir.resources.R4B.structuredefinition import StructureDefinition
    from fhir.resources.R4B.valueset import ValueSet

    s = scene
    resp = await s.client.get("/fhir/ValueSet/retest-reason/$expand", headers={"Authorization": ""})
    assert resp.status == 200, await resp.text()
    expanded = ValueSet.model_validate(await resp.json())
    assert expanded.expansion is not None
    assert {c.code for c in expanded.expansion.contains or []} >= {"04", "98", "99"}
    resp = await s.client.get(
        "/fhir/StructureDefinition", params={"url": VERDICT}, headers={"Authorization": ""}
    )
    bundle = await resp.json()
    StructureDefinition.model_validate(bundle["entry"][0]["resource"])
