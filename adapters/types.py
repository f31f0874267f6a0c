"""The adapters' own vocabulary: what an upstream endpoint is and what a query asks.

Adapters import nothing else of Huren's (DESIGN.md, rules of the house); the core builds
these from its registry and hands them down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: A DICOM JSON dataset (PS3.18 F.2): tag "GGGGEEEE" -> {"vr": ..., "Value": [...]}.
DicomJson = dict[str, Any]
#: A FHIR R4 resource as parsed JSON.
FhirJson = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DicomWebEndpoint:
    kind: Literal["dicomweb"]
    url: str  # base URL, e.g. http://127.0.0.1:18001/dicomweb


@dataclass(frozen=True, slots=True)
class DimseEndpoint:
    kind: Literal["dimse"]
    host: str
    port: int
    ae_title: str


@dataclass(frozen=True, slots=True)
class NoImaging:
    """Images held in the gateway's own archive (facilities without a PACS)."""

    kind: Literal["none"]


ImagingEndpoint = DicomWebEndpoint | DimseEndpoint | NoImaging


@dataclass(frozen=True, slots=True)
class FhirEndpoint:
    kind: Literal["fhir"]
    url: str  # base URL, e.g. http://127.0.0.1:18001/fhir


@dataclass(frozen=True, slots=True)
class Hl7v2Feed:
    """An HL7 v2 ORU^R01 feed pushed to the gateway over MLLP."""

    kind: Literal["hl7v2"]
    sending_application: str
    sending_facility: str


@dataclass(frozen=True, slots=True)
class NoLab:
    kind: Literal["none"]


LabEndpoint = FhirEndpoint | Hl7v2Feed | NoLab


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """A study-level search (QIDO-RS / C-FIND STUDY), in DICOM keywords.

    ``match`` maps a keyword (``PatientID``, ``StudyDate``, ``ModalitiesInStudy`` …) to the
    matching value in DICOM form (wildcards, ``YYYYMMDD-YYYYMMDD`` ranges, ``\\``-lists).
    """

    match: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    #: Attributes to return beyond the defaults (QIDO includefield; C-FIND return keys).
    include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """What a retrieval names: a study, one of its series, or one instance (PS3.18 10.4)."""

    study: str
    series: str | None = None
    instance: str | None = None


@dataclass(slots=True)
class RetrievedInstance:
    """One instance as a stream of DICOM Part 10 bytes (never held whole by the gateway)."""

    transfer_syntax: str | None
    chunks: AsyncIterator[bytes]


class ImagingAdapter(Protocol):
    """One facility's imaging archive, reached over its own protocol."""

    async def ping(self) -> None:
        """Return when the archive answers; raise ``UpstreamError`` otherwise."""

    async def search_studies(self, query: StudyQuery) -> list[DicomJson]:
        """Study-level matches as DICOM JSON."""

    async def search_series(self, study: str, query: StudyQuery) -> list[DicomJson]:
        """Series of one study matching ``query``."""

    async def search_instances(
        self, study: str, series: str | None, query: StudyQuery
    ) -> list[DicomJson]:
        """Instances of one study (or one series of it) matching ``query``."""

    def retrieve(self, target: Target) -> AsyncIterator[RetrievedInstance]:
        """The target's instances, one after another; raise ``UpstreamError`` (status 404)
        before the first when there is no such target."""

    async def metadata(self, target: Target) -> list[DicomJson]:
        """The target's instances' attributes as DICOM JSON, bulk data left out."""

    async def store(self, instances: Sequence[StoredInstance]) -> list[int]:
        """Store instances; a DICOM status per instance (0x0000 stored, else why not)."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """A DICOM Part 10 file to store, with the identifiers read from it on arrival."""

    data: bytes
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    study_instance: str


class LabAdapter(Protocol):
    """One facility's lab system."""

    async def ping(self) -> None: ...

    async def search(self, resource_type: str, params: Mapping[str, str]) -> list[FhirJson]:
        """Resources matching FHIR search parameters."""
