"""The deterministic seed generator: a synthetic city of patients, studies and lab results.

``generate(data_dir, patients=N, seed=S)`` writes, under ``data_dir / "seed"``:

``manifest.json``
    seed, patient count, image size, registry version and the counts of what was written.
``patients.json``
    one entry per resident: national ID, name (Chinese and DICOM forms), sex, birth date and
    ``records`` — the local MRN at each facility visited.
``studies.json``
    one entry per imaging study (facility, patient, UIDs, accession number, modality …), an
    index for tools and tests; the DICOM files are the source of truth.
``dicom/<facility>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
    DICOM Part 10 files (Explicit VR Little Endian, ``ISO_IR 192``) with phantom pixel data.
``fhir/<facility>.ndjson``
    FHIR R4 ``Patient``, lab ``Observation`` + ``DiagnosticReport`` (facilities with a lab
    system) and radiology ``DiagnosticReport`` (facilities with imaging studies). An
    Observation is coded in LOINC plus the facility's abbreviation
    (``urn:huren:lab-code:<facility>``), except at the facilities that
    ``seeds/ConceptMap-lab-local-codes.json`` lists: their laboratory systems know only their
    own item codes, so there the Observation carries the local code from that map alone.

Everything is drawn from one ``random.Random(seed)``; pixel noise comes from numpy generators
seeded from it. Nothing reads the clock or the OS entropy pool, so the same ``(patients, seed,
registry, image_size)`` gives the same bytes on the same Python/numpy/pydicom versions.

Synthetic identities. National IDs are well formed — a Changzhou district region code, the
birth date, a three-digit sequence code and a valid ISO 7064 MOD 11-2 check digit — but the
sequence code always starts with ``9`` (``9xx``). That range is a convention of this generator,
not an official reservation: it marks every generated ID as synthetic (see
`is_synthetic_national_id`), and names are drawn at random from common name parts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)

from gateway.lab_codes import DEFAULT_PATH as LAB_CODES_PATH
from gateway.lab_codes import LabCodeMap
from gateway.registry import Facility, Registry, load_registry

__all__ = [
    "Manifest",
    "generate",
    "id_check_digit",
    "is_synthetic_national_id",
    "is_valid_national_id",
    "main_seed",
    "read_manifest",
    "seed_exists",
]

_HERE = Path(__file__).resolve().parent
GENERATOR_VERSION = "huren-seed/1"

#: Studies and lab tests fall in this window (inclusive).
WINDOW_START = date(2024, 1, 1)
WINDOW_END = date(2026, 10, 31)
#: Ages are drawn relative to this day (mid-window).
_AGE_REFERENCE = date(2025, 6, 30)
_TZ = "+08:00"

#: GB/T 2260 region codes of Changzhou's districts (the economic development zone has none of
#: its own; its residents are registered in 天宁 or 武进).
DISTRICT_CODES: Mapping[str, str] = {
    "天宁区": "320402",
    "钟楼区": "320404",
    "新北区": "320411",
    "武进区": "320412",
    "金坛区": "320413",
    "溧阳市": "320481",
}
#: Rough share of residents per district.
_DISTRICT_WEIGHTS: Mapping[str, float] = {
    "天宁区": 14,
    "钟楼区": 15,
    "新北区": 20,
    "武进区": 30,
    "金坛区": 10,
    "溧阳市": 11,
}
_NEARBY: Mapping[str, tuple[str, ...]] = {"经开区": ("天宁区", "武进区")}

NATIONAL_ID_SYSTEM = "urn:oid:2.16.156.10011.1.5"  # 居民身份证号 (WS 363)
NATIONAL_ID_ISSUER = "CN-RID"  # DICOM IssuerOfPatientID of the national ID

_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"
_INTERPRETATION_TEXT = {
    "H": ("High", "偏高"),
    "L": ("Low", "偏低"),
    "N": ("Normal", "正常"),
}


def _stable_uid(text: str) -> str:
    """A ``2.25.`` UID (PS3.5 B.2) from a 128-bit hash of ``text``: valid and at most 44 chars."""
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


IMPLEMENTATION_CLASS_UID = _stable_uid("huren implementation class")
IMPLEMENTATION_VERSION_NAME = "HUREN_SEED_1"

_SOP_CLASSES: Mapping[str, str] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "US": UltrasoundImageStorage,
}
MODALITIES = tuple(_SOP_CLASSES)

# --------------------------------------------------------------------------------------------
# National IDs (GB 11643-1999)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError(f"expected 17 digits, got {first17!r}")
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def is_valid_national_id(value: str) -> bool:
    """True for an 18-character resident ID whose date and check character are valid."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return value[17] == id_check_digit(value[:17])


def is_synthetic_national_id(value: str) -> bool:
    """True for IDs this generator makes: valid, with a ``9xx`` sequence code."""
    return is_valid_national_id(value) and value[14] == "9"


# --------------------------------------------------------------------------------------------
# Data files: lab panels, imaging protocols, name parts


@dataclass(frozen=True, slots=True)
class RefRange:
    low: float | None
    high: float | None

    def interpret(self, value: float) -> Literal["H", "L", "N"]:
        if self.high is not None and value > self.high:
            return "H"
        if self.low is not None and value < self.low:
            return "L"
        return "N"


@dataclass(frozen=True, slots=True)
class LabItem:
    code: str
    display: str
    abbr: str
    name_zh: str
    unit: str  # UCUM code
    unit_display: str
    decimals: int
    ranges: Mapping[str, RefRange]  # by sex "M"/"F"
    abnormal_rate: float
    abnormal_high: float
    spread: float
    sex: str | None
    min_age: int
    derived: Mapping[str, Any] | None

    def ref(self, sex: str) -> RefRange:
        return self.ranges[sex]


@dataclass(frozen=True, slots=True)
class LabPanel:
    id: str
    name_zh: str
    system: str
    code: str
    display: str
    weight: float
    min_age: int
    items: tuple[LabItem, ...]


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    description: str
    optional: bool
    thickness: float
    slices: tuple[int, int]
    window: tuple[float, float] | None
    contrast: str | None
    weighting: str | None
    plane: str
    tr: float | None
    te: float | None
    view: str | None
    images: tuple[int, int]
    color: bool
    phantom: str | None


@dataclass(frozen=True, slots=True)
class Protocol:
    id: str
    modality: str
    body_part: str
    weight: float
    phantom: str
    fov_mm: float
    description_zh: str
    description_en: str
    department_zh: str
    sex: str | None
    min_age: int
    series: tuple[SeriesSpec, ...]
    normal_reports: tuple[tuple[str, str], ...]
    abnormal_reports: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ImagingCatalogue:
    modality_weights: Mapping[str, Mapping[str, float]]
    studies_per_episode: Mapping[str, tuple[float, ...]]
    lab_panels_per_episode: Mapping[str, tuple[float, ...]]
    abnormal_rate: float
    protocols: tuple[Protocol, ...]


@dataclass(frozen=True, slots=True)
class NameParts:
    surnames: tuple[tuple[str, str], ...]
    surname_weights: tuple[float, ...]
    given: Mapping[str, tuple[tuple[str, str], ...]]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def load_lab_panels(path: Path | None = None) -> tuple[LabPanel, ...]:
    """Read ``seeds/lab_panels.json`` (or ``path``)."""
    raw = _read_json(path or _HERE / "lab_panels.json")
    panels = []
    for p in raw["panels"]:
        items = []
        for it in p["items"]:
            ref = it["ref"]
            if "M" in ref:
                ranges = {s: RefRange(_num(ref[s]["low"]), _num(ref[s]["high"])) for s in "MF"}
            else:
                both = RefRange(_num(ref["low"]), _num(ref["high"]))
                ranges = {"M": both, "F": both}
            ab = it.get("abnormal", {})
            items.append(
                LabItem(
                    code=it["code"],
                    display=it["display"],
                    abbr=it["abbr"],
                    name_zh=it["name_zh"],
                    unit=it["unit"],
                    unit_display=it["unit_display"],
                    decimals=int(it["decimals"]),
                    ranges=ranges,
                    abnormal_rate=float(ab.get("rate", 0.0)),
                    abnormal_high=float(ab.get("high", 0.5)),
                    spread=float(ab.get("spread", 0.3)),
                    sex=it.get("sex"),
                    min_age=int(it.get("min_age", 0)),
                    derived=it.get("derived"),
                )
            )
        code = p["code"]
        panels.append(
            LabPanel(
                id=p["id"],
                name_zh=p["name_zh"],
                system=code["system"],
                code=code["code"],
                display=code["display"],
                weight=float(p["weight"]),
                min_age=int(p.get("min_age", 0)),
                items=tuple(items),
            )
        )
    return tuple(panels)


def _pair(raw: Any, default: tuple[int, int]) -> tuple[int, int]:
    if raw is None:
        return default
    return (int(raw[0]), int(raw[1]))


def load_imaging_catalogue(path: Path | None = None) -> ImagingCatalogue:
    """Read ``seeds/imaging_protocols.json`` (or ``path``)."""
    raw = _read_json(path or _HERE / "imaging_protocols.json")
    protocols = []
    for p in raw["protocols"]:
        if p["modality"] not in _SOP_CLASSES:
            raise ValueError(f"protocol {p['id']}: unknown modality {p['modality']!r}")
        series = tuple(
            SeriesSpec(
                description=s["description"],
                optional=bool(s.get("optional", False)),
                thickness=float(s.get("thickness", 5.0)),
                slices=_pair(s.get("slices"), (4, 8)),
                window=None if s.get("window") is None else (s["window"][0], s["window"][1]),
                contrast=s.get("contrast"),
                weighting=s.get("weighting"),
                plane=s.get("plane", "axial"),
                tr=_num(s.get("tr")),
                te=_num(s.get("te")),
                view=s.get("view"),
                images=_pair(s.get("images"), (1, 3)),
                color=bool(s.get("color", False)),
                phantom=s.get("phantom"),
            )
            for s in p["series"]
        )
        reports = p["reports"]
        protocols.append(
            Protocol(
                id=p["id"],
                modality=p["modality"],
                body_part=p["body_part"],
                weight=float(p["weight"]),
                phantom=p["phantom"],
                fov_mm=float(p["fov_mm"]),
                description_zh=p["description_zh"],
                description_en=p["description_en"],
                department_zh=p["department_zh"],
                sex=p.get("sex"),
                min_age=int(p.get("min_age", 0)),
                series=series,
                normal_reports=tuple((r["findings"], r["impression"]) for r in reports["normal"]),
                abnormal_reports=tuple(
                    (r["findings"], r["impression"]) for r in reports["abnormal"]
                ),
            )
        )
    return ImagingCatalogue(
        modality_weights={k: dict(v) for k, v in raw["modality_weights"].items()},
        studies_per_episode={k: tuple(v) for k, v in raw["studies_per_episode"].items()},
        lab_panels_per_episode={k: tuple(v) for k, v in raw["lab_panels_per_episode"].items()},
        abnormal_rate=float(raw["abnormal_rate"]),
        protocols=tuple(protocols),
    )


def load_name_parts(path: Path | None = None) -> NameParts:
    """Read ``seeds/names.json`` (or ``path``)."""
    raw = _read_json(path or _HERE / "names.json")
    return NameParts(
        surnames=tuple((s[0], s[1]) for s in raw["surnames"]),
        surname_weights=tuple(float(s[2]) for s in raw["surnames"]),
        given={sex: tuple((g[0], g[1]) for g in raw["given"][sex]) for sex in ("M", "F")},
    )


# --------------------------------------------------------------------------------------------
# The plan: people, visits, studies and lab tests, drawn before anything is written


@dataclass(frozen=True, slots=True)
class _Name:
    family: str
    given: str
    family_py: str
    given_py: str

    @property
    def text(self) -> str:
        return self.family + self.given

    @property
    def pinyin(self) -> str:
        return f"{self.family_py}^{self.given_py}"

    @property
    def dicom(self) -> str:
        """PS3.5 6.2.1: alphabetic and ideographic component groups."""
        return f"{self.pinyin}={self.family}^{self.given}"


@dataclass(slots=True)
class _Person:
    index: int
    national_id: str
    name: _Name
    sex: Literal["M", "F"]
    birth: date
    district: str
    records: dict[str, str] = field(default_factory=dict)
    #: per lab item: (direction -1/0/+1, stable quantile)
    lab_state: dict[str, tuple[int, float]] = field(default_factory=dict)

    def age_on(self, day: date) -> int:
        years = day.year - self.birth.year
        return years - ((day.month, day.day) < (self.birth.month, self.birth.day))


@dataclass(slots=True)
class _SeriesPlan:
    spec: SeriesSpec
    instances: int
    color: bool


@dataclass(slots=True)
class _Study:
    facility: Facility
    person: _Person
    protocol: Protocol
    when: datetime
    abnormal: bool
    findings: str
    impression: str
    series: list[_SeriesPlan]
    pixel_seed: int
    referring: _Name
    reader: _Name
    report_delay_min: int
    # assigned at write time
    accession: str = ""
    study_uid: str = ""
    report_id: str = ""


@dataclass(frozen=True, slots=True)
class _Result:
    item: LabItem
    value: float
    ref: RefRange
    interpretation: Literal["H", "L", "N"]


@dataclass(slots=True)
class _LabTest:
    facility: Facility
    person: _Person
    panel: LabPanel
    collected: datetime
    issued: datetime
    results: list[_Result]


@dataclass(slots=True)
class _Staff:
    referring: list[_Name]
    readers: list[_Name]


class _Planner:
    """Draws the whole city from one `random.Random`, in a fixed order."""

    def __init__(
        self,
        rng: random.Random,
        registry: Registry,
        catalogue: ImagingCatalogue,
        panels: Sequence[LabPanel],
        names: NameParts,
    ) -> None:
        self.rng = rng
        self.registry = registry
        self.catalogue = catalogue
        self.panels = tuple(panels)
        self.names = names
        self.ids: set[str] = set()
        self.mrn_next: dict[str, int] = {}
        self.staff: dict[str, _Staff] = {}
        self.studies: list[_Study] = []
        self.labs: list[_LabTest] = []
        self.primary_by_district: dict[str, list[Facility]] = {}
        for f in registry:
            if f.kind in ("township", "community"):
                for d in (f.district, *_NEARBY.get(f.district, ())):
                    self.primary_by_district.setdefault(d, []).append(f)

    # -- people

    def name(self, sex: str) -> _Name:
        rng = self.rng
        family, family_py = rng.choices(self.names.surnames, self.names.surname_weights)[0]
        parts = self.names.given[sex]
        chosen = [rng.choice(parts) for _ in range(1 if rng.random() < 0.35 else 2)]
        return _Name(
            family=family,
            given="".join(c for c, _ in chosen),
            family_py=family_py,
            given_py="".join(p for _, p in chosen),
        )

    def person(self, index: int) -> _Person:
        rng = self.rng
        district = rng.choices(list(_DISTRICT_WEIGHTS), list(_DISTRICT_WEIGHTS.values()))[0]
        sex: Literal["M", "F"] = "M" if rng.random() < 0.49 else "F"
        bracket = rng.choices(((2, 13), (14, 44), (45, 64), (65, 92)), (8, 30, 34, 28))[0]
        age = rng.randint(*bracket)
        birth = _AGE_REFERENCE - timedelta(days=int(age * 365.25) + rng.randrange(365))
        while True:
            sex_digit = rng.randrange(1, 10, 2) if sex == "M" else rng.randrange(0, 10, 2)
            first17 = f"{DISTRICT_CODES[district]}{birth:%Y%m%d}9{rng.randrange(10)}{sex_digit}"
            national_id = first17 + id_check_digit(first17)
            if national_id not in self.ids:
                self.ids.add(national_id)
                break
        return _Person(index, national_id, self.name(sex), sex, birth, district)

    def mrn(self, f: Facility) -> str:
        prefix, width = _mrn_format(f)
        if f.id not in self.mrn_next:
            low = 100 if width <= 5 else 10 ** (width - 3)
            self.mrn_next[f.id] = self.rng.randrange(low, low * 20)
        n = self.mrn_next[f.id]
        self.mrn_next[f.id] = n + self.rng.randint(1, 40)
        return f"{prefix}{n:0{width}d}"

    def staff_of(self, f: Facility) -> _Staff:
        if f.id not in self.staff:
            self.staff[f.id] = _Staff(
                referring=[self.name(self.rng.choice("MF")) for _ in range(6)],
                readers=[self.name(self.rng.choice("MF")) for _ in range(3)],
            )
        return self.staff[f.id]

    # -- where people go

    def facility_weight(self, f: Facility, p: _Person, home: Facility | None) -> float:
        age = p.age_on(_AGE_REFERENCE)
        local = f.district == p.district or p.district in _NEARBY.get(f.district, ())
        if f.kind in ("township", "community"):
            w = 40.0 if f is home else (1.0 if local else 0.05)
        elif f.level.startswith("三级"):
            w = 10.0 if f.level == "三级甲等" else 6.0
            w *= 1.5 if local else 1.0
        elif f.kind == "public_health":
            w = 2.0 if local else 0.2
        else:
            w = 6.0 if local else 0.8
        if f.kind == "children":
            w *= 1.5 if age < 14 else 0.0
        elif f.kind == "maternal_child":
            w *= 1.0 if age < 14 or (p.sex == "F" and age < 50) else 0.05
        elif f.kind == "specialist":
            w *= 0.3  # psychiatric, dental …: few of the city's patients
        elif age < 14 and f.kind in ("general", "tcm"):
            w *= 0.4
        return w

    def visits(self, p: _Person) -> list[tuple[Facility, date]]:
        rng = self.rng
        local_primary = self.primary_by_district.get(p.district, [])
        home = rng.choice(local_primary) if local_primary else None
        facilities = list(self.registry)
        weights = [self.facility_weight(f, p, home) for f in facilities]
        n = rng.choices((1, 2, 3, 4), (35, 35, 20, 10))[0]
        chosen: list[Facility] = []
        while len(chosen) < n and any(w > 0 for w in weights):
            i = rng.choices(range(len(facilities)), weights)[0]
            chosen.append(facilities[i])
            weights[i] = 0.0
        span = (WINDOW_END - WINDOW_START).days
        out: list[tuple[Facility, date]] = []
        for f in chosen:
            if out and rng.random() < 0.45:
                day = out[-1][1] + timedelta(days=rng.randint(1, 21))  # a referral
            else:
                day = WINDOW_START + timedelta(days=rng.randrange(span - 30))
            out.append((f, min(day, WINDOW_END)))
        return out

    # -- what happens there

    def plan_person(self, index: int) -> _Person:
        rng = self.rng
        p = self.person(index)
        visits = self.visits(p)
        for f, _ in sorted(visits, key=lambda v: v[0].id):
            p.records[f.id] = self.mrn(f)
        recent_protocols: list[Protocol] = []
        recent_panels: list[LabPanel] = []
        before = (len(self.studies), len(self.labs))
        for f, day in visits:
            episodes = [day]
            if rng.random() < 0.25:
                follow_up = day + timedelta(days=rng.randint(30, 300))
                if follow_up <= WINDOW_END:
                    episodes.append(follow_up)
            for when in episodes:
                n_studies = rng.choices(range(4), self.catalogue.studies_per_episode[f.kind])[0]
                for _ in range(n_studies):
                    proto = self.choose_protocol(f, p, when, recent_protocols)
                    if proto is not None:
                        recent_protocols.append(proto)
                        self.studies.append(self.plan_study(f, p, proto, when))
                if f.lab.kind != "none":
                    weights = self.catalogue.lab_panels_per_episode[f.kind]
                    n_panels = rng.choices(range(len(weights)), weights)[0]
                    done: list[str] = []
                    for _ in range(n_panels):
                        panel = self.choose_panel(p, when, recent_panels, done)
                        if panel is not None:
                            done.append(panel.id)
                            recent_panels.append(panel)
                            self.labs.append(self.plan_lab(f, p, panel, when))
        if (len(self.studies), len(self.labs)) == before:
            # Everyone in the seed has something to look up: one study at the first visit.
            f, when = visits[0]
            proto = self.choose_protocol(f, p, when, [])
            if proto is not None:
                self.studies.append(self.plan_study(f, p, proto, when))
        return p

    def choose_protocol(
        self, f: Facility, p: _Person, day: date, recent: Sequence[Protocol]
    ) -> Protocol | None:
        rng = self.rng
        age = p.age_on(day)
        weights = self.catalogue.modality_weights[f.kind]
        eligible = [
            pr
            for pr in self.catalogue.protocols
            if weights.get(pr.modality, 0) > 0
            and age >= pr.min_age
            and (pr.sex is None or pr.sex == p.sex)
        ]
        if not eligible:
            return None
        repeatable = [pr for pr in recent if pr in eligible]
        if repeatable and rng.random() < 0.5:
            # Referred on and examined again: the case mutual recognition exists for.
            return repeatable[-1]
        modalities = sorted({pr.modality for pr in eligible}, key=MODALITIES.index)
        modality = rng.choices(modalities, [weights[m] for m in modalities])[0]
        of_modality = [pr for pr in eligible if pr.modality == modality]
        return rng.choices(of_modality, [pr.weight for pr in of_modality])[0]

    def choose_panel(
        self, p: _Person, day: date, recent: Sequence[LabPanel], done: Sequence[str]
    ) -> LabPanel | None:
        age = p.age_on(day)
        eligible = [pa for pa in self.panels if age >= pa.min_age and pa.id not in done]
        if not eligible:
            return None
        repeatable = [pa for pa in recent if pa in eligible]
        if repeatable and self.rng.random() < 0.6:
            return repeatable[-1]
        return self.rng.choices(eligible, [pa.weight for pa in eligible])[0]

    def plan_study(self, f: Facility, p: _Person, proto: Protocol, day: date) -> _Study:
        rng = self.rng
        day = min(day + timedelta(days=rng.choice((0, 0, 0, 1, 2))), WINDOW_END)
        when = datetime.combine(day, datetime.min.time()) + timedelta(
            seconds=rng.randrange(8 * 3600, 17 * 3600 + 1800)
        )
        abnormal = rng.random() < self.catalogue.abnormal_rate
        findings, impression = rng.choice(
            proto.abnormal_reports if abnormal and proto.abnormal_reports else proto.normal_reports
        )
        series: list[_SeriesPlan] = []
        for spec in proto.series:
            if spec.optional and rng.random() < 0.5:
                continue
            if proto.modality in ("CT", "MR"):
                count = rng.randint(*spec.slices)
            elif proto.modality == "US":
                count = rng.randint(*spec.images)
            else:
                count = 1
            color = proto.modality == "US" and (spec.color or rng.random() < 0.3)
            series.append(_SeriesPlan(spec, count, color))
        staff = self.staff_of(f)
        return _Study(
            facility=f,
            person=p,
            protocol=proto,
            when=when,
            abnormal=abnormal,
            findings=findings,
            impression=impression,
            series=series,
            pixel_seed=rng.getrandbits(64),
            referring=rng.choice(staff.referring),
            reader=rng.choice(staff.readers),
            report_delay_min=rng.randint(30, 36 * 60),
        )

    def plan_lab(self, f: Facility, p: _Person, panel: LabPanel, day: date) -> _LabTest:
        rng = self.rng
        collected = datetime.combine(day, datetime.min.time()) + timedelta(
            seconds=rng.randrange(7 * 3600, 11 * 3600)
        )
        issued = collected + timedelta(minutes=rng.randint(90, 6 * 60))
        age = p.age_on(day)
        values: dict[str, float] = {}
        results: list[_Result] = []
        for item in panel.items:
            if (item.sex is not None and item.sex != p.sex) or age < item.min_age:
                continue
            if item.derived is not None:
                if item.derived["from"] not in values:
                    continue
                value = _derived_value(item, values, p.sex, age)
            else:
                value = self.lab_value(item, p)
            values[item.code] = value
            ref = item.ref(p.sex)
            results.append(_Result(item, value, ref, ref.interpret(value)))
        return _LabTest(f, p, panel, collected, issued, results)

    def lab_value(self, item: LabItem, p: _Person) -> float:
        rng = self.rng
        ref = item.ref(p.sex)
        if item.code not in p.lab_state:
            direction = 0
            if rng.random() < item.abnormal_rate:
                up = ref.low is None or rng.random() < item.abnormal_high
                direction = 1 if up else -1
            p.lab_state[item.code] = (direction, rng.random())
        direction, base = p.lab_state[item.code]
        u = min(max(base + rng.gauss(0.0, 0.07), 0.001), 0.999)
        high = ref.high
        low = ref.low
        span = (high if high is not None else 2 * (low or 1.0)) - (low or 0.0)
        step = 10.0**-item.decimals
        if direction > 0 and high is not None:
            value = _round(high + span * (0.03 + item.spread * -math.log(1.0 - u)), item.decimals)
            value = max(value, _round(high + step, item.decimals))
        elif direction < 0 and low is not None:
            value = low - span * (0.03 + item.spread * 0.5 * -math.log(1.0 - u))
            value = _round(max(value, low * 0.3), item.decimals)
            value = min(value, _round(low - step, item.decimals))
        elif low is None and high is not None:
            value = _round(high * (0.04 + 0.8 * u**1.3), item.decimals)
        else:
            lo = low or 0.0
            hi = high if high is not None else lo * 1.5
            value = _round(lo + (hi - lo) * (0.04 + 0.92 * u), item.decimals)
        return value


def _round(value: float, decimals: int) -> float:
    return float(round(value, decimals))


def _derived_value(item: LabItem, values: Mapping[str, float], sex: str, age: int) -> float:
    assert item.derived is not None
    kind = item.derived["kind"]
    source = values[item.derived["from"]]
    if kind == "ckd_epi_2021":
        # CKD-EPI 2021 (race-free); creatinine in µmol/L -> mg/dL.
        scr = source / 88.4
        kappa, alpha = (0.7, -0.241) if sex == "F" else (0.9, -0.302)
        egfr = (
            142
            * min(scr / kappa, 1.0) ** alpha
            * max(scr / kappa, 1.0) ** -1.200
            * 0.9938**age
            * (1.012 if sex == "F" else 1.0)
        )
        return _round(egfr, item.decimals)
    if kind == "inr":
        return _round((source / float(item.derived["mnpt"])) ** float(item.derived["isi"]), 2)
    raise ValueError(f"lab item {item.code}: unknown derivation {kind!r}")


_MRN_FORMATS: tuple[tuple[str, int], ...] = (
    ("MRN", 8),
    ("", 10),
    ("MZ", 8),
    ("P", 9),
    ("{n}-", 7),
    ("H{n}", 6),
)


def _mrn_format(f: Facility) -> tuple[str, int]:
    """Each facility's own MRN shape, fixed by its id (not by the seed)."""
    if f.id == "F001":
        return ("1000", 5)  # the city's first hospital: nine-digit numbers starting 1000
    digest = hashlib.sha256(f.id.encode()).digest()
    prefix, width = _MRN_FORMATS[digest[0] % len(_MRN_FORMATS)]
    return prefix.format(n=f.id[1:]), width


# --------------------------------------------------------------------------------------------
# Pixels: label phantoms rendered per modality

_AIR, _FAT, _SOFT, _LUNG, _BONE, _FLUID, _ORGAN, _BLOOD, _LESION = range(9)
Shape = tuple[int, float, float, float, float]  # label, cx, cy, a (x half-axis), b (y)

_CT_HU = np.array([-1000, -100, 45, -850, 900, 5, 60, 40, 25], dtype=np.float32)
_MR_LUT: Mapping[str, npt.NDArray[np.float32]] = {
    # air, fat, soft, lung, bone, fluid, organ, blood, lesion
    "T1": np.array([0, 900, 420, 30, 60, 160, 560, 280, 260], dtype=np.float32),
    "T2": np.array([0, 650, 300, 30, 40, 1300, 420, 160, 1050], dtype=np.float32),
    "FLAIR": np.array([0, 700, 380, 30, 40, 90, 520, 150, 950], dtype=np.float32),
    "PD": np.array([0, 300, 500, 30, 60, 1100, 620, 300, 1000], dtype=np.float32),
}
_DX_LUT = np.array([120, 1100, 1700, 700, 3300, 1750, 1900, 2000, 2500], dtype=np.float32)
_LESION_SITE: Mapping[str, tuple[float, float]] = {
    "head": (0.3, -0.15),
    "chest": (-0.42, -0.1),
    "abdomen": (-0.4, -0.05),
    "spine": (-0.05, 0.0),
    "limb": (0.0, 0.05),
    "pelvis": (0.3, 0.3),
}


@dataclass(frozen=True, slots=True)
class _Lesion:
    cx: float
    cy: float
    r: float


class _Grid:
    """Normalised pixel-centre coordinates in [-1, 1], cached per size."""

    _cache: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}  # noqa: RUF012

    @classmethod
    def get(cls, n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        if n not in cls._cache:
            axis = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0).astype(np.float32)
            yy, xx = np.meshgrid(axis, axis, indexing="ij")
            cls._cache[n] = (xx, yy)
        return cls._cache[n]


def _render(shapes: Iterable[Shape], n: int) -> npt.NDArray[np.uint8]:
    xx, yy = _Grid.get(n)
    labels = np.zeros((n, n), dtype=np.uint8)
    for label, cx, cy, a, b in shapes:
        if a <= 0 or b <= 0:
            continue
        labels[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0] = label
    return labels


def _phantom(name: str, t: float, plane: str) -> list[Shape]:
    """Shapes of a body region; ``t`` in [0, 1] moves through the volume (slice position)."""
    bulge = math.sin(math.pi * (0.15 + 0.7 * t))
    if name == "head":
        s = math.sqrt(max(0.1, 1.0 - ((t - 0.45) * 1.5) ** 2))
        shapes: list[Shape] = [
            (_SOFT, 0, 0, 0.80 * s, 0.93 * s),
            (_BONE, 0, 0, 0.76 * s, 0.89 * s),
            (_ORGAN, 0, 0, 0.69 * s, 0.82 * s),
        ]
        if 0.25 < t < 0.75:
            shapes += [
                (_FLUID, -0.12, -0.05, 0.06, 0.22 * s),
                (_FLUID, 0.12, -0.05, 0.06, 0.22 * s),
            ]
        return shapes
    if name == "chest":
        if plane == "coronal":  # frontal radiograph
            return [
                (_SOFT, 0, 0.05, 0.88, 0.98),
                (_LUNG, -0.38, -0.08, 0.30, 0.62),
                (_LUNG, 0.38, -0.08, 0.30, 0.62),
                (_BLOOD, 0.12, 0.30, 0.30, 0.26),
                (_ORGAN, -0.35, 0.88, 0.45, 0.22),
                (_BONE, 0, 0, 0.06, 1.0),
                (_BONE, -0.35, -0.72, 0.30, 0.035),
                (_BONE, 0.35, -0.72, 0.30, 0.035),
            ]
        if plane == "sagittal":  # lateral radiograph
            return [
                (_SOFT, 0, 0.05, 0.62, 0.98),
                (_LUNG, 0.02, -0.08, 0.45, 0.62),
                (_BLOOD, -0.2, 0.3, 0.26, 0.25),
                (_BONE, 0.48, 0, 0.08, 1.0),
            ]
        lung = 0.6 + 0.4 * bulge
        heart = 0.3 + 0.7 * max(0.0, t - 0.35)
        return [
            (_FAT, 0, 0, 0.92, 0.64),
            (_SOFT, 0, 0, 0.86, 0.58),
            (_LUNG, -0.42, -0.02, 0.30 * lung, 0.45 * lung),
            (_LUNG, 0.42, -0.02, 0.30 * lung, 0.45 * lung),
            (_BLOOD, 0.08, 0.05, 0.24 * heart, 0.21 * heart),
            (_BLOOD, -0.10, 0.32, 0.07, 0.07),
            (_BONE, 0, 0.46, 0.10, 0.10),
            (_BONE, 0, -0.52, 0.07, 0.04),
        ]
    if name == "abdomen":
        if plane == "coronal":
            return [
                (_FAT, 0, 0, 0.9, 1.0),
                (_SOFT, 0, 0, 0.84, 1.0),
                (_ORGAN, -0.38, -0.45, 0.42, 0.36),
                (_ORGAN, 0.5, -0.35, 0.16, 0.24),
                (_ORGAN, -0.33, 0.18, 0.12, 0.2),
                (_ORGAN, 0.33, 0.12, 0.12, 0.2),
                (_BONE, 0, 0.2, 0.08, 0.8),
            ]
        liver = 1.0 - 0.5 * t
        shapes = [
            (_FAT, 0, 0, 0.90, 0.66),
            (_SOFT, 0, 0, 0.84, 0.60),
            (_ORGAN, -0.35, -0.08, 0.40 * liver, 0.36 * liver),
            (_BLOOD, 0.06, 0.30, 0.05, 0.05),
            (_BLOOD, -0.10, 0.28, 0.06, 0.05),
            (_BONE, 0, 0.44, 0.11, 0.10),
            (_SOFT, -0.18, 0.40, 0.07, 0.09),
            (_SOFT, 0.18, 0.40, 0.07, 0.09),
        ]
        if t < 0.6:
            shapes += [(_ORGAN, 0.52, 0.10, 0.14, 0.20), (_FLUID, 0.28, -0.22, 0.18, 0.12)]
        if t > 0.3:
            shapes += [(_ORGAN, -0.36, 0.30, 0.10, 0.16), (_ORGAN, 0.36, 0.30, 0.10, 0.16)]
        return shapes
    if name == "pelvis":
        return [
            (_FAT, 0, 0, 0.92, 0.9),
            (_SOFT, 0, 0, 0.86, 0.84),
            (_BONE, -0.45, -0.25, 0.25, 0.30),
            (_BONE, 0.45, -0.25, 0.25, 0.30),
            (_BONE, 0, -0.15, 0.12, 0.2),
            (_BONE, -0.40, 0.45, 0.11, 0.11),
            (_BONE, 0.40, 0.45, 0.11, 0.11),
            (_FLUID, 0, 0.3, 0.18 * bulge, 0.12 * bulge),
        ]
    if name == "spine":
        dx = (t - 0.5) * 0.15
        if plane in ("axial",):
            return _phantom("abdomen", t, plane)
        shapes = [(_SOFT, 0, 0, 0.78, 1.0), (_FAT, 0.62 + dx, 0, 0.22, 1.0)]
        lateral = plane == "sagittal"
        for k in range(-3, 4):
            y = k * 0.28
            shapes.append((_BONE, -0.05 + dx if lateral else 0, y, 0.20, 0.10))
            shapes.append((_FLUID, -0.05 + dx if lateral else 0, y + 0.14, 0.18, 0.03))
            if lateral:
                shapes.append((_BONE, 0.42 + dx, y, 0.12, 0.06))
            else:
                shapes += [(_BONE, -0.14, y, 0.04, 0.05), (_BONE, 0.14, y, 0.04, 0.05)]
        if lateral:
            shapes.append((_FLUID, 0.22 + dx, 0, 0.05, 1.0))
        return shapes
    if name == "limb":
        if plane == "axial":
            r = 0.7 + 0.2 * bulge
            return [
                (_FAT, 0, 0, 0.62 * r, 0.58 * r),
                (_SOFT, 0, 0, 0.52 * r, 0.48 * r),
                (_BONE, 0, 0.05, 0.26 * r, 0.22 * r),
                (_FAT, 0, 0.05, 0.17 * r, 0.14 * r),
            ]
        shapes = [
            (_FAT, 0, 0, 0.58, 1.0),
            (_SOFT, 0, 0, 0.48, 1.0),
            (_BONE, 0, -0.52, 0.22, 0.5),
            (_FAT, 0, -0.57, 0.13, 0.42),
            (_BONE, 0, 0.56, 0.20, 0.45),
            (_FAT, 0, 0.62, 0.11, 0.38),
            (_FLUID, 0, 0.03, 0.22, 0.035),
        ]
        if plane == "sagittal":
            shapes.append((_BONE, -0.36, -0.1, 0.06, 0.12))
        return shapes
    raise ValueError(f"unknown phantom {name!r}")


def _labels(
    name: str, t: float, plane: str, n: int, lesion: _Lesion | None
) -> npt.NDArray[np.uint8]:
    shapes = _phantom(name, t, plane)
    if lesion is not None and abs(t - 0.5) < 0.35:
        shapes.append((_LESION, lesion.cx, lesion.cy, lesion.r, lesion.r * 0.85))
    return _render(shapes, n)


def _ct_pixels(
    labels: npt.NDArray[np.uint8], contrast: str | None, nrng: np.random.Generator
) -> npt.NDArray[np.float32]:
    hu = _CT_HU[labels]
    if contrast == "arterial":
        hu = hu + np.where(labels == _BLOOD, 260.0, np.where(labels == _ORGAN, 25.0, 0.0))
    elif contrast == "venous":
        hu = hu + np.where(labels == _BLOOD, 140.0, np.where(labels == _ORGAN, 55.0, 0.0))
    return (hu + nrng.normal(0.0, 10.0, labels.shape)).astype(np.float32)


def _mr_pixels(
    labels: npt.NDArray[np.uint8], weighting: str, t: float, nrng: np.random.Generator
) -> npt.NDArray[np.uint16]:
    values = _MR_LUT.get(weighting, _MR_LUT["T1"])[labels]
    n = labels.shape[0]
    _, yy = _Grid.get(n)
    coil = 1.0 - 0.25 * (yy + 1.0) / 2.0 + 0.05 * math.cos(6.0 * t)  # receive-coil shading
    signal = values * coil
    noisy = np.hypot(
        signal + nrng.normal(0, 12.0, labels.shape), nrng.normal(0, 12.0, labels.shape)
    )
    return np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)


def _dx_pixels(labels: npt.NDArray[np.uint8], nrng: np.random.Generator) -> npt.NDArray[np.uint16]:
    sharp = _DX_LUT[labels]
    # A cheap 3x3 box blur: radiographs have soft edges.
    padded = np.pad(sharp, 1, mode="edge")
    n = sharp.shape[0]
    img = np.zeros_like(sharp)
    for i in range(3):
        for j in range(3):
            img += padded[i : i + n, j : j + n]
    xx, yy = _Grid.get(n)
    shaded = img / 9.0 * (1.0 - 0.08 * (xx**2 + yy**2)) + nrng.normal(0.0, 25.0, img.shape)
    return np.clip(np.rint(shaded), 0, 4095).astype(np.uint16)


_US_SCENES: Mapping[str, list[tuple[str, float, float, float, float]]] = {
    # region kind, cx, cy, a, b  (in the [-1, 1] frame, the probe at the top)
    "us_gallbladder": [("organ", 0.0, 0.2, 0.9, 0.6), ("fluid", 0.15, 0.25, 0.25, 0.12)],
    "us_thyroid": [
        ("organ", -0.38, 0.0, 0.26, 0.18),
        ("organ", 0.38, 0.0, 0.26, 0.18),
        ("bright", 0.0, -0.05, 0.14, 0.12),
        ("fluid", 0.0, -0.05, 0.11, 0.09),
    ],
    "us_cyst": [("organ", 0.0, 0.15, 0.6, 0.35), ("fluid", 0.0, 0.2, 0.15, 0.12)],
    "us_bladder": [("fluid", 0.0, -0.05, 0.35, 0.25), ("organ", 0.0, 0.48, 0.32, 0.18)],
    "us_heart": [
        ("organ", 0.0, 0.3, 0.55, 0.6),
        ("fluid", -0.16, 0.12, 0.12, 0.25),
        ("fluid", 0.16, 0.12, 0.12, 0.25),
        ("fluid", -0.16, 0.62, 0.12, 0.15),
        ("fluid", 0.16, 0.62, 0.12, 0.15),
    ],
}
_US_LEVEL = {"organ": 0.42, "fluid": 0.03, "bright": 0.85, "lesion": 0.14}


def _us_pixels(
    scene: str,
    t: float,
    n: int,
    color: bool,
    lesion: _Lesion | None,
    nrng: np.random.Generator,
) -> npt.NDArray[np.uint8]:
    """A sector scan with speckle; colour images add a Doppler patch and a colour bar."""
    xx, yy = _Grid.get(n)
    depth = np.hypot(xx, yy + 1.05)
    angle = np.arctan2(xx, yy + 1.05)
    sector = (depth > 0.12) & (depth < 2.0) & (np.abs(angle) < 0.62)
    level = np.full((n, n), 0.25, dtype=np.float32)
    shift = (t - 0.5) * 0.2
    fluid = np.zeros((n, n), dtype=bool)
    regions = list(_US_SCENES.get(scene, _US_SCENES["us_cyst"]))
    if lesion is not None:
        regions.append(("lesion", lesion.cx * 0.5, 0.25 + lesion.cy * 0.3, lesion.r, lesion.r))
    for kind, cx, cy, a, b in regions:
        mask = ((xx - cx - shift) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
        level[mask] = _US_LEVEL[kind]
        if kind == "fluid":
            fluid |= mask
    speckle = nrng.rayleigh(0.8, (n, n)).astype(np.float32)
    gain = 1.0 - 0.35 * depth / 2.0
    grey = np.where(sector, np.clip(level * speckle * gain * 255.0, 0, 255), 0.0)
    ticks = (np.abs(xx + 0.93) < 0.02) & (np.abs(((yy + 1.0) * 5.0) % 1.0 - 0.5) < 0.08)
    grey = np.where(ticks, 220.0, grey)
    if not color:
        mono: npt.NDArray[np.uint8] = np.rint(grey).astype(np.uint8)
        return mono
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    flow = fluid & sector & (nrng.random((n, n)) < 0.6)
    towards = xx < np.median(xx[fluid]) if fluid.any() else xx < 0
    rgb[flow & towards] = (200.0, 30.0, 30.0)
    rgb[flow & ~towards] = (30.0, 60.0, 210.0)
    bar = (xx > 0.9) & (np.abs(yy) < 0.5)
    rgb[bar, 0] = np.clip(128.0 - yy[bar] * 255.0, 0, 255)
    rgb[bar, 1] = 40.0
    rgb[bar, 2] = np.clip(128.0 + yy[bar] * 255.0, 0, 255)
    out: npt.NDArray[np.uint8] = np.rint(rgb).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Output

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Manifest:
    """What `generate` wrote; ``manifest.json`` holds all but ``root``."""

    root: Path
    seed: int
    patients: int
    image_size: int
    registry_version: str
    counts: Mapping[str, int]

    def as_json(self) -> Json:
        return {
            "generator": GENERATOR_VERSION,
            "seed": self.seed,
            "patients": self.patients,
            "image_size": self.image_size,
            "registry_version": self.registry_version,
            "window": [WINDOW_START.isoformat(), WINDOW_END.isoformat()],
            "counts": dict(self.counts),
        }


def seed_exists(data_dir: Path) -> bool:
    """True when ``data_dir/seed`` holds a complete generation (its manifest is written last)."""
    return (Path(data_dir) / "seed" / "manifest.json").is_file()


def read_manifest(data_dir: Path) -> Manifest:
    """Read ``data_dir/seed/manifest.json``."""
    root = Path(data_dir) / "seed"
    raw = _read_json(root / "manifest.json")
    return Manifest(
        root=root,
        seed=int(raw["seed"]),
        patients=int(raw["patients"]),
        image_size=int(raw["image_size"]),
        registry_version=str(raw["registry_version"]),
        counts={k: int(v) for k, v in raw["counts"].items()},
    )


def _ds(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    value = float(value) + 0.0  # no "-0"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def _dicom_age(birth: date, day: date) -> str:
    months = (day.year - birth.year) * 12 + day.month - birth.month - (day.day < birth.day)
    return f"{months // 12:03d}Y" if months >= 24 else f"{months:03d}M"


def _ct_signed(f: Facility) -> bool:
    """Half the facilities' CT store signed HU (intercept 0), half 12-bit unsigned (−1024)."""
    return hashlib.sha256(f.id.encode()).digest()[1] % 2 == 1


class _StudyWriter:
    """Writes one planned study as DICOM Part 10 files."""

    def __init__(self, root: Path, uid_base: str, image_size: int) -> None:
        self.root = root
        self.uid_base = uid_base
        self.n = image_size

    def write(self, st: _Study, seq: int) -> tuple[int, int]:
        f, proto = st.facility, st.protocol
        st.accession = f"{f.id}{st.when:%y%m%d}{seq:04d}"
        key = f"{self.uid_base}|{f.id}|{st.accession}"
        st.study_uid = _stable_uid(key + "|study")
        frame_uid = _stable_uid(key + "|frame-of-reference")
        nrng = np.random.default_rng(st.pixel_seed)
        lesion = None
        if st.abnormal:
            site = _LESION_SITE.get(proto.phantom, (0.0, 0.2))
            lesion = _Lesion(
                cx=site[0] + float(nrng.uniform(-0.05, 0.05)),
                cy=site[1] + float(nrng.uniform(-0.05, 0.05)),
                r=float(nrng.uniform(0.06, 0.11)),
            )
        table = float(nrng.integers(-60, 60))
        study_dir = self.root / f.id / st.study_uid
        instances = 0
        for si, sp in enumerate(st.series, start=1):
            series_uid = _stable_uid(f"{key}|series|{si}")
            series_dir = study_dir / series_uid
            series_dir.mkdir(parents=True, exist_ok=True)
            series_time = st.when + timedelta(minutes=2 * (si - 1))
            for ii in range(1, sp.instances + 1):
                sop_uid = _stable_uid(f"{key}|instance|{si}|{ii}")
                ds = self._header(st, sp, si, ii, series_uid, sop_uid, series_time)
                self._pixels(ds, st, sp, ii, lesion, nrng, frame_uid, table)
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
                meta.MediaStorageSOPInstanceUID = UID(sop_uid)
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
                meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
                ds.file_meta = meta
                ds.save_as(series_dir / f"{sop_uid}.dcm", enforce_file_format=True)
                instances += 1
        return len(st.series), instances

    def _header(
        self,
        st: _Study,
        sp: _SeriesPlan,
        si: int,
        ii: int,
        series_uid: str,
        sop_uid: str,
        series_time: datetime,
    ) -> Dataset:
        f, p, proto = st.facility, st.person, st.protocol
        content_time = series_time + timedelta(seconds=ii)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if proto.modality == "CT" else "OTHER"]
        ds.SOPClassUID = _SOP_CLASSES[proto.modality]
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = f"{st.when:%Y%m%d}"
        ds.SeriesDate = f"{series_time:%Y%m%d}"
        ds.ContentDate = f"{content_time:%Y%m%d}"
        ds.StudyTime = f"{st.when:%H%M%S}"
        ds.SeriesTime = f"{series_time:%H%M%S}"
        ds.ContentTime = f"{content_time:%H%M%S}"
        ds.AccessionNumber = st.accession
        issuer = Dataset()
        issuer.LocalNamespaceEntityID = f.mrn_issuer
        ds.IssuerOfAccessionNumberSequence = [issuer]
        ds.Modality = proto.modality
        ds.Manufacturer = "HUREN-SYNTHETIC"
        ds.InstitutionName = f.name_zh
        ds.ReferringPhysicianName = st.referring.dicom
        ds.TimezoneOffsetFromUTC = "+0800"
        ds.StationName = f"{f.id}{proto.modality}01"
        ds.StudyDescription = proto.description_zh
        ds.SeriesDescription = sp.spec.description
        ds.InstitutionalDepartmentName = proto.department_zh
        ds.ManufacturerModelName = f"Phantom {proto.modality}"
        ds.PatientName = p.name.dicom
        ds.PatientID = p.records[f.id]
        ds.IssuerOfPatientID = f.mrn_issuer
        ds.PatientBirthDate = f"{p.birth:%Y%m%d}"
        ds.PatientSex = p.sex
        other = Dataset()
        other.PatientID = p.national_id
        other.IssuerOfPatientID = NATIONAL_ID_ISSUER
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
        ds.PatientAge = _dicom_age(p.birth, st.when.date())
        ds.BodyPartExamined = proto.body_part
        ds.SoftwareVersions = GENERATOR_VERSION
        ds.StudyInstanceUID = st.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = str(int(st.accession[-4:]))
        ds.SeriesNumber = si
        ds.InstanceNumber = ii
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        return ds

    def _pixels(
        self,
        ds: Dataset,
        st: _Study,
        sp: _SeriesPlan,
        ii: int,
        lesion: _Lesion | None,
        nrng: np.random.Generator,
        frame_uid: str,
        table: float,
    ) -> None:
        n = self.n
        proto, spec = st.protocol, sp.spec
        modality = proto.modality
        t = (ii - 0.5) / sp.instances
        phantom = spec.phantom or proto.phantom
        ds.Rows = n
        ds.Columns = n
        if modality in ("CT", "MR"):
            fov = proto.fov_mm
            spacing = fov / n
            offset = (ii - 1 - (sp.instances - 1) / 2.0) * spec.thickness
            plane = spec.plane
            if plane == "sagittal":
                orientation = [0, 1, 0, 0, 0, -1]
                position = [offset, -fov / 2, fov / 2 + table]
                location = offset
            elif plane == "coronal":
                orientation = [1, 0, 0, 0, 0, -1]
                position = [-fov / 2, offset, fov / 2 + table]
                location = offset
            else:
                orientation = [1, 0, 0, 0, 1, 0]
                position = [-fov / 2, -fov / 2, table + offset]
                location = table + offset
            ds.PatientPosition = "HFS"
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceThickness = _ds(spec.thickness)
            ds.SpacingBetweenSlices = _ds(spec.thickness)
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.ImageOrientationPatient = [_ds(v) for v in orientation]
            ds.SliceLocation = _ds(location)
            ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            labels = _labels(phantom, t, plane, n, lesion)
            if modality == "CT":
                ds.KVP = "120"
                ds.ReconstructionDiameter = _ds(fov)
                ds.ConvolutionKernel = "LUNG" if (spec.window or (0, 0))[0] < -300 else "STANDARD"
                hu = _ct_pixels(labels, spec.contrast, nrng)
                if _ct_signed(st.facility):
                    stored = np.clip(np.rint(hu), -2048, 3071).astype(np.int16)
                    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
                    ds.RescaleIntercept = "0"
                else:
                    stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
                    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
                    ds.RescaleIntercept = "-1024"
                ds.RescaleSlope = "1"
                ds.RescaleType = "HU"
                center, width = spec.window or (40.0, 400.0)
                pixels: npt.NDArray[Any] = stored
            else:
                weighting = spec.weighting or "T1"
                gradient_echo = spec.description.startswith(("t1_fl", "t1_vibe"))
                ds.ScanningSequence = "GR" if gradient_echo else "SE"
                ds.SequenceVariant = "SP" if gradient_echo else "SK"
                ds.ScanOptions = "FS" if "_fs_" in spec.description else ""
                ds.MRAcquisitionType = "2D"
                ds.SequenceName = spec.description[:16]
                ds.RepetitionTime = _ds(spec.tr or 500.0)
                ds.EchoTime = _ds(spec.te or 15.0)
                ds.EchoTrainLength = 1 if gradient_echo else 16
                ds.MagneticFieldStrength = "1.5" if _ct_signed(st.facility) else "3"
                ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
                pixels = _mr_pixels(labels, weighting, t, nrng)
                center, width = {"T2": (650.0, 1300.0), "PD": (600.0, 1200.0)}.get(
                    weighting, (500.0, 1000.0)
                )
            ds.WindowCenter = _ds(center)
            ds.WindowWidth = _ds(width)
        elif modality in ("DX", "CR"):
            view = spec.view or "PA"
            plane = "sagittal" if view in ("LL", "RL") else "coronal"
            spacing = proto.fov_mm / n
            ds.ViewPosition = view
            ds.PatientOrientation = ["A", "F"] if plane == "sagittal" else ["L", "F"]
            ds.KVP = "110" if proto.body_part == "CHEST" else "75"
            ds.ImagerPixelSpacing = [_ds(spacing), _ds(spacing)]
            ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
            if modality == "DX":
                ds.PresentationIntentType = "FOR PRESENTATION"
                ds.DetectorType = "SCINTILLATOR"
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            labels = _labels(phantom, 0.5, plane, n, lesion)
            pixels = _dx_pixels(labels, nrng)
            ds.WindowCenter = "1900"
            ds.WindowWidth = "3600"
        else:  # US
            ds.PatientOrientation = ""
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            pixels = _us_pixels(phantom, t, n, sp.color, lesion, nrng)
            if sp.color:
                ds.SamplesPerPixel = 3
                ds.PhotometricInterpretation = "RGB"
                ds.PlanarConfiguration = 0
            else:
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
        data = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
        if len(data) % 2:
            data += b"\0"
        ds.add_new(0x7FE00010, "OW" if ds.BitsAllocated == 16 else "OB", data)


# --------------------------------------------------------------------------------------------
# FHIR R4 resources


def _fhir_time(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%S}{_TZ}"


def _quantity(value: float, item: LabItem) -> Json:
    number: float | int = int(value) if item.decimals == 0 else value
    return {"value": number, "unit": item.unit_display, "system": _UCUM, "code": item.unit}


def _patient_resource(pid: str, p: _Person, f: Facility) -> Json:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": _V2_0203, "code": "MR"}], "text": "病历号"},
                "system": f.mrn_system,
                "value": p.records[f.id],
            },
            {
                "use": "official",
                "type": {"coding": [{"system": _V2_0203, "code": "NI"}], "text": "居民身份证号"},
                "system": NATIONAL_ID_SYSTEM,
                "value": p.national_id,
            },
        ],
        "name": [
            {
                "use": "official",
                "text": p.name.text,
                "family": p.name.family,
                "given": [p.name.given],
            }
        ],
        "gender": "male" if p.sex == "M" else "female",
        "birthDate": p.birth.isoformat(),
        "address": [
            {
                "use": "home",
                "state": "江苏省",
                "city": "常州市",
                "district": p.district,
                "country": "CN",
            }
        ],
        "managingOrganization": {"display": f.name_zh},
    }


def _lab_code_system(f: Facility) -> str:
    return f"urn:huren:lab-code:{f.id}"


def _check_local_codes(registry: Registry, panels: Sequence[LabPanel], codes: LabCodeMap) -> None:
    """Every lab item has a local code at each facility the map lists."""
    for f in registry:
        system = _lab_code_system(f)
        if f.lab.kind == "none" or not codes.has_local_codes(system):
            continue
        missing = [
            item.code
            for panel in panels
            for item in panel.items
            if codes.to_local(system, _LOINC, item.code) is None
        ]
        if missing:
            raise ValueError(
                f"{LAB_CODES_PATH.name}: facility {f.id} has no local code for LOINC {missing}"
            )


def _observation_code(item: LabItem, f: Facility, codes: LabCodeMap) -> Json:
    system = _lab_code_system(f)
    if codes.has_local_codes(system):
        # This facility's LIS knows only its own item codes: no LOINC coding.
        local = codes.to_local(system, _LOINC, item.code)
        if local is None:  # _check_local_codes ran first
            raise ValueError(f"facility {f.id} has no local code for LOINC {item.code}")
        return {
            "coding": [{"system": system, "code": local, "display": item.name_zh}],
            "text": item.name_zh,
        }
    return {
        "coding": [
            {
                "system": _LOINC,
                "code": item.code,
                "display": item.display,
                "_display": {
                    "extension": [
                        {
                            "url": _TRANSLATION,
                            "extension": [
                                {"url": "lang", "valueCode": "zh-CN"},
                                {"url": "content", "valueString": item.name_zh},
                            ],
                        }
                    ]
                },
            },
            {"system": system, "code": item.abbr, "display": item.name_zh},
        ],
        "text": item.name_zh,
    }


def _observation(oid: str, r: _Result, lab: _LabTest, pid: str, codes: LabCodeMap) -> Json:
    item, ref = r.item, r.ref
    rng_json: Json = {}
    if ref.low is not None:
        rng_json["low"] = _quantity(ref.low, item)
    if ref.high is not None:
        rng_json["high"] = _quantity(ref.high, item)
    low_text = "" if ref.low is None else f"{ref.low:g}"
    rng_json["text"] = f"{low_text}-{ref.high:g}" if ref.high is not None else f"≥{low_text}"
    if ref.low is None:
        rng_json["text"] = f"<{ref.high:g}"
    display, text = _INTERPRETATION_TEXT[r.interpretation]
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {"coding": [{"system": _OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
        ],
        "code": _observation_code(item, lab.facility, codes),
        "subject": {"reference": f"Patient/{pid}", "display": lab.person.name.text},
        "effectiveDateTime": _fhir_time(lab.collected),
        "issued": _fhir_time(lab.issued),
        "performer": [{"display": lab.facility.name_zh}],
        "valueQuantity": _quantity(r.value, item),
        "interpretation": [
            {
                "coding": [
                    {"system": _INTERPRETATION, "code": r.interpretation, "display": display}
                ],
                "text": text,
            }
        ],
        "referenceRange": [rng_json],
    }


def _lab_report(rid: str, number: str, lab: _LabTest, pid: str, obs_ids: Sequence[str]) -> Json:
    panel = lab.panel
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "identifier": [{"system": f"urn:huren:lab-report:{lab.facility.id}", "value": number}],
        "status": "final",
        "category": [{"coding": [{"system": _V2_0074, "code": "LAB", "display": "Laboratory"}]}],
        "code": {
            "coding": [{"system": panel.system, "code": panel.code, "display": panel.display}],
            "text": panel.name_zh,
        },
        "subject": {"reference": f"Patient/{pid}", "display": lab.person.name.text},
        "effectiveDateTime": _fhir_time(lab.collected),
        "issued": _fhir_time(lab.issued),
        "performer": [{"display": lab.facility.name_zh}],
        "result": [{"reference": f"Observation/{oid}"} for oid in obs_ids],
    }


def _radiology_report(rid: str, st: _Study, pid: str) -> Json:
    proto = st.protocol
    text = (
        f"{st.facility.name_zh} {proto.department_zh}检查报告\n"
        f"检查项目：{proto.description_zh}\n"
        f"检查号：{st.accession}\n"
        f"检查所见：{st.findings}\n"
        f"诊断意见：{st.impression}\n"
        f"报告医师：{st.reader.text}\n"
    )
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "identifier": [
            {
                "use": "official",
                "type": {"coding": [{"system": _V2_0203, "code": "ACSN"}], "text": "检查号"},
                "system": f"urn:huren:accession:{st.facility.id}",
                "value": st.accession,
            },
            {"system": "urn:dicom:uid", "value": f"urn:oid:{st.study_uid}"},
        ],
        "status": "final",
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [
                {"system": _LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
            ],
            "text": proto.description_zh,
        },
        "subject": {"reference": f"Patient/{pid}", "display": st.person.name.text},
        "effectiveDateTime": _fhir_time(st.when),
        "issued": _fhir_time(st.when + timedelta(minutes=st.report_delay_min)),
        "performer": [{"display": st.facility.name_zh}],
        "resultsInterpreter": [{"display": st.reader.text}],
        "conclusion": st.impression,
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "zh-CN",
                "title": f"{proto.description_zh}报告",
                "data": base64.b64encode(text.encode()).decode("ascii"),
            }
        ],
    }


# --------------------------------------------------------------------------------------------
# generate()


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _ndjson_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def generate(
    data_dir: Path,
    *,
    patients: int,
    seed: int,
    registry: Registry | None = None,
    image_size: int = 64,
    lab_codes: LabCodeMap | None = None,
) -> Manifest:
    """Write a synthetic city into ``data_dir / "seed"``, replacing what was there.

    Parameters
    ----------
    data_dir
        The Huren data directory; the output goes to its ``seed`` folder.
    patients
        How many residents to invent (at least 1).
    seed
        Seed of the one `random.Random` everything is drawn from.
    registry
        The facility registry; default ``seeds/facilities.json``.
    image_size
        Rows and columns of every image (16 to 1024).
    lab_codes
        Which facilities code lab items in their own scheme, and how; default
        ``seeds/ConceptMap-lab-local-codes.json``.

    Returns
    -------
    Manifest
        What was written, as also stored in ``manifest.json``.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be within 16..1024, got {image_size}")
    if registry is None:
        registry = load_registry(_HERE / "facilities.json")
    catalogue = load_imaging_catalogue()
    panels = load_lab_panels()
    if lab_codes is None:
        lab_codes = LabCodeMap.load(LAB_CODES_PATH)
    _check_local_codes(registry, panels, lab_codes)
    for f in registry:
        for table in (catalogue.modality_weights, catalogue.studies_per_episode):
            if f.kind not in table:
                raise ValueError(f"imaging_protocols.json has no entry for facility kind {f.kind}")

    planner = _Planner(random.Random(seed), registry, catalogue, panels, load_name_parts())
    people = [planner.plan_person(i) for i in range(patients)]

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = data_dir / ".seed-partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "dicom").mkdir(parents=True)
    (partial / "fhir").mkdir()

    studies_by_facility: dict[str, list[_Study]] = {}
    for st in planner.studies:
        studies_by_facility.setdefault(st.facility.id, []).append(st)
    labs_by_facility: dict[str, list[_LabTest]] = {}
    for lab in planner.labs:
        labs_by_facility.setdefault(lab.facility.id, []).append(lab)

    writer = _StudyWriter(
        partial / "dicom",
        f"{GENERATOR_VERSION}|{seed}|{patients}|{registry.version}|{image_size}",
        image_size,
    )
    counts = dict.fromkeys(
        ("studies", "series", "instances", "observations", "diagnostic_reports"), 0
    )
    index: list[Json] = []
    for f in registry:
        studies = sorted(studies_by_facility.get(f.id, []), key=lambda s: (s.when, s.person.index))
        labs = sorted(labs_by_facility.get(f.id, []), key=lambda x: (x.collected, x.person.index))
        for seq, st in enumerate(studies, start=1):
            n_series, n_instances = writer.write(st, seq)
            st.report_id = f"{f.id}-rad{seq}"
            counts["studies"] += 1
            counts["series"] += n_series
            counts["instances"] += n_instances
            index.append(
                {
                    "facility_id": f.id,
                    "national_id": st.person.national_id,
                    "patient_id": st.person.records[f.id],
                    "study_instance_uid": st.study_uid,
                    "accession_number": st.accession,
                    "modality": st.protocol.modality,
                    "body_part": st.protocol.body_part,
                    "protocol": st.protocol.id,
                    "description": st.protocol.description_zh,
                    "study_datetime": _fhir_time(st.when),
                    "series": n_series,
                    "instances": n_instances,
                    "abnormal": st.abnormal,
                    "report_id": st.report_id,
                }
            )
        if f.lab.kind == "none" and not studies:
            continue
        local_ids: dict[int, str] = {}
        lines: list[str] = []
        for p in people:
            if f.id in p.records:
                local_ids[p.index] = f"{f.id}-p{len(local_ids) + 1}"
                lines.append(_ndjson_line(_patient_resource(local_ids[p.index], p, f)))
        n_obs = 0
        for k, lab in enumerate(labs, start=1):
            pid = local_ids[lab.person.index]
            obs_ids = []
            for r in lab.results:
                n_obs += 1
                obs_ids.append(f"{f.id}-obs{n_obs}")
                lines.append(_ndjson_line(_observation(obs_ids[-1], r, lab, pid, lab_codes)))
            number = f"{f.id}L{lab.collected:%y%m%d}{k:04d}"
            lines.append(_ndjson_line(_lab_report(f"{f.id}-lab{k}", number, lab, pid, obs_ids)))
        for st in studies:
            pid = local_ids[st.person.index]
            lines.append(_ndjson_line(_radiology_report(st.report_id, st, pid)))
        counts["observations"] += n_obs
        counts["diagnostic_reports"] += len(labs) + len(studies)
        (partial / "fhir" / f"{f.id}.ndjson").write_bytes(
            "".join(line + "\n" for line in lines).encode("utf-8")
        )

    (partial / "patients.json").write_bytes(
        _dump(
            [
                {
                    "national_id": p.national_id,
                    "name": p.name.text,
                    "name_pinyin": p.name.pinyin,
                    "name_dicom": p.name.dicom,
                    "sex": p.sex,
                    "birth_date": p.birth.isoformat(),
                    "district": p.district,
                    "records": p.records,
                }
                for p in people
            ]
        )
    )
    (partial / "studies.json").write_bytes(_dump(index))
    manifest = Manifest(
        root=data_dir / "seed",
        seed=seed,
        patients=patients,
        image_size=image_size,
        registry_version=registry.version,
        counts=counts,
    )
    (partial / "manifest.json").write_bytes(_dump(manifest.as_json()))

    final = data_dir / "seed"
    if final.exists():
        old = data_dir / ".seed-old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old)
    else:
        partial.rename(final)
    return manifest


def main_seed(data_dir: Path, patients: int, seed: int) -> None:
    """``huren seed``: generate and print a one-line summary."""
    started = time.perf_counter()
    m = generate(Path(data_dir), patients=patients, seed=seed)
    c = m.counts
    print(
        f"seeded {m.patients} patients (seed {m.seed}, registry {m.registry_version}) "
        f"into {m.root}: {c['studies']} studies, {c['series']} series, "
        f"{c['instances']} instances, {c['observations']} observations, "
        f"{c['diagnostic_reports']} diagnostic reports in {time.perf_counter() - started:.1f} s"
    )
