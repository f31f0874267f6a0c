"""Query/Retrieve on the acceptor side: reading a request's identifier, matching keys, and
the answers' shape (PS3.4 Annex C). Shared by every SCP Huren runs: the gateway's own and the
simulated facilities'."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode

from .dicom_match import first
from .dimse_codec import Message

PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
#: Keys of an identifier that are not matching keys.
SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def response(request: Message, command_field: int, status: int) -> dict[str, int | str]:
    return {
        "CommandField": command_field,
        "AffectedSOPClassUID": request.get("AffectedSOPClassUID", ""),
        "MessageIDBeingRespondedTo": request.get("MessageID", 0),
        "Status": status,
    }


def read_identifier(data: bytes | None, implicit: bool) -> Dataset:
    if not data:
        return Dataset()
    ds: Dataset = decode(BytesIO(data), implicit, True)
    return ds


def match_of(query: Dataset) -> dict[str, str]:
    match: dict[str, str] = {}
    for element in query:
        keyword = element.keyword
        if not keyword or keyword in SKIP or element.VR == "SQ" or element.value in (None, ""):
            continue
        value = element.value
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            value = "\\".join(str(v) for v in value)
        match[keyword] = str(value)
    return match


def uids(query: Dataset, keyword: str) -> list[str | None]:
    value = query.get(keyword)
    if value in (None, ""):
        return [None]
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def patients(studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_patient: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for s in studies:
        pid = str(first(s, "PatientID"))
        counts[pid] = counts.get(pid, 0) + 1
        by_patient.setdefault(pid, {t: v for t, v in s.items() if t in PATIENT_TAGS})
    for pid, record in by_patient.items():
        record["00201200"] = {"vr": "IS", "Value": [counts[pid]]}  # NumberOfPatientRelatedStudies
    return list(by_patient.values())


def answer_for(record: dict[str, Any], query: Dataset) -> Dataset:
    """The matching record, reduced to the keys the query asked for (PS3.4 C.4.1.1.3)."""
    full = Dataset.from_json(record)
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    out.QueryRetrieveLevel = query.QueryRetrieveLevel
    for element in query:
        if not element.keyword or element.keyword in SKIP:
            continue
        out[element.tag] = full[element.tag] if element.tag in full else element
    return out


PATIENT_TAGS = frozenset(f"{pydicom.datadict.tag_for_keyword(k):08X}" for k in PATIENT_KEYWORDS)
