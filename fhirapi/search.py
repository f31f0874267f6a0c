"""FHIR R4 search for lab results (Observation, DiagnosticReport) across the city."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.federation import FederatedResult
from gateway.lab import LabQuery
from gateway.web import CORE

from .outcome import FhirError, fhir_response, outcome

SEARCHABLE = ("Observation", "DiagnosticReport")
PARAMS = {"patient.identifier", "subject.identifier", "code", "date", "_count"}
# Result parameters a client may send that change nothing here (we always answer JSON).
IGNORED = {"_format", "_pretty", "handling"}
MAX_COUNT = 500
_DATE = re.compile(r"^(eq|ge|le|gt|lt)?(\d{4}(-\d{2}(-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?)$")


def capability_statement() -> dict[str, Any]:
    """The CapabilityStatement published in fhir/ (only what is really supported)."""
    path = Path(__file__).resolve().parents[1] / "fhir" / "CapabilityStatement-huren.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


async def metadata(request: web.Request) -> web.Response:
    return fhir_response(capability_statement())


async def search(request: web.Request) -> web.Response:
    rtype = request.match_info["type"]
    if rtype not in SEARCHABLE:
        raise FhirError(404, "not-supported", f"resource type {rtype} is not served here")
    query = _parse(request)
    result = await request.app[CORE].lab.search(query)
    return fhir_response(_bundle(request, rtype, result))


def _parse(request: web.Request) -> LabQuery:
    params = request.query
    strict = params.get("handling", "strict") != "lenient"
    unknown = sorted(set(params) - PARAMS - IGNORED)
    if unknown and strict:
        raise FhirError(400, "not-supported", f"unknown search parameters {unknown}")
    patient = params.get("patient.identifier") or params.get("subject.identifier")
    if not patient:
        raise FhirError(
            400, "required", "patient.identifier is required: searches are for one patient"
        )
    system, _, value = patient.rpartition("|")
    if not value:
        raise FhirError(400, "value", "patient.identifier needs a value (system|value)")
    date = None
    if "date" in params:
        m = _DATE.match(params["date"])
        if m is None:
            raise FhirError(400, "value", f"date {params['date']!r} is not [prefix]YYYY[-MM[-DD]]")
        date = (m.group(1) or "eq", m.group(2))
    try:
        count = int(params.get("_count", "100"))
    except ValueError:
        raise FhirError(400, "value", "_count must be a number") from None
    if not 0 < count <= MAX_COUNT:
        raise FhirError(400, "value", f"_count must be 1..{MAX_COUNT}")
    return LabQuery(
        resource_type=request.match_info["type"],
        patient_system=system or None,
        patient_value=value,
        code=params.get("code"),
        date=date,
        count=count,
    )


def _bundle(request: web.Request, rtype: str, result: FederatedResult[Any]) -> dict[str, Any]:
    base = f"{request.scheme}://{request.host}/fhir"
    entries: list[dict[str, Any]] = []
    for _, resource in result.items:
        entries.append(
            {
                "fullUrl": f"{base}/{rtype}/{resource.get('id')}",
                "resource": resource,
                "search": {"mode": "match"},
            }
        )
    for failed in result.failures:
        text = f"facility {failed.facility_id} did not answer ({failed.status.value})"
        if failed.detail:
            text += f": {failed.detail}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": outcome("warning", "incomplete", text),
                "search": {"mode": "outcome"},
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(result.items),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": entries,
    }
