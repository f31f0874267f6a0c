"""The FHIR face's lab search with fhirpy: one query, every facility that knows the patient
(FHIR lab systems in their own MRNs, and results the gateway holds from HL7 v2 feeds)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhirpy import AsyncFHIRClient

from adapters.types import FhirEndpoint, Hl7v2Feed
from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.registry import load_registry
from tests.city import City, Client, open_gateway, token

REGISTRY = load_registry()


class Gateway:
    def __init__(self, client: Client, mllp: int) -> None:
        self.client, self.mllp = client, mllp


@pytest.fixture
async def gateway(city: City) -> AsyncIterator[Gateway]:
    async with open_gateway(city) as (client, settings):
        yield Gateway(client, settings.mllp_port)


def _person_with_fhir_results(city: City) -> tuple[str, set[str]]:
    """A resident with lab results at two or more FHIR lab facilities: (national id, facilities)."""
    best: tuple[str, set[str]] = ("", set())
    for p in city.patients():
        with_labs = set()
        for fid in p["records"]:
            f = next(f for f in REGISTRY if f.id == fid)
            path = city.data_dir / "seed" / "fhir" / f"{fid}.ndjson"
            if (
                isinstance(f.lab, FhirEndpoint)
                and path.exists()
                and '"Observation"' in path.read_text()
            ):
                with_labs.add(fid)
        if len(with_labs) > len(best[1]):
            best = (str(p["national_id"]), with_labs)
    return best


async def test_metadata_is_a_valid_capability_statement(gateway: Gateway) -> None:
    """/fhir/metadata parses as an R4 CapabilityStatement naming the searchable resources."""
    resp = await gateway.client.get("/fhir/metadata")
    assert resp.content_type == "application/fhir+json"
    cs = CapabilityStatement.model_validate(await resp.json())
    assert {r.type for r in (cs.rest or [])[0].resource or []} == {
        "Observation",
        "DiagnosticReport",
        "ImagingStudy",
        "Patient",
        "Organization",
        "Endpoint",
        "AuditEvent",
        "Consent",
        "Basic",  # recognition decisions
        "StructureDefinition",  # and the conformance resources that define them
        "CodeSystem",
        "ValueSet",
        "OperationDefinition",
    }
    operations = {o.name for o in (cs.rest or [])[0].operation or []}
    assert operations == {"recognized-priors"}


async def test_fhirpy_finds_a_patients_results_at_every_facility(
    gateway: Gateway, city: City
) -> None:
    """Search by national ID returns the results of every FHIR lab facility that knows the
    person, each asked under its own MRN; every resource is valid R4."""
    nid, facilities = _person_with_fhir_results(city)
    assert facilities
    client = AsyncFHIRClient(
        str(gateway.client.make_url("/fhir")), authorization=f"Bearer {token(city.data_dir)}"
    )
    search = client.resources("Observation").search(
        **{"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
    )
    resources = await search.limit(500).fetch()
    observations = [
        r.serialize()  # type: ignore[no-untyped-call]
        for r in resources
        if r["resourceType"] == "Observation"
    ]
    assert observations
    for resource in observations:
        Observation.model_validate(resource)
    # Every facility that holds results for the person contributed.
    raw = await (
        await gateway.client.get(
            "/fhir/Observation",
            params={"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}", "_count": "500"},
        )
    ).json()
    ids = {e["resource"]["id"] for e in raw["entry"] if e["search"]["mode"] == "match"}
    prefixes = {i.split("-")[0] for i in ids}
    assert facilities <= prefixes, (facilities, prefixes)
    reports = await (
        await gateway.client.get(
            "/fhir/DiagnosticReport", params={"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
        )
    ).json()
    for e in reports["entry"]:
        DiagnosticReport.model_validate(e["resource"])


async def test_a_failing_facility_is_an_outcome_entry(gateway: Gateway, city: City) -> None:
    """A lab system that is down adds an OperationOutcome entry naming it; the rest answer."""
    nid, facilities = _person_with_fhir_results(city)
    down = sorted(facilities)[0]
    city.fault(down, "down")
    raw = await (
        await gateway.client.get(
            "/fhir/Observation", params={"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
        )
    ).json()
    Bundle.model_validate(raw)
    outcomes = [e["resource"] for e in raw["entry"] if e["search"]["mode"] == "outcome"]
    assert any(down in o["issue"][0]["diagnostics"] for o in outcomes)
    assert all(
        not e["resource"]["id"].startswith(down)
        for e in raw["entry"]
        if e["search"]["mode"] == "match"
    )


async def test_hl7_fed_results_come_back_through_fhir(gateway: Gateway, city: City) -> None:
    """Results that arrived over the HL7 v2 feed are searchable in the same FHIR query."""
    from adapters.hl7v2 import parse_oru
    from adapters.mllp import MllpConnection
    from seeds.hl7_sender import messages_for_facility, parse_ack

    for f in REGISTRY:
        path = city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if isinstance(f.lab, Hl7v2Feed) and path.exists():
            messages = messages_for_facility(
                path,
                sending_application=f.lab.sending_application,
                sending_facility=f.lab.sending_facility,
            )
            if messages:
                break
    else:
        pytest.skip("no HL7 v2 results in the seed")
    async with await MllpConnection.open("127.0.0.1", gateway.mllp, timeout=10) as conn:
        assert parse_ack(await conn.exchange(messages[0], timeout=10))[0] == "AA"
    sent = parse_oru(messages[0])
    nid = next(v for s, v in sent.patient_identifiers if s == NATIONAL_ID_SYSTEM)
    raw = await (
        await gateway.client.get(
            "/fhir/Observation", params={"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
        )
    ).json()
    assert any(e["search"]["mode"] == "match" for e in raw["entry"]), (nid, raw)


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/fhir/Observation", {"patient.identifier": "x|1", "colour": "red"}, 400, "not-supported"),
        ("/fhir/Observation", {}, 400, "required"),
        ("/fhir/Observation", {"patient.identifier": "x|1", "date": "yesterday"}, 400, "value"),
        ("/fhir/Observation", {"patient.identifier": "x|1", "_count": "0"}, 400, "value"),
        ("/fhir/Observation", {"patient.identifier": "x|"}, 400, "value"),
        ("/fhir/Appointment", {}, 404, "not-supported"),
    ],
)
async def test_bad_searches_get_an_operation_outcome(
    gateway: Gateway, path: str, params: dict[str, str], status: int, code: str
) -> None:
    """Unknown parameters (strict handling), missing or bad values, unsupported resources."""
    resp = await gateway.client.get(path, params=params)
    assert resp.status == status
    body = await resp.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code


async def test_lenient_handling_ignores_unknown_parameters(gateway: Gateway) -> None:
    """handling=lenient: an unknown parameter is ignored, not refused."""
    resp = await gateway.client.get(
        "/fhir/Observation",
        params={"patient.identifier": "x|1", "colour": "red", "handling": "lenient"},
    )
    assert resp.status == 200


async def test_ihe_pix_lists_a_residents_identifiers_at_every_facility(
    gateway: Gateway, city: City
) -> None:
    """$ihe-pix from the national ID gives each facility's MRN; from an MRN, the national ID
    and the others; targetSystem narrows it; an unknown identifier is 404."""
    from fhir.resources.R4B.parameters import Parameters

    person = max(city.patients(), key=lambda p: len(p["records"]))
    nid = str(person["national_id"])
    resp = await gateway.client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
    )
    raw = await resp.json()
    Parameters.model_validate(raw)
    got = {
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in raw["parameter"]
        if p["name"] == "targetIdentifier"
    }
    want = {(f"urn:huren:mrn:{fid}", mrn) for fid, mrn in person["records"].items()}
    assert want <= got and len(want) >= 2
    fid, mrn = next(iter(person["records"].items()))
    resp = await gateway.client.get(
        "/fhir/Patient/$ihe-pix",
        params={
            "sourceIdentifier": f"urn:huren:mrn:{fid}|{mrn}",
            "targetSystem": NATIONAL_ID_SYSTEM,
        },
    )
    body = await resp.json()
    assert [
        p["valueIdentifier"]["value"] for p in body["parameter"] if p["name"] == "targetIdentifier"
    ] == [nid]
    unknown = await gateway.client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": "urn:huren:mrn:F001|nobody"}
    )
    assert unknown.status == 404 and (await unknown.json())["resourceType"] == "OperationOutcome"


async def test_patient_organization_and_endpoint_resources_are_valid(
    gateway: Gateway, city: City
) -> None:
    """Patient by identifier, Organization read and search, Endpoint read: valid R4, and the
    national ID number never appears in a resource id."""
    from fhir.resources.R4B.endpoint import Endpoint
    from fhir.resources.R4B.organization import Organization
    from fhir.resources.R4B.patient import Patient

    nid = str(city.patients()[0]["national_id"])
    bundle = await (
        await gateway.client.get(
            "/fhir/Patient", params={"identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
        )
    ).json()
    patient = Patient.model_validate(bundle["entry"][0]["resource"])
    assert nid not in (patient.id or "")
    org = Organization.model_validate(
        await (await gateway.client.get("/fhir/Organization/F001")).json()
    )
    assert org.name == "常州市第一人民医院"
    found = await (
        await gateway.client.get("/fhir/Organization", params={"name": "第一人民"})
    ).json()
    assert {e["resource"]["id"] for e in found["entry"]} >= {"F001"}
    ep = Endpoint.model_validate(
        await (await gateway.client.get("/fhir/Endpoint/F001-wado")).json()
    )
    assert str(ep.address).endswith("/facilities/F001/dicomweb")
    assert (await gateway.client.get("/fhir/Organization/F999")).status == 404
    assert (await gateway.client.get("/fhir/Patient")).status == 400


async def test_paging_follows_stable_next_links(gateway: Gateway, city: City) -> None:
    """Pages of 3 through `next` links give the same results as one big page; a page fetched
    twice is the same page (the search is not recomputed); _summary=count and _sort work."""
    nid, _ = _person_with_fhir_results(city)
    ident = {"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}
    whole = await (
        await gateway.client.get("/fhir/Observation", params={**ident, "_count": "500"})
    ).json()
    want = [e["resource"]["id"] for e in whole["entry"] if e["search"]["mode"] == "match"]
    assert len(want) > 3
    client = AsyncFHIRClient(
        str(gateway.client.make_url("/fhir")), authorization=f"Bearer {token(city.data_dir)}"
    )
    paged = await client.resources("Observation").search(**ident).limit(3).fetch_all()
    assert sorted(r["id"] for r in paged) == sorted(want)
    first = await (
        await gateway.client.get("/fhir/Observation", params={**ident, "_count": "3"})
    ).json()
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    path = nxt.split("/fhir/", 1)[1]
    a = await (await gateway.client.get(f"/fhir/{path}")).json()
    b = await (await gateway.client.get(f"/fhir/{path}")).json()
    assert [e["resource"]["id"] for e in a["entry"]] == [e["resource"]["id"] for e in b["entry"]]
    assert a["total"] == len(want)
    gone = await gateway.client.get(
        "/fhir/Observation", params={"_getpages": "deadbeef", "_offset": "3"}
    )
    assert gone.status == 410
    count = await (
        await gateway.client.get("/fhir/Observation", params={**ident, "_summary": "count"})
    ).json()
    assert count["total"] == len(want) and not count["entry"]
    oldest_first = await (
        await gateway.client.get(
            "/fhir/Observation", params={**ident, "_sort": "date", "_count": "500"}
        )
    ).json()
    dates = [
        e["resource"].get("effectiveDateTime", "")
        for e in oldest_first["entry"]
        if e["search"]["mode"] == "match"
    ]
    assert dates == sorted(dates)


async def test_imaging_study_search_maps_the_dicom_side(gateway: Gateway, city: City) -> None:
    """ImagingStudy by national ID: one valid resource per study the DICOM side finds, each
    with its facility's MRN and an Endpoint that resolves to that facility's WADO-RS."""
    from fhir.resources.R4B.imagingstudy import ImagingStudy

    person = max(city.patients(), key=lambda p: len(p["records"]))
    nid = str(person["national_id"])
    qido = await (await gateway.client.get("/dicomweb/studies", params={"PatientID": nid})).json()
    bundle = await (
        await gateway.client.get(
            "/fhir/ImagingStudy",
            params={"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}", "_count": "500"},
        )
    ).json()
    studies = [
        ImagingStudy.model_validate(e["resource"])
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
    ]
    assert len(studies) == len(qido) > 0
    uids = {s["0020000D"]["Value"][0] for s in qido}
    assert {
        str(i.value).removeprefix("urn:oid:")
        for s in studies
        for i in s.identifier or []
        if i.system == "urn:dicom:uid"
    } == uids
    for s in studies:
        reference = str((s.endpoint or [])[0].reference)
        fid = reference.removeprefix("Endpoint/").removesuffix("-wado")
        assert s.subject.identifier.value == person["records"][fid]  # type: ignore[union-attr]
        ep = await (await gateway.client.get(f"/fhir/{reference}")).json()
        assert ep["address"].endswith(f"/facilities/{fid}/dicomweb")
