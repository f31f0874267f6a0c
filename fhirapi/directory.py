"""The city's directory as FHIR: facilities as Organization, their imaging endpoints (through
this gateway) as Endpoint, and patients' identifiers across facilities ($ihe-pix, Patient)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.guard import access_of
from gateway.registry import Facility
from gateway.web import CORE

from . import params as P
from .outcome import FhirError, fhir_response
from .patients import base_url, bundle

LEVEL_SYSTEM = "urn:huren:facility-level"
FACILITY_SYSTEM = "urn:huren:facility"


def organization(f: Facility, base: str) -> dict[str, Any]:
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": f.id,
        "identifier": [{"system": FACILITY_SYSTEM, "value": f.id}],
        "active": True,
        "type": [{"coding": [{"system": LEVEL_SYSTEM, "code": f.level}], "text": f.level}],
        "name": f.name_zh,
        "alias": [f.name_en, *([f.short_name_zh] if f.short_name_zh else [])],
        "address": [{"city": "常州市", "district": f.district, "country": "CN"}],
    }
    # Every facility's images are reachable through the gateway (its PACS or the archive).
    org["endpoint"] = [{"reference": f"Endpoint/{f.id}-wado"}]
    return org


def endpoint(f: Facility, base: str) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": f"{f.id}-wado",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": f"{f.name_en} imaging, through Huren",
        "managingOrganization": {"reference": f"Organization/{f.id}"},
        "payloadType": [
            {"coding": [{"system": "http://hl7.org/fhir/endpoint-payload-type", "code": "DICOM"}]}
        ],
        "payloadMimeType": ["application/dicom"],
        "address": f"{base.removesuffix('/fhir')}/facilities/{f.id}/dicomweb",
    }


async def read_organization(request: web.Request) -> web.Response:
    request.app[CORE].policy.require_scope(access_of(request), "Organization", "r")
    f = _facility(request, request.match_info["id"])
    return fhir_response(organization(f, base_url(request)))


async def search_organizations(request: web.Request) -> web.Response:
    request.app[CORE].policy.require_scope(access_of(request), "Organization", "s")
    registry = request.app[CORE].registry
    params = request.query
    P.check_known(params, {"_id", "identifier", "name", "_count"})
    found = list(registry)
    if "_id" in params:
        found = [f for f in found if f.id in params["_id"].split(",")]
    if "identifier" in params:
        value = params["identifier"].rpartition("|")[2]
        found = [f for f in found if f.id == value]
    if "name" in params:
        needle = params["name"].lower()
        found = [f for f in found if needle in f.name_zh.lower() or needle in f.name_en.lower()]
    return fhir_response(bundle(request, [organization(f, base_url(request)) for f in found]))


async def read_endpoint(request: web.Request) -> web.Response:
    request.app[CORE].policy.require_scope(access_of(request), "Endpoint", "r")
    rid = request.match_info["id"]
    f = _facility(request, rid.removesuffix("-wado"))
    if not rid.endswith("-wado"):
        raise FhirError(404, "not-found", f"Endpoint/{rid} not found")
    return fhir_response(endpoint(f, base_url(request)))


def _facility(request: web.Request, fid: str) -> Facility:
    f = request.app[CORE].registry.get(fid)
    if f is None:
        raise FhirError(404, "not-found", f"no facility {fid}")
    return f
