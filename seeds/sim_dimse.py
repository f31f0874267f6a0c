"""A simulated facility PACS speaking DIMSE: C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE
(PS3.4 Annexes A, B, C), served on asyncio through `adapters.dul`.

One event loop serves every simulated PACS: an idle association costs nothing, so a gateway
may keep pooled associations open to all of them (pynetdicom's server spent over a core
polling for 25 such associations).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from adapters import dimse_codec as codec
from adapters.dicom_index import DicomIndex, Instance
from adapters.dicom_match import first
from adapters.dimse_codec import Message
from adapters.dul import Link
from adapters.part10 import part10
from adapters.qr import (
    PATIENT_KEYWORDS,
    answer_for,
    match_of,
    patients,
    read_identifier,
    response,
    send_suboperations,
    uids,
)
from adapters.scp import QrScp
from adapters.types import StoredInstance

log = logging.getLogger(__name__)

_IDENTIFIER_MISMATCH = 0xA900


class DimsePacs(QrScp):
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
        super().__init__(move_destinations)
        self.ae_title = ae_title
        self.index = index
        self.stow_dir = stow_dir
        self.latency = latency

    async def before(self, request: Message) -> None:
        delay = self.latency()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- C-FIND ------------------------------------------------------------------------------

    async def on_find(self, link: Link, request: Message) -> None:
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

    async def on_retrieve(
        self,
        link: Link,
        request: Message,
        response_field: int,
        destination: tuple[str, int] | None,
    ) -> None:
        """C-GET (sub-operations on this association) or C-MOVE (on a new one)."""
        query = read_identifier(request.dataset, link.is_implicit(request.context_id))
        instances = self._instances_for(query)

        async def stored() -> AsyncIterator[StoredInstance]:
            for inst in instances:
                yield StoredInstance(
                    data=await asyncio.to_thread(inst.path.read_bytes),
                    sop_class=str(first(inst.header, "SOPClassUID")),
                    sop_instance=str(first(inst.header, "SOPInstanceUID")),
                    transfer_syntax=inst.transfer_syntax,
                    study_instance=str(first(inst.header, "StudyInstanceUID")),
                )

        await send_suboperations(
            link,
            request,
            response_field,
            stored(),
            ae_title=self.ae_title,
            destination=destination,
            classes=[str(first(i.header, "SOPClassUID")) for i in instances],
        )

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

    async def on_store(self, link: Link, request: Message, peer: tuple[str, str]) -> None:
        rsp = response(request, codec.C_STORE_RSP, 0x0000)
        rsp["AffectedSOPInstanceUID"] = request["AffectedSOPInstanceUID"]
        ts = str(link.contexts[request.context_id].transfer_syntax[0])
        try:
            path = self.stow_dir / f"{request['AffectedSOPInstanceUID']}.dcm"
            ds = await asyncio.to_thread(_save, path, part10(request, ts))
            self.index.add(path, ds)
        except Exception:
            log.exception("C-STORE could not be stored")
            rsp["Status"] = 0xC210  # Cannot understand
        await link.send(request.context_id, rsp)


def _save(path: Path, data: bytes) -> Dataset:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return pydicom.dcmread(path, stop_before_pixels=True)
