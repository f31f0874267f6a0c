"""Lab results across the city: each FHIR lab system asked in its own terms, plus the results
the gateway holds from HL7 v2 feeds, in one federated answer."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.types import FhirJson

from .federation import FederatedResult, Federation
from .identity import NATIONAL_ID_SYSTEM, mrns_by_facility, resolve_person
from .lab_codes import LOCAL_SYSTEM_PREFIX, LOINC_SYSTEM, LabCodeMap
from .registry import Registry
from .search_terms import has_coding, matches_date, token
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
        self,
        registry: Registry,
        federation: Federation,
        upstreams: Upstreams,
        store: Store,
        codes: LabCodeMap,
    ) -> None:
        self.registry = registry
        self.federation = federation
        self.upstreams = upstreams
        self.store = store
        self.codes = codes

    async def search(self, query: LabQuery) -> FederatedResult[FhirJson]:
        """A patient's results from every facility that knows them, newest first; local
        item codes carry their LOINC coding too (the city's ConceptMap)."""
        person = await self._person(query)
        mrns = await mrns_by_facility(self.store, self.registry, person) if person else {}
        targets = [fid for fid in self.upstreams.lab_facilities() if fid in mrns]
        wanted = token(query.code) if query.code else None

        async def call(fid: str) -> list[FhirJson]:
            if fid == INDEX:
                return await self._from_index(person, query)
            lab = self.upstreams.lab(fid)
            assert lab is not None
            facility = self.registry[fid]
            params = {"patient.identifier": f"{facility.mrn_system}|{mrns[fid]}"}
            params |= _filters(query)
            if wanted is not None:
                params["code"] = self._code_for(fid, *wanted)
            found = [self.codes.translate(r) for r in await lab.search(query.resource_type, params)]
            if wanted is not None:  # what the facility matched, checked in the city's terms
                found = [r for r in found if has_coding(r.get("code", {}), *wanted)]
            return found

        result = await self.federation.fan_out([*targets, INDEX], call, operation="lab-search")
        result.items.sort(key=lambda pair: _effective(pair[1]), reverse=True)
        del result.items[query.count :]
        return result

    def _code_for(self, fid: str, system: str | None, code: str) -> str:
        """The code search to send facility ``fid``: in its own codes where the map has the
        item (its laboratory system knows no LOINC), else as the client gave it."""
        local = LOCAL_SYSTEM_PREFIX + fid
        if self.codes.has_local_codes(local) and system != local:
            mapped = self.codes.to_local(local, system or LOINC_SYSTEM, code)
            if mapped is not None:
                return f"{local}|{mapped}"
        return f"{system}|{code}" if system else code

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
            out = [r for r in out if matches_date(_effective(r), *query.date)]
        return out


def _filters(query: LabQuery) -> dict[str, str]:
    params: dict[str, str] = {"_count": str(query.count)}
    if query.date:
        params["date"] = query.date[0] + query.date[1]
    return params


def _effective(resource: FhirJson) -> str:
    return str(resource.get("effectiveDateTime") or resource.get("issued") or "")
