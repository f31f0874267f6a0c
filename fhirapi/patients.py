"""Patients as the gateway knows them (the MPI): read, search, and IHE PIXm ``$ihe-pix``.

A person is keyed by their national ID number; their Patient.id is a digest of it, so the
number never appears in a URL. Identifiers come from every source the gateway learns from
(registration feed, HL7 v2 PID, DICOM headers), each MRN with the facility that assigned it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.guard import access_of
from gateway.identity import NATIONAL_ID_SYSTEM, resolve_person
from gateway.storage import Person, name_matches
from gateway.web import CORE

from . import params as P
from .outcome import FhirError, fhir_response

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SEARCH_PARAMS = frozenset({"_id", "identifier", "name", "birthdate", "gender", "_count"})
GENDERS = ("male", "female", "other", "unknown")
MAX_PATIENTS = 100


async def patient_resource(request: web.Request, person: Person) -> dict[str, Any]:
    """The Patient resource of ``person``, identifiers at every facility included."""
    core = request.app[CORE]
    identifiers: list[dict[str, Any]] = [
        {
            "use": "official",
            "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
            "system": NATIONAL_ID_SYSTEM,
            "value": person.person_key,
        }
    ]
    for i in await core.store.identifiers_for(person.person_key):
        if i.system == NATIONAL_ID_SYSTEM:
            continue
        ident: dict[str, Any] = {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": i.system,
            "value": i.value,
        }
        if i.facility_id:
            ident["assigner"] = {"reference": f"Organization/{i.facility_id}"}
        identifiers.append(ident)
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": person.patient_id,
        "identifier": identifiers,
    }
    if person.names:
        patient["name"] = [dict(n) for n in person.names]
    if person.gender:
        patient["gender"] = person.gender
    if person.birth_date:
        patient["birthDate"] = person.birth_date
    return patient


async def person_for_identifier(request: web.Request, system: str, value: str) -> Person | None:
    """The person an identifier names: a national ID number, or a facility's MRN."""
    core = request.app[CORE]
    if system in ("", NATIONAL_ID_SYSTEM):
        key = await resolve_person(core.store, core.registry, value, None)
    else:
        key = await core.store.person_for(system, value)
    if key is None:
        return None
    found = await core.store.person_by_key(key)
    return found


async def read_patient(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_scope(access, "Patient", "r")
    found = await core.store.person(request.match_info["id"])
    if found is None:
        raise FhirError(404, "not-found", f"Patient/{request.match_info['id']} is not known")
    await core.policy.patient(access, found.person_key, "Patient", "r")
    return fhir_response(await patient_resource(request, found))


async def search_patients(request: web.Request) -> web.Response:
    """Patient by _id, identifier, or name, narrowed by birthdate and gender.

    A search must name the person (_id, identifier or name): a city's register is not listed
    by birth date or gender alone.
    """
    params = request.query
    request.app[CORE].policy.require_scope(access_of(request), "Patient", "s")
    P.check_known(params, SEARCH_PARAMS)
    limit = P.count(params, MAX_PATIENTS, MAX_PATIENTS)
    if not ({"_id", "identifier", "name"} & set(params)):
        raise FhirError(400, "required", "search Patient by _id, identifier or name")
    gender = params.get("gender")
    if gender is not None and gender not in GENDERS:
        raise FhirError(400, "value", f"gender must be one of {', '.join(GENDERS)}")
    bounds: list[tuple[str, str]] = []
    if "birthdate" in params:
        prefix, value = P.date("birthdate", params["birthdate"])
        bounds = P.day_bounds(prefix, value[:10])
    name = params.get("name")
    if name is not None and not name.strip():
        raise FhirError(400, "value", "name must not be empty")
    store = request.app[CORE].store
    people: list[Person]
    if "_id" in params:
        people = [p for i in params["_id"].split(",") if (p := await store.person(i))]
    elif "identifier" in params:
        system, value = P.token(params["identifier"])
        if not value:
            raise FhirError(400, "value", "identifier needs a value ([system|]value)")
        found = await person_for_identifier(request, system or "", value)
        people = [found] if found else []
    else:
        assert name is not None
        people = await store.search_people(name=name, gender=gender, birth_date=bounds, limit=limit)
    people = [p for p in people if _matches(p, name, gender, bounds)]
    # Only people the asker may see are listed (a name search is not a way round the rules).
    access = access_of(request)
    policy = request.app[CORE].policy
    people = [p for p in people if await policy.visible(access, p.person_key)][:limit]
    if len(people) == 1:
        access.patient = people[0].person_key
    resources = [await patient_resource(request, p) for p in people]
    return fhir_response(bundle(request, resources))


def _matches(
    p: Person, name: str | None, gender: str | None, bounds: list[tuple[str, str]]
) -> bool:
    """The same tests as the store's search, for people found by _id or identifier."""
    if name is not None and not name_matches(p.names, name):
        return False
    if gender is not None and p.gender != gender:
        return False
    if bounds and p.birth_date is None:
        return False
    day = p.birth_date or ""
    return all(day >= v if op == "ge" else day < v for op, v in bounds)


async def ihe_pix(request: web.Request) -> web.Response:
    """IHE PIXm: a patient's identifiers across facilities (ITI-83), as Parameters."""
    core = request.app[CORE]
    source = request.query.get("sourceIdentifier", "")
    system, _, value = source.rpartition("|")
    if not system or not value:
        raise FhirError(400, "required", "sourceIdentifier=system|value is required")
    targets = set(request.query.getall("targetSystem", []))
    access = access_of(request)
    core.policy.require_scope(access, "Patient", "r")
    found = await person_for_identifier(request, system, value)
    if found is None:
        # PIXm: an unknown source identifier is 404 with an OperationOutcome (ITI-83 3.83.4.2.3)
        raise FhirError(404, "not-found", "sourceIdentifier is not known")
    await core.policy.patient(access, found.person_key, "Patient", "r")
    identifiers = [(NATIONAL_ID_SYSTEM, found.person_key)] + [
        (i.system, i.value)
        for i in await core.store.identifiers_for(found.person_key)
        if i.system != NATIONAL_ID_SYSTEM
    ]
    parameters = [
        {"name": "targetIdentifier", "valueIdentifier": {"system": s, "value": v}}
        for s, v in identifiers
        if (not targets or s in targets) and (s, v) != (system, value)
    ]
    parameters.append(
        {"name": "targetId", "valueReference": {"reference": f"Patient/{found.patient_id}"}}
    )
    return fhir_response({"resourceType": "Parameters", "parameter": parameters})


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/fhir"


def bundle(request: web.Request, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A searchset of ``resources``, all matches, on one page."""
    base = base_url(request)
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
