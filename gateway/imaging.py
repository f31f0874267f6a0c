"""Imaging search through the federation: one query, every facility, in each one's terms."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from adapters.types import DicomJson, StudyQuery

from .federation import FederatedResult, Federation
from .identity import mrns_by_facility, resolve_person
from .registry import Registry
from .storage import Store
from .upstreams import Upstreams


class ImagingService:
    def __init__(
        self, registry: Registry, federation: Federation, upstreams: Upstreams, store: Store
    ) -> None:
        self.registry = registry
        self.federation = federation
        self.upstreams = upstreams
        self.store = store

    async def search_studies(
        self,
        match: Mapping[str, str],
        *,
        facility_ids: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> FederatedResult[DicomJson]:
        """Study-level search across facilities.

        A PatientID that names a known person (their national ID number, or a facility's MRN
        with its IssuerOfPatientID) is translated into each facility's own MRN, and only the
        facilities that know the person are asked.
        """
        targets = (
            list(facility_ids) if facility_ids is not None else self.upstreams.imaging_facilities()
        )
        per_facility = {fid: dict(match) for fid in targets}
        patient_id = match.get("PatientID", "")
        if patient_id and "*" not in patient_id and "?" not in patient_id:
            issuer = match.get("IssuerOfPatientID")
            person = await resolve_person(self.store, self.registry, patient_id, issuer)
            if person is not None:
                mrns = await mrns_by_facility(self.store, self.registry, person)
                targets = [fid for fid in targets if fid in mrns]
                per_facility = {fid: _with_mrn(match, mrns[fid]) for fid in targets}
            elif issuer:
                holder = self.registry.by_issuer(issuer)
                targets = [fid for fid in targets if holder is not None and fid == holder.id]
                per_facility = {fid: _with_mrn(match, patient_id) for fid in targets}

        async def call(fid: str) -> list[DicomJson]:
            query = StudyQuery(match=per_facility[fid], limit=limit)
            return await self.upstreams.imaging(fid).search_studies(query)

        return await self.federation.fan_out(targets, call, operation="search-studies")


def _with_mrn(match: Mapping[str, str], mrn: str) -> dict[str, str]:
    out = {k: v for k, v in match.items() if k != "IssuerOfPatientID"}
    out["PatientID"] = mrn
    return out
