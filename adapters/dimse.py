"""A facility PACS reached over DIMSE (PS3.7): C-ECHO and C-FIND on the event loop.

Associations are pooled per facility: negotiating one costs more than the C-FIND it carries,
and a PACS asked many times a minute should not be re-associated each time. The protocol runs
on asyncio (`adapters.dul`), so a pooled association costs nothing while idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import TypeVar

from pydicom.dataset import Dataset

from .dicom_index import STUDY_KEYWORDS
from .dul import Association
from .errors import UpstreamError, UpstreamUnavailable
from .types import DicomJson, DimseEndpoint, StudyQuery

T = TypeVar("T")

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
_ABSTRACT_SYNTAXES = (VERIFICATION, STUDY_ROOT_FIND, PATIENT_ROOT_FIND)
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
        match = tuple(sorted(query.match.items()))

        async def find(assoc: Association) -> list[DicomJson]:
            out: list[DicomJson] = []
            async for found in assoc.c_find(
                lambda implicit: _study_query(match, implicit), STUDY_ROOT_FIND
            ):
                if "QueryRetrieveLevel" in found:
                    del found.QueryRetrieveLevel
                out.append(found.to_json_dict())
            return out

        found = await self._run(find)
        return found if query.limit is None else found[: query.limit]

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
def _study_query(match: tuple[tuple[str, str], ...], implicit: bool) -> bytes:
    """A STUDY-level C-FIND identifier, encoded once per query for every facility asked."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in _STUDY_RETURN_KEYS:
        setattr(identifier, keyword, "")
    for keyword, value in match:
        setattr(identifier, keyword, value)
    return Association.encode_dataset(identifier, implicit)
