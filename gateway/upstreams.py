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

from .credentials import Credentials
from .registry import Facility, Registry


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
        self._session = session
        self._executor = executor
        self._archive = archive
        self._ae_title = ae_title
        self._dimse_timeout = dimse_timeout
        self._imaging: dict[str, ImagingAdapter] = {}
        self._lab: dict[str, LabAdapter] = {}
        self._dimse: dict[str, DimseImaging] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._live: tuple[list[str], list[str]] | None = None
        for f in registry:
            self._build(f, None)

    def _build(self, f: Facility, credentials: Credentials | None) -> None:
        session = self._session
        if credentials is not None:  # the facility's own: its systems want a login
            session = aiohttp.ClientSession(
                timeout=self._session.timeout,
                headers=credentials.headers(),
            )
            self._sessions[f.id] = session
        if isinstance(f.imaging, DicomWebEndpoint):
            self._imaging[f.id] = DicomWebImaging(f.imaging, session)
        elif isinstance(f.imaging, DimseEndpoint):
            dimse = DimseImaging(f.imaging, calling_ae=self._ae_title, timeout=self._dimse_timeout)
            self._dimse[f.id] = dimse
            self._imaging[f.id] = dimse
        else:
            self._imaging[f.id] = ArchiveImaging(self._archive, f.id, self._executor)
        if isinstance(f.lab, FhirEndpoint):
            self._lab[f.id] = FhirLab(f.lab, session)
        else:
            self._lab.pop(f.id, None)

    async def refresh(self, f: Facility, credentials: Credentials | None = None) -> None:
        """Adapters for a facility registered or changed while the gateway runs."""
        old_dimse = self._dimse.pop(f.id, None)
        old_session = self._sessions.pop(f.id, None)
        self._build(f, credentials)
        self._live = None
        if old_dimse is not None:
            await old_dimse.close()
        if old_session is not None:
            await old_session.close()

    def imaging(self, facility_id: str) -> ImagingAdapter:
        return self._imaging[facility_id]

    def lab(self, facility_id: str) -> LabAdapter | None:
        return self._lab.get(facility_id)

    def imaging_facilities(self) -> list[str]:
        """The live facilities with imaging: the ones a federated search asks."""
        return self._live_ids()[0]

    def lab_facilities(self) -> list[str]:
        return self._live_ids()[1]

    def _live_ids(self) -> tuple[list[str], list[str]]:
        if self._live is None:
            live = {f.id for f in self.registry if f.live}
            self._live = (
                [fid for fid in self._imaging if fid in live],
                [fid for fid in self._lab if fid in live],
            )
        return self._live

    async def close(self) -> None:
        """Release pooled DIMSE associations and the facilities' own sessions."""
        for dimse in self._dimse.values():
            await dimse.close()
        for session in self._sessions.values():
            await session.close()
