"""Lab results across the city: each FHIR lab system asked in its own terms, plus the results
the gateway holds from HL7 v2 feeds, in one federated answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.types import FhirJson

from .federation import FederatedResult, Federation
from .identity import NATIONAL_ID_SYSTEM, mrns_by_facility, resolve_person
from .registry import Registry
from .storage import Store
from .upstreams import Upstreams

#: The pseudo-facility id under which results from the gateway's own index are reported.
INDEX = "HUREN"


@dataclass(frozen=True, slots=True)
class LabQuery:
    resource_type: str  # Observation | DiagnosticReport
    patient_system: str | None
    patient_value: str
    code: str | None = None  # token: code or system|code
    date: tuple[str, str] | None = None  # (prefix, value) as FHIR date search gives them
    count: int = 100


class LabService:
    def __init__(
        self, registry: Registry, federation: Federation, upstreams: Upstreams, store: Store
    ) -> None:
        self.registry = registry
        self.federation = federation
        self.upstreams = upstreams
        self.store = store

    async def search(self, query: LabQuery) -> FederatedResult[FhirJson]:
        """A patient's results from every facility that knows them, newest first."""
        person = await self._person(query)
        mrns = await mrns_by_facility(self.store, self.registry, person) if person else {}
        targets = [fid for fid in self.upstreams.lab_facilities() if fid in mrns]

        async def call(fid: str) -> list[FhirJson]:
            if fid == INDEX:
                return await self._from_index(person, query)
            lab = self.upstreams.lab(fid)
            assert lab is not None
            facility = self.registry[fid]
            params = {"patient.identifier": f"{facility.mrn_system}|{mrns[fid]}"}
            params |= _filters(query)
            return await lab.search(query.resource_type, params)

        result = await self.federation.fan_out([*targets, INDEX], call, operation="lab-search")
        result.items.sort(key=lambda pair: _effective(pair[1]), reverse=True)
        del result.items[query.count :]
        return result

    async def _person(self, query: LabQuery) -> str | None:
        if query.patient_system in (None, NATIONAL_ID_SYSTEM):
            return await resolve_person(self.store, self.registry, query.patient_value, None)
        facility = next((f for f in self.registry if f.mrn_system == query.patient_system), None)
        if facility is None:
            return None
        return await self.store.person_for(facility.mrn_system, query.patient_value)

    async def _from_index(self, person: str | None, query: LabQuery) -> list[FhirJson]:
        if person is None:
            return []
        code = (query.code or "").rsplit("|", 1)[-1] or None
        found = await self.store.lab_results_for(person_key=person, code=code, limit=1000)
        out = [r for r in found if r.get("resourceType") == query.resource_type]
        if query.date is not None:
            out = [r for r in out if _date_matches(r, query.date)]
        return out


def _filters(query: LabQuery) -> Mapping[str, str]:
    params: dict[str, str] = {"_count": str(query.count)}
    if query.code:
        params["code"] = query.code
    if query.date:
        params["date"] = query.date[0] + query.date[1]
    return params


def _effective(resource: FhirJson) -> str:
    return str(resource.get("effectiveDateTime") or resource.get("issued") or "")


def _date_matches(resource: FhirJson, date: tuple[str, str]) -> bool:
    prefix, value = date
    have = _effective(resource)[: len(value)]
    if not have:
        return False
    return {
        "eq": have == value,
        "ge": have >= value,
        "le": have <= value,
        "gt": have > value,
        "lt": have < value,
    }[prefix]
