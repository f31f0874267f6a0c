"""A facility PACS reached over DIMSE (PS3.7): C-ECHO and C-FIND on the event loop.

Associations are pooled per facility: negotiating one costs more than the C-FIND it carries,
and a PACS asked many times a minute should not be re-associated each time. The protocol runs
on asyncio (`adapters.dul`), so a pooled association costs nothing while idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache, partial
from typing import TypeVar

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from .dicom_index import INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS
from .dul import Association
from .errors import UpstreamError, UpstreamUnavailable
from .files import header_json
from .part10 import dataset_bytes, part10
from .types import (
    DicomJson,
    DimseEndpoint,
    RetrievedInstance,
    StoredInstance,
    StudyQuery,
    Target,
)

T = TypeVar("T")

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
_ABSTRACT_SYNTAXES = (VERIFICATION, STUDY_ROOT_FIND, PATIENT_ROOT_FIND)
_SERIES_RETURN_KEYS = (*SERIES_KEYWORDS, "StudyInstanceUID", "NumberOfSeriesRelatedInstances")
_INSTANCE_RETURN_KEYS = (*INSTANCE_KEYWORDS, "StudyInstanceUID", "SeriesInstanceUID")
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: Storage classes proposed for C-GET sub-operations: the imaging a city's facilities make.
#: (An association carries at most 128 contexts, so not all of PS3.4 Annex B.)
RETRIEVABLE_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
)
_STUDY_RETURN_KEYS = (
    *STUDY_KEYWORDS,
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
#: Idle associations kept open per facility.
POOL_SIZE = 4


class DimseImaging:
    def __init__(
        self, endpoint: DimseEndpoint, *, calling_ae: str = "HUREN", timeout: float = 10.0
    ) -> None:
        self.endpoint = endpoint
        self.calling_ae = calling_ae
        self.timeout = timeout
        self._idle: list[Association] = []

    async def ping(self) -> None:
        status = await self._run(lambda assoc: assoc.c_echo())
        if status != 0x0000:
            raise UpstreamError(f"C-ECHO answered status 0x{status:04X}")

    async def search_studies(self, query: StudyQuery) -> list[DicomJson]:
        keys = _STUDY_RETURN_KEYS + _extra(query)
        return await self._find("STUDY", keys, query.match, query.limit)

    async def search_series(self, study: str, query: StudyQuery) -> list[DicomJson]:
        match = {**query.match, "StudyInstanceUID": study}
        keys = _SERIES_RETURN_KEYS + _extra(query)
        return await self._find("SERIES", keys, match, query.limit)

    async def search_instances(
        self, study: str, series: str | None, query: StudyQuery
    ) -> list[DicomJson]:
        match = {**query.match, "StudyInstanceUID": study}
        if series:
            match["SeriesInstanceUID"] = series
        keys = _INSTANCE_RETURN_KEYS + _extra(query)
        return await self._find("IMAGE", keys, match, query.limit)

    async def retrieve(self, target: Target) -> AsyncIterator[RetrievedInstance]:
        async for ts, data in self._get(target):
            yield RetrievedInstance(ts, _once(data))

    async def metadata(self, target: Target) -> list[DicomJson]:
        out = []
        async for _, data in self._get(target):
            out.append(await asyncio.to_thread(header_json, data))
        return out

    async def store(self, instances: Sequence[StoredInstance]) -> list[int]:
        """C-STORE each on one association proposing exactly the classes and syntaxes sent."""
        if not instances:
            return []
        classes = sorted({i.sop_class for i in instances})
        syntaxes = sorted({i.transfer_syntax for i in instances})
        e = self.endpoint
        async with asyncio.timeout(self.timeout):
            assoc = await Association.open(
                e.host,
                e.port,
                calling_ae=self.calling_ae,
                called_ae=e.ae_title,
                abstract_syntaxes=classes,
                transfer_syntaxes=syntaxes,
            )
        statuses = []
        try:
            for inst in instances:
                cx = assoc.context_for_syntaxes(inst.sop_class, inst.transfer_syntax)
                if cx is None:
                    statuses.append(0xA900)  # the PACS refused this class or syntax
                    continue
                async with asyncio.timeout(self.timeout):
                    status = await assoc.c_store(
                        cx,
                        inst.sop_class,
                        inst.sop_instance,
                        dataset_bytes(inst.data),
                        assoc.next_message_id(),
                    )
                statuses.append(status)
        except BaseException:
            assoc.abort()
            raise
        await assoc.release()
        return statuses

    async def _find(
        self, level: str, keys: tuple[str, ...], match: Mapping[str, str], limit: int | None
    ) -> list[DicomJson]:
        frozen = tuple(sorted(match.items()))

        async def find(assoc: Association) -> list[DicomJson]:
            out: list[DicomJson] = []
            encoded = partial(_identifier, level, keys, frozen)
            async for found in assoc.c_find(encoded, STUDY_ROOT_FIND):
                if "QueryRetrieveLevel" in found:
                    del found.QueryRetrieveLevel
                out.append(found.to_json_dict())
            return out

        found = await self._run(find)
        return found if limit is None else found[:limit]

    async def _get(self, target: Target) -> AsyncIterator[tuple[str, bytes]]:
        """C-GET on an association of its own (it carries storage contexts the pooled ones
        do not); yields each instance as Part 10 bytes with its transfer syntax."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = (
            "IMAGE" if target.instance else "SERIES" if target.series else "STUDY"
        )
        identifier.StudyInstanceUID = target.study
        if target.series:
            identifier.SeriesInstanceUID = target.series
        if target.instance:
            identifier.SOPInstanceUID = target.instance
        e = self.endpoint
        async with asyncio.timeout(self.timeout):
            assoc = await Association.open(
                e.host,
                e.port,
                calling_ae=self.calling_ae,
                called_ae=e.ae_title,
                abstract_syntaxes=(STUDY_ROOT_GET, *RETRIEVABLE_STORAGE),
                scp_roles=RETRIEVABLE_STORAGE,
            )
        sent = 0
        try:
            async for msg in assoc.c_get(identifier, STUDY_ROOT_GET):
                ts = str(assoc.context(msg.context_id).transfer_syntax[0])
                sent += 1
                yield ts, part10(msg, ts)
        except BaseException:
            assoc.abort()
            raise
        await assoc.release()
        if sent == 0:
            raise UpstreamError("no such study, series or instance at the PACS", status=404)

    async def _run(self, operation: Callable[[Association], Awaitable[T]]) -> T:
        """Run on a pooled association; if the PACS had dropped it meanwhile, once more fresh."""
        pooled = bool(self._idle)
        try:
            async with self._association() as assoc:
                return await operation(assoc)
        except UpstreamUnavailable:
            if not pooled:
                raise
            await self.close()  # its siblings are likely stale too
        async with self._association() as assoc:
            return await operation(assoc)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(a.release() for a in idle))

    @asynccontextmanager
    async def _association(self) -> AsyncIterator[Association]:
        assoc = await self._checkout()
        try:
            async with asyncio.timeout(self.timeout):
                yield assoc
        except BaseException:
            # Cancelled (deadline), failed or timed out mid-message: the association's state
            # is unknown, so it is aborted rather than returned to the pool.
            assoc.abort()
            raise
        if assoc.usable and len(self._idle) < POOL_SIZE:
            self._idle.append(assoc)
        else:
            await assoc.release()

    async def _checkout(self) -> Association:
        while self._idle:
            assoc = self._idle.pop()
            if assoc.usable:
                return assoc
            assoc.close()
        e = self.endpoint
        async with asyncio.timeout(self.timeout):
            return await Association.open(
                e.host,
                e.port,
                calling_ae=self.calling_ae,
                called_ae=e.ae_title,
                abstract_syntaxes=_ABSTRACT_SYNTAXES,
            )


@lru_cache(maxsize=1024)
def _identifier(
    level: str, keys: tuple[str, ...], match: tuple[tuple[str, str], ...], implicit: bool
) -> bytes:
    """A C-FIND identifier, encoded once per query for every facility asked."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = level
    for keyword in keys:
        setattr(identifier, keyword, None)  # a return key: present and empty
    for keyword, value in match:
        vr = dictionary_VR(keyword)
        if vr in _BINARY_NUMBERS:  # matching on e.g. Rows: the element wants a number
            setattr(identifier, keyword, float(value) if vr in ("FL", "FD") else int(value))
        else:
            setattr(identifier, keyword, value)
    return Association.encode_dataset(identifier, implicit)


_BINARY_NUMBERS = frozenset({"US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})


def _extra(query: StudyQuery) -> tuple[str, ...]:
    """includefield as more return keys ("all" adds nothing: C-FIND returns what it is asked)."""
    return tuple(k for k in query.include if k != "all")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
