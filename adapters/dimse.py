"""A facility PACS reached over DIMSE (PS3.7): C-ECHO and C-FIND, through pynetdicom.

pynetdicom blocks, so every call runs in the executor the core hands us, never on the loop.
Associations are pooled per facility: negotiating one costs more than the C-FIND it carries,
and a PACS that is asked a hundred times a minute should not be re-associated each time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from .dicom_index import STUDY_KEYWORDS
from .errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from .types import DicomJson, DimseEndpoint, StudyQuery

T = TypeVar("T")

_PENDING = (0xFF00, 0xFF01)
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
        self,
        endpoint: DimseEndpoint,
        executor: Executor,
        *,
        calling_ae: str = "HUREN",
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.executor = executor
        self._ae = AE(ae_title=calling_ae)
        self._ae.add_requested_context(Verification)
        self._ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self._ae.acse_timeout = timeout
        self._ae.dimse_timeout = timeout
        self._ae.network_timeout = timeout
        self._idle: list[Association] = []
        self._lock = threading.Lock()

    async def ping(self) -> None:
        await self._run(self._echo)

    async def search_studies(self, query: StudyQuery) -> list[DicomJson]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword in _STUDY_RETURN_KEYS:
            setattr(identifier, keyword, "")
        identifier.SpecificCharacterSet = "ISO_IR 192"
        for keyword, value in query.match.items():
            setattr(identifier, keyword, value)
        found = await self._run(lambda assoc: self._find(assoc, identifier))
        return found if query.limit is None else found[: query.limit]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for assoc in idle:
            assoc.release()

    # -- blocking side, in the executor ---------------------------------------------------

    async def _run(self, work: Callable[[Association], T]) -> T:
        loop = asyncio.get_running_loop()
        in_use: list[Association] = []

        def job() -> T:
            with self._association() as assoc:
                in_use.append(assoc)
                return work(assoc)

        future = loop.run_in_executor(self.executor, job)
        try:
            return await future
        except asyncio.CancelledError:
            # The deadline passed: abort the association so the worker thread is freed now,
            # not when pynetdicom's own timeout fires.
            for assoc in in_use:
                assoc.abort()
            raise

    @contextmanager
    def _association(self) -> Iterator[Association]:
        assoc = self._checkout()
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        with self._lock:
            if assoc.is_established and len(self._idle) < POOL_SIZE:
                self._idle.append(assoc)
                return
        assoc.release()

    def _checkout(self) -> Association:
        with self._lock:
            while self._idle:
                assoc = self._idle.pop()
                if assoc.is_established:
                    return assoc
        e = self.endpoint
        try:
            assoc = self._ae.associate(e.host, e.port, ae_title=e.ae_title)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UpstreamUnavailable(f"association failed: {exc}") from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise UpstreamUnavailable("association rejected")
        raise UpstreamUnavailable("association not established (refused, aborted or timed out)")

    def _echo(self, assoc: Association) -> None:
        status = assoc.send_c_echo()
        _check_final(status, "C-ECHO")

    def _find(self, assoc: Association, identifier: Dataset) -> list[DicomJson]:
        out: list[DicomJson] = []
        responses = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        for status, found in responses:
            if status and status.Status in _PENDING and found is not None:
                if "QueryRetrieveLevel" in found:
                    del found.QueryRetrieveLevel
                out.append(found.to_json_dict())
                continue
            _check_final(status, "C-FIND")
        return out


def _check_final(status: Dataset, service: str) -> None:
    if not status or "Status" not in status:
        raise UpstreamTimeout(f"{service}: no response (timed out or association aborted)")
    code = int(status.Status)
    if code != 0x0000:
        raise (
            UpstreamProtocolError(f"{service} failed with status 0x{code:04X}")
            if code >= 0xA000
            else UpstreamError(f"{service} ended with status 0x{code:04X}")
        )
