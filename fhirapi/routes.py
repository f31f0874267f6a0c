"""Mount the FHIR face's routes on the gateway app."""

from __future__ import annotations

from aiohttp import web

from . import (
    audit_events,
    conformance,
    consents,
    decisions,
    directory,
    patients,
    recognition,
    search,
)


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
    # The conformance resources Huren publishes (fhir/): definitions, no patient data.
    r.add_get("/fhir/ValueSet/$expand", conformance.expand)
    r.add_get("/fhir/ValueSet/{id}/$expand", conformance.expand)
    served = "|".join(sorted(conformance.SERVED))
    r.add_get(f"/fhir/{{type:{served}}}", conformance.search)
    r.add_get(f"/fhir/{{type:{served}}}/{{id}}", conformance.read)
    # Mutual recognition: verdicts, priors before ordering, clinicians' decisions.
    r.add_get("/fhir/$recognized-priors", recognition.recognized_priors)
    r.add_post("/fhir/$recognized-priors", recognition.recognized_priors)
    r.add_post("/fhir/{type}/$recognition", recognition.recognition)
    r.add_post("/fhir/Basic", decisions.create)
    r.add_get("/fhir/Basic", decisions.search)
    r.add_get("/fhir/Basic/{id}", decisions.read)
    r.add_get("/fhir/{type}", search.search)
