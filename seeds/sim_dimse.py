"""A simulated facility PACS speaking DIMSE: C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE
(PS3.4 Annexes A, B, C), served on asyncio through `adapters.dul`.

One event loop serves every simulated PACS: an idle association costs nothing, so a gateway
may keep pooled associations open to all of them (pynetdicom's server spent over a core
polling for 25 such associations).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import StoragePresentationContexts

from adapters import dimse_codec as codec
from adapters.dicom_index import DicomIndex, Instance
from adapters.dicom_match import first
from adapters.dimse_codec import Message
from adapters.dul import Association, Link, PeerReleased, accept, supported_contexts
from adapters.errors import UpstreamError
from adapters.qr import (
    PATIENT_KEYWORDS,
    answer_for,
    match_of,
    patients,
    read_identifier,
    response,
    uids,
)

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
QR_FIND = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
QR_GET = ("1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3")
QR_MOVE = ("1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2")
STORAGE = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)
_CANCELLED, _UNABLE, _IDENTIFIER_MISMATCH, _MOVE_DEST_UNKNOWN = 0xFE00, 0xC000, 0xA900, 0xA801
_SUBOPS_FAILED = 0xB000  # warning: one or more sub-operations failed


class DimsePacs:
    """One facility's PACS on one port. ``latency`` is read on every request (faults)."""

    def __init__(
        self,
        ae_title: str,
        index: DicomIndex,
        stow_dir: Path,
        *,
        latency: Callable[[], float],
        move_destinations: Mapping[str, tuple[str, int]],
    ) -> None:
        self.ae_title = ae_title
        self.index = index
        self.stow_dir = stow_dir
        self.latency = latency
        self.move_destinations = move_destinations
        self._contexts = [
            *supported_contexts([VERIFICATION, *QR_FIND, *QR_GET, *QR_MOVE]),
            *supported_contexts(STORAGE, scp_role=True),
        ]
        self._server: asyncio.Server | None = None
        self._links: set[Link] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        # A PACS that goes down drops its open associations too, pooled ones included.
        for link in list(self._links):
            link.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link: Link | None = None
        try:
            link, _calling_ae = await accept(reader, writer, self._contexts)
            self._links.add(link)
            while True:
                request = await link.receive()
                delay = self.latency()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._dispatch(link, request)
        except PeerReleased:
            pass
        except (UpstreamError, TimeoutError, ConnectionError) as exc:
            log.debug("association ended: %s", exc)
        except Exception:
            log.exception("simulated PACS failed on an association")
        finally:
            if link is not None:
                self._links.discard(link)
            writer.close()

    async def _dispatch(self, link: Link, request: Message) -> None:
        kind = request.command_field
        if kind == codec.C_ECHO_RQ:
            await link.send(request.context_id, response(request, codec.C_ECHO_RSP, 0x0000))
        elif kind == codec.C_FIND_RQ:
            await self._find(link, request)
        elif kind == codec.C_GET_RQ:
            await self._retrieve(link, request, codec.C_GET_RSP, destination=None)
        elif kind == codec.C_MOVE_RQ:
            await self._move(link, request)
        elif kind == codec.C_STORE_RQ:
            await self._store(link, request)
        elif kind == codec.C_CANCEL_RQ:
            pass  # answers are sent whole; nothing is in progress to cancel
        else:
            raise UpstreamError(f"unsupported DIMSE command 0x{kind:04X}")

    # -- C-FIND ------------------------------------------------------------------------------

    async def _find(self, link: Link, request: Message) -> None:
        cx = request.context_id
        implicit = link.is_implicit(cx)
        query = read_identifier(request.dataset, implicit)
        records = self._query(query)
        if records is None:
            await link.send(cx, response(request, codec.C_FIND_RSP, _IDENTIFIER_MISMATCH))
            return
        for record in records:
            answer = link.encode_dataset(answer_for(record, query), implicit)
            await link.send(cx, response(request, codec.C_FIND_RSP, 0xFF00), answer)
        await link.send(cx, response(request, codec.C_FIND_RSP, 0x0000))

    def _query(self, query: Dataset) -> list[dict[str, Any]] | None:
        level = str(query.get("QueryRetrieveLevel", ""))
        match = match_of(query)
        if level == "PATIENT":
            patient_match = {k: v for k, v in match.items() if k in PATIENT_KEYWORDS}
            return patients(self.index.search_studies(patient_match))
        if level == "STUDY":
            return self.index.search_studies(match)
        if level == "SERIES":
            return self.index.search_series(match.pop("StudyInstanceUID", None), match)
        if level == "IMAGE":
            study, series = (
                match.pop("StudyInstanceUID", None),
                match.pop("SeriesInstanceUID", None),
            )
            return self.index.search_instances(study, series, match)
        return None

    # -- C-GET and C-MOVE --------------------------------------------------------------------

    async def _move(self, link: Link, request: Message) -> None:
        destination = self.move_destinations.get(str(request.get("MoveDestination", "")).strip())
        if destination is None:
            rsp = response(request, codec.C_MOVE_RSP, _MOVE_DEST_UNKNOWN)
            await link.send(request.context_id, rsp)
            return
        await self._retrieve(link, request, codec.C_MOVE_RSP, destination=destination)

    async def _retrieve(
        self,
        link: Link,
        request: Message,
        response_field: int,
        *,
        destination: tuple[str, int] | None,
    ) -> None:
        """C-GET (sub-operations on this association) or C-MOVE (on a new one)."""
        query = read_identifier(request.dataset, link.is_implicit(request.context_id))
        instances = self._instances_for(query)
        store_link: Link = link
        mover: Association | None = None
        done = failed = 0
        try:
            if destination is not None:
                classes = sorted({str(first(i.header, "SOPClassUID")) for i in instances})
                mover = await Association.open(
                    destination[0],
                    destination[1],
                    calling_ae=self.ae_title,
                    called_ae=str(request["MoveDestination"]).strip(),
                    abstract_syntaxes=classes or [VERIFICATION],
                )
                store_link = mover
            originator = None if mover is None else (self.ae_title, int(request["MessageID"]))
            for n, inst in enumerate(instances, start=1):
                ok = await self._send_instance(store_link, inst, n, originator)
                done, failed = done + ok, failed + (not ok)
        except UpstreamError as exc:
            log.info("retrieve sub-operations stopped: %s", exc)
            failed = len(instances) - done
        finally:
            if mover is not None:
                await mover.release()
        status = 0x0000 if failed == 0 else _SUBOPS_FAILED if done else _UNABLE
        rsp = response(request, response_field, status)
        rsp.update(
            NumberOfCompletedSuboperations=done,
            NumberOfFailedSuboperations=failed,
            NumberOfWarningSuboperations=0,
        )
        await link.send(request.context_id, rsp)

    async def _send_instance(
        self, link: Link, inst: Instance, message_id: int, originator: tuple[str, int] | None
    ) -> bool:
        sop_class = str(first(inst.header, "SOPClassUID"))
        context_id = next(
            (cid for cid, c in link.contexts.items() if str(c.abstract_syntax) == sop_class), None
        )
        if context_id is None:
            return False
        ts = UID(link.contexts[context_id].transfer_syntax[0])
        data = await asyncio.to_thread(_encoded_dataset, inst.path, ts)
        status = await link.c_store(
            context_id,
            sop_class,
            str(first(inst.header, "SOPInstanceUID")),
            data,
            message_id,
            move_originator=originator,
        )
        return status == 0x0000 or 0xB000 <= status <= 0xBFFF

    def _instances_for(self, query: Dataset) -> list[Instance]:
        level = str(query.get("QueryRetrieveLevel", ""))
        if level == "PATIENT":
            pid = str(query.get("PatientID", ""))
            return [
                i
                for s in self.index.studies()
                for i in s.instances()
                if first(i.header, "PatientID") == pid
            ]
        out: list[Instance] = []
        for study in uids(query, "StudyInstanceUID"):
            for series in (
                uids(query, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else [None]
            ):
                for sop in uids(query, "SOPInstanceUID") if level == "IMAGE" else [None]:
                    out.extend(self.index.instances(study, series, sop))
        return out

    # -- C-STORE -----------------------------------------------------------------------------

    async def _store(self, link: Link, request: Message) -> None:
        rsp = response(request, codec.C_STORE_RSP, 0x0000)
        rsp["AffectedSOPInstanceUID"] = request["AffectedSOPInstanceUID"]
        ts = UID(link.contexts[request.context_id].transfer_syntax[0])
        try:
            sop_uid = str(request["AffectedSOPInstanceUID"])
            path = self.stow_dir / f"{sop_uid}.dcm"
            ds = await asyncio.to_thread(
                _save,
                path,
                request.dataset or b"",
                ts,
                str(request["AffectedSOPClassUID"]),
                sop_uid,
            )
            self.index.add(path, ds)
        except Exception:
            log.exception("C-STORE could not be stored")
            rsp["Status"] = 0xC210  # Cannot understand
        await link.send(request.context_id, rsp)


def _encoded_dataset(path: Path, ts: UID) -> bytes:
    ds = pydicom.dcmread(path)
    return Link.encode_dataset(ds, ts.is_implicit_VR)


def _save(path: Path, data: bytes, ts: UID, sop_class: str, sop_instance: str) -> Dataset:
    """Write a received dataset as a Part 10 file without re-encoding it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(buf), meta)
    buf.write(data)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return pydicom.dcmread(path, stop_before_pixels=True)
