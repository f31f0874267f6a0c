"""FHIR R4 search for lab results (Observation, DiagnosticReport) across the city."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.federation import FederatedResult
from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.lab import LabQuery
from gateway.web import CORE

from . import imaging_study
from .outcome import FhirError, fhir_response, outcome

SEARCHABLE = ("Observation", "DiagnosticReport", "ImagingStudy")
PARAMS = {
    "patient.identifier",
    "subject.identifier",
    "code",
    "date",
    "_count",
    "_sort",
    "_summary",
}
#: Results gathered from the facilities for one search; pages are served from this set.
MAX_RESULTS = 1000
#: Seconds a search's result set stays pageable (its `next` links stay stable that long).
PAGE_TTL = 600.0
# Result parameters a client may send that change nothing here (we always answer JSON).
IGNORED = {"_format", "_pretty", "handling", "_getpages", "_offset"}
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
    if "_getpages" in request.query:
        return await _page(request, rtype)
    query, page_size = _parse(request)
    core = request.app[CORE]
    if rtype == "ImagingStudy":
        result = imaging_study.studies(await _studies(request, query), core.registry)
    else:
        result = await core.lab.search(query)
    if request.query.get("_sort") == "date":
        result.items.reverse()  # the service answers newest first
    entries = _entries(request, rtype, result)
    total = len(result.items)
    if request.query.get("_summary") == "count":
        return fhir_response(_searchset(request, total, [], None))
    key = uuid.uuid4().hex
    await request.app[CORE].cache.set(
        f"fhir-page:{key}", json.dumps({"total": total, "entries": entries}).encode(), ttl=PAGE_TTL
    )
    return fhir_response(_paged(request, rtype, key, total, entries, 0, page_size))


async def _page(request: web.Request, rtype: str) -> web.Response:
    """A later page of a search, from the result set kept when it ran (not recomputed)."""
    key = request.query["_getpages"]
    try:
        offset = int(request.query.get("_offset", "0"))
        size = int(request.query.get("_count", "100"))
    except ValueError:
        raise FhirError(400, "value", "_offset and _count must be numbers") from None
    raw = await request.app[CORE].cache.get(f"fhir-page:{key}") if key.isalnum() else None
    if raw is None:
        raise FhirError(410, "not-found", "this search has expired: run it again")
    kept = json.loads(raw)
    return fhir_response(_paged(request, rtype, key, kept["total"], kept["entries"], offset, size))


def _paged(
    request: web.Request,
    rtype: str,
    key: str,
    total: int,
    entries: list[dict[str, Any]],
    offset: int,
    size: int,
) -> dict[str, Any]:
    matches = [e for e in entries if e["search"]["mode"] == "match"]
    outcomes = [e for e in entries if e["search"]["mode"] == "outcome"]
    page = matches[offset : offset + size] + (outcomes if offset == 0 else [])
    base = f"{request.scheme}://{request.host}/fhir/{rtype}"
    nxt = None
    if offset + size < len(matches):
        nxt = f"{base}?_getpages={key}&_offset={offset + size}&_count={size}"
    return _searchset(request, total, page, nxt)


def _searchset(
    request: web.Request, total: int, entries: list[dict[str, Any]], nxt: str | None
) -> dict[str, Any]:
    links = [{"relation": "self", "url": str(request.url)}]
    if nxt:
        links.append({"relation": "next", "url": nxt})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    }


async def _studies(request: web.Request, query: LabQuery) -> FederatedResult[Any]:
    """The patient's studies at every facility, through the DICOM side's federation."""
    match = {"PatientID": query.patient_value}
    if query.patient_system not in (None, NATIONAL_ID_SYSTEM):
        facility = next(
            (f for f in request.app[CORE].registry if f.mrn_system == query.patient_system), None
        )
        if facility is None:
            raise FhirError(400, "value", f"unknown identifier system {query.patient_system}")
        match["IssuerOfPatientID"] = facility.mrn_issuer
    if query.date is not None:
        prefix, value = query.date
        day = value[:10].replace("-", "")
        match["StudyDate"] = {
            "ge": f"{day}-",
            "gt": f"{day}-",
            "le": f"-{day}",
            "lt": f"-{day}",
        }.get(prefix, day)
    return await request.app[CORE].imaging.search_studies(match, limit=MAX_RESULTS)


def _parse(request: web.Request) -> tuple[LabQuery, int]:
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
    if params.get("_sort", "-date") not in ("date", "-date"):
        raise FhirError(400, "not-supported", "_sort takes date or -date")
    if params.get("_summary", "false") not in ("count", "false"):
        raise FhirError(400, "not-supported", "_summary takes count or false")
    query = LabQuery(
        resource_type=request.match_info["type"],
        patient_system=system or None,
        patient_value=value,
        code=params.get("code"),
        date=date,
        count=MAX_RESULTS,
    )
    return query, count


def _entries(
    request: web.Request, rtype: str, result: FederatedResult[Any]
) -> list[dict[str, Any]]:
    base = f"{request.scheme}://{request.host}/fhir"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base}/{rtype}/{resource.get('id')}",
            "resource": resource,
            "search": {"mode": "match"},
        }
        for _, resource in result.items
    ]
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
    return entries
