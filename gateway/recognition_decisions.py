"""Clinicians' decisions on recognised results: accept, or re-test with a coded reason — kept
durably with the verdict the clinician saw, and counted for the regulator.

The re-test reasons are the gateway's CodeSystem (fhir/CodeSystem-retest-reason.json): most
count against recognition; "images not received" and "serial monitoring" do not (the result
could not be used, or the re-test is the point). A decision is one row, written in one
statement: nothing is stored half.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Final, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    String,
    Table,
    and_,
    case,
    func,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from .audit import CITY_TZ, new_event_id
from .recognition import Verdict
from .storage import Store, UtcDateTime, metadata

Decision = Literal["accept", "retest"]
DECISIONS: Final = ("accept", "retest")
MAX_TEXT: Final = 1000

recognition_decision = Table(
    "recognition_decision",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("person_key", String(64), nullable=False),
    Column("decider", String(255), nullable=False),  # the token's subject
    Column("facility", String(16), nullable=False),  # the deciding (asking) facility
    Column("holder", String(16), nullable=False),  # the facility holding the result
    Column("result_type", String(32), nullable=False),
    Column("result_id", String(128), nullable=False),
    Column("item", String(64), nullable=True),  # catalogue item, when the result has one
    Column("item_kind", String(8), nullable=True),
    Column("catalogue", String(32), nullable=False),
    Column("recognised", Boolean(), nullable=False),  # the verdict the clinician saw
    Column("mark", String(8), nullable=True),
    Column("verdict_reasons", String(255), nullable=False),  # space-separated codes
    Column("decision", String(8), nullable=False),  # accept | retest
    Column("reason", String(4), nullable=True),  # retest-reason code
    Column("reason_text", String(MAX_TEXT), nullable=True),
    Column("counts_against", Boolean(), nullable=False),
    Column("request_id", String(64), nullable=True),
    Index("ix_recognition_decision_person", "person_key"),
    Index("ix_recognition_decision_recorded", "recorded_at"),
)


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    id: str
    recorded_at: datetime
    person_key: str
    decider: str
    facility: str
    holder: str
    result_type: str
    result_id: str
    item: str | None
    item_kind: str | None
    catalogue: str
    recognised: bool
    mark: str | None
    verdict_reasons: tuple[str, ...]
    decision: Decision
    reason: str | None
    reason_text: str | None
    counts_against: bool


@dataclass(frozen=True, slots=True)
class NewDecision:
    """A decision as the face has checked it: the reason is a known code, text is there when
    the code needs it, an accept carries no reason."""

    person_key: str
    decider: str
    facility: str
    holder: str
    result_type: str
    result_id: str
    verdict: Verdict
    decision: Decision
    reason: str | None
    reason_text: str | None
    counts_against: bool
    request_id: str | None = None


async def record(store: Store, d: NewDecision) -> RecordedDecision:
    now = datetime.now(CITY_TZ)
    v = d.verdict
    row: dict[str, Any] = {
        "id": new_event_id(),
        "recorded_at": now,
        "person_key": d.person_key,
        "decider": d.decider,
        "facility": d.facility,
        "holder": d.holder,
        "result_type": d.result_type,
        "result_id": d.result_id,
        "item": v.item.id if v.item else None,
        "item_kind": v.item.kind if v.item else None,
        "catalogue": v.catalogue,
        "recognised": v.recognised,
        "mark": v.mark,
        "verdict_reasons": " ".join(v.reasons),
        "decision": d.decision,
        "reason": d.reason,
        "reason_text": d.reason_text,
        "counts_against": d.counts_against,
        "request_id": d.request_id,
    }
    async with store.engine.begin() as conn:
        await conn.execute(recognition_decision.insert().values(**row))
    return _decision(row)


async def decision_by_id(store: Store, decision_id: str) -> RecordedDecision | None:
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                select(recognition_decision).where(recognition_decision.c.id == decision_id)
            )
        ).first()
    return _decision(row._mapping) if row is not None else None


async def decisions_for(
    store: Store, person_key: str, *, decision: str | None = None, limit: int = 100
) -> list[RecordedDecision]:
    """A patient's decisions, newest first."""
    t = recognition_decision
    query = select(t).where(t.c.person_key == person_key)
    if decision is not None:
        query = query.where(t.c.decision == decision)
    query = query.order_by(t.c.recorded_at.desc(), t.c.id.desc()).limit(limit)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_decision(r._mapping) for r in rows]


def _decision(row: Mapping[Any, Any]) -> RecordedDecision:
    return RecordedDecision(
        id=row["id"],
        recorded_at=row["recorded_at"],
        person_key=row["person_key"],
        decider=row["decider"],
        facility=row["facility"],
        holder=row["holder"],
        result_type=row["result_type"],
        result_id=row["result_id"],
        item=row["item"],
        item_kind=row["item_kind"],
        catalogue=row["catalogue"],
        recognised=bool(row["recognised"]),
        mark=row["mark"],
        verdict_reasons=tuple(row["verdict_reasons"].split()),
        decision=row["decision"],
        reason=row["reason"],
        reason_text=row["reason_text"],
        counts_against=bool(row["counts_against"]),
    )


# -- statistics for the regulator -------------------------------------------------------------

GROUPINGS: Final = {"holder", "facility", "item"}


async def statistics(
    store: Store,
    *,
    since: date | None = None,
    until: date | None = None,
    facility: str | None = None,
    limit: int = 200,
) -> dict[str, Any]:
    """Recognition over the decisions recorded from ``since`` to ``until`` (city days,
    inclusive), optionally those touching one facility (deciding or holding).

    - recognition rate: of decisions on results the verdict recognised, the share accepted,
      leaving out re-tests whose reason does not count against recognition;
    - re-tests by reason; re-tests avoided: accepted recognised results.
    """
    t = recognition_decision
    where = _window(since, until)
    if facility is not None:
        where = and_(where, (t.c.facility == facility) | (t.c.holder == facility))
    accepted = func.sum(case((t.c.decision == "accept", 1), else_=0))
    counted = func.sum(case((and_(t.c.decision == "retest", t.c.counts_against), 1), else_=0))
    not_counted = func.sum(
        case((and_(t.c.decision == "retest", t.c.counts_against.is_(False)), 1), else_=0)
    )
    measures = (
        func.count().label("decisions"),
        accepted.label("accepted"),
        counted.label("retests_counted"),
        not_counted.label("retests_not_counted"),
    )
    out: dict[str, Any] = {}
    async with store.engine.connect() as conn:
        totals = (await conn.execute(select(*measures).where(where))).one()._mapping
        recognised_where = and_(where, t.c.recognised.is_(True))
        rec = (await conn.execute(select(*measures).where(recognised_where))).one()._mapping
        out["total"] = {
            "decisions": int(totals["decisions"] or 0),
            "on_recognised_results": _measures(rec),
            "retests_avoided": int(rec["accepted"] or 0),
        }
        for name, column in (("by_holder", t.c.holder), ("by_facility", t.c.facility)):
            rows = await conn.execute(
                select(column.label("key"), *measures)
                .where(recognised_where)
                .group_by(column)
                .order_by(func.count().desc(), column)
                .limit(limit)
            )
            out[name] = [{"facility": r.key, **_measures(r._mapping)} for r in rows]
        rows = await conn.execute(
            select(t.c.item.label("key"), t.c.item_kind, *measures)
            .where(and_(recognised_where, t.c.item.is_not(None)))
            .group_by(t.c.item, t.c.item_kind)
            .order_by(func.count().desc(), t.c.item)
            .limit(limit)
        )
        out["by_item"] = [
            {"item": r.key, "kind": r.item_kind, **_measures(r._mapping)} for r in rows
        ]
        rows = await conn.execute(
            select(t.c.reason, t.c.counts_against, func.count().label("n"))
            .where(and_(where, t.c.decision == "retest"))
            .group_by(t.c.reason, t.c.counts_against)
            .order_by(t.c.reason)
        )
        out["retests_by_reason"] = [
            {"reason": r.reason, "counts_against_recognition": bool(r.counts_against), "n": r.n}
            for r in rows
        ]
    return out


def _measures(row: Mapping[Any, Any]) -> dict[str, Any]:
    accepted = int(row["accepted"] or 0)
    counted = int(row["retests_counted"] or 0)
    return {
        "decisions": int(row["decisions"] or 0),
        "accepted": accepted,
        "retests_counted": counted,
        "retests_not_counted": int(row["retests_not_counted"] or 0),
        "recognition_rate": round(accepted / (accepted + counted), 4)
        if accepted + counted
        else None,
    }


def _window(since: date | None, until: date | None) -> ColumnElement[bool]:
    t = recognition_decision
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(t.c.recorded_at >= datetime.combine(since, time(), CITY_TZ))
    if until is not None:
        end = datetime.combine(until + timedelta(days=1), time(), CITY_TZ)
        conditions.append(t.c.recorded_at < end)
    return and_(True, *conditions)
