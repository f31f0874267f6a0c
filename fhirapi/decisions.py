"""A clinician's decision on a recognised result, as FHIR ``Basic`` resources with the profile
StructureDefinition recognition-decision: ``POST /fhir/Basic`` records one, ``GET
/fhir/Basic/{id}`` and ``GET /fhir/Basic?patient=…`` read them back.

The gateway does not take the client's word for the result: it finds the result at the
facility named as its holder, among the patient's records, and judges it itself; the verdict
the clinician saw is stored with the decision. A re-test needs a reason from the ValueSet
retest-reason (with text where the reason asks for it); an accept takes none. Anything wrong
is refused whole, before anything is stored.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from gateway.guard import access_of
from gateway.recognition_decisions import (
    DECISIONS,
    MAX_TEXT,
    NewDecision,
    RecordedDecision,
    decision_by_id,
    decisions_for,
    record,
)
from gateway.storage import Person, patient_id_of, source_facility
from gateway.web import CORE

from . import params as P
from .conformance import retest_reasons
from .outcome import FhirError, fhir_response
from .patients import base_url
from .search import Criteria, as_ours, fetch
from .verdicts import RESULT_TYPES, Judge, verdict_extension

PROFILE: Final = "urn:huren:StructureDefinition/recognition-decision"
DECISION_SYSTEM: Final = "urn:huren:CodeSystem/recognition-decision"
RETEST_SYSTEM: Final = "urn:huren:CodeSystem/retest-reason"
EXT_RESULT: Final = "urn:huren:StructureDefinition/recognition-decision-result"
EXT_REASON: Final = "urn:huren:StructureDefinition/recognition-decision-reason"
EXT_HOLDER: Final = "urn:huren:StructureDefinition/recognition-decision-holder"
SEARCH_PARAMS: Final = frozenset({"patient", "subject", "code", "_count"})


async def create(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    principal = core.policy.require_scope(access, "Basic", "c")
    core.policy.require_role(access, "clinician")
    body = await _body(request)
    decision = _decision_code(body)
    reason, text, counts_against = _reason(body, decision)
    rtype, result_id = _result(body)
    holder = _holder(request, body)
    person = await _subject(request, body)
    await core.policy.patient(access, person.person_key, rtype, "r")
    access.resource_type = "Basic"
    judge = Judge.for_request(request)
    resource = await _find(request, person, rtype, result_id, holder)
    verdict = judge.verdict(resource)
    assert verdict is not None  # a result with its holder always has one
    access.holders.add(holder)
    saved = await record(
        core.store,
        NewDecision(
            person_key=person.person_key,
            decider=principal.subject,
            facility=principal.facility_id or "",
            holder=holder,
            result_type=rtype,
            result_id=result_id,
            verdict=verdict,
            decision=decision,
            reason=reason,
            reason_text=text,
            counts_against=counts_against,
            request_id=access.request_id,
        ),
    )
    # What the AuditEvent says of it (no patient identifiers: the entity names the patient).
    access.detail = f"recognition decision Basic/{saved.id}: {decision}" + (
        f" ({reason})" if reason else ""
    )
    out = as_basic(saved)
    out["extension"].append(verdict_extension(verdict))
    response = fhir_response(out, status=201)
    response.headers["Location"] = f"{base_url(request)}/Basic/{saved.id}"
    return response


async def read(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    found = await decision_by_id(core.store, request.match_info["id"])
    if found is None:
        core.policy.require_scope(access, "Basic", "r")
        raise FhirError(404, "not-found", f"Basic/{request.match_info['id']} is not known")
    await core.policy.patient(access, found.person_key, "Basic", "r")
    access.holders.add(found.holder)
    return fhir_response(as_basic(found))


async def search(request: web.Request) -> web.Response:
    core = request.app[CORE]
    P.check_known(request.query, SEARCH_PARAMS)
    reference = request.query.get("patient") or request.query.get("subject")
    if not reference:
        raise FhirError(400, "required", "Basic search needs patient: decisions are per patient")
    code = request.query.get("code")
    decision = P.token(code)[1] if code else None
    if decision is not None and decision not in DECISIONS:
        raise FhirError(400, "code-invalid", f"code takes {' or '.join(DECISIONS)}")
    count = P.count(request.query, 100, 500)
    access = access_of(request)
    person = await core.store.person(P.reference_id(reference, "Patient"))
    found: list[RecordedDecision] = []
    if person is not None:
        await core.policy.patient(access, person.person_key, "Basic", "s")
        found = await decisions_for(core.store, person.person_key, decision=decision, limit=count)
    else:
        core.policy.require_scope(access, "Basic", "s")
    base = base_url(request)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{base}/Basic/{d.id}",
                    "resource": as_basic(d),
                    "search": {"mode": "match"},
                }
                for d in found
            ],
        }
    )


def as_basic(d: RecordedDecision) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = [
        {"url": EXT_RESULT, "valueReference": {"reference": f"{d.result_type}/{d.result_id}"}},
        {"url": EXT_HOLDER, "valueReference": {"reference": f"Organization/{d.holder}"}},
    ]
    if d.reason is not None:
        known = retest_reasons().get(d.reason)
        concept: dict[str, Any] = {
            "coding": [
                {
                    "system": RETEST_SYSTEM,
                    "code": d.reason,
                    **({"display": known.display} if known else {}),
                }
            ]
        }
        if d.reason_text:
            concept["text"] = d.reason_text
        extensions.append({"url": EXT_REASON, "valueCodeableConcept": concept})
    return {
        "resourceType": "Basic",
        "id": d.id,
        "meta": {"profile": [PROFILE]},
        "extension": extensions,
        "code": {"coding": [{"system": DECISION_SYSTEM, "code": d.decision}]},
        "subject": {"reference": f"Patient/{patient_id_of(d.person_key)}"},
        "created": d.recorded_at.date().isoformat(),
        "author": {
            "identifier": {"system": "urn:huren:user", "value": d.decider},
            **({"display": f"clinician of {d.facility}"} if d.facility else {}),
        },
    }


# -- reading the decision ---------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise FhirError(400, "structure", "the body is not JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Basic":
        raise FhirError(400, "structure", "POST /fhir/Basic takes a Basic resource")
    return body


def _decision_code(body: dict[str, Any]) -> Any:
    codes = [
        c.get("code")
        for c in (body.get("code") or {}).get("coding", [])
        if isinstance(c, dict) and c.get("system") == DECISION_SYSTEM
    ]
    if len(codes) != 1 or codes[0] not in DECISIONS:
        raise FhirError(
            400,
            "code-invalid",
            f"Basic.code must be one coding of {DECISION_SYSTEM}: accept or retest",
        )
    return codes[0]


def _extension(body: dict[str, Any], url: str) -> dict[str, Any] | None:
    found = [e for e in body.get("extension", []) if isinstance(e, dict) and e.get("url") == url]
    if len(found) > 1:
        raise FhirError(400, "invalid", f"extension {url} may be given once")
    return found[0] if found else None


def _reason(body: dict[str, Any], decision: str) -> tuple[str | None, str | None, bool]:
    """(reason code, its text, whether the re-test counts against recognition)."""
    ext = _extension(body, EXT_REASON)
    if decision == "accept":
        if ext is not None:
            raise FhirError(400, "invalid", "an accepted result takes no re-test reason")
        return None, None, False
    concept = (ext or {}).get("valueCodeableConcept")
    if not isinstance(concept, dict):
        raise FhirError(
            400,
            "required",
            f"a re-test needs its reason: extension {EXT_REASON} with a valueCodeableConcept "
            "from ValueSet urn:huren:ValueSet/retest-reason",
        )
    codes = [
        c.get("code")
        for c in concept.get("coding", [])
        if isinstance(c, dict) and c.get("system") == RETEST_SYSTEM
    ]
    reasons = retest_reasons()
    if len(codes) != 1 or codes[0] not in reasons:
        raise FhirError(
            400,
            "code-invalid",
            f"the re-test reason must be one code of {RETEST_SYSTEM}: {', '.join(reasons)}",
        )
    reason = reasons[codes[0]]
    text = concept.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
        raise FhirError(400, "value", f"the reason's text must be a string of ≤{MAX_TEXT}")
    if reason.requires_text and not (text or "").strip():
        raise FhirError(
            400, "required", f"re-test reason {reason.code} ({reason.english}) needs its text"
        )
    return reason.code, text or None, reason.counts_against


def _result(body: dict[str, Any]) -> tuple[str, str]:
    ext = _extension(body, EXT_RESULT)
    reference = ((ext or {}).get("valueReference") or {}).get("reference")
    if not isinstance(reference, str) or reference.count("/") != 1:
        raise FhirError(
            400, "required", f"extension {EXT_RESULT} must reference the result (Type/id)"
        )
    rtype, rid = reference.split("/")
    if rtype not in RESULT_TYPES or not rid:
        raise FhirError(
            400, "invalid", "the result must be an Observation, DiagnosticReport or ImagingStudy"
        )
    return rtype, rid


def _holder(request: web.Request, body: dict[str, Any]) -> str:
    ext = _extension(body, EXT_HOLDER)
    reference = ((ext or {}).get("valueReference") or {}).get("reference")
    if not isinstance(reference, str) or not reference.startswith("Organization/"):
        raise FhirError(
            400, "required", f"extension {EXT_HOLDER} must reference the holding Organization"
        )
    holder = reference.removeprefix("Organization/")
    if request.app[CORE].registry.get(holder) is None:
        raise FhirError(400, "value", f"{reference} is not a facility of the registry")
    return holder


async def _subject(request: web.Request, body: dict[str, Any]) -> Person:
    reference = (body.get("subject") or {}).get("reference")
    if not isinstance(reference, str):
        raise FhirError(400, "required", "Basic.subject must reference the Patient")
    person = await request.app[CORE].store.person(P.reference_id(reference, "Patient"))
    if person is None:
        raise FhirError(422, "processing", f"{reference} is not known")
    return person


async def _find(
    request: web.Request, person: Person, rtype: str, result_id: str, holder: str
) -> dict[str, Any]:
    """The result as the gateway answers it, asked of the patient's records anew."""
    found = await fetch(request, Criteria(rtype=rtype, person=person))
    for fid, resource in found.items:
        if resource.get("id") != result_id:
            continue
        ours = as_ours(resource, person, fid)  # HL7-fed results come from the gateway's index
        if source_facility(ours) == holder:
            return ours
    if holder in {o.facility_id for o in found.failures}:
        raise FhirError(503, "transient", f"{holder} did not answer: try again")
    raise FhirError(
        422, "processing", f"{rtype}/{result_id} is not among the patient's records at {holder}"
    )
