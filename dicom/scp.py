"""The gateway's DIMSE SCP (AE HUREN, port 11112): C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE,
each mapped onto the same core as the DICOMweb face (PS3.4 Annexes A, B, C).

- C-FIND at STUDY level (either root) is a federated search across the city; PATIENT level
  groups those matches by patient; SERIES and IMAGE levels ask the study's holder.
- C-GET and C-MOVE retrieve through the core from whichever facility holds the study, and
  send each instance on as a C-STORE sub-operation.
- C-STORE goes into the archive of the facility named by the called AE title (the facility's
  id, e.g. F027), or else of the facility whose registered PACS AE title is calling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from adapters import dimse_codec as codec
from adapters.dimse import RETRIEVABLE_STORAGE
from adapters.dimse_codec import Message
from adapters.dul import Link
from adapters.errors import UpstreamError
from adapters.part10 import identify, part10
from adapters.qr import (
    PATIENT_KEYWORDS,
    UNABLE_TO_PROCESS,
    answer_for,
    level_target,
    match_of,
    patients,
    read_identifier,
    response,
    send_suboperations,
)
from adapters.scp import QrScp
from adapters.types import DimseEndpoint, RetrievedInstance, StoredInstance
from gateway.core import Core
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

IDENTIFIER_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


class GatewayScp(QrScp):
    def __init__(
        self, core: Core, *, move_destinations: Mapping[str, tuple[str, int]] | None = None
    ) -> None:
        super().__init__(move_destinations or {})
        self.core = core
        self.ae_title = core.settings.ae_title
        self._pacs_titles = {
            f.imaging.ae_title: f.id for f in core.registry if isinstance(f.imaging, DimseEndpoint)
        }

    # -- C-FIND ------------------------------------------------------------------------------

    async def on_find(self, link: Link, request: Message) -> None:
        cx = request.context_id
        implicit = link.is_implicit(cx)
        query = read_identifier(request.dataset, implicit)
        try:
            records = await self._query(query)
        except (GatewayError, UpstreamError, TimeoutError) as exc:
            rsp = response(request, codec.C_FIND_RSP, UNABLE_TO_PROCESS)
            rsp["ErrorComment"] = _comment(exc)
            await link.send(cx, rsp)
            return
        if records is None:
            await link.send(cx, response(request, codec.C_FIND_RSP, IDENTIFIER_MISMATCH))
            return
        for record in records:
            record = {**record, "00080054": {"vr": "AE", "Value": [self.ae_title]}}
            answer = link.encode_dataset(answer_for(record, query), implicit)
            await link.send(cx, response(request, codec.C_FIND_RSP, 0xFF00), answer)
        await link.send(cx, response(request, codec.C_FIND_RSP, 0x0000))

    async def _query(self, query: Any) -> list[dict[str, Any]] | None:
        level = str(query.get("QueryRetrieveLevel", ""))
        match = match_of(query)
        imaging = self.core.imaging
        if level in ("PATIENT", "STUDY"):
            if level == "PATIENT":
                match = {k: v for k, v in match.items() if k in PATIENT_KEYWORDS}
            result = await imaging.search_studies(match)
            if result.failures:
                log.info("C-FIND answered without %d facilities", len(result.failures))
            studies = [ds for _, ds in result.items]
            return patients(studies) if level == "PATIENT" else studies
        study = match.pop("StudyInstanceUID", None)
        if not study:
            return None  # below STUDY level the study must be named (PS3.4 C.4.1.2.2)
        if level == "SERIES":
            _, found = await imaging.search_series(None, study, match, None)
            return found
        if level == "IMAGE":
            series = match.pop("SeriesInstanceUID", None)
            _, found = await imaging.search_instances(None, study, series, match, None)
            return found
        return None

    # -- C-GET and C-MOVE --------------------------------------------------------------------

    async def on_retrieve(
        self, link: Link, request: Message, field: int, destination: tuple[str, int] | None
    ) -> None:
        query = read_identifier(request.dataset, link.is_implicit(request.context_id))
        target = level_target(query)
        if target is None:
            await link.send(request.context_id, response(request, field, IDENTIFIER_MISMATCH))
            return
        try:
            _, instances = await self.core.imaging.retrieve(None, target)
        except (GatewayError, UpstreamError, TimeoutError) as exc:
            rsp = response(request, field, UNABLE_TO_PROCESS)
            rsp["ErrorComment"] = _comment(exc)
            await link.send(request.context_id, rsp)
            return
        try:
            await send_suboperations(
                link,
                request,
                field,
                _stored(instances),
                ae_title=self.ae_title,
                destination=destination,
                classes=RETRIEVABLE_STORAGE,
            )
        finally:
            await instances.aclose()  # type: ignore[attr-defined]

    # -- C-STORE -----------------------------------------------------------------------------

    async def on_store(self, link: Link, request: Message, peer: tuple[str, str]) -> None:
        calling, called = peer
        rsp = response(request, codec.C_STORE_RSP, 0x0000)
        rsp["AffectedSOPInstanceUID"] = request.get("AffectedSOPInstanceUID", "")
        facility = called if self.core.registry.get(called) else self._pacs_titles.get(calling)
        ts = str(link.contexts[request.context_id].transfer_syntax[0])
        inst = None if facility is None else await asyncio.to_thread(identify, part10(request, ts))
        if facility is None:
            rsp["Status"] = OUT_OF_RESOURCES
            rsp["ErrorComment"] = "call the AE title of the facility to store into (e.g. F027)"
        elif inst is None:
            rsp["Status"] = CANNOT_UNDERSTAND
            rsp["ErrorComment"] = "not a whole DICOM data set"
        else:
            try:
                [status] = await self.core.imaging.store_instances(facility, [inst])
                rsp["Status"] = status
            except (GatewayError, UpstreamError, TimeoutError) as exc:
                rsp["Status"] = OUT_OF_RESOURCES
                rsp["ErrorComment"] = _comment(exc)
        await link.send(request.context_id, rsp)


async def _stored(instances: AsyncIterator[RetrievedInstance]) -> AsyncIterator[StoredInstance]:
    """Retrieved instances, each read whole (a C-STORE carries one instance at a time)."""
    async for inst in instances:
        data = b"".join([chunk async for chunk in inst.chunks])
        found = await asyncio.to_thread(identify, data)
        if found is None:
            raise UpstreamError("the facility sent an instance that is not whole DICOM")
        yield found


def _comment(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None) or type(exc).__name__
    return str(detail)[:64]  # ErrorComment is LO
