"""The audit trail: every access to a patient's records, and every refusal, as a durable
record that the API can read and search but never change (DESIGN.md, Audit: nothing lost).

A request's record is written through a group commit and the answer waits for it: a response
is sent only after its record is committed. Records follow IHE BALP (Basic Audit Log Patterns)
when read as FHIR AuditEvent: who asked, for which facility and purpose, whose data, which
facilities hold it, what happened.

Cross-institution look-ups (the holder is not the asking facility) are also written as one
``audit_lookup`` row per (event, holder) in the same transaction: the look-up statistics are
counted from those rows in the fast store and can be recounted from them exactly.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Protocol

from sqlalchemy import Boolean, Column, Index, Integer, String, Table, Text, select
from sqlalchemy.sql.elements import ColumnElement

from .bulk_insert import Writer
from .group_commit import GroupCommit
from .storage import Store, UtcDateTime, dumps, metadata, patient_id_of

log = logging.getLogger(__name__)

#: The city's day: look-ups are counted by the day in China (UTC+8).
CITY_TZ: Final = timezone(timedelta(hours=8))

audit_event = Table(
    "audit_event",
    metadata,
    # Time-ordered text ids: the newest sort last, and inserts append to the index.
    Column("id", String(32), primary_key=True),
    Column("recorded", UtcDateTime(), nullable=False),
    Column("day", String(10), nullable=False),  # YYYY-MM-DD in the city's time zone
    Column("action", String(1), nullable=False),  # AuditEvent.action: C R U D E
    Column("subtype", String(32), nullable=False),  # search-type, read, retrieve, create ...
    Column("outcome", String(2), nullable=False),  # 0 success, 4 refused, 8 failed
    Column("status", Integer, nullable=False),  # the HTTP status (or DIMSE as HTTP)
    Column("agent", String(255), nullable=True),  # the user (or client) who asked
    Column("role", String(16), nullable=True),
    Column("facility", String(16), nullable=True),  # the facility the user acts for
    Column("purpose", String(32), nullable=True),
    Column("break_glass", Boolean, nullable=False),
    Column("reason", Text, nullable=True),  # the stated break-the-glass reason
    Column("patient", String(64), nullable=True),  # whose data: the person key
    Column("holders", String(255), nullable=True),  # facilities holding it, comma-separated
    Column("cross_institution", Boolean, nullable=False),
    Column("resource_type", String(32), nullable=True),
    Column("path", Text, nullable=False),
    Column("query", Text, nullable=True),
    Column("source", String(64), nullable=True),  # the client's network address
    Column("request_id", String(64), nullable=True),  # the client's X-Request-Id
    Column("detail", Text, nullable=True),  # why it was refused or failed
    Index("ix_audit_event_patient", "patient"),
    Index("ix_audit_event_facility", "facility"),
    Index("ix_audit_event_agent", "agent"),
    # No index on recorded: ids begin with the time, so a date search is an id range.
)

audit_lookup = Table(
    "audit_lookup",
    metadata,
    Column("event_id", String(32), nullable=False),
    Column("day", String(10), nullable=False),
    Column("requester", String(16), nullable=False),
    Column("holder", String(16), nullable=False),
    Index("ix_audit_lookup_day", "day"),
)

_EVENT_COLUMNS: Final = (
    "id",
    "recorded",
    "day",
    "action",
    "subtype",
    "outcome",
    "status",
    "agent",
    "role",
    "facility",
    "purpose",
    "break_glass",
    "reason",
    "patient",
    "holders",
    "cross_institution",
    "resource_type",
    "path",
    "query",
    "source",
    "request_id",
    "detail",
)
assert set(_EVENT_COLUMNS) == {c.name for c in audit_event.columns}


class Counters(Protocol):
    """Where cross-institution look-ups are counted (gateway/lookup_stats.py)."""

    async def add(self, lookups: Sequence[tuple[str, str, str]]) -> None: ...


@dataclass(slots=True)
class AuditRecord:
    """One access as the gateway saw it."""

    action: str
    subtype: str
    outcome: str
    status: int
    path: str
    user: str | None = None
    role: str | None = None
    facility: str | None = None
    purpose: str | None = None
    break_glass: bool = False
    reason: str | None = None
    patient: str | None = None
    holders: tuple[str, ...] = ()
    resource_type: str | None = None
    query: str | None = None
    source: str | None = None
    request_id: str | None = None
    detail: str | None = None
    recorded: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: new_event_id())

    @property
    def cross_holders(self) -> tuple[str, ...]:
        """Holders other than the asking facility: what makes a look-up cross-institution."""
        if self.outcome != "0" or self.facility is None:
            return ()
        return tuple(h for h in self.holders if h != self.facility)

    @property
    def day(self) -> str:
        return self.recorded.astimezone(CITY_TZ).date().isoformat()


def _id_at(when: datetime) -> str:
    """The smallest event id recorded at ``when`` or after."""
    return f"{int(when.timestamp() * 1000):012x}"


def new_event_id() -> str:
    """32 hex characters: milliseconds since the epoch, then 80 random bits (unique, not
    secret: nothing is guarded by knowing an event's id)."""
    return f"{time.time_ns() // 1_000_000:012x}{_random.getrandbits(80):020x}"


_random = random.Random(secrets.randbits(64))


class AuditTrail:
    """Writes records through a group commit; answers AuditEvent reads and searches."""

    def __init__(self, store: Store, counters: Counters | None, *, enabled: bool = True) -> None:
        self._store = store
        self._counters = counters
        self.enabled = enabled
        self._commit: GroupCommit[AuditRecord, str] = GroupCommit(self._write, max_batch=2000)
        self._writer = Writer(store.engine, dumps)

    def start(self) -> None:
        self._commit.start()

    async def stop(self) -> None:
        await self._commit.stop()
        await self._writer.close()

    async def record(self, rec: AuditRecord) -> str:
        """Write ``rec`` and return once it is durable (its event id)."""
        if not self.enabled:
            return rec.id
        return await self._commit.submit(rec)

    async def _write(self, batch: list[AuditRecord]) -> list[str]:
        events = [_event_row(r) for r in batch]
        lookups = [(r.id, r.day, r.facility or "", h) for r in batch for h in r.cross_holders]
        await self._writer.insert_all(
            [
                (audit_event, _EVENT_COLUMNS, events),
                (audit_lookup, ("event_id", "day", "requester", "holder"), lookups),
            ]
        )
        if lookups and self._counters is not None:
            try:
                await self._counters.add([(day, req, holder) for _, day, req, holder in lookups])
            except Exception:
                # The audit rows are durable; the counters can be rebuilt from them.
                log.exception("look-up counters not updated: rebuild them from the audit")
        return [r.id for r in batch]

    async def search(
        self,
        *,
        patient: str | None = None,
        user: str | None = None,
        facility: str | None = None,
        entity_facility: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Records, newest first. ``facility`` matches the asking facility or a holder;
        ``entity_facility`` a holder only; ``since`` inclusive, ``until`` exclusive."""
        c = audit_event.c
        conditions: list[ColumnElement[bool]] = []
        if patient is not None:
            conditions.append(c.patient == patient)
        if user is not None:
            conditions.append(c.agent == user)
        if facility is not None:
            conditions.append((c.facility == facility) | _holds(facility))
        if entity_facility is not None:
            conditions.append(_holds(entity_facility))
        # Ids begin with the milliseconds of `recorded`: bound them by the primary key.
        if since is not None:
            conditions.append(c.id >= _id_at(since))
        if until is not None:
            conditions.append(c.id < _id_at(until))
        if before_id is not None:
            conditions.append(c.id < before_id)
        stmt = select(audit_event).where(*conditions).order_by(c.id.desc()).limit(limit)
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def get(self, event_id: str) -> AuditRecord | None:
        stmt = select(audit_event).where(audit_event.c.id == event_id)
        async with self._store.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _record(row) if row is not None else None


def _holds(facility: str) -> ColumnElement[bool]:
    h = audit_event.c.holders
    return (
        (h == facility)
        | h.like(f"{facility},%")
        | h.like(f"%,{facility}")
        | h.like(f"%,{facility},%")
    )


def _event_row(r: AuditRecord) -> tuple[Any, ...]:
    """The record's row, in the order of ``_EVENT_COLUMNS`` (checked at import)."""
    return (
        r.id,
        r.recorded,
        r.day,
        r.action,
        r.subtype,
        r.outcome,
        r.status,
        r.user,
        r.role,
        r.facility,
        r.purpose,
        r.break_glass,
        r.reason,
        r.patient,
        ",".join(r.holders) or None,
        bool(r.cross_holders),
        r.resource_type,
        r.path,
        r.query,
        r.source,
        r.request_id,
        r.detail,
    )


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        recorded=row.recorded,
        action=row.action,
        subtype=row.subtype,
        outcome=row.outcome,
        status=row.status,
        path=row.path,
        user=row.agent,
        role=row.role,
        facility=row.facility,
        purpose=row.purpose,
        break_glass=bool(row.break_glass),
        reason=row.reason,
        patient=row.patient,
        holders=tuple(row.holders.split(",")) if row.holders else (),
        resource_type=row.resource_type,
        query=row.query,
        source=row.source,
        request_id=row.request_id,
        detail=row.detail,
    )


# -- as FHIR ----------------------------------------------------------------------------------

_EVENT_TYPE: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
_RESTFUL: Final = "http://hl7.org/fhir/restful-interaction"
_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_AGENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
_DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"


def as_fhir(r: AuditRecord) -> dict[str, Any]:
    """The record as a FHIR R4 AuditEvent (IHE BALP, basic RESTful activity)."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": r.id,
        "type": _EVENT_TYPE,
        "subtype": [{"system": _RESTFUL, "code": r.subtype}],
        "action": r.action,
        "recorded": r.recorded.astimezone(UTC).isoformat(),
        "outcome": r.outcome,
    }
    if r.detail:
        event["outcomeDesc"] = r.detail
    if r.purpose or r.break_glass:
        codes = [r.purpose] if r.purpose else []
        if r.break_glass and "BTG" not in codes:
            codes.append("BTG")
        event["purposeOfEvent"] = [
            {"coding": [{"system": _ACT_REASON, "code": code}]} for code in codes
        ]
    user: dict[str, Any] = {
        "type": {"coding": [{"system": _AGENT_TYPE, "code": "humanuser"}]},
        "who": {"identifier": {"system": "urn:huren:user", "value": r.user or "anonymous"}},
        "requestor": True,
    }
    if r.role:
        user["role"] = [{"text": r.role}]
    if r.source:
        user["network"] = {"address": r.source, "type": "2"}
    agents = [user]
    if r.facility:
        agents.append(
            {
                "type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source"}]},
                "who": {"reference": f"Organization/{r.facility}"},
                "requestor": False,
            }
        )
    event["agent"] = agents
    event["source"] = {
        "observer": {"display": "Huren gateway"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }
    entities: list[dict[str, Any]] = []
    if r.patient:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_id_of(r.patient)}"},
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for holder in r.holders:
        entities.append(
            {
                "what": {"reference": f"Organization/{holder}"},
                "type": {"system": _ENTITY_TYPE, "code": "3", "display": "Organization"},
                "description": "holds the records accessed",
            }
        )
    request: dict[str, Any] = {
        "what": {"display": r.path}
        | (
            {"identifier": {"system": "urn:huren:request-id", "value": r.request_id}}
            if r.request_id
            else {}
        ),
        "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
    }
    if r.query:
        request["role"] = {"system": _OBJECT_ROLE, "code": "24", "display": "Query"}
        request["description"] = r.query
    if r.reason:
        request["detail"] = [{"type": "break-the-glass reason", "valueString": r.reason}]
    entities.append(request)
    event["entity"] = entities
    return event
