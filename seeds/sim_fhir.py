"""A simulated facility lab system speaking FHIR R4 REST: Patient, Observation, DiagnosticReport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

FHIR_JSON = "application/fhir+json"
TYPES = ("Patient", "Observation", "DiagnosticReport")
_PREFIXES = ("eq", "ge", "le", "gt", "lt")


class FhirStore:
    """One facility's resources, loaded from the generator's ndjson file."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self.by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in TYPES}
        self.patients: dict[str, dict[str, Any]] = {}
        for r in resources:
            if r.get("resourceType") in self.by_type:
                self.by_type[r["resourceType"]].append(r)
                if r["resourceType"] == "Patient":
                    self.patients[r["id"]] = r

    @classmethod
    def load(cls, path: Path) -> FhirStore:
        if not path.exists():
            return cls([])
        with path.open(encoding="utf-8") as f:
            return cls(json.loads(line) for line in f if line.strip())

    def search(self, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        checks = [_check(self, rtype, k, v) for k, v in params.items() if not k.startswith("_")]
        found = [r for r in self.by_type[rtype] if all(c(r) for c in checks)]
        found.sort(key=lambda r: str(r.get("effectiveDateTime", r.get("id"))), reverse=True)
        return found


class SearchError(ValueError):
    pass


def _check(store: FhirStore, rtype: str, key: str, value: str) -> Callable[[dict[str, Any]], bool]:
    if key in ("patient", "subject"):
        pid = value.rsplit("/", 1)[-1]
        return lambda r: _subject_id(r) == pid
    if key in ("patient.identifier", "subject.identifier", "subject:Patient.identifier"):
        system, value_ = _token(value)
        wanted = {pid for pid, p in store.patients.items() if _has_identifier(p, system, value_)}
        return lambda r: _subject_id(r) in wanted
    if key == "identifier":
        system, value_ = _token(value)
        return lambda r: _has_identifier(r, system, value_)
    if key == "code":
        options = [_token(v) for v in value.split(",")]
        return lambda r: any(_has_coding(r.get("code", {}), s, c) for s, c in options)
    if key == "category":
        system, code = _token(value)
        return lambda r: any(_has_coding(c, system, code) for c in r.get("category", []))
    if key in ("date", "birthdate"):
        prefix, when = (value[:2], value[2:]) if value[:2] in _PREFIXES else ("eq", value)
        field = "birthDate" if key == "birthdate" else "effectiveDateTime"
        return lambda r: _compare(str(r.get(field, "")), prefix, when)
    if key == "_id":
        return lambda r: r.get("id") == value
    raise SearchError(f"unsupported search parameter {key!r} for {rtype}")


def _token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, _, code = value.partition("|")
        return (system or None), code
    return None, value


def _has_identifier(r: dict[str, Any], system: str | None, value: str) -> bool:
    return any(
        i.get("value") == value and (system is None or i.get("system") == system)
        for i in r.get("identifier", [])
    )


def _has_coding(concept: dict[str, Any], system: str | None, code: str) -> bool:
    return any(
        c.get("code") == code and (system is None or c.get("system") == system)
        for c in concept.get("coding", [])
    )


def _subject_id(r: dict[str, Any]) -> str | None:
    if r.get("resourceType") == "Patient":
        return str(r.get("id"))
    ref = r.get("subject", {}).get("reference", "")
    return ref.rsplit("/", 1)[-1] if ref else None


def _compare(have: str, prefix: str, when: str) -> bool:
    if not have:
        return False
    n = len(when)
    head = have[:n]
    return {
        "eq": head == when,
        "ge": head >= when,
        "le": head <= when,
        "gt": head > when,
        "lt": head < when,
    }[prefix]


def add_routes(app: web.Application, store: FhirStore, capability: dict[str, Any]) -> None:
    async def metadata(request: web.Request) -> web.Response:
        return _json(capability)

    async def search(request: web.Request) -> web.Response:
        rtype = request.match_info["type"]
        if rtype not in TYPES:
            return _outcome(404, "not-supported", f"resource type {rtype} is not served here")
        params = dict(request.query)
        try:
            count = int(params.get("_count", "50"))
            offset = int(params.get("_offset", "0"))
            found = store.search(rtype, params)
        except (SearchError, ValueError) as exc:
            return _outcome(400, "invalid", str(exc))
        page = found[offset : offset + count]
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + count < len(found):
            nxt = request.url.update_query({"_offset": str(offset + count), "_count": str(count)})
            links.append({"relation": "next", "url": str(nxt)})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{request.url.origin()}/fhir/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        return _json(bundle)

    async def read(request: web.Request) -> web.Response:
        rtype, rid = request.match_info["type"], request.match_info["id"]
        for r in store.by_type.get(rtype, []):
            if r.get("id") == rid:
                return _json(r)
        return _outcome(404, "not-found", f"{rtype}/{rid} not found")

    app.router.add_get("/fhir/metadata", metadata)
    app.router.add_get("/fhir/{type}", search)
    app.router.add_get("/fhir/{type}/{id}", read)


def capability_statement(name: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {"name": f"Huren simulated LIS ({name})"},
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                    for t in TYPES
                ],
            }
        ],
    }


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body, ensure_ascii=False).encode(), content_type=FHIR_JSON
    )


def _outcome(status: int, code: str, text: str) -> web.Response:
    return _json(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        },
        status,
    )
