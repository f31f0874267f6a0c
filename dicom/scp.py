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
from adapters.dul import Link, PeerReleased, accept
from adapters.errors import UpstreamError
from adapters.part10 import identify, part10
from adapters.qr import (
    PATIENT_KEYWORDS,
    UNABLE_TO_PROCESS,
    answer_for,
    level_target,
    match_of,
    patients,
    qr_scp_contexts,
    read_identifier,
    response,
    send_suboperations,
)
from adapters.types import DimseEndpoint, RetrievedInstance, StoredInstance
from gateway.core import Core
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

IDENTIFIER_MISMATCH = 0xA900
MOVE_DESTINATION_UNKNOWN = 0xA801
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


class GatewayScp:
    def __init__(
        self, core: Core, *, move_destinations: Mapping[str, tuple[str, int]] | None = None
    ) -> None:
        self.core = core
        self.ae_title = core.settings.ae_title
        self.move_destinations = dict(move_destinations or {})
        self._contexts = qr_scp_contexts()
        self._server: asyncio.Server | None = None
        self._links: set[Link] = set()
        self._pacs_titles = {
            f.imaging.ae_title: f.id for f in core.registry if isinstance(f.imaging, DimseEndpoint)
        }

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link: Link | None = None
        try:
            link, peer = await accept(reader, writer, self._contexts)
            self._links.add(link)
            while True:
                request = await link.receive()
                await self._dispatch(link, request, peer)
        except PeerReleased:
            pass
        except (UpstreamError, TimeoutError, ConnectionError) as exc:
            log.info("association ended: %s", type(exc).__name__)
        except Exception:
            log.exception("DIMSE SCP failed on an association")
        finally:
            if link is not None:
                self._links.discard(link)
            writer.close()

    async def _dispatch(self, link: Link, request: Message, peer: tuple[str, str]) -> None:
        kind = request.command_field
        if kind == codec.C_ECHO_RQ:
            await link.send(request.context_id, response(request, codec.C_ECHO_RSP, 0x0000))
        elif kind == codec.C_FIND_RQ:
            await self._find(link, request)
        elif kind == codec.C_GET_RQ:
            await self._retrieve(link, request, codec.C_GET_RSP, None)
        elif kind == codec.C_MOVE_RQ:
            destination = self.move_destinations.get(
                str(request.get("MoveDestination", "")).strip()
            )
            if destination is None:
                rsp = response(request, codec.C_MOVE_RSP, MOVE_DESTINATION_UNKNOWN)
                await link.send(request.context_id, rsp)
                return
            await self._retrieve(link, request, codec.C_MOVE_RSP, destination)
        elif kind == codec.C_STORE_RQ:
            await self._store(link, request, peer)
        elif kind == codec.C_CANCEL_RQ:
            pass  # answers go out whole; there is nothing in progress to cancel
        else:
            raise UpstreamError(f"unsupported DIMSE command 0x{kind:04X}")

    # -- C-FIND ------------------------------------------------------------------------------

    async def _find(self, link: Link, request: Message) -> None:
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

    async def _retrieve(
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

    async def _store(self, link: Link, request: Message, peer: tuple[str, str]) -> None:
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
