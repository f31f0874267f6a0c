"""FHIR search beyond the basics: Patient read and search, a patient at five facilities found
in one query, the gateway's own Patient as every result's subject, _include, the filters
(category, status, identifier, _lastUpdated), and their bad inputs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from fhirpy import AsyncFHIRClient

from adapters.mllp import MllpConnection
from adapters.types import FhirEndpoint, Hl7v2Feed
from fhirapi import audit_events as fhir_audit_events
from fhirapi import consents as fhir_consents
from fhirapi import patients as fhir_patients
from fhirapi import search as fhir_search
from fhirapi.search import capability_statement
from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.lab_codes import LOCAL_SYSTEM_PREFIX, LOINC_SYSTEM, LabCodeMap
from gateway.registry import load_registry
from seeds.hl7_sender import messages_for_facility, parse_ack
from tests.city import City, Client, open_gateway, token

REGISTRY = load_registry()
FACILITY_SOURCE = "urn:huren:facility:"


class Gateway:
    def __init__(self, client: Client, mllp: int) -> None:
        self.client, self.mllp = client, mllp

    async def get(self, path: str, **params: str) -> Any:
        resp = await self.client.get(path, params=params)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        if body["resourceType"] == "Bundle":
            Bundle.model_validate(body)  # every resource in it is valid R4 too
        return body

    async def status_of(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get(path, params=params)
        return resp.status, await resp.json()


@pytest.fixture
async def gateway(city: City) -> AsyncIterator[Gateway]:
    async with open_gateway(city) as (client, settings):
        yield Gateway(client, settings.mllp_port)


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]


def included(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]


def lab_facilities(city: City, nid: str) -> set[str]:
    """Facilities whose seed lab data holds results of the person."""
    out = set()
    for f in REGISTRY:
        path = city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        if nid in text and '"Observation"' in text:
            out.add(f.id)
    return out


def pid_segment(fid: str, mrn: str, nid: str, person: dict[str, Any]) -> str:
    family, _, given = str(person["name_pinyin"]).partition("^")
    return (
        f"PID|1||{mrn}^^^{fid}&urn:huren:mrn:{fid}&URI^MR~{nid}^^^CN-RID&2.16.156.10011.1.5"
        f"&ISO^NNCHN||{family}^{given}||{str(person['birth_date']).replace('-', '')}"
        f"|{person['sex']}"
    )


def feed_message(city: City, fid: str) -> bytes | None:
    """The first lab message facility ``fid``'s feed sends, if its seed has any."""
    f = next(f for f in REGISTRY if f.id == fid)
    assert isinstance(f.lab, Hl7v2Feed)
    path = city.data_dir / "seed" / "fhir" / f"{fid}.ndjson"
    if not path.exists():
        return None
    sent = messages_for_facility(
        path, sending_application=f.lab.sending_application, sending_facility=f.lab.sending_facility
    )
    return sent[0] if sent else None


def feeds(city: City, person: dict[str, Any]) -> list[str]:
    """HL7 v2 feed facilities with messages to send, where the person has no record yet."""
    return [
        f.id
        for f in REGISTRY
        if isinstance(f.lab, Hl7v2Feed)
        and f.id not in person["records"]
        and feed_message(city, f.id) is not None
    ]


async def send_as(gateway: Gateway, city: City, fid: str, person: dict[str, Any]) -> str:
    """One of facility ``fid``'s lab messages, re-addressed to ``person`` under a new MRN
    there (as when they first visit that hospital); returns the MRN."""
    sent = feed_message(city, fid)
    assert sent is not None
    message = sent.decode()
    mrn = f"NEW-{fid}-{str(person['national_id'])[-6:]}"
    segments = message.split("\r")
    segments = [
        pid_segment(fid, mrn, str(person["national_id"]), person) if s.startswith("PID") else s
        for s in segments
    ]
    msh = segments[0].split("|")
    msh[9] = f"{msh[9]}-{mrn}"  # a control id of its own
    segments[0] = "|".join(msh)
    # ... and an order of its own (results are keyed by the facility's filler order number).
    filler = next(s for s in segments if s.startswith("OBR")).split("|")[3].split("^")[0]
    segments = [
        s.replace(f"|{filler}^", f"|{filler}-{mrn}^") if s[:3] in ("ORC", "OBR") else s
        for s in segments
    ]
    async with await MllpConnection.open("127.0.0.1", gateway.mllp, timeout=10) as conn:
        ack = await conn.exchange("\r".join(segments).encode(), timeout=10)
    assert parse_ack(ack)[0] == "AA"
    return mrn


def richest_person(city: City) -> dict[str, Any]:
    """The resident with results at the most FHIR lab facilities."""
    fhir_labs = {f.id for f in REGISTRY if isinstance(f.lab, FhirEndpoint)}
    return max(
        city.patients(),
        key=lambda p: len(lab_facilities(city, str(p["national_id"])) & fhir_labs),
    )


async def test_a_patient_at_five_facilities_is_found_once_with_all_results(
    gateway: Gateway, city: City
) -> None:
    """Known at five facilities under five MRNs: found by national ID, $ihe-pix lists the
    five MRNs, and one Observation search returns the results of all five, each marked with
    its facility (meta.source) and pointing at the gateway's one Patient."""
    person = richest_person(city)
    nid = str(person["national_id"])
    fhir_labs = {f.id for f in REGISTRY if isinstance(f.lab, FhirEndpoint)}
    holders = lab_facilities(city, nid) & fhir_labs
    new_mrns = {}
    for fid in feeds(city, person)[: max(0, 5 - len(holders))]:
        new_mrns[fid] = await send_as(gateway, city, fid, person)
    holders |= set(new_mrns)
    assert len(holders) >= 5

    pix = await gateway.get(
        "/fhir/Patient/$ihe-pix", sourceIdentifier=f"{NATIONAL_ID_SYSTEM}|{nid}"
    )
    mrns = {
        p["valueIdentifier"]["system"].rsplit(":", 1)[1]: p["valueIdentifier"]["value"]
        for p in pix["parameter"]
        if p["name"] == "targetIdentifier" and p["valueIdentifier"]["system"] != NATIONAL_ID_SYSTEM
    }
    assert holders <= set(mrns)
    assert all(mrns[fid] == mrn for fid, mrn in new_mrns.items())
    assert len({mrns[fid] for fid in holders}) == len(holders)  # five different MRNs

    found = await gateway.get(
        "/fhir/Observation", **{"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}, _count="500"
    )
    observations = matches(found)
    sources = {o["meta"]["source"].removeprefix(FACILITY_SOURCE) for o in observations}
    assert holders <= sources
    patient_id = next(
        p["valueReference"]["reference"] for p in pix["parameter"] if p["name"] == "targetId"
    )
    assert {o["subject"]["reference"] for o in observations} == {patient_id}


async def test_patient_read_and_search_by_name_birthdate_gender(
    gateway: Gateway, city: City
) -> None:
    """Patient read by id; search by a name's start (Chinese or pinyin, any case), birthdate
    at year, month or day precision with prefixes, gender; combinations narrow."""
    person = city.patients()[0]
    nid = str(person["national_id"])
    by_id = matches(await gateway.get("/fhir/Patient", identifier=f"{NATIONAL_ID_SYSTEM}|{nid}"))[0]
    patient = await gateway.get(f"/fhir/Patient/{by_id['id']}")
    Patient.model_validate(patient)
    assert patient["gender"] == {"M": "male", "F": "female"}[str(person["sex"])]
    assert patient["birthDate"] == person["birth_date"]
    assert any(n.get("text") == person["name"] for n in patient["name"])
    assert nid not in by_id["id"]

    def ids(bundle: dict[str, Any]) -> set[str]:
        return {r["id"] for r in matches(bundle)}

    name = str(person["name"])
    pinyin_family = str(person["name_pinyin"]).split("^")[0]
    birth = str(person["birth_date"])
    for query in (name[:1], name, pinyin_family.lower(), pinyin_family):
        assert by_id["id"] in ids(await gateway.get("/fhir/Patient", name=query)), query
    everyone_named = ids(await gateway.get("/fhir/Patient", name=name[:1]))
    for bd in (birth, birth[:7], birth[:4], f"ge{birth}", f"le{birth}", f"lt{int(birth[:4]) + 1}"):
        assert by_id["id"] in ids(await gateway.get("/fhir/Patient", name=name, birthdate=bd)), bd
    for bd in (f"gt{birth}", f"lt{birth}", f"gt{birth[:4]}", str(int(birth[:4]) - 1)):
        assert by_id["id"] not in ids(
            await gateway.get("/fhir/Patient", name=name, birthdate=bd)
        ), bd
    gender = patient["gender"]
    other = "female" if gender == "male" else "male"
    assert by_id["id"] in ids(await gateway.get("/fhir/Patient", name=name[:1], gender=gender))
    assert by_id["id"] not in ids(await gateway.get("/fhir/Patient", name=name[:1], gender=other))
    same_family = [p for p in city.patients() if str(p["name"])[:1] == name[:1]]
    assert len(everyone_named) == len(same_family)
    assert not ids(await gateway.get("/fhir/Patient", name="无此人"))
    missing = await gateway.status_of("/fhir/Patient/p-00000000000000000000")
    assert missing[0] == 404 and missing[1]["resourceType"] == "OperationOutcome"
    # _id and identifier searches honour the other parameters too.
    assert ids(await gateway.get("/fhir/Patient", _id=by_id["id"])) == {by_id["id"]}
    assert not ids(await gateway.get("/fhir/Patient", _id=by_id["id"], gender=other))


async def test_search_by_patient_reference_and_includes(gateway: Gateway, city: City) -> None:
    """patient=Patient/{id} finds what the national ID finds; _include brings the Patient once
    and each report's Observations, on the page of the report that references them; fhirpy
    follows includes and pages."""
    person = richest_person(city)
    nid = str(person["national_id"])
    pid = matches(await gateway.get("/fhir/Patient", identifier=f"{NATIONAL_ID_SYSTEM}|{nid}"))[0][
        "id"
    ]
    by_nid = await gateway.get(
        "/fhir/Observation", **{"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}, _count="500"
    )
    by_ref = await gateway.get("/fhir/Observation", patient=f"Patient/{pid}", _count="500")
    by_subject = await gateway.get("/fhir/Observation", subject=pid, _count="500")
    want = sorted(r["id"] for r in matches(by_nid))
    assert want and sorted(r["id"] for r in matches(by_ref)) == want
    assert sorted(r["id"] for r in matches(by_subject)) == want

    with_patient = await gateway.get(
        "/fhir/Observation", patient=pid, _include="Observation:patient", _count="5"
    )
    assert [r["id"] for r in included(with_patient)] == [pid]

    reports = await gateway.get(
        "/fhir/DiagnosticReport",
        patient=pid,
        category="LAB",
        _include="DiagnosticReport:result",
        _count="2",
    )
    lab_reports = matches(reports)
    assert lab_reports
    referenced = {ref["reference"] for r in lab_reports for ref in r.get("result", [])}
    got = {f"Observation/{r['id']}" for r in included(reports)}
    assert referenced and referenced == got
    for obs in included(reports):
        assert obs["subject"]["reference"] == f"Patient/{pid}"

    client = AsyncFHIRClient(
        str(gateway.client.make_url("/fhir")), authorization=f"Bearer {token(city.data_dir)}"
    )
    everything = await (
        client.resources("DiagnosticReport")
        .search(patient=pid, category="LAB")
        .include("DiagnosticReport", "result")
        .limit(2)
        .fetch_raw()
    )
    kinds = {e.resource["resourceType"] for e in everything.entry}
    assert kinds == {"DiagnosticReport", "Observation"}

    studies = await gateway.get("/fhir/ImagingStudy", patient=pid, _include="ImagingStudy:patient")
    if matches(studies):
        assert [r["id"] for r in included(studies)] == [pid]


async def test_filters_category_status_identifier_last_updated(
    gateway: Gateway, city: City
) -> None:
    """Each filter narrows every facility's answer the same way."""
    person = richest_person(city)
    pid = matches(
        await gateway.get(
            "/fhir/Patient", identifier=f"{NATIONAL_ID_SYSTEM}|{person['national_id']}"
        )
    )[0]["id"]
    base = {"patient": pid, "_count": "500"}
    everything = matches(await gateway.get("/fhir/Observation", **base))
    assert everything
    lab = matches(await gateway.get("/fhir/Observation", **base, category="laboratory"))
    assert len(lab) == len(everything)
    assert not matches(await gateway.get("/fhir/Observation", **base, category="imaging"))
    assert len(matches(await gateway.get("/fhir/Observation", **base, status="final"))) == len(
        [o for o in everything if o["status"] == "final"]
    )
    assert not matches(await gateway.get("/fhir/Observation", **base, status="cancelled"))
    reports = matches(await gateway.get("/fhir/DiagnosticReport", **base))
    with_id = next(r for r in reports if r.get("identifier"))
    ident = with_id["identifier"][0]
    found = matches(
        await gateway.get(
            "/fhir/DiagnosticReport", **base, identifier=f"{ident['system']}|{ident['value']}"
        )
    )
    assert [r["id"] for r in found] == [with_id["id"]]

    # Results the gateway holds (HL7 v2) carry lastUpdated: a feed message arrives now.
    hl7 = feeds(city, person)[-1]
    await send_as(gateway, city, hl7, person)
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = matches(
        await gateway.get("/fhir/Observation", **base, _lastUpdated=f"ge{an_hour_ago}")
    )
    assert any(o["meta"]["source"] == FACILITY_SOURCE + hl7 for o in recent)
    assert all(
        o["meta"]["lastUpdated"] >= an_hour_ago[:10] for o in recent if "lastUpdated" in o["meta"]
    )
    old = matches(await gateway.get("/fhir/Observation", **base, _lastUpdated="lt2000"))
    assert not [o for o in old if "lastUpdated" in o.get("meta", {})]


async def test_the_same_test_from_two_hospitals_is_one_loinc_code(
    gateway: Gateway, city: City
) -> None:
    """Facilities whose laboratory systems know only their own item codes (FHIR or HL7 v2)
    answer a search by LOINC: the gateway asks each in its own codes and every result carries
    the LOINC coding from the city's ConceptMap."""
    codes = LabCodeMap.load()
    person = richest_person(city)
    local_feed = next(
        fid for fid in feeds(city, person) if codes.has_local_codes(LOCAL_SYSTEM_PREFIX + fid)
    )
    await send_as(gateway, city, local_feed, person)
    pid = matches(
        await gateway.get(
            "/fhir/Patient", identifier=f"{NATIONAL_ID_SYSTEM}|{person['national_id']}"
        )
    )[0]["id"]
    everything = matches(await gateway.get("/fhir/Observation", patient=pid, _count="500"))
    by_loinc: dict[str, set[str]] = {}
    for o in everything:
        loinc = codes.standard_code(o)
        assert loinc is not None, o["code"]
        assert any(c["system"] == LOINC_SYSTEM for c in o["code"]["coding"])
        by_loinc.setdefault(loinc, set()).add(o["meta"]["source"].removeprefix(FACILITY_SOURCE))
    local_sources = {f for fs in by_loinc.values() for f in fs} & {
        s.removeprefix(LOCAL_SYSTEM_PREFIX) for s in codes.sources
    }
    assert local_feed in local_sources
    # An item held by a facility with local codes and by another facility.
    loinc = max(by_loinc, key=lambda k: (bool(by_loinc[k] & local_sources), len(by_loinc[k])))
    assert len(by_loinc[loinc]) >= 2 and by_loinc[loinc] & local_sources
    found = matches(
        await gateway.get(
            "/fhir/Observation", patient=pid, code=f"{LOINC_SYSTEM}|{loinc}", _count="500"
        )
    )
    assert {o["id"] for o in found} == {
        o["id"] for o in everything if codes.standard_code(o) == loinc
    }
    assert {o["meta"]["source"].removeprefix(FACILITY_SOURCE) for o in found} == by_loinc[loinc]


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        (
            "/fhir/Observation",
            {"patient": "p-1", "_include": "Observation:performer"},
            400,
            "not-supported",
        ),
        ("/fhir/Observation", {"patient": "Organization/F001"}, 400, "value"),
        ("/fhir/Observation", {"patient": "p-1", "_lastUpdated": "recently"}, 400, "value"),
        ("/fhir/Observation", {"patient": "p-1", "date": "sa2024"}, 400, "not-supported"),
        ("/fhir/Observation", {"patient": "p-1", "handling": "sloppy"}, 400, "value"),
        ("/fhir/ImagingStudy", {"patient": "p-1", "code": "x"}, 400, "not-supported"),
        ("/fhir/Patient", {"gender": "female"}, 400, "required"),
        ("/fhir/Patient", {"name": "李", "gender": "woman"}, 400, "value"),
        ("/fhir/Patient", {"name": "李", "birthdate": "1990-13"}, 400, "value"),
        ("/fhir/Patient", {"name": " "}, 400, "value"),
        ("/fhir/Patient", {"name": "李", "_count": "1000"}, 400, "value"),
    ],
)
async def test_bad_search_input_gets_an_operation_outcome(
    gateway: Gateway, path: str, params: dict[str, str], status: int, code: str
) -> None:
    got, body = await gateway.status_of(path, **params)
    assert got == status, body
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code


async def test_an_unknown_patient_has_no_results_not_an_error(gateway: Gateway) -> None:
    for params in ({"patient": "p-00000000000000000000"}, {"patient.identifier": "x|1"}):
        bundle = await gateway.get("/fhir/Observation", **params)
        assert bundle["total"] == 0 and not bundle["entry"]


def test_the_capability_statement_lists_exactly_what_search_accepts() -> None:
    """The published search parameters and includes are the ones the code takes."""
    cs = capability_statement()
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    for rtype, accepted in fhir_search.PARAMS.items():
        published = {p["name"] for p in by_type[rtype]["searchParam"]}
        assert published == set(accepted) - {"_include"}, rtype  # that is searchInclude
        assert set(by_type[rtype]["searchInclude"]) == fhir_search.INCLUDES[rtype]
    patient = {p["name"] for p in by_type["Patient"]["searchParam"]}
    assert patient == set(fhir_patients.SEARCH_PARAMS)
    audit = {p["name"] for p in by_type["AuditEvent"]["searchParam"]}
    assert audit == set(fhir_audit_events.SEARCH_PARAMS) - {"_before"}  # _before: next links
    consent = {p["name"] for p in by_type["Consent"]["searchParam"]}
    assert consent == set(fhir_consents.SEARCH_PARAMS)
