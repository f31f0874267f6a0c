"""The city's directory as FHIR: facilities as Organization, their imaging endpoints (through
this gateway) as Endpoint, and patients' identifiers across facilities ($ihe-pix, Patient)."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from gateway.identity import NATIONAL_ID_SYSTEM, resolve_person
from gateway.registry import Facility
from gateway.web import CORE

from .outcome import FhirError, fhir_response

LEVEL_SYSTEM = "urn:huren:facility-level"
FACILITY_SYSTEM = "urn:huren:facility"


def organization(f: Facility, base: str) -> dict[str, Any]:
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": f.id,
        "identifier": [{"system": FACILITY_SYSTEM, "value": f.id}],
        "active": True,
        "type": [{"coding": [{"system": LEVEL_SYSTEM, "code": f.level}], "text": f.level}],
        "name": f.name_zh,
        "alias": [f.name_en, *([f.short_name_zh] if f.short_name_zh else [])],
        "address": [{"city": "常州市", "district": f.district, "country": "CN"}],
    }
    # Every facility's images are reachable through the gateway (its PACS or the archive).
    org["endpoint"] = [{"reference": f"Endpoint/{f.id}-wado"}]
    return org


def endpoint(f: Facility, base: str) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": f"{f.id}-wado",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": f"{f.name_en} imaging, through Huren",
        "managingOrganization": {"reference": f"Organization/{f.id}"},
        "payloadType": [
            {"coding": [{"system": "http://hl7.org/fhir/endpoint-payload-type", "code": "DICOM"}]}
        ],
        "payloadMimeType": ["application/dicom"],
        "address": f"{base.removesuffix('/fhir')}/facilities/{f.id}/dicomweb",
    }


async def read_organization(request: web.Request) -> web.Response:
    f = _facility(request, request.match_info["id"])
    return fhir_response(organization(f, _base(request)))


async def search_organizations(request: web.Request) -> web.Response:
    registry = request.app[CORE].registry
    params = request.query
    _only(params, {"_id", "identifier", "name", "_count"})
    found = list(registry)
    if "_id" in params:
        found = [f for f in found if f.id in params["_id"].split(",")]
    if "identifier" in params:
        value = params["identifier"].rpartition("|")[2]
        found = [f for f in found if f.id == value]
    if "name" in params:
        needle = params["name"].lower()
        found = [f for f in found if needle in f.name_zh.lower() or needle in f.name_en.lower()]
    return fhir_response(_bundle(request, [organization(f, _base(request)) for f in found]))


async def read_endpoint(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    f = _facility(request, rid.removesuffix("-wado"))
    if not rid.endswith("-wado"):
        raise FhirError(404, "not-found", f"Endpoint/{rid} not found")
    return fhir_response(endpoint(f, _base(request)))


async def ihe_pix(request: web.Request) -> web.Response:
    """IHE PIXm: a patient's identifiers across facilities (ITI-83), as Parameters."""
    core = request.app[CORE]
    source = request.query.get("sourceIdentifier", "")
    system, _, value = source.rpartition("|")
    if not system or not value:
        raise FhirError(400, "required", "sourceIdentifier=system|value is required")
    targets = set(request.query.getall("targetSystem", []))
    person = await _person(request, system, value)
    if person is None:
        # PIXm: an unknown source identifier is 404 with an OperationOutcome (ITI-83 3.83.4.2.3)
        raise FhirError(404, "not-found", "sourceIdentifier is not known")
    identifiers = [(NATIONAL_ID_SYSTEM, person, None)] + [
        (i.system, i.value, i.facility_id)
        for i in await core.store.identifiers_for(person)
        if i.system != NATIONAL_ID_SYSTEM
    ]
    parameters = [
        {"name": "targetIdentifier", "valueIdentifier": {"system": s, "value": v}}
        for s, v, _ in identifiers
        if (not targets or s in targets) and (s, v) != (system, value)
    ]
    parameters.append(
        {"name": "targetId", "valueReference": {"reference": f"Patient/{_patient_id(person)}"}}
    )
    return fhir_response({"resourceType": "Parameters", "parameter": parameters})


async def search_patients(request: web.Request) -> web.Response:
    """Patient by identifier: the person as the gateway knows them (identifiers only)."""
    core = request.app[CORE]
    _only(request.query, {"identifier", "_count"})
    system, _, value = request.query.get("identifier", "").rpartition("|")
    if not value:
        raise FhirError(400, "required", "identifier=system|value is required")
    person = await _person(request, system or NATIONAL_ID_SYSTEM, value)
    patients = []
    if person is not None:
        idents = await core.store.identifiers_for(person)
        patients.append(
            {
                "resourceType": "Patient",
                "id": _patient_id(person),
                "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": person}]
                + [
                    {
                        "system": i.system,
                        "value": i.value,
                        **(
                            {"assigner": {"reference": f"Organization/{i.facility_id}"}}
                            if i.facility_id
                            else {}
                        ),
                    }
                    for i in idents
                    if i.system != NATIONAL_ID_SYSTEM
                ],
            }
        )
    return fhir_response(_bundle(request, patients))


async def _person(request: web.Request, system: str, value: str) -> str | None:
    core = request.app[CORE]
    if system == NATIONAL_ID_SYSTEM:
        return await resolve_person(core.store, core.registry, value, None)
    return await core.store.person_for(system, value)


def _patient_id(person: str) -> str:
    # The national ID number must not appear in URLs (logs, proxies): a stable digest instead.
    return "p-" + hashlib.sha256(person.encode()).hexdigest()[:20]


def _facility(request: web.Request, fid: str) -> Facility:
    f = request.app[CORE].registry.get(fid)
    if f is None:
        raise FhirError(404, "not-found", f"no facility {fid}")
    return f


def _only(params: Any, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed - {"_format", "handling"})
    if unknown and params.get("handling", "strict") != "lenient":
        raise FhirError(400, "not-supported", f"unknown search parameters {unknown}")


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/fhir"


def _bundle(request: web.Request, resources: list[dict[str, Any]]) -> dict[str, Any]:
    base = _base(request)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
