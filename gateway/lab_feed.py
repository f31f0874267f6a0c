"""The HL7 v2 lab feed: facilities' lab systems push ORU^R01 results over MLLP.

Each message is parsed into FHIR Observations and DiagnosticReports, written with its raw text
to the durable store through the group commit, and only then acknowledged (AA). A message
sent again (same sending facility and control id) is acknowledged and not stored twice. A
message that cannot be used is kept, raw, with the reason, and answered AE or AR naming it.

A message whose processing ID (MSH-11) is ``T`` (test, as the go-live check in
`gateway.facility_check` sends) is parsed and checked like any other, then answered without
being written anywhere: AA when a registered feed sent it and it would have been filed, AR or
AE naming the reason otherwise. A test message never becomes clinical data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from adapters import mllp
from adapters.hl7v2 import Hl7Error, OruMessage, build_ack, parse_oru
from adapters.types import FhirJson

from .group_commit import GroupCommit
from .identity import NATIONAL_ID_SYSTEM
from .lab_codes import LabCodeMap
from .registry import Facility, Registry
from .storage import Demographics, Hl7Record, LabResult, Store

log = logging.getLogger(__name__)


class LabFeed:
    def __init__(self, registry: Registry, store: Store, codes: LabCodeMap) -> None:
        self._codes = codes
        # Looked up per message: a feed registered while the gateway runs is known at once.
        self._registry = registry
        self._commit: GroupCommit[Hl7Record, bool] = GroupCommit(store.record_hl7)
        self._server: asyncio.Server | None = None

    def _sender(self, sending_facility: str) -> Facility | None:
        """The live (or pending: its check sends a test message) facility of a feed."""
        facility = self._registry.by_sending_facility(sending_facility)
        return facility if facility is not None and facility.status != "disabled" else None

    async def start(self, host: str, port: int) -> None:
        self._commit.start()
        self._server = await mllp.serve(self.handle, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._commit.stop()

    async def handle(self, message: bytes) -> bytes:
        """One message in, its ACK out: AA only once what it carries is durable."""
        now = time.strftime("%Y%m%d%H%M%S")
        raw = message.decode("utf-8", errors="replace")
        test = _processing_id(message) == "T"
        try:
            oru = parse_oru(message)
            facility = self._sender(oru.sending_facility)
            if facility is None:
                raise Hl7Error(
                    "AR",
                    f"MSH-4: unknown sending facility {oru.sending_facility!r}",
                    control_id=oru.control_id,
                )
            record = _record(facility, oru, raw, self._codes)
        except Hl7Error as err:
            if test:  # answered, never kept: a test message is not the store's business
                log.info("test message refused: %s %s", err.code, err.error_code)
                return build_ack(message, err.code, err.text, now=now)
            await self._keep_rejected(message, raw, err)
            return build_ack(message, err.code, err.text, now=now)
        if test:
            log.info("test message accepted, not stored", extra={"facility": facility.id})
            return build_ack(message, "AA", "test message (MSH-11 T): not stored", now=now)
        try:
            new = await self._commit.submit(record)
        except Exception:
            log.exception("lab results could not be stored", extra={"facility": facility.id})
            return build_ack(message, "AE", "not stored: send again", now=now)
        return build_ack(message, "AA", None if new else "duplicate: already stored", now=now)

    async def _keep_rejected(self, message: bytes, raw: str, err: Hl7Error) -> None:
        sender = _msh_field(message, 4) or "unknown"
        facility = self._sender(sender)
        record = Hl7Record(
            facility_id=facility.id if facility else sender[:64],
            control_id=err.control_id,
            status="rejected",
            raw=raw,
            error=f"{err.code}: {err.text}",
        )
        try:
            await self._commit.submit(record)
        except Exception:
            log.exception("a rejected message could not be kept")


def _record(facility: Facility, oru: OruMessage, raw: str, codes: LabCodeMap) -> Hl7Record:
    national = next((v for s, v in oru.patient_identifiers if s == NATIONAL_ID_SYSTEM), None)
    local = next(
        ((s, v) for s, v in oru.patient_identifiers if s == facility.mrn_system),
        next(((s, v) for s, v in oru.patient_identifiers if s != NATIONAL_ID_SYSTEM), None),
    )
    if local is None and national is None:
        raise Hl7Error(
            "AE",
            "PID-3: no identifier the gateway can file results under",
            control_id=oru.control_id,
        )
    system, value = local or (NATIONAL_ID_SYSTEM, national or "")
    results = tuple(
        LabResult(
            facility_id=facility.id,
            patient_system=system,
            patient_value=value,
            resource_type=r["resourceType"],
            resource_id=r["id"],
            resource=r,
            person_key=national,
            code=codes.standard_code(r) or _code(r),
            effective=_when(r.get("effectiveDateTime")),
            source_message_id=oru.control_id,
        )
        # Local item codes gain their LOINC coding: the same test from two hospitals is one.
        for r in map(codes.translate, (*oru.reports, *oru.observations))
    )
    identities: tuple[tuple[str, str, str, str | None], ...] = ()
    if national is not None:
        identities = tuple(
            (national, s, v, facility.id if s != NATIONAL_ID_SYSTEM else None)
            for s, v in oru.patient_identifiers
        )
    demographics = None
    if national is not None:
        demographics = Demographics(
            person_key=national,
            names=tuple(oru.patient.get("name", ())),
            gender=oru.patient.get("gender"),
            birth_date=oru.patient.get("birthDate"),
            source=f"hl7v2:{facility.id}",
        )
    return Hl7Record(
        facility_id=facility.id,
        control_id=oru.control_id,
        status="stored",
        raw=raw,
        results=results,
        identities=identities,
        demographics=demographics,
    )


def _code(resource: FhirJson) -> str | None:
    codings = resource.get("code", {}).get("coding", [])
    return str(codings[0]["code"]) if codings and "code" in codings[0] else None


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.utcoffset() is not None else None


def _processing_id(message: bytes) -> str:
    """MSH-11's first component (P production, T test, D debugging), upper case; "" if none."""
    value = _msh_field(message, 11)
    if not value:
        return ""
    component = message[4:5].decode("latin-1") or "^"  # MSH-2's first character
    return value.split(component, 1)[0].strip().upper()


def _msh_field(message: bytes, n: int) -> str | None:
    """MSH-n of a message too broken to parse, to file it under its sender."""
    head = message.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not head.startswith(b"MSH") or len(head) < 4:
        return None
    fields = head.split(head[3:4])
    return fields[n - 1].decode("utf-8", "replace") if len(fields) >= n else None
