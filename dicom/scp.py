"""The gateway's DIMSE SCP (AE HUREN, port 11112): C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE,
each mapped onto the same core as the DICOMweb face (PS3.4 Annexes A, B, C).

- C-FIND at STUDY level (either root) is a federated search across the city; PATIENT level
  groups those matches by patient; SERIES and IMAGE levels ask the study's holder.
- A STUDY-level C-FIND that reserves the HUREN private block in group 0011 and asks for its
  elements gets them as QIDO-RS gives them: the holding facility, and the recognition verdict
  (互认) for the caller's facility when the query names a patient (dicom/verdict_elements.py).
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

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from adapters import dimse_codec as codec
from adapters.dimse import RETRIEVABLE_STORAGE
from adapters.dimse_codec import Message
from adapters.dul import REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_NO_REASON, Link
from adapters.errors import UpstreamError
from adapters.part10 import identify, part10
from adapters.qr import (
    PATIENT_KEYWORDS,
    UNABLE_TO_PROCESS,
    answer_for,
    level_target,
    match_of,
    patients,
    private_text,
    read_identifier,
    response,
    send_suboperations,
)
from adapters.scp import QrScp
from adapters.types import DimseEndpoint, RetrievedInstance, StoredInstance
from gateway.access import Access
from gateway.core import Core
from gateway.errors import Forbidden, GatewayError
from gateway.identity import resolve_person
from gateway.tokens import Principal, TokenError

from .verdict_elements import (
    CREATOR_TAG,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    VERDICT_TAGS,
    asker_of,
    holder_elements,
    judge_studies,
)

log = logging.getLogger(__name__)

IDENTIFIER_MISMATCH = 0xA900
NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 C.4)
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


class GatewayScp(QrScp):
    def __init__(
        self, core: Core, *, move_destinations: Mapping[str, tuple[str, int]] | None = None
    ) -> None:
        super().__init__(move_destinations or {})
        self.core = core
        self.ae_title = core.settings.ae_title
        self._trusted = {
            t.strip() for t in core.settings.trusted_calling_aes.split(",") if t.strip()
        }
        self._pacs_titles = {
            f.imaging.ae_title: f.id for f in core.registry if isinstance(f.imaging, DimseEndpoint)
        }

    # -- who is calling ------------------------------------------------------------------------

    async def authorize(
        self, link: Link, calling: str, called: str, token: bytes | None
    ) -> int | None:
        """The same rules as over HTTP: a bearer JWT sent by user identity negotiation, or
        else a workstation (or PACS) AE title registered for a facility, which then acts as
        that facility's clinician. Anyone else is refused at the door (and audited)."""
        if called != self.ae_title and self.core.registry.get(called) is None:
            await self._refused(calling, "called AE title is neither HUREN nor a facility")
            return REJECT_CALLED_AE
        if token is not None:
            try:
                link.user = self.core.tokens.verify(token.decode("ascii", "replace"))
            except TokenError as exc:
                await self._refused(calling, f"user identity: {exc.description}")
                return REJECT_NO_REASON
            return None
        if calling in self._trusted:
            link.user = Principal(
                subject=f"ae:{calling}",
                role="service",
                facility_id=None,
                scopes=frozenset({"system/*.rs", "system/ImagingStudy.c"}),
            )
            return None
        facility = self.core.registry.by_workstation(calling)
        fid = facility.id if facility is not None else self._pacs_titles.get(calling)
        if fid is None:
            await self._refused(calling, "calling AE title is not registered for a facility")
            return REJECT_CALLING_AE
        link.user = Principal(
            subject=f"ae:{calling}",
            role="clinician",
            facility_id=fid,
            scopes=frozenset({"user/*.rs", "user/ImagingStudy.c"}),
            purpose_of_use="TREAT",
        )
        return None

    async def _refused(self, calling: str, why: str) -> None:
        access = Access(path=f"dimse:associate:{calling[:16]}", action="E", subtype="operation")
        access.detail = why
        await self.core.audit.record(access.record(401))

    def _access(self, link: Link, operation: str, action: str, subtype: str) -> Access:
        user = link.user
        return Access(
            path=f"dimse:{operation}",
            action=action,
            subtype=subtype,
            principal=user if isinstance(user, Principal) else None,
        )

    async def _audited(self, access: Access, status: int) -> None:
        """The request's audit record, durable before its answer is sent."""
        access.audited = True
        await self.core.audit.record(access.record(status))

    # -- C-FIND ------------------------------------------------------------------------------

    async def on_find(self, link: Link, request: Message) -> None:
        cx = request.context_id
        implicit = link.is_implicit(cx)
        query = read_identifier(request.dataset, implicit)
        access = self._access(link, "C-FIND", "E", "search-type")
        try:
            records = await self._query(query, access)
        except Forbidden as exc:
            access.detail = exc.detail
            await self._audited(access, 403)
            rsp = response(request, codec.C_FIND_RSP, NOT_AUTHORIZED)
            rsp["ErrorComment"] = _comment(exc)
            await link.send(cx, rsp)
            return
        except (GatewayError, UpstreamError, TimeoutError) as exc:
            access.detail = _comment(exc)
            await self._audited(access, 502)
            rsp = response(request, codec.C_FIND_RSP, UNABLE_TO_PROCESS)
            rsp["ErrorComment"] = _comment(exc)
            await link.send(cx, rsp)
            return
        if records is None:
            await self._audited(access, 400)
            await link.send(cx, response(request, codec.C_FIND_RSP, IDENTIFIER_MISMATCH))
            return
        await self._audited(access, 200)
        for record in records:
            record = {**record, "00080054": {"vr": "AE", "Value": [self.ae_title]}}
            answer = link.encode_dataset(answer_for(record, query), implicit)
            await link.send(cx, response(request, codec.C_FIND_RSP, 0xFF00), answer)
        await link.send(cx, response(request, codec.C_FIND_RSP, 0x0000))

    async def _query(self, query: Any, access: Access) -> list[dict[str, Any]] | None:
        level = str(query.get("QueryRetrieveLevel", ""))
        match = match_of(query)
        imaging = self.core.imaging
        policy = self.core.policy
        if level in ("PATIENT", "STUDY"):
            if level == "PATIENT":
                match = {k: v for k, v in match.items() if k in PATIENT_KEYWORDS}
            person = await self._named_patient(match)
            if person is not None:
                await policy.patient(access, person, "ImagingStudy", "s")
            else:
                policy.require_scope(access, "ImagingStudy", "s")
            result = await imaging.search_studies(match)
            if result.failures:
                log.info("C-FIND answered without %d facilities", len(result.failures))
            if person is None:  # anyone's studies: each shown only to who may see it
                result.items = [
                    (fid, ds)
                    for fid, ds in result.items
                    if await policy.may_read(access, await imaging.person_of(fid, ds), fid)
                ]
            access.holders.update(fid for fid, _ in result.items)
            if level == "PATIENT":
                return patients([ds for _, ds in result.items])
            return await self._with_private_block(query, result.items, access, person)
        study = match.pop("StudyInstanceUID", None)
        if not study:
            return None  # below STUDY level the study must be named (PS3.4 C.4.1.2.2)
        holder = await self._authorized_holder(access, study)
        if level == "SERIES":
            _, found = await imaging.search_series(holder, study, match, None)
            return [_public(ds) for ds in found]
        if level == "IMAGE":
            series = match.pop("SeriesInstanceUID", None)
            _, found = await imaging.search_instances(holder, study, series, match, None)
            return [_public(ds) for ds in found]
        return None

    async def _with_private_block(
        self,
        query: Dataset,
        studies: list[tuple[str, dict[str, Any]]],
        access: Access,
        person: str | None,
    ) -> list[dict[str, Any]]:
        """Each study as its facility answered it, less the facility's own private elements
        (never the gateway's to pass on, and a caller's block could collide with them), plus
        the HUREN elements the query asks for: the holder, and the recognition verdict when
        the query names a patient, judged as QIDO-RS judges it (dicom/verdict_elements.py).
        A caller that asks for none gets no private elements, as before there were any."""
        reserved = _huren_block(query)
        if reserved is None:
            return [_public(ds) for _, ds in studies]
        block, asked = reserved
        verdicts: list[dict[str, Any]] = [{} for _ in studies]
        # Judging asks each study's facility for its series: only for a verdict asked for.
        if person is not None and asked & _VERDICT_OFFSETS:
            verdicts = await judge_studies(self.core, studies, asker_of(access))
        return [
            {**_public(ds), **_placed({**holder_elements(fid), **verdict}, block, asked)}
            for (fid, ds), verdict in zip(studies, verdicts, strict=True)
        ]

    async def _named_patient(self, match: Mapping[str, Any]) -> str | None:
        patient_id = str(match.get("PatientID", "") or "")
        if not patient_id or "*" in patient_id or "?" in patient_id:
            return None
        issuer = match.get("IssuerOfPatientID")
        return await resolve_person(
            self.core.store, self.core.registry, patient_id, str(issuer) if issuer else None
        )

    async def _authorized_holder(self, access: Access, study: str) -> str:
        """The study's holder, once the caller may read the study (else Forbidden)."""
        imaging = self.core.imaging
        fid = await imaging.holder(None, study)
        person = await imaging.study_patient(fid, study)
        access.holders.add(fid)
        if person is not None:
            await self.core.policy.patient(access, person, "ImagingStudy", "r", only_at=fid)
        elif not await self.core.policy.may_read(access, None, fid):
            raise Forbidden("the study's patient is not known here: only its facility reads it")
        return fid

    # -- C-GET and C-MOVE --------------------------------------------------------------------

    async def on_retrieve(
        self, link: Link, request: Message, field: int, destination: tuple[str, int] | None
    ) -> None:
        query = read_identifier(request.dataset, link.is_implicit(request.context_id))
        target = level_target(query)
        if target is None:
            await link.send(request.context_id, response(request, field, IDENTIFIER_MISMATCH))
            return
        operation = "C-GET" if destination is None else "C-MOVE"
        access = self._access(link, operation, "R", "read")
        try:
            holder = await self._authorized_holder(access, target.study)
            _, instances = await self.core.imaging.retrieve(holder, target)
        except Forbidden as exc:
            access.detail = exc.detail
            await self._audited(access, 403)
            rsp = response(request, field, NOT_AUTHORIZED)
            rsp["ErrorComment"] = _comment(exc)
            await link.send(request.context_id, rsp)
            return
        except (GatewayError, UpstreamError, TimeoutError) as exc:
            access.detail = _comment(exc)
            await self._audited(access, 502)
            rsp = response(request, field, UNABLE_TO_PROCESS)
            rsp["ErrorComment"] = _comment(exc)
            await link.send(request.context_id, rsp)
            return
        await self._audited(access, 200)
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
        if facility is None and isinstance(link.user, Principal):
            facility = link.user.facility_id  # a workstation stores into its own facility
        access = self._access(link, "C-STORE", "C", "create")
        if facility is not None:
            try:
                self.core.policy.store(access, facility)
            except Forbidden as exc:
                access.detail = exc.detail
                await self._audited(access, 403)
                rsp["Status"] = NOT_AUTHORIZED
                rsp["ErrorComment"] = _comment(exc)
                await link.send(request.context_id, rsp)
                return
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
        status = int(rsp["Status"])
        await self._audited(access, 200 if status == 0 or 0xB000 <= status <= 0xBFFF else 400)
        await link.send(request.context_id, rsp)


async def _stored(instances: AsyncIterator[RetrievedInstance]) -> AsyncIterator[StoredInstance]:
    """Retrieved instances, each read whole (a C-STORE carries one instance at a time)."""
    async for inst in instances:
        data = b"".join([chunk async for chunk in inst.chunks])
        found = await asyncio.to_thread(identify, data)
        if found is None:
            raise UpstreamError("the facility sent an instance that is not whole DICOM")
        yield found


#: Element offsets (the low byte) of the verdict in the HUREN block, as the query numbers it.
_VERDICT_OFFSETS = frozenset(int(tag[-2:], 16) for tag in VERDICT_TAGS)


def _huren_block(query: Dataset) -> tuple[int, frozenset[int]] | None:
    """The block of group 0011 the query reserved for the HUREN creator, and the element
    offsets it asks for there. The block number is the caller's choice (PS3.5 7.8.1): a
    caller with its own creators may have put HUREN at (0011,0011) and asked (0011,1103)."""
    for block in range(0x10, 0x100):
        if private_text(query.get(Tag(PRIVATE_GROUP, block))) == PRIVATE_CREATOR:
            first = Tag(PRIVATE_GROUP, block << 8)
            asked = frozenset(int(t) & 0xFF for t in query.keys() if first <= t <= first + 0xFF)
            return block, asked
    return None


def _placed(elements: dict[str, Any], block: int, asked: frozenset[int]) -> dict[str, Any]:
    """The HUREN elements (DICOM JSON, numbered in block 0x10 as QIDO-RS answers them) moved
    to the query's block: the creator, and those asked for of the rest."""
    out: dict[str, Any] = {f"{PRIVATE_GROUP:04X}{block:04X}": elements[CREATOR_TAG]}
    for tag, element in elements.items():
        offset = int(tag[-2:], 16)
        if tag != CREATOR_TAG and offset in asked:
            out[f"{PRIVATE_GROUP:04X}{block:02X}{offset:02X}"] = element
    return out


def _public(ds: dict[str, Any]) -> dict[str, Any]:
    """A facility's answer without private elements (odd groups)."""
    return {tag: element for tag, element in ds.items() if not int(tag[:4], 16) % 2}


def _comment(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None) or type(exc).__name__
    return str(detail)[:64]  # ErrorComment is LO
