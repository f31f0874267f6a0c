"""The mutual-recognition (互认) catalogue: which lab and imaging items count, for how long,
from which facilities (those that passed quality control for the item), and between which
facilities (scopes) — the region's rules as versioned data (``seeds/recognition.json``).

Every window, scope and quality-control date is read from the file: the rules of one region
are not constants in code (DESIGN.md, Mutual recognition). What code knows is only the small
vocabulary of scope rules the file combines (`RULES`). A catalogue that does not validate is
refused at load with the entry and field named, never half-loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from .errors import CatalogueError
from .registry import LEVELS, Registry

Kind = Literal["lab", "imaging"]
#: The mark recognised results carry (国卫医发〔2022〕6号).
MARK: Final = "HR"

#: The scope rules a catalogue may combine. Which apply to which item is data.
RULES: Final = {
    "city": "any two facilities of the city",
    "same-alliance": "the two facilities belong to one alliance (医联体, 医共体, 医疗集团)",
    "same-tier": "the two facilities' levels are in one tier",
    "higher-tier": "the holder's tier ranks above the asker's (lower levels recognise higher)",
    "lower-tier": "the holder's tier ranks below the asker's",
}
#: A window longer than a lifetime is a mistake in the data (ABO group: ten years).
MAX_VALIDITY_DAYS: Final = 36_500
_LOINC = re.compile(r"^\d{1,7}-\d$")
_ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Item:
    """One recognised item: a lab test (by LOINC code) or an imaging examination (by
    modality and body part)."""

    id: str  # the LOINC code for lab items; e.g. "CT-CHEST" for imaging
    kind: Kind
    name_zh: str
    name_en: str
    category: str
    validity_days: int
    scope: str
    modality: str | None = None
    body_part: str | None = None


@dataclass(frozen=True, slots=True)
class QualityControl:
    """A facility passed quality control (EQA for lab items, imaging QC) for some items; the
    pass holds for results produced from ``passed`` to ``valid_until`` inclusive."""

    facility: str
    kind: Kind
    items: frozenset[str] | None  # None: every item of the kind
    program: str
    passed: date
    valid_until: date


@dataclass(frozen=True, slots=True)
class Scope:
    id: str
    name_zh: str
    rules: tuple[str, ...]  # any one covering the pair is enough


@dataclass(frozen=True, slots=True)
class Catalogue:
    version: str
    region: str
    published: date
    #: Tiers of facility levels, highest first: a level's tier is its index here.
    tiers: tuple[frozenset[str], ...]
    scopes: Mapping[str, Scope]
    items: Mapping[str, Item]  # by id
    quality_control: tuple[QualityControl, ...]

    def lab_item(self, loinc: str) -> Item | None:
        item = self.items.get(loinc)
        return item if item is not None and item.kind == "lab" else None

    def imaging_item(self, modality: str, body_part: str) -> Item | None:
        return self._imaging_index().get((modality.upper(), body_part.upper()))

    def _imaging_index(self) -> Mapping[tuple[str, str], Item]:
        return _imaging_indexes(self)

    def tier_of(self, level: str) -> int | None:
        for i, levels in enumerate(self.tiers):
            if level in levels:
                return i
        return None


@dataclass(frozen=True, slots=True)
class QcLapse:
    """A facility whose quality control of a kind covers today but ends soon: results it
    produces after ``covered_until`` lose the mark until the region publishes new passes."""

    facility: str
    kind: Kind
    covered_until: date
    days_left: int


def qc_lapsing(catalogue: Catalogue, on: date, within_days: int) -> list[QcLapse]:
    """The facilities whose quality control (of any of a kind's items) covers ``on`` and stops
    within ``within_days`` days, soonest first. Passes that follow one another without a gap
    count as one stretch, so a facility whose next year's pass is already published is not
    listed."""
    periods: dict[tuple[str, Kind], list[tuple[date, date]]] = {}
    for q in catalogue.quality_control:
        periods.setdefault((q.facility, q.kind), []).append((q.passed, q.valid_until))
    lapses = []
    for (facility, kind), spans in periods.items():
        end = _covered_until(spans, on)
        if end is not None and (end - on).days < within_days:
            lapses.append(QcLapse(facility, kind, end, (end - on).days))
    return sorted(lapses, key=lambda x: (x.covered_until, x.kind, x.facility))


def _covered_until(spans: list[tuple[date, date]], on: date) -> date | None:
    """The last day of the unbroken stretch of ``spans`` that holds ``on`` (None: none does)."""
    end: date | None = None
    for start, until in sorted(spans):
        if end is None:
            if start <= on <= until:
                end = until
        elif start.toordinal() <= end.toordinal() + 1:
            end = max(end, until)
    return end


_IMAGING: dict[int, tuple[Catalogue, Mapping[tuple[str, str], Item]]] = {}


def _imaging_indexes(catalogue: Catalogue) -> Mapping[tuple[str, str], Item]:
    kept = _IMAGING.get(id(catalogue))
    if kept is not None and kept[0] is catalogue:
        return kept[1]
    index = {
        (str(i.modality), str(i.body_part)): i
        for i in catalogue.items.values()
        if i.kind == "imaging"
    }
    if len(_IMAGING) > 16:
        _IMAGING.clear()
    _IMAGING[id(catalogue)] = (catalogue, index)
    return index


def default_catalogue_path() -> Path:
    return Path(str(resources.files("seeds").joinpath("recognition.json")))


def load_catalogue(path: Path | None, registry: Registry) -> Catalogue:
    """Read and validate the catalogue at ``path`` (the shipped one if None) against the
    facility registry; raise CatalogueError naming the first entry that is wrong."""
    path = path or default_catalogue_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"cannot read the recognition catalogue {path}: {exc}") from None
    return parse_catalogue(data, registry)


def parse_catalogue(data: Any, registry: Registry) -> Catalogue:
    top = _Entry("catalogue", data)
    top.fields(
        required={"version", "region", "published", "tiers", "scopes", "items"},
        optional={"notes", "quality_control", "id", "title"},
    )
    tiers = tuple(_tier(_Entry(f"tiers[{i}]", t)) for i, t in enumerate(top.list("tiers")))
    seen_levels: set[str] = set()
    for i, levels in enumerate(tiers):
        if levels & seen_levels:
            raise CatalogueError(f"tiers[{i}]: level {sorted(levels & seen_levels)[0]} twice")
        seen_levels |= levels
    scopes: dict[str, Scope] = {}
    for i, raw in enumerate(top.list("scopes")):
        scope = _scope(_Entry(f"scopes[{i}]", raw))
        if scope.id in scopes:
            raise CatalogueError(f"scopes[{i}]: scope id {scope.id!r} twice")
        scopes[scope.id] = scope
    items: dict[str, Item] = {}
    imaging_keys: set[tuple[str | None, str | None]] = set()
    for i, raw in enumerate(top.list("items")):
        item = _item(_Entry(f"items[{i}]", raw), scopes)
        if item.id in items:
            raise CatalogueError(f"items[{i}] ({item.id}): item id twice")
        if item.kind == "imaging":
            key = (item.modality, item.body_part)
            if key in imaging_keys:
                raise CatalogueError(f"items[{i}] ({item.id}): {key[0]} {key[1]} twice")
            imaging_keys.add(key)
        items[item.id] = item
    qc = tuple(
        _quality_control(_Entry(f"quality_control[{i}]", raw), items, registry)
        for i, raw in enumerate(top.list("quality_control", required=False))
    )
    return Catalogue(
        version=top.text("version"),
        region=top.text("region"),
        published=top.date("published"),
        tiers=tiers,
        scopes=scopes,
        items=items,
        quality_control=qc,
    )


# -- one entry at a time ----------------------------------------------------------------------


def _tier(e: _Entry) -> frozenset[str]:
    e.fields(required={"levels"}, optional={"id", "name_zh"})
    levels = frozenset(e.texts("levels"))
    unknown = sorted(levels - set(LEVELS))
    if unknown:
        raise CatalogueError(f"{e.where}: unknown facility level {unknown[0]!r}")
    return levels


def _scope(e: _Entry) -> Scope:
    e.fields(required={"id", "rules"}, optional={"name_zh", "name_en"})
    rules = tuple(e.texts("rules"))
    for rule in rules:
        if rule not in RULES:
            raise CatalogueError(f"{e.where}: unknown rule {rule!r} (known: {', '.join(RULES)})")
    if not rules:
        raise CatalogueError(f"{e.where}: a scope needs at least one rule")
    return Scope(id=e.text("id"), name_zh=e.text("name_zh", ""), rules=rules)


def _item(e: _Entry, scopes: Mapping[str, Scope]) -> Item:
    kind = _kind(e)
    common = {"kind", "name_zh", "name_en", "category", "validity_days", "scope"}
    if kind == "lab":
        e.fields(required=common | {"code"}, optional={"unit"})
        item_id = e.text("code")
        if not _LOINC.match(item_id) or not loinc_check_digit_ok(item_id):
            raise CatalogueError(f"{e.where}: {item_id!r} is not a LOINC code (check digit)")
        modality = body_part = None
    else:
        e.fields(required=common | {"id", "modality", "body_part"})
        item_id = e.text("id")
        if not _ITEM_ID.match(item_id):
            raise CatalogueError(f"{e.where}: item id {item_id!r} is not a plain identifier")
        modality, body_part = e.text("modality").upper(), e.text("body_part").upper()
    where = f"{e.where} ({item_id})"
    days = e.raw("validity_days")
    if not isinstance(days, int) or isinstance(days, bool) or not 0 < days <= MAX_VALIDITY_DAYS:
        raise CatalogueError(
            f"{where}: validity_days must be a positive whole number of days, "
            f"at most {MAX_VALIDITY_DAYS}"
        )
    scope = e.text("scope")
    if scope not in scopes:
        raise CatalogueError(f"{where}: unknown scope {scope!r}")
    return Item(
        id=item_id,
        kind=kind,
        name_zh=e.text("name_zh"),
        name_en=e.text("name_en"),
        category=e.text("category"),
        validity_days=days,
        scope=scope,
        modality=modality,
        body_part=body_part,
    )


def _quality_control(e: _Entry, items: Mapping[str, Item], registry: Registry) -> QualityControl:
    e.fields(required={"facility", "kind", "items", "program", "passed", "valid_until"})
    facility = e.text("facility")
    if registry.get(facility) is None:
        raise CatalogueError(f"{e.where}: unknown facility {facility!r}")
    kind = _kind(e)
    raw_items = e.raw("items")
    covered: frozenset[str] | None
    if raw_items == "*":
        covered = None
    else:
        covered = frozenset(e.texts("items"))
        for item_id in sorted(covered):
            item = items.get(item_id)
            if item is None or item.kind != kind:
                raise CatalogueError(f"{e.where}: no {kind} item {item_id!r} in the catalogue")
    passed, until = e.date("passed"), e.date("valid_until")
    if until < passed:
        raise CatalogueError(f"{e.where}: valid_until {until} is before passed {passed}")
    return QualityControl(
        facility=facility,
        kind=kind,
        items=covered,
        program=e.text("program"),
        passed=passed,
        valid_until=until,
    )


def _kind(e: _Entry) -> Kind:
    kind = e.text("kind")
    if kind == "lab":
        return "lab"
    if kind == "imaging":
        return "imaging"
    raise CatalogueError(f"{e.where}: kind must be lab or imaging, not {kind!r}")


def loinc_check_digit_ok(code: str) -> bool:
    """LOINC's mod-10 check digit (the digit after the hyphen): Luhn over the number."""
    number, check = code.split("-")
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 0:  # the rightmost digit and every second one from it are doubled
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return (10 - total % 10) % 10 == int(check)


class _Entry:
    """One JSON object of the catalogue, with the path to it for error messages."""

    def __init__(self, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise CatalogueError(f"{where}: must be an object")
        self.where = where
        self.data: dict[str, Any] = data

    def fields(self, *, required: Iterable[str], optional: Iterable[str] = ()) -> None:
        required = set(required)
        missing = sorted(required - self.data.keys())
        if missing:
            raise CatalogueError(f"{self.where}: missing {missing[0]!r}")
        unknown = sorted(self.data.keys() - required - set(optional))
        if unknown:
            raise CatalogueError(f"{self.where}: unknown field {unknown[0]!r}")

    def raw(self, name: str) -> Any:
        return self.data.get(name)

    def text(self, name: str, default: str | None = None) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise CatalogueError(f"{self.where}: {name} must be a non-empty string")
        return value

    def texts(self, name: str) -> list[str]:
        value = self.data.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise CatalogueError(f"{self.where}: {name} must be a list of strings")
        return value

    def list(self, name: str, *, required: bool = True) -> list[Any]:
        value = self.data.get(name, None if required else [])
        if not isinstance(value, list):
            raise CatalogueError(f"{self.where}: {name} must be a list")
        return value

    def date(self, name: str) -> date:
        value = self.text(name)
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise CatalogueError(f"{self.where}: {name} {value!r} is not a date") from None
