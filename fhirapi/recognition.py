"""The recognition operations (OperationDefinitions in fhir/):

- ``$recognition`` on Observation, DiagnosticReport and ImagingStudy: the verdict on one
  result, for the caller's facility (or another named) on a day;
- ``$recognized-priors`` (system level): before ordering, the patient's results across all
  facilities that the asking facility recognises for an item, newest first.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from typing import Any, Final

from aiohttp import web

from gateway.federation import FederatedResult
from gateway.guard import access_of
from gateway.recognition import Verdict
from gateway.storage import Person, source_facility
from gateway.web import CORE

from . import params as P
from .outcome import FhirError, fhir_response
from .patients import person_for_identifier
from .search import MAX_RESULTS, Criteria, as_ours, entry, fetch, outcome_entries
from .verdicts import RESULT_TYPES, Judge, item_coding, reason_coding, write_verdict

LAB_TYPES: Final = ("Observation", "DiagnosticReport")
PRIORS_PARAMS: Final = frozenset(
    {"patient", "code", "modality", "bodySite", "facility", "date", "_all"}
)
RECOGNITION_PARAMS: Final = frozenset({"resource", "facility", "date"})


# -- $recognition -----------------------------------------------------------------------------


async def recognition(request: web.Request) -> web.Response:
    """POST [base]/{type}/$recognition: a Parameters with the result in ``resource`` (or
    the result itself as the body)."""
    rtype = request.match_info["type"]
    if rtype not in RESULT_TYPES:
        raise FhirError(404, "not-supported", f"$recognition is not defined on {rtype}")
    request.app[CORE].policy.require_scope(access_of(request), rtype, "r")
    body = await _json_body(request)
    if body.get("resourceType") == "Parameters":
        given = _parameters(body, RECOGNITION_PARAMS)
        resources = [v for v in given.get("resource", []) if isinstance(v, dict)]
        if len(resources) != 1:
            raise FhirError(400, "required", "$recognition takes one result in 'resource'")
        resource = resources[0]
    else:
        given, resource = {}, body
    if resource.get("resourceType") != rtype:
        raise FhirError(
            400, "invalid", f"$recognition on {rtype} was given a {resource.get('resourceType')}"
        )
    if source_facility(resource) is None:
        raise FhirError(
            422,
            "processing",
            "the result's meta.source must name the facility holding it "
            "(urn:huren:facility:Fxxx, as the gateway's searches answer)",
        )
    judge = Judge.for_request(
        request, asker=_facility(request, _one(given, "facility")), on=_day(_one(given, "date"))
    )
    verdict = judge.verdict(resource)
    assert verdict is not None  # a result type with a holder always gets one
    out: list[dict[str, Any]] = [
        {"name": "recognised", "valueBoolean": verdict.recognised},
        {"name": "catalogue", "valueString": verdict.catalogue},
    ]
    if verdict.mark is not None:
        out.append({"name": "mark", "valueCode": verdict.mark})
    if verdict.item is not None:
        out.append({"name": "item", "valueCoding": item_coding(verdict)})
    out += [{"name": "reason", "valueCoding": reason_coding(r)} for r in verdict.reasons]
    if verdict.valid_until is not None:
        out.append({"name": "validUntil", "valueDate": verdict.valid_until.isoformat()})
    return fhir_response({"resourceType": "Parameters", "parameter": out})


# -- $recognized-priors -----------------------------------------------------------------------


async def recognized_priors(request: web.Request) -> web.Response:
    """GET or POST [base]/$recognized-priors: the patient's recognised results for an item
    (a LOINC ``code``, or a ``modality`` and/or ``bodySite``), newest first."""
    if request.method == "POST":
        given = _parameters(await _json_body(request), PRIORS_PARAMS)
    else:
        P.check_known(request.query, PRIORS_PARAMS)
        given = {k: list(request.query.getall(k)) for k in request.query if k in PRIORS_PARAMS}
    core = request.app[CORE]
    code = _one(given, "code")
    modality = (_one(given, "modality") or "").upper() or None
    body_part = (_one(given, "bodySite") or "").upper() or None
    _check_item(request, code, modality, body_part)
    everything = (_one(given, "_all") or "false").lower()
    if everything not in ("true", "false"):
        raise FhirError(400, "value", "_all takes true or false")
    judge = Judge.for_request(
        request, asker=_facility(request, _one(given, "facility")), on=_day(_one(given, "date"))
    )
    person = await _patient(request, _one(given, "patient"))
    types = [*(LAB_TYPES if code or not (modality or body_part) else ())]
    if modality or body_part or not code:
        types.append("ImagingStudy")
    if person is None:
        return fhir_response(_bundle(request, [], []))
    access = access_of(request)
    for rtype in types:
        await core.policy.patient(access, person.person_key, rtype, "s")
    found = await asyncio.gather(
        *(fetch(request, Criteria(rtype=t, person=person, code=code)) for t in types)
    )
    kept: list[tuple[date | None, str, dict[str, Any]]] = []
    for result in found:
        for fid, resource in result.items:
            ours = as_ours(resource, person, fid)
            verdict = judge.verdict(ours)
            if verdict is None or not _is_item(verdict, code, modality, body_part):
                continue
            if verdict.recognised or everything == "true":
                write_verdict(ours, verdict)
                when = str(ours.get("effectiveDateTime") or ours.get("started") or "")
                kept.append((verdict.performed, when, ours))
    kept.sort(key=lambda k: (k[0] or date.min, k[1]), reverse=True)
    access.holders.update(fid for fid in (source_facility(r) for _, _, r in kept) if fid)
    entries = [entry(request, r, "match") for _, _, r in kept]
    return fhir_response(_bundle(request, entries, found))


def _check_item(
    request: web.Request, code: str | None, modality: str | None, body_part: str | None
) -> None:
    """An item the catalogue does not know is a mistake worth saying, not an empty answer."""
    catalogue = request.app[CORE].recognition.catalogue
    if code is not None:
        system, value = P.token(code)
        if system not in (None, "http://loinc.org") or catalogue.lab_item(value) is None:
            raise FhirError(
                400,
                "code-invalid",
                f"code {code!r} is not a lab item of recognition catalogue {catalogue.version}",
            )
    if modality or body_part:
        known = [
            i
            for i in catalogue.items.values()
            if i.kind == "imaging"
            and modality in (None, i.modality)
            and body_part in (None, i.body_part)
        ]
        if not known:
            raise FhirError(
                400,
                "code-invalid",
                f"no imaging item {modality or '*'} {body_part or '*'} in recognition "
                f"catalogue {catalogue.version}",
            )


def _is_item(
    verdict: Verdict, code: str | None, modality: str | None, body_part: str | None
) -> bool:
    item = verdict.item
    if code is not None:
        return item is not None and item.kind == "lab" and item.id == P.token(code)[1]
    if modality or body_part:
        return (
            item is not None
            and item.kind == "imaging"
            and modality in (None, item.modality)
            and body_part in (None, item.body_part)
        )
    return True


def _bundle(
    request: web.Request, entries: list[dict[str, Any]], found: list[FederatedResult[Any]]
) -> dict[str, Any]:
    outcomes = [o for result in found for o in outcome_entries(result)]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": entries[:MAX_RESULTS] + outcomes,
    }


# -- parameters -------------------------------------------------------------------------------


async def _patient(request: web.Request, value: str | None) -> Person | None:
    if not value:
        raise FhirError(400, "required", "patient is required (Patient/id or system|value)")
    if value.startswith("Patient/") or "/Patient/" in value:
        return await request.app[CORE].store.person(P.reference_id(value, "Patient"))
    system, ident = P.token(value)
    return await person_for_identifier(request, system or "", ident)


def _facility(request: web.Request, value: str | None) -> str | None:
    if value is None:
        return None
    facility = value.removeprefix("Organization/")
    if request.app[CORE].registry.get(facility) is None:
        raise FhirError(400, "value", f"facility {value!r} is not in the registry")
    return facility


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FhirError(400, "value", f"date {value!r} is not YYYY-MM-DD") from None


def _one(given: dict[str, list[Any]], name: str) -> str | None:
    values = given.get(name, [])
    if len(values) > 1:
        raise FhirError(400, "value", f"{name} may be given once")
    return str(values[0]) if values else None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise FhirError(400, "structure", "the body is not JSON") from None
    if not isinstance(body, dict) or "resourceType" not in body:
        raise FhirError(400, "structure", "the body is not a FHIR resource")
    return body


def _parameters(body: dict[str, Any], known: frozenset[str]) -> dict[str, list[Any]]:
    """A Parameters resource as name -> values (strings, or resources)."""
    if body.get("resourceType") != "Parameters":
        raise FhirError(400, "structure", "the body must be a Parameters resource")
    out: dict[str, list[Any]] = {}
    for part in body.get("parameter", []):
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise FhirError(400, "structure", "each parameter needs a name")
        name = part["name"]
        if name not in known:
            raise FhirError(400, "not-supported", f"unknown parameter {name!r}")
        out.setdefault(name, []).append(_value(part))
    return out


def _value(part: dict[str, Any]) -> Any:
    if "resource" in part:
        return part["resource"]
    for key, value in part.items():
        if not key.startswith("value"):
            continue
        if key == "valueBoolean":
            return "true" if value else "false"
        if key == "valueReference" and isinstance(value, dict):
            return value.get("reference", "")
        if key == "valueIdentifier" and isinstance(value, dict):
            return f"{value.get('system', '')}|{value.get('value', '')}"
        if key == "valueCoding" and isinstance(value, dict):
            return f"{value.get('system', '')}|{value.get('code', '')}"
        return value
    raise FhirError(400, "structure", f"parameter {part.get('name')!r} has no value")
