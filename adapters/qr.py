"""Query/Retrieve on the acceptor side: reading a request's identifier, matching keys, and
the answers' shape (PS3.4 Annex C). Shared by every SCP Huren runs: the gateway's own and the
simulated facilities'."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext

from .dicom_match import first
from .dimse_codec import Message
from .dul import Association, Link, supported_contexts
from .errors import UpstreamError
from .part10 import dataset_bytes
from .types import StoredInstance, Target

log = logging.getLogger(__name__)

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
        if element.tag.is_private:
            answer = _private_answer(element, full, query)
            if answer is not None:
                out[element.tag] = answer
            continue
        if not element.keyword or element.keyword in SKIP:
            continue
        out[element.tag] = full[element.tag] if element.tag in full else element
    return out


def _private_answer(element: DataElement, full: Dataset, query: Dataset) -> DataElement | None:
    """A private key's answer. A private tag means nothing without its block's creator, and
    a query may reserve a block number the record uses for another creator (PS3.5 7.8.1): a
    data element is answered from the record only when both name the same creator there,
    else with no value. The creator itself is echoed: it is how the caller reads the block.
    Tags outside creators and blocks (group lengths, (gggg,0001-000F)) are not keys."""
    tag = element.tag
    if tag.is_private_creator:
        return element
    if tag.element < 0x1000:
        return None
    creator = Tag(tag.group, tag.element >> 8)
    asked = private_text(query.get(creator))
    if asked is not None and asked == private_text(full.get(creator)) and tag in full:
        found: DataElement = full[tag]
        return found
    return DataElement(tag, element.VR, None)


def private_text(element: DataElement | None) -> str | None:
    """A private creator's value, however it came: LO text, or the raw bytes of an element
    read as UN (an explicit VR peer that did not say LO)."""
    if element is None or element.value is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip(" \x00") or None


PATIENT_TAGS = frozenset(f"{pydicom.datadict.tag_for_keyword(k):08X}" for k in PATIENT_KEYWORDS)


def qr_scp_contexts() -> list[PresentationContext]:
    """What a Q/R SCP accepts: Verification, FIND/GET/MOVE in both roots, and storage (with
    role selection, so a C-GET requestor can take the C-STOREs back)."""
    return [
        *supported_contexts([VERIFICATION, *QR_FIND, *QR_GET, *QR_MOVE]),
        *supported_contexts(STORAGE_CLASSES, scp_role=True),
    ]


def level_target(query: Dataset) -> Target | None:
    """The Target of a C-GET/C-MOVE identifier at STUDY, SERIES or IMAGE level (one UID each)."""
    level = str(query.get("QueryRetrieveLevel", ""))
    study = query.get("StudyInstanceUID")
    if not study or level not in ("STUDY", "SERIES", "IMAGE"):
        return None
    series = str(query.get("SeriesInstanceUID") or "") or None if level != "STUDY" else None
    sop = str(query.get("SOPInstanceUID") or "") or None if level == "IMAGE" else None
    return Target(str(study), series, sop)


async def send_suboperations(
    link: Link,
    request: Message,
    response_field: int,
    instances: AsyncIterator[StoredInstance],
    *,
    ae_title: str,
    destination: tuple[str, int] | None,
    classes: Sequence[str],
) -> None:
    """C-GET (C-STOREs back on this association) or C-MOVE (on a new one to the destination),
    then the final response with the sub-operation counts (PS3.4 C.4.2.3, C.4.3.3)."""
    store_link: Link = link
    mover: Association | None = None
    done = failed = 0
    try:
        if destination is not None:
            mover = await Association.open(
                destination[0],
                destination[1],
                calling_ae=ae_title,
                called_ae=str(request["MoveDestination"]).strip(),
                abstract_syntaxes=sorted(set(classes)) or [VERIFICATION],
            )
            store_link = mover
        originator = None if mover is None else (ae_title, int(request["MessageID"]))
        n = 0
        async for inst in instances:
            n += 1
            ok = await send_instance(store_link, inst, n, originator)
            done, failed = done + ok, failed + (not ok)
    except UpstreamError as exc:
        log.info("retrieve sub-operations stopped: %s", exc)
        failed += 1
    finally:
        if mover is not None:
            await mover.release()
    status = 0x0000 if failed == 0 else SUBOPS_FAILED if done else UNABLE_TO_PROCESS
    rsp = response(request, response_field, status)
    rsp.update(
        NumberOfCompletedSuboperations=done,
        NumberOfFailedSuboperations=failed,
        NumberOfWarningSuboperations=0,
    )
    await link.send(request.context_id, rsp)


async def send_instance(
    link: Link, inst: StoredInstance, message_id: int, originator: tuple[str, int] | None
) -> bool:
    """One C-STORE sub-operation; the data set is sent as stored when the peer accepted that
    transfer syntax, else re-encoded between the uncompressed ones; else it fails."""
    offered = [
        (cid, str(cx.transfer_syntax[0]))
        for cid, cx in link.contexts.items()
        if str(cx.abstract_syntax) == inst.sop_class
    ]
    exact = next((cid for cid, ts in offered if ts == inst.transfer_syntax), None)
    if exact is not None:
        data, context_id = dataset_bytes(inst.data), exact
    else:
        native = [
            (cid, ts) for cid, ts in offered if ts in NATIVE and inst.transfer_syntax in NATIVE
        ]
        if not native:
            return False
        context_id, ts = native[0]
        data = await asyncio.to_thread(_reencode, inst.data, ts)
    status = await link.c_store(
        context_id, inst.sop_class, inst.sop_instance, data, message_id, move_originator=originator
    )
    return status == 0x0000 or 0xB000 <= status <= 0xBFFF


def _reencode(part10_file: bytes, transfer_syntax: str) -> bytes:
    ds = pydicom.dcmread(BytesIO(part10_file))
    return Link.encode_dataset(ds, transfer_syntax == ImplicitVRLittleEndian)


VERIFICATION = "1.2.840.10008.1.1"
QR_FIND = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
QR_GET = ("1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3")
QR_MOVE = ("1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2")
STORAGE_CLASSES = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)
NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# C-GET/C-MOVE statuses (PS3.4 C.4.2.1.5): warning when some sub-operations failed.
SUBOPS_FAILED = 0xB000
UNABLE_TO_PROCESS = 0xC000
