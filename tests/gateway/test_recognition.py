"""The mutual-recognition engine and its catalogue.

A. Properties of the engine over generated catalogues, facts and days, checked against an
   independent oracle written here from the rules as stated (not from the engine's code).
B. Examples: the shipped catalogue, LOINC check digits, facts read from FHIR and DICOM.
C. Bad catalogues are refused at load, with the entry and the problem named.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import CatalogueError
from gateway.recognition import (
    Facts,
    Reason,
    Recognition,
    Verdict,
    facts_of_fhir,
    facts_of_study,
)
from gateway.recognition_catalogue import (
    MARK,
    RULES,
    Catalogue,
    Kind,
    QualityControl,
    load_catalogue,
    loinc_check_digit_ok,
    parse_catalogue,
    qc_lapsing,
)
from gateway.registry import LEVELS, load_registry

REGISTRY = load_registry(None)
IDS = tuple(f.id for f in REGISTRY)
UNKNOWN_FACILITY = "F999"  # not in the registry (ids run F001..F111)
BY_LEVEL = {
    level: tuple(f.id for f in REGISTRY if f.level == level)
    for level in LEVELS
    if any(f.level == level for f in REGISTRY)
}
LEVELS_HELD = tuple(BY_LEVEL)

#: Valid LOINC codes (check digit verified in `test_known_loinc_check_digits`).
LOINC_CODES = ("6690-2", "718-7", "777-3", "1742-6", "2951-2", "2823-3", "14682-9", "4548-4")
#: Lab codes no generated catalogue holds (a valid LOINC code, a wrong one, not a code).
UNKNOWN_CODES = ("58410-2", "6690-3", "glucose")
#: (id, modality, body part): pairwise distinct pairs.
IMAGING = (
    ("CT-CHEST", "CT", "CHEST"),
    ("CT-HEAD", "CT", "HEAD"),
    ("MR-KNEE", "MR", "KNEE"),
    ("DX-CHEST", "DX", "CHEST"),
    ("US-ABDOMEN", "US", "ABDOMEN"),
    ("MG-BREAST", "MG", "BREAST"),
)
UNKNOWN_PARTS = (("CT", "KNEE"), ("XA", "HEART"), ("MR", "CHEST"))

BASE = date(2026, 1, 1)
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- generated worlds ---------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A catalogue as data, and the few facilities results and QC entries mostly come from
    (so that holders and quality-control entries meet often)."""

    data: dict[str, Any]
    pool: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    facts: Facts
    asker: str | None
    on: date


def _day(offset: int) -> str:
    return (BASE + timedelta(days=offset)).isoformat()


def _pick(draw: st.DrawFn, options: tuple[Any, ...] | list[Any]) -> Any:
    """One of ``options`` (drawn by index: strategies built per draw are slow to validate)."""
    return options[draw(st.integers(0, len(options) - 1))]


def _some(
    draw: st.DrawFn, options: tuple[Any, ...] | list[Any], most: int, least: int = 0
) -> list[Any]:
    """Between ``least`` and ``most`` distinct elements of ``options``, in a drawn order."""
    left = list(options)
    out = []
    for _ in range(draw(st.integers(min(least, len(left)), min(most, len(left))))):
        out.append(left.pop(draw(st.integers(0, len(left) - 1))))
    return out


def _cased(draw: st.DrawFn, text: str) -> str:
    return str(_pick(draw, (text, text.upper(), text.lower(), text.capitalize())))


def _item_id(item: dict[str, Any]) -> str:
    return str(item["code"] if item["kind"] == "lab" else item["id"])


_RULE_NAMES = tuple(sorted(RULES))
_VALIDITY = st.one_of(st.integers(1, 10), st.integers(1, 400))


def _tiers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Some (usually all) of the registry's levels, split into consecutive tiers."""
    if draw(st.integers(0, 3)):  # all of them, in a drawn order
        left = list(LEVELS)
        levels = [left.pop(draw(st.integers(0, len(left) - 1))) for _ in LEVELS]
    else:  # some levels have no tier
        levels = _some(draw, LEVELS, len(LEVELS))
    kept = len(levels)
    cuts = sorted(set(_some(draw, tuple(range(1, kept)), 3))) if kept > 1 else []
    bounds = [0, *cuts, kept]
    return [
        {"id": f"t{i}", "levels": list(levels[a:b])}
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
        if b > a
    ]


@st.composite
def worlds(draw: st.DrawFn, version: st.SearchStrategy[str] | None = None) -> World:
    scopes = [
        {"id": f"s{i}", "name_zh": f"范围{i}", "rules": _some(draw, _RULE_NAMES, 3) or ["city"]}
        for i in range(draw(st.integers(1, 3)))
    ]
    scope_ids = [s["id"] for s in scopes]
    items: list[dict[str, Any]] = []
    for code in _some(draw, LOINC_CODES, 5, least=draw(st.integers(0, 1))):
        items.append(
            {
                "kind": "lab",
                "code": code,
                "name_zh": "项目",
                "name_en": "item",
                "category": "chemistry",
                "validity_days": draw(_VALIDITY),
                "scope": _pick(draw, scope_ids),
            }
        )
    for item_id, modality, body_part in _some(draw, IMAGING, 4, least=draw(st.integers(0, 1))):
        items.append(
            {
                "kind": "imaging",
                "id": item_id,
                "modality": _cased(draw, modality),
                "body_part": _cased(draw, body_part),
                "name_zh": "检查",
                "name_en": "exam",
                "category": modality,
                "validity_days": draw(_VALIDITY),
                "scope": _pick(draw, scope_ids),
            }
        )
    if draw(st.booleans()):
        items.reverse()
    # A facility of each of a few levels, so that pairs fall in different tiers.
    pool = tuple(_pick(draw, BY_LEVEL[level]) for level in _some(draw, LEVELS_HELD, 4, 2))
    qc: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 10))):
        kind = _pick(draw, ("lab", "imaging"))
        of_kind = [_item_id(i) for i in items if i["kind"] == kind]
        covered: str | list[str] = "*"
        explicit = draw(st.booleans())
        if of_kind and explicit:
            covered = _some(draw, of_kind, len(of_kind))
        passed = draw(st.integers(-30, 400))
        qc.append(
            {
                "facility": _pick(draw, pool if draw(st.integers(0, 5)) else IDS),
                "kind": kind,
                "items": covered,
                "program": "EQA",
                "passed": _day(passed),
                "valid_until": _day(passed + draw(st.integers(0, 365))),
            }
        )
    data = {
        "version": draw(version) if version is not None else "2026.test",
        "region": "常州市",
        "published": "2026-01-01",
        "tiers": _tiers(draw),
        "scopes": scopes,
        "items": items,
        "quality_control": qc,
    }
    return World(data=data, pool=pool)


def _facility(draw: st.DrawFn, pool: tuple[str, ...]) -> str:
    branch = draw(st.integers(0, 9))
    if branch < 7:
        return str(_pick(draw, pool))
    if branch < 9:
        return str(_pick(draw, IDS))
    return UNKNOWN_FACILITY


def _case(draw: st.DrawFn, world: World) -> Case:
    """A result and a question about it: half of them anchored on a quality-control entry
    (so that recognised verdicts are common), the others drawn freely."""
    qc = world.data["quality_control"]
    if qc and draw(st.booleans()):
        anchored = _anchored_case(draw, world, _pick(draw, qc))
        if anchored is not None:
            return anchored
    return _free_case(draw, world)


def _asker(draw: st.DrawFn, world: World, holder: str) -> str | None:
    branch = draw(st.integers(0, 4))
    if branch == 0:
        return None
    return holder if branch == 1 else _facility(draw, world.pool)


def _anchored_case(draw: st.DrawFn, world: World, entry: dict[str, Any]) -> Case | None:
    """A result of an item the entry covers, at its facility, mostly inside its period and
    asked about mostly inside the item's window: each rule fails only now and then."""
    items = [
        i
        for i in world.data["items"]
        if i["kind"] == entry["kind"] and (entry["items"] == "*" or _item_id(i) in entry["items"])
    ]
    if not items:
        return None
    item = _pick(draw, items)
    passed = date.fromisoformat(entry["passed"])
    until = date.fromisoformat(entry["valid_until"])
    performed = passed + timedelta(days=draw(st.integers(-2, (until - passed).days + 2)))
    on = performed + timedelta(days=draw(st.integers(-1, item["validity_days"] + 1)))
    if item["kind"] == "lab":
        codes = (*_some(draw, UNKNOWN_CODES, 1), item["code"])
        parts: tuple[tuple[str, str], ...] = ()
    else:
        codes = ()
        parts = (
            *_some(draw, UNKNOWN_PARTS, 1),
            (_cased(draw, item["modality"]), _cased(draw, item["body_part"])),
        )
    facts = Facts(
        kind=item["kind"],
        holder=entry["facility"],
        performed=performed,
        complete=draw(st.integers(0, 9)) > 0,
        codes=codes,
        parts=parts,
        report_conclusion=draw(st.integers(0, 9)) == 0,
    )
    return Case(facts=facts, asker=_asker(draw, world, facts.holder), on=on)


def _free_case(draw: st.DrawFn, world: World) -> Case:
    items = world.data["items"]
    # Mostly the catalogue's own codes and parts, sometimes ones it does not hold.
    lab_codes = [i["code"] for i in items if i["kind"] == "lab"] * 4 + list(UNKNOWN_CODES)
    parts = [(i["modality"], i["body_part"]) for i in items if i["kind"] == "imaging"] * 4
    parts += list(UNKNOWN_PARTS)
    kind = _pick(draw, ("lab", "lab", "imaging", "imaging", None))
    holder = _facility(draw, world.pool)
    performed = None
    if draw(st.integers(0, 4)):
        performed = BASE + timedelta(days=draw(st.integers(-30, 500)))
    facts = Facts(
        kind=kind,
        holder=holder,
        performed=performed,
        complete=draw(st.integers(0, 3)) > 0,
        codes=tuple(_pick(draw, lab_codes) for _ in range(draw(st.integers(0, 3)))),
        parts=tuple(
            (_cased(draw, m), _cased(draw, b))
            for m, b in (_pick(draw, parts) for _ in range(draw(st.integers(0, 3))))
        ),
        report_conclusion=draw(st.integers(0, 7)) == 0,
    )
    if performed is not None and draw(st.booleans()):
        on = performed + timedelta(days=draw(st.integers(-3, 410)))
    else:
        on = BASE + timedelta(days=draw(st.integers(-30, 600)))
    return Case(facts=facts, asker=_asker(draw, world, holder), on=on)


@st.composite
def cases(draw: st.DrawFn, world: World, most: int = 10) -> list[Case]:
    return [_case(draw, world) for _ in range(draw(st.integers(1, most)))]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[World, list[Case]]:
    world = draw(worlds())
    return world, draw(cases(world))


def _recognition(data: dict[str, Any]) -> tuple[Catalogue, Recognition]:
    catalogue = parse_catalogue(copy.deepcopy(data), REGISTRY)
    return catalogue, Recognition(catalogue, REGISTRY)


def _verdicts(recognition: Recognition, cs: list[Case]) -> list[Verdict]:
    return [recognition.verdict(c.facts, c.asker, c.on) for c in cs]


# -- the oracle: the rules as stated, over the catalogue as data ----------------------------


def _oracle_item(data: dict[str, Any], facts: Facts) -> dict[str, Any] | None:
    """The first of the result's codes (lab) or series (imaging) that is a catalogue item."""
    if facts.report_conclusion:  # a report's conclusion is never matched to an item
        return None
    if facts.kind == "lab":
        for code in facts.codes:
            for item in data["items"]:
                if item["kind"] == "lab" and item["code"] == code:
                    return dict(item)
    if facts.kind == "imaging":
        for modality, body_part in facts.parts:
            for item in data["items"]:
                if (
                    item["kind"] == "imaging"
                    and item["modality"].upper() == modality.upper()
                    and item["body_part"].upper() == body_part.upper()
                ):
                    return dict(item)
    return None


def _qc_entries(data: dict[str, Any], holder: str, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The holder's quality-control entries that name the item (explicitly or by "*")."""
    return [
        e
        for e in data["quality_control"]
        if e["facility"] == holder
        and e["kind"] == item["kind"]
        and (e["items"] == "*" or _item_id(item) in e["items"])
    ]


def _qc_covers(entries: list[dict[str, Any]], performed: date | None) -> bool:
    return performed is not None and any(
        date.fromisoformat(e["passed"]) <= performed <= date.fromisoformat(e["valid_until"])
        for e in entries
    )


def _tier(data: dict[str, Any], facility: str) -> int | None:
    level = REGISTRY[facility].level
    found = [i for i, t in enumerate(data["tiers"]) if level in t["levels"]]
    return found[0] if found else None


def _rule_holds(data: dict[str, Any], rule: str, holder: str, asker: str) -> bool:
    if rule == "city":
        return True
    if rule == "same-alliance":
        return bool(set(REGISTRY[holder].alliances) & set(REGISTRY[asker].alliances))
    h, a = _tier(data, holder), _tier(data, asker)
    if h is None or a is None:
        return False
    return {"same-tier": h == a, "higher-tier": h < a, "lower-tier": h > a}[rule]


def _scope_covers(data: dict[str, Any], item: dict[str, Any], holder: str, asker: str) -> bool:
    if holder == asker:
        return True
    (scope,) = [s for s in data["scopes"] if s["id"] == item["scope"]]
    return any(_rule_holds(data, rule, holder, asker) for rule in scope["rules"])


def _oracle(data: dict[str, Any], case: Case) -> dict[Reason, bool | None]:
    """Each rule's Reason -> True when the rule fails, False when it holds, None when it
    cannot be judged (no item to judge it by, no date, no pair of known facilities)."""
    facts, asker, on = case.facts, case.asker, case.on
    holder_known = facts.holder in IDS
    asker_known = asker is None or asker in IDS
    item = _oracle_item(data, facts)
    out: dict[Reason, bool | None] = {
        Reason.INCOMPLETE: not facts.complete,
        Reason.REPORT_CONCLUSION: facts.report_conclusion,
        Reason.UNKNOWN_FACILITY: not (holder_known and asker_known),
        Reason.NOT_IN_CATALOGUE: None if facts.report_conclusion else item is None,
        Reason.QC_NOT_PASSED: None,
        Reason.QC_NOT_VALID: None,
        Reason.OUTSIDE_WINDOW: None,
        Reason.SCOPE: None,
    }
    if item is None:
        return out
    entries = _qc_entries(data, facts.holder, item)
    out[Reason.QC_NOT_PASSED] = not entries
    out[Reason.QC_NOT_VALID] = None if not entries else not _qc_covers(entries, facts.performed)
    if facts.performed is not None:
        last = facts.performed + timedelta(days=item["validity_days"])
        out[Reason.OUTSIDE_WINDOW] = not facts.performed <= on <= last
    if asker is not None and holder_known and asker_known:
        out[Reason.SCOPE] = not _scope_covers(data, item, facts.holder, asker)
    return out


def _oracle_mark(data: dict[str, Any], facts: Facts) -> bool:
    item = _oracle_item(data, facts)
    return (
        item is not None
        and facts.complete
        and facts.holder in IDS
        and _qc_covers(_qc_entries(data, facts.holder, item), facts.performed)
    )


# -- A. properties ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios())
def test_verdict_agrees_with_the_rules(scenario: tuple[World, list[Case]]) -> None:
    world, cs = scenario
    catalogue, recognition = _recognition(world.data)
    for case, verdict in zip(cs, _verdicts(recognition, cs), strict=True):
        rules = _oracle(world.data, case)
        failing = {reason for reason, failed in rules.items() if failed}
        context = f"{case} -> {verdict}"
        # Never recognised while a rule fails; recognised when every judged rule holds.
        assert verdict.recognised == (not failing), context
        assert set(verdict.reasons) == failing, context
        assert len(verdict.reasons) == len(set(verdict.reasons)), context
        assert (verdict.mark == MARK) == _oracle_mark(world.data, case.facts), context
        assert verdict.mark in (MARK, None)
        item = _oracle_item(world.data, case.facts)
        assert (verdict.item.id if verdict.item else None) == (_item_id(item) if item else None), (
            context
        )
        expected_until = (
            case.facts.performed + timedelta(days=item["validity_days"])
            if item is not None and case.facts.performed is not None
            else None
        )
        assert verdict.valid_until == expected_until, context
        assert (verdict.performed, verdict.asker, verdict.on) == (
            case.facts.performed,
            case.asker,
            case.on,
        )
        assert verdict.catalogue == catalogue.version


@st.composite
def _window_changes(draw: st.DrawFn) -> tuple[World, list[Case], int, int]:
    world, cs = draw(scenarios())
    items = world.data["items"]
    if not items:
        return world, cs, -1, 0
    index = draw(st.integers(0, len(items) - 1))
    old = items[index]["validity_days"]
    new = draw(st.integers(1, 420).filter(lambda d: d != old))
    return world, cs, index, new


_OTHER_FIELDS = ("recognised", "mark", "catalogue", "performed", "asker", "on")


@PROPERTY_SETTINGS
@given(_window_changes())
def test_a_window_change_moves_only_that_items_window_verdicts(
    change: tuple[World, list[Case], int, int],
) -> None:
    world, cs, index, new_days = change
    if index < 0:
        return
    changed = copy.deepcopy(world.data)
    changed["items"][index]["validity_days"] = new_days
    x = _item_id(world.data["items"][index])
    widened = new_days > world.data["items"][index]["validity_days"]
    before = _verdicts(_recognition(world.data)[1], cs)
    after = _verdicts(_recognition(changed)[1], cs)
    for case, v1, v2 in zip(cs, before, after, strict=True):
        item = _oracle_item(world.data, case.facts)
        if item is None or _item_id(item) != x:
            assert v1 == v2, case
            continue
        assert set(v1.reasons) ^ set(v2.reasons) <= {Reason.OUTSIDE_WINDOW}, (case, v1, v2)
        assert v1.mark == v2.mark
        assert v2.item is not None and v2.item.validity_days == new_days
        if widened:
            assert v2.recognised or not v1.recognised, (case, v1, v2)
            assert set(v2.reasons) <= set(v1.reasons)
        else:
            assert v1.recognised or not v2.recognised, (case, v1, v2)
            assert set(v1.reasons) <= set(v2.reasons)


@st.composite
def _qc_changes(draw: st.DrawFn) -> tuple[World, list[Case], int, str, str]:
    world, cs = draw(scenarios())
    qc = world.data["quality_control"]
    if not qc:
        return world, cs, -1, "", ""
    index = draw(st.integers(0, len(qc) - 1))
    passed = draw(st.integers(-60, 500))
    return world, cs, index, _day(passed), _day(passed + draw(st.integers(0, 400)))


@PROPERTY_SETTINGS
@given(_qc_changes())
def test_a_qc_change_moves_only_that_facilitys_verdicts(
    change: tuple[World, list[Case], int, str, str],
) -> None:
    world, cs, index, passed, until = change
    if index < 0:
        return
    changed = copy.deepcopy(world.data)
    entry = changed["quality_control"][index]
    entry["passed"], entry["valid_until"] = passed, until
    before = _verdicts(_recognition(world.data)[1], cs)
    after = _verdicts(_recognition(changed)[1], cs)
    for case, v1, v2 in zip(cs, before, after, strict=True):
        item = _oracle_item(world.data, case.facts)
        touched = (
            item is not None
            and case.facts.holder == entry["facility"]
            and item["kind"] == entry["kind"]
            and (entry["items"] == "*" or _item_id(item) in entry["items"])
        )
        if not touched:
            assert v1 == v2, case
            continue
        # The entry still exists: only whether it covers the result's day can change.
        assert set(v1.reasons) ^ set(v2.reasons) <= {Reason.QC_NOT_VALID}, (case, v1, v2)
        for field in ("catalogue", "item", "performed", "valid_until", "asker", "on"):
            assert getattr(v1, field) == getattr(v2, field)


_VERSIONS = st.text(min_size=1, max_size=20).filter(lambda s: bool(s.strip()))


@st.composite
def _versioned(draw: st.DrawFn) -> tuple[World, list[Case]]:
    world = draw(worlds(version=_VERSIONS))
    return world, draw(cases(world, most=3))


@PROPERTY_SETTINGS
@given(_versioned())
def test_every_verdict_names_its_catalogue_version(scenario: tuple[World, list[Case]]) -> None:
    world, cs = scenario
    catalogue, recognition = _recognition(world.data)
    assert catalogue.version == world.data["version"]
    assert recognition.version == catalogue.version
    for verdict in _verdicts(recognition, cs):
        assert verdict.catalogue == catalogue.version


# -- B. examples ------------------------------------------------------------------------------


# -- quality control about to end ------------------------------------------------------------


_KINDS: dict[str, Kind] = {"lab": "lab", "imaging": "imaging"}


def _qc_only(spans: list[tuple[str, str, int, int]]) -> Catalogue:
    """A catalogue of quality-control entries only: (facility, kind, first day, last day) as
    day offsets from BASE."""
    return Catalogue(
        version="t",
        region="r",
        published=BASE,
        tiers=(),
        scopes={},
        items={},
        quality_control=tuple(
            QualityControl(fid, _KINDS[kind], None, "p", BASE + timedelta(a), BASE + timedelta(b))
            for fid, kind, a, b in spans
        ),
    )


def _oracle_lapses(
    spans: list[tuple[str, str, int, int]], on: int, within: int
) -> dict[tuple[str, str], int]:
    """Day by day: a facility's kind is covered on a day when some span holds it; it is listed
    when ``on`` is covered and the unbroken run of covered days from ``on`` ends within."""
    out = {}
    for key in {(fid, kind) for fid, kind, _, _ in spans}:
        covered = {d for fid, kind, a, b in spans if (fid, kind) == key for d in range(a, b + 1)}
        if on not in covered:
            continue
        last = on
        while last + 1 in covered:
            last += 1
        if last - on < within:
            out[key] = last
    return out


_SPANS = st.lists(
    st.tuples(
        st.sampled_from(("F001", "F002", "F003")),
        st.sampled_from(("lab", "imaging")),
        st.integers(0, 60),
        st.integers(0, 30),
    ).map(lambda t: (t[0], t[1], t[2], t[2] + t[3])),
    max_size=8,
)


@PROPERTY_SETTINGS
@given(spans=_SPANS, on=st.integers(0, 90), within=st.integers(0, 60))
def test_qc_lapsing_lists_exactly_the_runs_that_end_within_the_window(
    spans: list[tuple[str, str, int, int]], on: int, within: int
) -> None:
    got = qc_lapsing(_qc_only(spans), BASE + timedelta(on), within)
    assert {(x.facility, x.kind): (x.covered_until - BASE).days for x in got} == _oracle_lapses(
        spans, on, within
    )
    assert all(x.days_left == (x.covered_until - BASE).days - on for x in got)
    assert [x.covered_until for x in got] == sorted(x.covered_until for x in got)


def test_next_years_pass_already_published_is_not_a_lapse() -> None:
    year = [("F001", "lab", 0, 364), ("F002", "lab", 0, 364), ("F002", "lab", 365, 729)]
    got = qc_lapsing(_qc_only(year), BASE + timedelta(330), 60)
    assert [(x.facility, x.days_left) for x in got] == [("F001", 34)]
    # A gap of a day between passes is a lapse: results of that day carry no mark.
    gap = [("F001", "lab", 0, 364), ("F001", "lab", 366, 729)]
    assert [x.days_left for x in qc_lapsing(_qc_only(gap), BASE + timedelta(330), 60)] == [34]


def test_the_shipped_catalogues_passes_end_with_the_year() -> None:
    """The shipped catalogue's passes run to the end of 2026: in late November every facility
    it covers is listed (F039 never passed imaging QC; F031 and F047 lapsed, so not covered)."""
    catalogue = load_catalogue(None, REGISTRY)
    got = qc_lapsing(catalogue, date(2026, 11, 25), 60)
    assert {x.covered_until for x in got} == {date(2026, 12, 31)}
    assert {x.days_left for x in got} == {36}
    imaging = {x.facility for x in got if x.kind == "imaging"}
    assert imaging and not imaging & {"F039", "F031", "F047"}
    assert {x.facility for x in got if x.kind == "lab"} == {f"F{k:03d}" for k in range(1, 28)}
    assert qc_lapsing(catalogue, date(2026, 11, 25), 30) == []


def test_the_shipped_catalogue_loads_against_the_shipped_registry() -> None:
    catalogue = load_catalogue(None, REGISTRY)
    assert catalogue.items and catalogue.quality_control and catalogue.tiers
    assert {i.kind for i in catalogue.items.values()} == {"lab", "imaging"}
    for item in catalogue.items.values():
        assert item.scope in catalogue.scopes
        assert item.validity_days >= 1
        if item.kind == "lab":
            assert loinc_check_digit_ok(item.id), item.id
        else:
            assert catalogue.imaging_item(str(item.modality), str(item.body_part)) == item
    for entry in catalogue.quality_control:
        assert REGISTRY.get(entry.facility) is not None
        assert entry.passed <= entry.valid_until
    # Every level of the registry has a tier in the shipped catalogue.
    assert {f.level for f in REGISTRY} <= set().union(*catalogue.tiers)


def test_the_shipped_catalogue_recognises_a_result_of_a_facility_that_passed_qc() -> None:
    catalogue = load_catalogue(None, REGISTRY)
    recognition = Recognition(catalogue, REGISTRY)
    entry = next(e for e in catalogue.quality_control if e.kind == "lab" and e.items is None)
    item = next(i for i in catalogue.items.values() if i.kind == "lab")
    facts = Facts(
        kind="lab", holder=entry.facility, performed=entry.passed, complete=True, codes=(item.id,)
    )
    verdict = recognition.verdict(facts, entry.facility, entry.passed)
    assert verdict.recognised and verdict.mark == MARK and verdict.reasons == ()
    assert verdict.catalogue == catalogue.version
    late = entry.passed + timedelta(days=item.validity_days + 1)
    assert recognition.verdict(facts, entry.facility, late).reasons == (Reason.OUTSIDE_WINDOW,)


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("6690-2", True),
        ("6690-3", False),
        ("718-7", True),
        ("718-6", False),
        ("777-3", True),
        ("1742-6", True),
        ("2951-2", True),
        ("2823-3", True),
        ("14682-9", True),
        ("14682-0", False),
        ("4548-4", True),
        ("58410-2", True),
        ("58410-3", False),
        ("2345-7", True),
    ],
)
def test_known_loinc_check_digits(code: str, ok: bool) -> None:
    assert loinc_check_digit_ok(code) is ok


HOLDER = "F001"


def _example_data() -> dict[str, Any]:
    item = {"name_zh": "项", "name_en": "item", "category": "c"}
    return {
        "version": "2026.ex.1",
        "region": "常州市",
        "published": "2026-01-01",
        "tiers": [
            {"levels": ["三级甲等", "三级乙等", "三级", "二级甲等"]},
            {"levels": ["二级乙等", "二级", "一级", "未定级"]},
        ],
        "scopes": [
            {"id": "city", "rules": ["city"]},
            {"id": "imaging", "rules": ["same-alliance", "same-tier", "higher-tier"]},
        ],
        "items": [
            {**item, "kind": "lab", "code": "6690-2", "validity_days": 7, "scope": "city"},
            {**item, "kind": "lab", "code": "718-7", "validity_days": 7, "scope": "city"},
            {
                **item,
                "kind": "imaging",
                "id": "CT-CHEST",
                "modality": "CT",
                "body_part": "CHEST",
                "validity_days": 90,
                "scope": "imaging",
            },
        ],
        "quality_control": [
            {
                "facility": HOLDER,
                "kind": "lab",
                "items": "*",
                "program": "EQA",
                "passed": "2026-01-15",
                "valid_until": "2026-12-31",
            },
            {
                "facility": HOLDER,
                "kind": "imaging",
                "items": ["CT-CHEST"],
                "program": "QC",
                "passed": "2026-01-01",
                "valid_until": "2026-12-31",
            },
        ],
    }


@pytest.fixture(scope="module")
def example() -> Recognition:
    return Recognition(parse_catalogue(_example_data(), REGISTRY), REGISTRY)


LOINC = "http://loinc.org"
ON = date(2026, 11, 21)


def _observation(**changes: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "6690-2"}]},
        "effectiveDateTime": "2026-11-20T08:00:00+08:00",
        "valueQuantity": {"value": 6.1, "unit": "10*9/L"},
    }
    obs.update(changes)
    return {k: v for k, v in obs.items() if v is not None}


def test_facts_of_a_final_observation(example: Recognition) -> None:
    facts = facts_of_fhir(_observation(), HOLDER)
    assert facts == Facts(
        kind="lab", holder=HOLDER, performed=date(2026, 11, 20), complete=True, codes=("6690-2",)
    )
    verdict = example.verdict(facts, "F002", ON)
    assert verdict.recognised and verdict.mark == MARK and verdict.reasons == ()
    assert verdict.item is not None and verdict.item.id == "6690-2"
    assert verdict.valid_until == date(2026, 11, 27)
    assert verdict.catalogue == "2026.ex.1"


def test_facts_of_a_preliminary_observation_are_incomplete(example: Recognition) -> None:
    facts = facts_of_fhir(_observation(status="preliminary"), HOLDER)
    assert facts.kind == "lab" and not facts.complete
    verdict = example.verdict(facts, "F002", ON)
    assert not verdict.recognised and verdict.mark is None
    assert verdict.reasons == (Reason.INCOMPLETE,)


def test_facts_of_an_observation_without_a_value_are_incomplete() -> None:
    facts = facts_of_fhir(_observation(valueQuantity=None), HOLDER)
    assert facts.kind == "lab" and not facts.complete
    assert facts.codes == ("6690-2",) and facts.performed == date(2026, 11, 20)


def test_facts_of_a_lab_report(example: Recognition) -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": {
            "coding": [
                {"system": "http://example.org/local", "code": "CBC"},
                {"system": LOINC, "code": "718-7"},
            ]
        },
        "effectivePeriod": {"start": "2026-11-20T07:30:00+08:00"},
        "result": [{"reference": "Observation/1"}],
    }
    facts = facts_of_fhir(report, HOLDER)
    assert facts == Facts(
        kind="lab", holder=HOLDER, performed=date(2026, 11, 20), complete=True, codes=("718-7",)
    )
    assert example.verdict(facts, HOLDER, ON).recognised
    assert not facts_of_fhir({**report, "result": []}, HOLDER).complete


def test_a_radiology_reports_conclusion_is_not_recognised(example: Recognition) -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": "24627-2", "display": "CT Chest"}]},
        "effectiveDateTime": "2026-11-20",
        "conclusion": "No abnormality.",
    }
    facts = facts_of_fhir(report, HOLDER)
    assert facts.kind == "imaging" and facts.report_conclusion and facts.complete
    for recognition in (example, Recognition(load_catalogue(None, REGISTRY), REGISTRY)):
        verdict = recognition.verdict(facts, HOLDER, ON)
        assert not verdict.recognised and verdict.mark is None and verdict.item is None
        assert Reason.REPORT_CONCLUSION in verdict.reasons


def _study(**changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "started": "2026-11-20T09:12:00+08:00",
        "series": [
            {
                "uid": "1.2.3",
                "modality": {"code": "CT"},
                "bodySite": {"code": "CHEST", "display": "Chest"},
            },
        ],
    }
    study.update(changes)
    return {k: v for k, v in study.items() if v is not None}


def test_facts_of_an_imaging_study(example: Recognition) -> None:
    facts = facts_of_fhir(_study(), HOLDER)
    assert facts == Facts(
        kind="imaging",
        holder=HOLDER,
        performed=date(2026, 11, 20),
        complete=True,
        parts=(("CT", "CHEST"),),
    )
    verdict = example.verdict(facts, HOLDER, ON)
    assert verdict.recognised and verdict.mark == MARK
    assert verdict.item is not None and verdict.item.id == "CT-CHEST"
    # Body site by display only, in lower case: still the catalogue's CT CHEST.
    by_display = _study(series=[{"modality": {"code": "ct"}, "bodySite": {"display": "chest"}}])
    assert example.verdict(facts_of_fhir(by_display, HOLDER), HOLDER, ON).recognised


def test_facts_of_an_imaging_study_without_series_take_the_parts_given(
    example: Recognition,
) -> None:
    study = _study(series=None)
    assert not facts_of_fhir(study, HOLDER).complete
    facts = facts_of_fhir(study, HOLDER, parts=[("CT", "CHEST")])
    assert facts.parts == (("CT", "CHEST"),) and facts.complete
    assert example.verdict(facts, HOLDER, ON).recognised
    # Series the resource lists win over the parts given.
    listed = facts_of_fhir(_study(), HOLDER, parts=[("MR", "KNEE")])
    assert listed.parts == (("CT", "CHEST"),)


def test_facts_of_a_dicom_study(example: Recognition) -> None:
    ds = {"00080020": {"vr": "DA", "Value": ["20261120"]}}
    facts = facts_of_study(ds, HOLDER, [("CT", "CHEST")])
    assert facts == Facts(
        kind="imaging",
        holder=HOLDER,
        performed=date(2026, 11, 20),
        complete=True,
        parts=(("CT", "CHEST"),),
    )
    assert example.verdict(facts, HOLDER, ON).recognised
    assert not facts_of_study(ds, HOLDER, []).complete
    for bad in ({}, {"00080020": {"vr": "DA"}}, {"00080020": {"vr": "DA", "Value": ["20261340"]}}):
        undated = facts_of_study(bad, HOLDER, [("CT", "CHEST")])
        assert undated.performed is None and not undated.complete


# -- C. bad catalogues ------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Set ``a.0.b`` (dotted, list indices as numbers) to value."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(section: str, index: int, field: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        del data[section][index][field]

    return mutate


def _append_copy(section: str, index: int, **changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data[section].append({**copy.deepcopy(data[section][index]), **changes})

    return mutate


BAD: list[tuple[str, Mutation, tuple[str, ...]]] = [
    ("negative validity", _set("items.0.validity_days", -3), ("items[0]", "validity_days")),
    ("zero validity", _set("items.0.validity_days", 0), ("items[0]", "validity_days")),
    ("fractional validity", _set("items.1.validity_days", 7.5), ("items[1]", "validity_days")),
    ("validity as text", _set("items.2.validity_days", "90"), ("items[2]", "validity_days")),
    ("validity as bool", _set("items.0.validity_days", True), ("items[0]", "validity_days")),
    (
        "unknown QC facility",
        _set("quality_control.0.facility", "F999"),
        ("quality_control[0]", "unknown facility", "F999"),
    ),
    ("unknown scope", _set("items.2.scope", "county"), ("items[2]", "unknown scope", "county")),
    (
        "unknown rule",
        _set("scopes.1.rules", ["same-tier", "same-district"]),
        ("scopes[1]", "unknown rule", "same-district"),
    ),
    ("empty rules", _set("scopes.0.rules", []), ("scopes[0]", "at least one rule")),
    ("duplicate scope", _append_copy("scopes", 0), ("scopes[2]", "twice")),
    ("unknown item field", _set("items.0.colour", "red"), ("items[0]", "unknown field", "colour")),
    ("unknown top field", _set("editor", "x"), ("catalogue", "unknown field", "editor")),
    (
        "unknown QC field",
        _set("quality_control.1.score", 98),
        ("quality_control[1]", "unknown field", "score"),
    ),
    ("missing item field", _delete("items", 1, "name_en"), ("items[1]", "missing", "name_en")),
    (
        "missing QC field",
        _delete("quality_control", 0, "passed"),
        ("quality_control[0]", "missing", "passed"),
    ),
    ("missing top field", lambda d: d.pop("tiers"), ("catalogue", "missing", "tiers")),
    ("duplicate lab item", _append_copy("items", 0), ("items[3]", "6690-2", "twice")),
    (
        "duplicate imaging pair",
        _append_copy("items", 2, id="CT-THORAX"),
        ("items[3]", "CT CHEST", "twice"),
    ),
    ("wrong check digit", _set("items.1.code", "718-6"), ("items[1]", "718-6", "check digit")),
    ("not a LOINC code", _set("items.1.code", "HGB"), ("items[1]", "HGB", "LOINC")),
    (
        "valid_until before passed",
        _set("quality_control.0.valid_until", "2026-01-14"),
        ("quality_control[0]", "before passed"),
    ),
    (
        "QC of an unknown item",
        _set("quality_control.1.items", ["MR-KNEE"]),
        ("quality_control[1]", "MR-KNEE", "no imaging item"),
    ),
    (
        "QC of an item of the other kind",
        _set("quality_control.1.items", ["6690-2"]),
        ("quality_control[1]", "6690-2", "no imaging item"),
    ),
    (
        "unknown level",
        _set("tiers.0.levels", ["三级甲等", "四级"]),
        ("tiers[0]", "unknown facility level", "四级"),
    ),
    (
        "level in two tiers",
        _set("tiers.1.levels", ["二级乙等", "二级甲等"]),
        ("tiers[1]", "二级甲等", "twice"),
    ),
    (
        "malformed QC date",
        _set("quality_control.0.passed", "2026-13-01"),
        ("quality_control[0]", "passed", "2026-13-01", "not a date"),
    ),
    (
        "malformed published",
        _set("published", "2026/01/01"),
        ("catalogue", "published", "not a date"),
    ),
    ("item not an object", _set("items.1", "718-7"), ("items[1]", "must be an object")),
    ("unknown kind", _set("items.0.kind", "pathology"), ("items[0]", "kind", "pathology")),
]


def test_the_example_catalogue_is_valid() -> None:
    catalogue = parse_catalogue(_example_data(), REGISTRY)
    assert len(catalogue.items) == 3 and len(catalogue.quality_control) == 2


@pytest.mark.parametrize(("mutate", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_catalogue_is_refused_naming_the_entry(
    mutate: Mutation, expected: tuple[str, ...]
) -> None:
    data = _example_data()
    mutate(data)
    with pytest.raises(CatalogueError) as refused:
        parse_catalogue(data, REGISTRY)
    message = str(refused.value)
    for part in expected:
        assert part in message, (part, message)
    assert message.startswith(expected[0]), message


@pytest.mark.parametrize("text", ["{not json", "", "\x00\x01"])
def test_load_catalogue_refuses_a_file_that_is_not_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "recognition.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError, match="cannot read the recognition catalogue"):
        load_catalogue(path, REGISTRY)


def test_load_catalogue_refuses_a_missing_file_and_reads_a_good_one(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "absent.json", REGISTRY)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_example_data(), ensure_ascii=False), encoding="utf-8")
    assert load_catalogue(good, REGISTRY) == parse_catalogue(_example_data(), REGISTRY)
    with pytest.raises(CatalogueError, match="catalogue: must be an object"):
        parse_catalogue([], REGISTRY)


def test_an_example_with_tiers_and_alliances(example: Recognition) -> None:
    """Imaging scope (alliance, same tier, lower recognises higher) between real facilities."""
    upper = {"三级甲等", "三级乙等", "三级", "二级甲等"}
    high = next(
        f
        for f in REGISTRY
        if f.level in upper
        and f.id != HOLDER
        and not set(f.alliances) & set(REGISTRY[HOLDER].alliances)
    )
    low = next(
        f
        for f in REGISTRY
        if f.level not in upper and not set(f.alliances) & set(REGISTRY[HOLDER].alliances)
    )
    facts = Facts(
        kind="imaging",
        holder=HOLDER,
        performed=date(2026, 11, 20),
        complete=True,
        parts=(("CT", "CHEST"),),
    )
    assert REGISTRY[HOLDER].level in upper
    assert example.verdict(facts, high.id, ON).recognised  # same tier
    assert example.verdict(facts, low.id, ON).recognised  # a lower tier recognises a higher
    low_facts = replace(facts, holder=low.id)
    verdict = example.verdict(low_facts, HOLDER, ON)  # no QC at `low` either
    assert Reason.SCOPE in verdict.reasons and Reason.QC_NOT_PASSED in verdict.reasons


# -- odd dates --------------------------------------------------------------------------------


def test_a_result_dated_near_the_end_of_time_gets_a_verdict(example: Recognition) -> None:
    """Placeholder dates like 9999-12-31 occur in upstream data: a verdict, not a crash."""
    facts = facts_of_fhir(_observation(effectiveDateTime="9999-12-30T08:00:00+08:00"), HOLDER)
    verdict = example.verdict(facts, HOLDER, ON)
    assert not verdict.recognised and Reason.OUTSIDE_WINDOW in verdict.reasons


def test_an_imaging_study_without_a_full_start_date_is_incomplete() -> None:
    facts = facts_of_fhir(_study(started="2026-11"), HOLDER)
    assert facts.performed is None
    assert not facts.complete
