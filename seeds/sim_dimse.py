"""A simulated facility PACS speaking DIMSE through pynetdicom: C-ECHO, C-FIND, C-GET,
C-MOVE and C-STORE (PS3.4 Annexes A, B, C)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from adapters.dicom_index import DicomIndex, Instance, study_record
from adapters.dicom_match import first

log = logging.getLogger(__name__)

_QR_CONTEXTS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)
_PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
_SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet"}


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
        self.index = index
        self.stow_dir = stow_dir
        self.latency = latency
        self.move_destinations = move_destinations
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(Verification)
        for cx in _QR_CONTEXTS:
            ae.add_supported_context(cx)
        storage = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
        for uid in storage:
            # Role selection lets a C-GET requestor take C-STOREs back on this association.
            ae.add_supported_context(uid, scu_role=True, scp_role=True)
        ae.maximum_associations = 64
        ae.network_timeout = 600  # gateways keep pooled associations open
        ae.dimse_timeout = 30
        ae.acse_timeout = 30
        # C-MOVE sub-operations open an association of our own to the destination.
        for uid in storage:
            ae.add_requested_context(uid)
        self.ae = ae
        self.server: ThreadedAssociationServer | None = None

    def start(self, host: str, port: int) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_C_FIND, self._find),
            (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move),
            (evt.EVT_C_STORE, self._store),
        ]
        self.server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        # A PACS that goes down drops its open associations too, pooled ones included.
        for assoc in self.ae.active_associations:
            assoc.abort()

    # -- handlers (pynetdicom's threads) ---------------------------------------------------

    def _wait(self) -> None:
        delay = self.latency()
        if delay > 0:
            time.sleep(delay)

    def _echo(self, event: evt.Event) -> int:
        self._wait()
        return 0x0000

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self._wait()
        query = event.identifier
        level = str(query.get("QueryRetrieveLevel", ""))
        match = _match_of(query)
        if level == "PATIENT":
            records = _patients(
                self.index.search_studies(match_without(match, _PATIENT_KEYWORDS)), match
            )
        elif level == "STUDY":
            records = self.index.search_studies(match)
        elif level == "SERIES":
            records = self.index.search_series(match.pop("StudyInstanceUID", None), match)
        elif level == "IMAGE":
            study, series = (
                match.pop("StudyInstanceUID", None),
                match.pop("SeriesInstanceUID", None),
            )
            records = self.index.search_instances(study, series, match)
        else:
            yield 0xA900, None  # Identifier does not match SOP Class
            return
        for record in records:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, _answer(record, query)

    def _instances_for(self, query: Dataset) -> list[Instance]:
        level = str(query.get("QueryRetrieveLevel", ""))
        study_uids = _uids(query, "StudyInstanceUID")
        if level == "PATIENT":
            pid = str(query.get("PatientID", ""))
            return [
                i
                for s in self.index.studies()
                for i in s.instances()
                if first(i.header, "PatientID") == pid
            ]
        out: list[Instance] = []
        for study in study_uids:
            series = _uids(query, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else [None]
            for se in series:
                sops = _uids(query, "SOPInstanceUID") if level == "IMAGE" else [None]
                for sop in sops:
                    out.extend(self.index.instances(study, se, sop))
        return out

    def _get(self, event: evt.Event) -> Iterator[Any]:
        self._wait()
        instances = self._instances_for(event.identifier)
        yield len(instances)
        for inst in instances:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, pydicom.dcmread(inst.path)

    def _move(self, event: evt.Event) -> Iterator[Any]:
        self._wait()
        destination = self.move_destinations.get(str(event.move_destination).strip())
        if destination is None:
            yield None, None  # pynetdicom answers 0xA801, Move Destination unknown
            return
        yield destination
        instances = self._instances_for(event.identifier)
        yield len(instances)
        for inst in instances:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, pydicom.dcmread(inst.path)

    def _store(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = self.stow_dir / f"{ds.SOPInstanceUID}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            self.index.add(path, ds)
        except Exception:
            log.exception("C-STORE failed")
            return 0xC210  # Cannot understand
        return 0x0000


def _match_of(query: Dataset) -> dict[str, str]:
    match: dict[str, str] = {}
    for element in query:
        keyword = element.keyword
        if not keyword or keyword in _SKIP or element.VR == "SQ":
            continue
        value = element.value
        if value in (None, ""):
            continue
        if isinstance(value, list | tuple) or (
            hasattr(value, "__iter__") and not isinstance(value, str)
        ):
            value = "\\".join(str(v) for v in value)
        match[keyword] = str(value)
    return match


def match_without(match: dict[str, str], keep: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in match.items() if k in keep}


def _uids(query: Dataset, keyword: str) -> list[Any]:
    value = query.get(keyword)
    if value in (None, ""):
        return [None]
    return (
        [str(v) for v in value]
        if isinstance(value, list | tuple)
        or (hasattr(value, "__iter__") and not isinstance(value, str))
        else [str(value)]
    )


def _patients(studies: list[dict[str, Any]], match: Mapping[str, str]) -> list[dict[str, Any]]:
    by_patient: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for s in studies:
        pid = str(first(s, "PatientID"))
        counts[pid] = counts.get(pid, 0) + 1
        by_patient.setdefault(pid, {t: v for t, v in s.items() if t in _PATIENT_TAGS})
    out = []
    for pid, record in by_patient.items():
        record["00201200"] = {"vr": "IS", "Value": [counts[pid]]}  # NumberOfPatientRelatedStudies
        out.append(record)
    return out


def _answer(record: dict[str, Any], query: Dataset) -> Dataset:
    """The matching record, reduced to the keys the query asked for (PS3.4 C.4.1.1.3)."""
    full = Dataset.from_json(record)
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    out.QueryRetrieveLevel = query.QueryRetrieveLevel
    for element in query:
        if element.keyword in _SKIP or not element.keyword:
            continue
        if element.keyword in full:
            out[element.tag] = full[element.tag]
        else:
            out[element.tag] = element  # asked for but unknown here: return it empty/as sent
    return out


_PATIENT_TAGS = frozenset(
    f"{pydicom.datadict.tag_for_keyword(k):08X}"
    for k in _PATIENT_KEYWORDS
    if pydicom.datadict.tag_for_keyword(k)
)
_ = study_record  # re-exported for tests that build expected answers
