"""Consent: a resident opens their records to a facility (or to every facility of the city),
for a while or until they withdraw it. The access policy reads it (gateway/access.py).

    POST   /fhir/Consent            the resident (or an admin) records one; 201
    GET    /fhir/Consent?patient=   the resident's own, or any patient's for an admin
    GET    /fhir/Consent/{id}
    DELETE /fhir/Consent/{id}       withdrawn at once in this process (others within 30 s)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from fhir.resources.R4B.consent import Consent
from pydantic import ValidationError

from gateway.access import Access
from gateway.consent import ANY_FACILITY, Grant, active_grants, grant, grant_by_id, revoke
from gateway.guard import access_of
from gateway.storage import patient_id_of
from gateway.web import CORE

from . import params as P
from .outcome import FhirError, fhir_response
from .patients import base_url, bundle

SEARCH_PARAMS: Final = frozenset({"patient"})
_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_SCOPE: Final = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy",
        }
    ]
}
_CATEGORY: Final = [
    {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent Document"}]}
]


async def create(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_scope(access, "Consent", "c")
    try:
        body = await request.json()
        consent = Consent.model_validate(body)
    except (ValueError, ValidationError) as exc:
        raise FhirError(400, "structure", f"not a valid R4 Consent: {str(exc)[:300]}") from None
    if consent.status != "active":
        raise FhirError(400, "value", "a Consent recorded here is active (withdraw with DELETE)")
    if consent.patient is None or not consent.patient.reference:
        raise FhirError(400, "required", "Consent.patient must reference the Patient")
    person = await _person(request, consent.patient.reference)
    await _owner(request, access, person)
    provision = consent.provision
    if provision is not None and provision.type not in (None, "permit"):
        raise FhirError(400, "not-supported", "only permit provisions are recorded")
    actors = [a.reference.reference for a in (provision.actor or [])] if provision else []
    if len(actors) > 1:
        raise FhirError(400, "not-supported", "one Consent names one facility (or none: all)")
    facility = P.reference_id(str(actors[0]), "Organization") if actors else ANY_FACILITY
    if facility != ANY_FACILITY and core.registry.get(facility) is None:
        raise FhirError(400, "value", f"no facility {facility}")
    until = provision.period.end if provision and provision.period else None
    number = await grant(
        core.store,
        person,
        facility,
        "consent",
        granted_by=access.principal.subject if access.principal else "unknown",
        expires_at=_aware(until) if until is not None else None,
    )
    core.policy.forget(person)
    recorded = await grant_by_id(core.store, number)
    assert recorded is not None
    resource = _resource(recorded)
    response = fhir_response(resource, status=201)
    response.headers["Location"] = f"{base_url(request)}/Consent/{resource['id']}"
    return response


async def search(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_scope(access, "Consent", "s")
    P.check_known(request.query, SEARCH_PARAMS)
    if "patient" not in request.query:
        raise FhirError(400, "required", "search Consent by patient")
    person = await _person(request, request.query["patient"])
    await _owner(request, access, person)
    grants = await active_grants(core.store, person)
    consents = [_resource(g) for g in grants if g.kind == "consent"]
    return fhir_response(bundle(request, consents))


async def read(request: web.Request) -> web.Response:
    found = await _grant(request, "r")
    return fhir_response(_resource(found))


async def withdraw(request: web.Request) -> web.Response:
    core = request.app[CORE]
    found = await _grant(request, "d")
    await revoke(core.store, found.id, found.person_key)
    core.policy.forget(found.person_key)
    return web.Response(status=204)


async def _grant(request: web.Request, interaction: str) -> Grant:
    """The consent named in the path, if the asker may see it (the resident, or an admin)."""
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_scope(access, "Consent", interaction)
    p = core.policy.require_role(access, "resident", "admin")
    number = request.match_info["id"].removeprefix("c-")
    found = await grant_by_id(core.store, int(number)) if number.isdigit() else None
    if p.role == "resident" and found is not None:
        if await core.policy.resident_person(access) != found.person_key:
            found = None  # another person's consent: as if absent
    if found is None or found.kind != "consent" or found.revoked_at is not None:
        raise FhirError(404, "not-found", f"Consent/{request.match_info['id']} is not known")
    access.patient = found.person_key
    return found


async def _person(request: web.Request, reference: str) -> str:
    found = await request.app[CORE].store.person(P.reference_id(reference, "Patient"))
    if found is None:
        raise FhirError(404, "not-found", f"{reference} is not known")
    return found.person_key


async def _owner(request: web.Request, access: Access, person: str) -> None:
    """The resident themself, or an admin; nobody else records or reads a consent."""
    p = request.app[CORE].policy.require_role(access, "resident", "admin")
    access.patient = person
    if p.role == "resident" and await request.app[CORE].policy.resident_person(access) != person:
        raise FhirError(403, "forbidden", "a resident records consent for their own records only")


def _aware(value: Any) -> datetime:
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _resource(first: Grant) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "permit"}
    if first.facility_id != ANY_FACILITY:
        provision["actor"] = [
            {
                "role": {"coding": [{"system": _PARTICIPATION, "code": "PRCP"}]},
                "reference": {"reference": f"Organization/{first.facility_id}"},
            }
        ]
    if first.expires_at is not None:
        provision["period"] = {"end": first.expires_at.astimezone(UTC).isoformat()}
    return {
        "resourceType": "Consent",
        "id": f"c-{first.id}",
        "status": "active",
        "scope": _SCOPE,
        "category": _CATEGORY,
        "patient": {"reference": f"Patient/{patient_id_of(first.person_key)}"},
        "dateTime": first.granted_at.astimezone(UTC).isoformat(),
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": provision,
    }
