"""Clinicians' decisions and the regulator's recognition statistics, on SQLite and on a real
PostgreSQL (the statistics are SQL aggregates: both back ends must count alike)."""

from __future__ import annotations

from datetime import date, timedelta

from gateway.recognition import Facts, Recognition, Verdict, city_today
from gateway.recognition_catalogue import load_catalogue
from gateway.recognition_decisions import (
    NewDecision,
    decision_by_id,
    decisions_for,
    record,
    statistics,
)
from gateway.registry import load_registry
from gateway.storage import Store

REGISTRY = load_registry(None)
ENGINE = Recognition(load_catalogue(None, REGISTRY), REGISTRY)
PERSON = "320412200011169134"
OTHER = "320411197709309513"


def _verdict(
    holder: str, code: str | None = None, parts: tuple[tuple[str, str], ...] = ()
) -> Verdict:
    today = city_today()
    # Quality control of the shipped catalogue may have ended: judge on a day it covered.
    day = min(today, date(2026, 6, 1))
    facts = Facts(
        kind="lab" if code else "imaging",
        holder=holder,
        performed=day,
        complete=True,
        codes=(code,) if code else (),
        parts=parts,
    )
    return ENGINE.verdict(facts, "F003", day + timedelta(days=1))


def _decision(
    person: str,
    holder: str,
    verdict: Verdict,
    decision: str,
    reason: str | None = None,
    counts: bool = False,
    facility: str = "F003",
) -> NewDecision:
    return NewDecision(
        person_key=person,
        decider="dr-test",
        facility=facility,
        holder=holder,
        result_type="Observation",
        result_id=f"{holder}-{decision}-{reason}",
        verdict=verdict,
        decision=decision,  # type: ignore[arg-type]
        reason=reason,
        reason_text=None,
        counts_against=counts,
    )


async def test_decisions_are_kept_and_counted(store: Store) -> None:
    cbc = _verdict("F001", "58410-2")
    ct = _verdict("F012", parts=(("CT", "CHEST"),))
    unknown = _verdict("F001", "12345-6")  # not in the catalogue: not recognised
    assert cbc.recognised and ct.recognised and not unknown.recognised
    first = await record(store, _decision(PERSON, "F001", cbc, "accept"))
    await record(store, _decision(PERSON, "F012", ct, "retest", "04", counts=True))
    await record(store, _decision(PERSON, "F001", cbc, "retest", "98", counts=False))
    await record(store, _decision(OTHER, "F001", unknown, "retest", "07", counts=True))
    await record(store, _decision(OTHER, "F001", cbc, "accept", facility="F050"))

    kept = await decision_by_id(store, first.id)
    assert kept is not None and kept.item == "58410-2" and kept.mark == "HR"
    assert kept.catalogue == ENGINE.version and kept.recognised
    assert await decision_by_id(store, "0" * 32) is None
    mine = await decisions_for(store, PERSON)
    assert len(mine) == 3 and mine[0].recorded_at >= mine[-1].recorded_at
    assert [d.decision for d in await decisions_for(store, PERSON, decision="accept")] == ["accept"]

    stats = await statistics(store)
    total = stats["total"]
    assert total["decisions"] == 5
    on_recognised = total["on_recognised_results"]
    # 3 accepted or counted re-tests on recognised results: 2 accepts, 1 re-test for an
    # emergency; the re-test because images were not received does not count.
    assert on_recognised == {
        "decisions": 4,
        "accepted": 2,
        "retests_counted": 1,
        "retests_not_counted": 1,
        "recognition_rate": round(2 / 3, 4),
    }
    assert total["retests_avoided"] == 2
    by_holder = {r["facility"]: r for r in stats["by_holder"]}
    assert by_holder["F001"]["recognition_rate"] == 1.0
    assert by_holder["F012"]["recognition_rate"] == 0.0
    by_item = {r["item"]: r for r in stats["by_item"]}
    assert by_item["CT-CHEST"]["kind"] == "imaging" and by_item["58410-2"]["accepted"] == 2
    reasons = {r["reason"]: r for r in stats["retests_by_reason"]}
    assert reasons["04"]["n"] == 1 and reasons["04"]["counts_against_recognition"]
    assert not reasons["98"]["counts_against_recognition"]
    assert reasons["07"]["n"] == 1  # re-tests of unrecognised results are listed too

    one = await statistics(store, facility="F050")
    assert one["total"]["decisions"] == 1
    later = await statistics(store, since=city_today() + timedelta(days=1))
    assert later["total"]["decisions"] == 0 and later["by_holder"] == []
    today = await statistics(store, since=city_today(), until=city_today())
    assert today["total"]["decisions"] == 5
