"""The recognition engine: for one result held by one facility, asked about by another on a
given day, the verdict — recognised or not, the HR mark, the catalogue version, and every
reason that counts against it.

Pure and fast (no I/O; tables built once per catalogue), so every search result can carry
its verdict. A verdict is advice: the clinician decides (gateway/recognition_decisions.py).

Two things are told apart, as the national measures do:
- the **mark** (HR) belongs to the result: the item is in the catalogue, the holder passed
  quality control for it at the time, and the result is complete;
- **recognised** is for an asking facility on a day: the result has the mark, is inside the
  item's validity window on that day, and a scope of the item covers the two facilities.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

from .audit import CITY_TZ
from .lab_codes import LOINC_SYSTEM
from .recognition_catalogue import MARK, Catalogue, Item, Kind, QcLapse, qc_lapsing
from .registry import Registry

_FINAL: Final = frozenset({"final", "amended", "corrected", "appended", "available"})
_V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
_IMAGING_REPORT_CATEGORIES: Final = frozenset({"RAD", "CT", "MR", "US", "NMR", "RX", "XRC"})


class Reason(enum.StrEnum):
    """Why a result is not recognised (the CodeSystem fhir/CodeSystem-recognition-reason)."""

    NOT_IN_CATALOGUE = "not-in-catalogue"
    UNKNOWN_FACILITY = "unknown-facility"
    QC_NOT_PASSED = "qc-not-passed"
    QC_NOT_VALID = "qc-not-valid"
    OUTSIDE_WINDOW = "outside-window"
    SCOPE = "scope-not-covered"
    INCOMPLETE = "incomplete"
    REPORT_CONCLUSION = "report-conclusion"


REASON_TEXT: Final = {
    Reason.NOT_IN_CATALOGUE: "the item is not in the recognition catalogue",
    Reason.UNKNOWN_FACILITY: "the holding or asking facility is not in the registry",
    Reason.QC_NOT_PASSED: "the holding facility has not passed quality control for the item",
    Reason.QC_NOT_VALID: "the holding facility's quality control did not cover the result's date",
    Reason.OUTSIDE_WINDOW: "the result is outside the item's validity window",
    Reason.SCOPE: "no recognition scope of the item covers the two facilities",
    Reason.INCOMPLETE: "the result is not final or lacks its value, date or body part",
    Reason.REPORT_CONCLUSION: "an imaging report's conclusion is not recognised, its images are",
}


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rules look at in a result, read from whichever form it came in."""

    kind: Kind | None  # None: neither a lab result nor imaging
    holder: str  # the facility that holds (produced) the result
    performed: date | None  # when the specimen was taken / the images acquired
    complete: bool
    codes: tuple[str, ...] = ()  # LOINC codes of a lab result
    parts: tuple[tuple[str, str], ...] = ()  # (modality, body part) of each imaging series
    report_conclusion: bool = False  # an imaging report: its conclusion is not recognised


@dataclass(frozen=True, slots=True)
class Verdict:
    recognised: bool
    mark: str | None  # "HR" when the result carries the mark
    catalogue: str  # the catalogue version the verdict was made with
    item: Item | None
    reasons: tuple[Reason, ...]
    performed: date | None
    valid_until: date | None  # the last day the result counts (performed + window)
    asker: str | None
    on: date


@dataclass(frozen=True, slots=True)
class _Place:
    tier: int | None
    alliances: frozenset[str]


class Recognition:
    """Verdicts under one catalogue; a new catalogue is a new instance."""

    def __init__(self, catalogue: Catalogue, registry: Registry) -> None:
        self.catalogue = catalogue
        self._places: dict[str, _Place] = {}
        self._covers: dict[tuple[str, str, str], bool] = {}
        self.learn(registry)
        # (facility, item id or "*" + kind) -> the periods its quality control covers.
        qc: dict[tuple[str, str], list[tuple[date, date]]] = {}
        for entry in catalogue.quality_control:
            keys = ["*" + entry.kind] if entry.items is None else sorted(entry.items)
            for key in keys:
                qc.setdefault((entry.facility, key), []).append((entry.passed, entry.valid_until))
        self._qc: Mapping[tuple[str, str], tuple[tuple[date, date], ...]] = {
            k: tuple(v) for k, v in qc.items()
        }

    def learn(self, registry: Registry) -> None:
        """Where each facility stands (tier, alliances): again after a registration."""
        self._places = {
            f.id: _Place(self.catalogue.tier_of(f.level), frozenset(f.alliances)) for f in registry
        }
        self._covers = {}

    @property
    def version(self) -> str:
        return self.catalogue.version

    def lapsing(self, on: date, within_days: int) -> list[QcLapse]:
        """Facilities whose quality control covers ``on`` and ends within ``within_days``."""
        return qc_lapsing(self.catalogue, on, within_days)

    def item_for(self, facts: Facts) -> Item | None:
        if facts.kind == "lab":
            for code in facts.codes:
                item = self.catalogue.lab_item(code)
                if item is not None:
                    return item
        elif facts.kind == "imaging":
            for modality, body_part in facts.parts:
                item = self.catalogue.imaging_item(modality, body_part)
                if item is not None:
                    return item
        return None

    def verdict(self, facts: Facts, asker: str | None, on: date) -> Verdict:
        """The verdict for ``facts`` as facility ``asker`` sees it on day ``on`` (asker None:
        the result as such — mark and window — with no pair of facilities to scope)."""
        reasons: list[Reason] = []
        if not facts.complete:
            reasons.append(Reason.INCOMPLETE)
        if facts.report_conclusion:
            reasons.append(Reason.REPORT_CONCLUSION)
        holder = self._places.get(facts.holder)
        if holder is None or (asker is not None and asker not in self._places):
            reasons.append(Reason.UNKNOWN_FACILITY)
        item = None if facts.report_conclusion else self.item_for(facts)
        valid_until = None
        qc_passed = False
        if item is None:
            if not facts.report_conclusion:
                reasons.append(Reason.NOT_IN_CATALOGUE)
        else:
            qc = self._qc_reason(facts, item)
            qc_passed = qc is None
            if qc is not None:
                reasons.append(qc)
            if facts.performed is not None:
                valid_until = _plus_days(facts.performed, item.validity_days)
                if not facts.performed <= on <= valid_until:
                    reasons.append(Reason.OUTSIDE_WINDOW)
            if (
                asker is not None
                and holder is not None
                and asker in self._places
                and not self._scope_covers(item.scope, facts.holder, asker)
            ):
                reasons.append(Reason.SCOPE)
        # The mark belongs to the result: catalogue item, quality control, complete.
        marked = qc_passed and facts.complete and holder is not None
        return Verdict(
            recognised=not reasons,
            mark=MARK if marked else None,
            catalogue=self.catalogue.version,
            item=item,
            reasons=tuple(reasons),
            performed=facts.performed,
            valid_until=valid_until,
            asker=asker,
            on=on,
        )

    def _qc_reason(self, facts: Facts, item: Item) -> Reason | None:
        periods = self._qc.get((facts.holder, item.id), ()) + self._qc.get(
            (facts.holder, "*" + item.kind), ()
        )
        if not periods:
            return Reason.QC_NOT_PASSED
        when = facts.performed
        if when is None or not any(start <= when <= end for start, end in periods):
            return Reason.QC_NOT_VALID
        return None

    def _scope_covers(self, scope_id: str, holder: str, asker: str) -> bool:
        key = (scope_id, holder, asker)
        known = self._covers.get(key)
        if known is None:
            known = self._covers[key] = holder == asker or any(
                self._rule(rule, self._places[holder], self._places[asker])
                for rule in self.catalogue.scopes[scope_id].rules
            )
        return known

    @staticmethod
    def _rule(rule: str, holder: _Place, asker: _Place) -> bool:
        if rule == "city":
            return True
        if rule == "same-alliance":
            return bool(holder.alliances & asker.alliances)
        if holder.tier is None or asker.tier is None:
            return False
        if rule == "same-tier":
            return holder.tier == asker.tier
        if rule == "higher-tier":  # tiers are listed highest first
            return holder.tier < asker.tier
        if rule == "lower-tier":
            return holder.tier > asker.tier
        raise AssertionError(f"rule {rule!r} passed catalogue validation but is not known")


def _plus_days(day: date, days: int) -> date:
    """``day`` + ``days``; the last representable day for placeholder dates (9999-12-31)."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max


def city_today() -> date:
    """Today in the city (China Standard Time): the day verdicts are for by default."""
    return datetime.now(CITY_TZ).date()


# -- facts from the forms results come in -----------------------------------------------------


def facts_of_fhir(
    resource: Mapping[str, Any], holder: str, parts: Iterable[tuple[str, str]] = ()
) -> Facts:
    """Facts of an Observation, DiagnosticReport or ImagingStudy held by ``holder``.

    ``parts``: (modality, body part) pairs of an ImagingStudy's series where the resource
    does not list its series itself.
    """
    rtype = resource.get("resourceType")
    status = resource.get("status")
    if rtype == "ImagingStudy":
        found = _study_parts(resource) or tuple(parts)
        performed = _day(resource.get("started"))
        return Facts(
            kind="imaging",
            holder=holder,
            performed=performed,
            complete=status == "available" and bool(found) and performed is not None,
            parts=found,
        )
    if rtype not in ("Observation", "DiagnosticReport"):
        return Facts(kind=None, holder=holder, performed=None, complete=False)
    when = _day(resource.get("effectiveDateTime") or _period_start(resource))
    codes = tuple(
        str(c.get("code"))
        for c in (resource.get("code") or {}).get("coding", ())
        if c.get("system") == LOINC_SYSTEM and c.get("code")
    )
    if rtype == "DiagnosticReport":
        if _is_imaging_report(resource):
            return Facts(
                kind="imaging",
                holder=holder,
                performed=when,
                complete=status in _FINAL and when is not None,
                report_conclusion=True,
            )
        has_value = bool(resource.get("result"))
    else:
        has_value = any(k.startswith("value") for k in resource) or bool(
            resource.get("component") or resource.get("hasMember")
        )
    return Facts(
        kind="lab",
        holder=holder,
        performed=when,
        complete=status in _FINAL and has_value and when is not None,
        codes=codes,
    )


def facts_of_study(ds: Mapping[str, Any], holder: str, parts: Iterable[tuple[str, str]]) -> Facts:
    """Facts of a study-level DICOM JSON dataset and the (modality, body part) of its series."""
    found = tuple(parts)
    raw_date = _dicom_value(ds, "00080020")
    performed = None
    if len(raw_date) == 8 and raw_date.isdigit():
        try:
            performed = date(int(raw_date[:4]), int(raw_date[4:6]), int(raw_date[6:]))
        except ValueError:
            performed = None
    return Facts(
        kind="imaging",
        holder=holder,
        performed=performed,
        complete=performed is not None and bool(found),
        parts=found,
    )


def _study_parts(resource: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for series in resource.get("series", ()):
        modality = (series.get("modality") or {}).get("code")
        site = series.get("bodySite") or {}
        body_part = site.get("code") or site.get("display")
        if modality and body_part:
            out.append((str(modality), str(body_part)))
    return tuple(out)


def _is_imaging_report(resource: Mapping[str, Any]) -> bool:
    return any(
        c.get("system") == _V2_0074 and c.get("code") in _IMAGING_REPORT_CATEGORIES
        for concept in resource.get("category", ())
        for c in concept.get("coding", ())
    )


def _period_start(resource: Mapping[str, Any]) -> Any:
    return (resource.get("effectivePeriod") or {}).get("start")


def _day(value: Any) -> date | None:
    """The calendar day of a FHIR date or dateTime as written (the facility's local day)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _dicom_value(ds: Mapping[str, Any], tag: str) -> str:
    values = (ds.get(tag) or {}).get("Value") or [""]
    return str(values[0])
