"""Recognition verdicts on the FHIR face: each result the gateway answers carries its verdict
as an extension (StructureDefinition recognition-verdict, served from fhir/) and, when it has
the HR mark, a meta tag a client can filter on without reading extensions.

The rules are the gateway's (gateway/recognition.py); this module only writes them down.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Final

from aiohttp import web

from gateway.guard import access_of
from gateway.lab_codes import LOINC_SYSTEM
from gateway.recognition import (
    REASON_TEXT,
    Reason,
    Recognition,
    Verdict,
    city_today,
    facts_of_fhir,
)
from gateway.storage import source_facility
from gateway.web import CORE

VERDICT_URL: Final = "urn:huren:StructureDefinition/recognition-verdict"
MARK_SYSTEM: Final = "urn:huren:CodeSystem/recognition-mark"
REASON_SYSTEM: Final = "urn:huren:CodeSystem/recognition-reason"
IMAGING_ITEM_SYSTEM: Final = "urn:huren:recognition-item"
RESULT_TYPES: Final = frozenset({"Observation", "DiagnosticReport", "ImagingStudy"})
_MARK_TAG: Final = {"system": MARK_SYSTEM, "code": "HR", "display": "互认 (HR)"}


class Judge:
    """The verdicts of one request: for the asking facility, on one day."""

    def __init__(
        self, recognition: Recognition, asker: str | None, on: date, *, enabled: bool = True
    ) -> None:
        self.recognition = recognition
        self.asker = asker
        self.on = on
        self.enabled = enabled

    @classmethod
    def for_request(
        cls, request: web.Request, *, asker: str | None = None, on: date | None = None
    ) -> Judge:
        """Verdicts for the caller's facility today, unless another facility or day is named
        (a resident's or a service's token names no facility: mark and window only)."""
        core = request.app[CORE]
        principal = access_of(request).principal
        return cls(
            core.recognition,
            asker if asker is not None else (principal.facility_id if principal else None),
            on or city_today(),
            enabled=core.settings.verdicts,
        )

    def verdict(self, resource: dict[str, Any]) -> Verdict | None:
        """The verdict on a result the gateway answers (its meta.source names the holder)."""
        if resource.get("resourceType") not in RESULT_TYPES:
            return None
        holder = source_facility(resource)
        if holder is None:
            return None
        return self.recognition.verdict(facts_of_fhir(resource, holder), self.asker, self.on)

    def mark(self, resource: dict[str, Any]) -> Verdict | None:
        """Write the verdict into ``resource`` (a copy the gateway owns) and return it."""
        if not self.enabled:
            return None
        verdict = self.verdict(resource)
        if verdict is not None:
            write_verdict(resource, verdict)
        return verdict


def write_verdict(resource: dict[str, Any], verdict: Verdict) -> None:
    kept = [e for e in resource.get("extension", ()) if e.get("url") != VERDICT_URL]
    resource["extension"] = [*kept, verdict_extension(verdict)]
    if verdict.mark is not None:
        meta = dict(resource.get("meta", {}))
        tags = [t for t in meta.get("tag", ()) if t.get("system") != MARK_SYSTEM]
        meta["tag"] = [*tags, _MARK_TAG]
        resource["meta"] = meta


def verdict_extension(v: Verdict) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "recognised", "valueBoolean": v.recognised}]
    if v.mark is not None:
        parts.append({"url": "mark", "valueCode": v.mark})
    parts.append({"url": "catalogue", "valueString": v.catalogue})
    if v.item is not None:
        parts.append({"url": "item", "valueCoding": item_coding(v)})
    parts += [{"url": "reason", "valueCoding": reason_coding(r)} for r in v.reasons]
    if v.asker is not None:
        parts.append({"url": "asker", "valueReference": {"reference": f"Organization/{v.asker}"}})
    parts.append({"url": "on", "valueDate": v.on.isoformat()})
    if v.valid_until is not None:
        parts.append({"url": "validUntil", "valueDate": v.valid_until.isoformat()})
    return {"url": VERDICT_URL, "extension": parts}


def item_coding(v: Verdict) -> dict[str, Any]:
    item = v.item
    assert item is not None
    if item.kind == "lab":
        return {"system": LOINC_SYSTEM, "code": item.id, "display": item.name_en}
    return {"system": IMAGING_ITEM_SYSTEM, "code": item.id, "display": item.name_zh}


def reason_coding(reason: Reason) -> dict[str, Any]:
    return {"system": REASON_SYSTEM, "code": str(reason), "display": REASON_TEXT[reason]}
