"""Mount the FHIR face's routes on the gateway app."""

from __future__ import annotations

from aiohttp import web

from . import audit_events, consents, directory, patients, search


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/fhir/metadata", search.metadata)
    r.add_get("/fhir/Patient/$ihe-pix", patients.ihe_pix)
    r.add_get("/fhir/Patient", patients.search_patients)
    r.add_get("/fhir/Patient/{id}", patients.read_patient)
    r.add_get("/fhir/Organization", directory.search_organizations)
    r.add_get("/fhir/Organization/{id}", directory.read_organization)
    r.add_get("/fhir/Endpoint/{id}", directory.read_endpoint)
    r.add_get("/fhir/AuditEvent", audit_events.search)
    r.add_get("/fhir/AuditEvent/{id}", audit_events.read)
    for path in ("/fhir/AuditEvent", "/fhir/AuditEvent/{id}"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r.add_route(method, path, audit_events.refuse_change)
    r.add_post("/fhir/Consent", consents.create)
    r.add_get("/fhir/Consent", consents.search)
    r.add_get("/fhir/Consent/{id}", consents.read)
    r.add_delete("/fhir/Consent/{id}", consents.withdraw)
    r.add_get("/fhir/{type}", search.search)
