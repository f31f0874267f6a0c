"""AuditEvent: read and search the audit trail; it is never changed through the API.

Security officers (admins) search it all; a resident sees the accesses to their own records
(who at which facility looked); nobody else reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from gateway.access import Access
from gateway.audit import AuditRecord, as_fhir
from gateway.guard import access_of
from gateway.web import CORE

from . import params as P
from .outcome import FhirError, fhir_response
from .patients import base_url

SEARCH_PARAMS: Final = frozenset(
    {"patient", "agent", "entity", "date", "facility", "_count", "_before"}
)
MAX_COUNT: Final = 500


async def read(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    resident = await _may_read(request, access, "r")
    found = await core.audit.get(request.match_info["id"])
    if found is None or (resident is not None and found.patient != resident):
        raise FhirError(404, "not-found", f"AuditEvent/{request.match_info['id']} is not known")
    return fhir_response(_shown(found, resident is not None))


async def search(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    params = request.query
    P.check_known(params, SEARCH_PARAMS)
    resident = await _may_read(request, access, "s")
    limit = P.count(params, 100, MAX_COUNT)
    patient = None
    if "patient" in params:
        found = await core.store.person(P.reference_id(params["patient"], "Patient"))
        patient = found.person_key if found else "-"
    if resident is not None:
        if patient not in (None, resident):
            raise FhirError(403, "forbidden", "a resident reads only the audit of their records")
        patient = resident
    entity_facility = None
    if "entity" in params:
        ref = params["entity"]
        if ref.startswith("Patient/"):
            found = await core.store.person(P.reference_id(ref, "Patient"))
            entity_patient = found.person_key if found else "-"
            if patient not in (None, entity_patient):
                patient = "-"  # two different people: nothing matches
            else:
                patient = entity_patient
        else:
            entity_facility = P.reference_id(ref, "Organization")
    since, until = _date_range(params.get("date"))
    records = await core.audit.search(
        patient=patient,
        user=params.get("agent"),
        facility=params.get("facility"),
        entity_facility=entity_facility,
        since=since,
        until=until,
        before_id=params.get("_before"),
        limit=limit + 1,
    )
    more = len(records) > limit
    records = records[:limit]
    base = base_url(request)
    links = [{"relation": "self", "url": str(request.url)}]
    if more:
        # Newest first, and the trail only grows: a cursor gives pages that never shift.
        nxt = request.url.update_query({"_before": records[-1].id})
        links.append({"relation": "next", "url": str(nxt)})
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/AuditEvent/{r.id}",
                    "resource": _shown(r, resident is not None),
                    "search": {"mode": "match"},
                }
                for r in records
            ],
        }
    )


async def refuse_change(request: web.Request) -> web.Response:
    """Create, update and delete of AuditEvent: never, for anyone (405, audited)."""
    raise FhirError(405, "not-supported", "the audit trail cannot be changed through the API")


async def _may_read(request: web.Request, access: Access, interaction: str) -> str | None:
    """None for an admin; the resident's person key for a resident; else 403."""
    core = request.app[CORE]
    core.policy.require_scope(access, "AuditEvent", interaction)
    p = core.policy.require_role(access, "admin", "resident")
    if p.role == "resident":
        person = await core.policy.resident_person(access)
        if person is None:
            raise FhirError(403, "forbidden", "the resident's token names no known patient")
        access.patient = person
        return person
    return None


def _shown(record: AuditRecord, to_resident: bool) -> dict[str, Any]:
    """The AuditEvent; a resident sees which facility and role looked, not the staff."""
    event = as_fhir(record)
    if to_resident:
        for agent in event["agent"]:
            if agent.get("requestor"):
                agent["who"] = {"display": "staff"}
                agent.pop("network", None)
    return event


def _date_range(value: str | None) -> tuple[datetime | None, datetime | None]:
    if value is None:
        return None, None
    prefix, day = P.date("date", value)
    bounds = P.day_bounds(prefix, day[:10])
    since = until = None
    for op, bound in bounds:
        when = datetime.fromisoformat(_full_day(bound)).replace(tzinfo=UTC)
        if op == "ge":
            since = when
        else:
            until = when
    return since, until


def _full_day(bound: str) -> str:
    parts = bound.split("-")
    return "-".join([*parts, "01", "01"][:3]) if len(parts) < 3 else bound
