"""FHIR R4 search across the city for one patient: Observation and DiagnosticReport (lab
results, imaging reports) and ImagingStudy (from the DICOM side).

A search runs once: it fans out through the federation, the answers are filtered, their
subjects pointed at the gateway's own Patient, the `_include`d resources gathered, and the
whole result set is kept in the cache. Pages are served from that set through stable `next`
links (``_getpages``), never by asking the facilities again.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.federation import FederatedResult
from gateway.guard import access_of
from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.lab import LabQuery
from gateway.search_terms import has_coding
from gateway.storage import FACILITY_SOURCE_PREFIX, Person, source_facility
from gateway.web import CORE

from . import imaging_study
from . import params as P
from .outcome import FhirError, fhir_response, outcome
from .patients import base_url, patient_resource, person_for_identifier
from .verdicts import Judge

SEARCHABLE: Final = ("Observation", "DiagnosticReport", "ImagingStudy")
_COMMON: Final = frozenset(
    {
        "patient",
        "subject",
        "patient.identifier",
        "subject.identifier",
        "identifier",
        "status",
        "date",
        "_lastUpdated",
        "_count",
        "_sort",
        "_summary",
        "_include",
    }
)
PARAMS: Final = {
    "Observation": _COMMON | {"code", "category"},
    "DiagnosticReport": _COMMON | {"code", "category"},
    "ImagingStudy": _COMMON,
}
INCLUDES: Final = {
    "Observation": {"Observation:patient", "Observation:subject"},
    "DiagnosticReport": {
        "DiagnosticReport:result",
        "DiagnosticReport:patient",
        "DiagnosticReport:subject",
    },
    "ImagingStudy": {"ImagingStudy:patient", "ImagingStudy:subject"},
}
#: Results gathered from the facilities for one search; pages are served from this set.
MAX_RESULTS: Final = 1000
#: Seconds a search's result set stays pageable (its `next` links stay stable that long).
PAGE_TTL: Final = 600.0
MAX_COUNT: Final = 500
DEFAULT_COUNT: Final = 100


@dataclass(frozen=True, slots=True)
class Criteria:
    """One search, read from its parameters."""

    rtype: str
    person: Person | None  # None: the patient is not known here, so nothing matches
    code: str | None = None
    category: tuple[str | None, str] | None = None
    status: frozenset[str] = frozenset()
    identifier: tuple[str | None, str] | None = None
    date: tuple[str, str] | None = None
    last_updated: tuple[str, str] | None = None
    includes: frozenset[str] = field(default_factory=frozenset)
    count: int = DEFAULT_COUNT
    oldest_first: bool = False
    summary_count: bool = False


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
    criteria = await _criteria(request, rtype)
    access = access_of(request)
    if criteria.person is not None:
        await request.app[CORE].policy.patient(access, criteria.person.person_key, rtype, "s")
    else:
        request.app[CORE].policy.require_scope(access, rtype, "s")
    found = await fetch(request, criteria)
    matches = [
        entry(request, as_ours(resource, criteria.person, fid), "match")
        for fid, resource in found.items
        if _keep(resource, criteria)
    ]
    if criteria.oldest_first:
        matches.reverse()  # the services answer newest first
    judge = Judge.for_request(request)
    for e in matches:
        judge.mark(e["resource"])
    access.holders.update(f for e in matches if (f := source_facility(e["resource"])))
    if criteria.summary_count:
        return fhir_response(_searchset(request, len(matches), [], None))
    included, links = await _included(request, criteria, [e["resource"] for e in matches])
    for e in included.values():
        judge.mark(e["resource"])
    kept = {
        # Who ran the search, and whose records it holds: only they page through it.
        "subject": access.principal.subject if access.principal else None,
        "patient": access.patient,
        "holders": sorted(access.holders),
        "total": len(matches),
        "matches": matches,
        "outcomes": outcome_entries(found),
        "included": included,
        "links": links,
    }
    key = uuid.uuid4().hex
    cache = request.app[CORE].cache
    await cache.set(f"fhir-page:{key}", orjson.dumps(kept), ttl=PAGE_TTL)
    return fhir_response(_paged(request, rtype, key, kept, 0, criteria.count))


# -- reading the parameters -------------------------------------------------------------------


async def _criteria(request: web.Request, rtype: str) -> Criteria:
    params = request.query
    P.check_known(params, PARAMS[rtype])
    includes = frozenset(params.getall("_include", []))
    unknown = sorted(includes - INCLUDES[rtype])
    if unknown:
        raise FhirError(400, "not-supported", f"_include {unknown} is not supported on {rtype}")
    if params.get("_sort", "-date") not in ("date", "-date"):
        raise FhirError(400, "not-supported", "_sort takes date or -date")
    if params.get("_summary", "false") not in ("count", "false"):
        raise FhirError(400, "not-supported", "_summary takes count or false")
    category = params.get("category")
    identifier = params.get("identifier")
    return Criteria(
        rtype=rtype,
        person=await _person(request, rtype),
        code=params.get("code"),
        category=P.token(category) if category else None,
        status=frozenset(s for s in params.get("status", "").split(",") if s),
        identifier=P.token(identifier) if identifier else None,
        date=P.date("date", params["date"]) if "date" in params else None,
        last_updated=(
            P.date("_lastUpdated", params["_lastUpdated"]) if "_lastUpdated" in params else None
        ),
        includes=includes,
        count=P.count(params, DEFAULT_COUNT, MAX_COUNT),
        oldest_first=params.get("_sort") == "date",
        summary_count=params.get("_summary") == "count",
    )


async def _person(request: web.Request, rtype: str) -> Person | None:
    """The one patient a search is about: searches fan out to the facilities per patient."""
    params = request.query
    reference = params.get("patient") or params.get("subject")
    chained = params.get("patient.identifier") or params.get("subject.identifier")
    if reference:
        pid = P.reference_id(reference, "Patient")
        return await request.app[CORE].store.person(pid)
    if chained:
        system, value = P.token(chained)
        if not value:
            raise FhirError(400, "value", "patient.identifier needs a value ([system|]value)")
        # An identifier system no facility uses names nobody here: no match, not an error.
        return await person_for_identifier(request, system or "", value)
    raise FhirError(
        400,
        "required",
        f"{rtype} search needs patient, subject or patient.identifier: searches are for one "
        "patient",
    )


# -- running it -------------------------------------------------------------------------------


async def fetch(request: web.Request, c: Criteria) -> FederatedResult[Any]:
    if c.person is None:
        return FederatedResult(outcomes={})
    if c.rtype == "ImagingStudy":
        found = await _studies(request, c)
        series = await request.app[CORE].imaging.series_of_studies(found.items)
        return imaging_study.studies(found, request.app[CORE].registry, series)
    return await request.app[CORE].lab.search(_lab_query(c.rtype, c))


def _lab_query(rtype: str, c: Criteria) -> LabQuery:
    assert c.person is not None
    return LabQuery(
        resource_type=rtype,
        patient_system=NATIONAL_ID_SYSTEM,
        patient_value=c.person.person_key,
        code=c.code if rtype == c.rtype else None,
        date=c.date if rtype == c.rtype else None,
        count=MAX_RESULTS,
    )


async def _studies(request: web.Request, c: Criteria) -> FederatedResult[Any]:
    """The patient's studies at every facility, through the DICOM side's federation."""
    assert c.person is not None
    match: dict[str, Any] = {"PatientID": c.person.person_key}
    if c.date is not None:
        prefix, value = c.date
        day = value[:10].replace("-", "")
        match["StudyDate"] = {
            "ge": f"{day}-",
            "gt": f"{day}-",
            "le": f"-{day}",
            "lt": f"-{day}",
        }.get(prefix, day)
    return await request.app[CORE].imaging.search_studies(match, limit=MAX_RESULTS)


def _keep(resource: dict[str, Any], c: Criteria) -> bool:
    """The tests every facility's answers must pass, whatever the facility understood."""
    if c.status and resource.get("status") not in c.status:
        return False
    if c.category is not None and not any(
        has_coding(concept, *c.category) for concept in resource.get("category", [])
    ):
        return False
    if c.identifier is not None:
        system, value = c.identifier
        if not any(
            i.get("value") == value and system in (None, i.get("system"))
            for i in resource.get("identifier", [])
        ):
            return False
    if c.date is not None and c.rtype != "ImagingStudy":
        when = resource.get("effectiveDateTime") or resource.get("issued")
        if not P.matches_date(when, *c.date):
            return False
    if c.last_updated is not None:
        # Facilities that keep no lastUpdated were asked with the filter and answered.
        updated = resource.get("meta", {}).get("lastUpdated")
        if updated is not None and not P.matches_date(updated, *c.last_updated):
            return False
    return True


# -- entries, includes, pages -----------------------------------------------------------------


def as_ours(resource: dict[str, Any], person: Person | None, fid: str) -> dict[str, Any]:
    """The resource as the gateway answers it: meta.source names the facility that holds it,
    and the subject points at the gateway's Patient (each facility names the patient its own
    way; the facility's own identifier stays with the reference where it gave one)."""
    out = dict(resource)
    meta = dict(out.get("meta", {}))
    meta.setdefault("source", f"{FACILITY_SOURCE_PREFIX}{fid}")
    out["meta"] = meta
    if person is not None and "subject" in out:
        kept = {k: v for k, v in out["subject"].items() if k in ("identifier", "display")}
        out["subject"] = {"reference": f"Patient/{person.patient_id}", **kept}
    return out


def entry(request: web.Request, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base_url(request)}/{resource['resourceType']}/{resource.get('id')}",
        "resource": resource,
        "search": {"mode": mode},
    }


async def _included(
    request: web.Request, c: Criteria, matches: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    """The `_include`d entries by fullUrl, and for each match the fullUrls it brings."""
    included: dict[str, dict[str, Any]] = {}
    links: list[list[str]] = [[] for _ in matches]
    if not c.includes or c.person is None or not matches:
        return included, links
    base = base_url(request)
    if c.includes & {f"{c.rtype}:patient", f"{c.rtype}:subject"}:
        patient = await patient_resource(request, c.person)
        url = f"{base}/Patient/{patient['id']}"
        included[url] = entry(request, patient, "include")
        for refs in links:
            refs.append(url)
    if "DiagnosticReport:result" in c.includes:
        wanted = {ref["reference"] for report in matches for ref in report.get("result", [])}
        observations = await request.app[CORE].lab.search(_lab_query("Observation", c))
        for fid, obs in observations.items:
            if f"Observation/{obs.get('id')}" in wanted:
                found = entry(request, as_ours(obs, c.person, fid), "include")
                included[found["fullUrl"]] = found
        for report, refs in zip(matches, links, strict=True):
            refs += [
                url
                for ref in report.get("result", [])
                if (url := f"{base}/{ref['reference']}") in included
            ]
    return included, links


def outcome_entries(found: FederatedResult[Any]) -> list[dict[str, Any]]:
    entries = []
    for failed in found.failures:
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


async def _page(request: web.Request, rtype: str) -> web.Response:
    """A later page of a search, from the result set kept when it ran (not recomputed)."""
    key = request.query["_getpages"]
    try:
        offset = int(request.query.get("_offset", "0"))
    except ValueError:
        raise FhirError(400, "value", "_offset must be a number") from None
    size = P.count(request.query, DEFAULT_COUNT, MAX_COUNT)
    raw = await request.app[CORE].cache.get(f"fhir-page:{key}") if key.isalnum() else None
    if raw is None:
        raise FhirError(410, "not-found", "this search has expired: run it again")
    kept = orjson.loads(raw)
    access = access_of(request)
    if access.principal is None or kept["subject"] != access.principal.subject:
        raise FhirError(410, "not-found", "this search has expired: run it again")
    access.patient = kept["patient"]
    access.holders.update(kept["holders"])
    access.resource_type = rtype
    return fhir_response(_paged(request, rtype, key, kept, max(offset, 0), size))


def _paged(
    request: web.Request, rtype: str, key: str, kept: dict[str, Any], offset: int, size: int
) -> dict[str, Any]:
    matches = kept["matches"][offset : offset + size]
    urls = dict.fromkeys(u for refs in kept["links"][offset : offset + size] for u in refs)
    page = matches + [kept["included"][u] for u in urls]
    if offset == 0:
        page += kept["outcomes"]
    nxt = None
    if offset + size < len(kept["matches"]):
        nxt = f"{base_url(request)}/{rtype}?_getpages={key}&_offset={offset + size}&_count={size}"
    return _searchset(request, kept["total"], page, nxt)


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
