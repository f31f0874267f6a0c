"""The facilities' systems as adapters, built from the registry, one per facility and kind."""

from __future__ import annotations

from concurrent.futures import Executor

import aiohttp

from adapters.archive import Archive, ArchiveImaging
from adapters.dicomweb import DicomWebImaging
from adapters.dimse import DimseImaging
from adapters.fhir import FhirLab
from adapters.types import (
    DicomWebEndpoint,
    DimseEndpoint,
    FhirEndpoint,
    ImagingAdapter,
    LabAdapter,
)

from .registry import Registry


class Upstreams:
    def __init__(
        self,
        registry: Registry,
        session: aiohttp.ClientSession,
        executor: Executor,
        archive: Archive,
        *,
        ae_title: str = "HUREN",
        dimse_timeout: float = 10.0,
    ) -> None:
        self.registry = registry
        self._imaging: dict[str, ImagingAdapter] = {}
        self._lab: dict[str, LabAdapter] = {}
        self._dimse: list[DimseImaging] = []
        for f in registry:
            if isinstance(f.imaging, DicomWebEndpoint):
                self._imaging[f.id] = DicomWebImaging(f.imaging, session)
            elif isinstance(f.imaging, DimseEndpoint):
                dimse = DimseImaging(f.imaging, calling_ae=ae_title, timeout=dimse_timeout)
                self._dimse.append(dimse)
                self._imaging[f.id] = dimse
            else:
                self._imaging[f.id] = ArchiveImaging(archive, f.id, executor)
            if isinstance(f.lab, FhirEndpoint):
                self._lab[f.id] = FhirLab(f.lab, session)

    def imaging(self, facility_id: str) -> ImagingAdapter:
        return self._imaging[facility_id]

    def lab(self, facility_id: str) -> LabAdapter | None:
        return self._lab.get(facility_id)

    def imaging_facilities(self) -> list[str]:
        return list(self._imaging)

    def lab_facilities(self) -> list[str]:
        return list(self._lab)

    async def close(self) -> None:
        """Release pooled DIMSE associations."""
        for dimse in self._dimse:
            await dimse.close()
