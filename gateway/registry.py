"""The facility registry: every public facility of the city, loaded and validated at start-up.

The data lives in ``seeds/facilities.json``; a file that does not validate is refused with a
message naming the entry and the field, never half-loaded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from adapters.types import (
    DicomWebEndpoint,
    DimseEndpoint,
    FhirEndpoint,
    Hl7v2Feed,
    ImagingEndpoint,
    LabEndpoint,
    NoImaging,
    NoLab,
)

from .errors import RegistryError

LEVELS = ("三级甲等", "三级乙等", "三级", "二级甲等", "二级乙等", "二级", "一级", "未定级")
KINDS = (
    "general",
    "tcm",
    "children",
    "maternal_child",
    "specialist",
    "public_health",
    "township",
    "community",
)
DISTRICTS = ("天宁区", "钟楼区", "新北区", "武进区", "金坛区", "溧阳市", "经开区")
ALLIANCE_KINDS = ("医联体", "医共体", "医疗集团")

_ID = re.compile(r"^F\d{3}$")
STATUSES = ("live", "pending", "disabled")
#: The fields a facility entry may have (the registry file's form).
FACILITY_FIELDS = frozenset(
    {
        "id",
        "name_zh",
        "name_en",
        "short_name_zh",
        "level",
        "kind",
        "district",
        "alliances",
        "mrn_issuer",
        "workstations",
        "imaging",
        "lab",
    }
)
_ALLIANCE_ID = re.compile(r"^A\d{2}$")
# DICOM AE titles: up to 16 characters, no backslash or control characters (PS3.5 6.2).
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


@dataclass(frozen=True, slots=True)
class Alliance:
    id: str
    name_zh: str
    name_en: str
    kind: str
    lead: str


@dataclass(frozen=True, slots=True)
class Facility:
    id: str
    name_zh: str
    name_en: str
    short_name_zh: str | None
    level: str
    kind: str
    district: str
    alliances: tuple[str, ...]
    mrn_issuer: str  # DICOM IssuerOfPatientID of this facility's local MRNs
    #: AE titles of the facility's DICOM workstations and viewers: a DIMSE association
    #: calling with one of them acts for the facility (and only such associations are taken).
    workstations: tuple[str, ...]
    imaging: ImagingEndpoint
    lab: LabEndpoint
    #: live: asked in federated searches; pending: registered, its conformance check not yet
    #: passed; disabled: kept in the registry, asked nothing.
    status: str = "live"

    @property
    def live(self) -> bool:
        return self.status == "live"

    @property
    def mrn_system(self) -> str:
        """The FHIR identifier system of this facility's local MRNs."""
        return f"urn:huren:mrn:{self.id}"


@dataclass(frozen=True, slots=True)
class Registry:
    version: str
    city: str
    facilities: tuple[Facility, ...]
    alliances: tuple[Alliance, ...]

    def __iter__(self) -> Iterator[Facility]:
        return iter(self.facilities)

    def __len__(self) -> int:
        return len(self.facilities)

    def get(self, facility_id: str) -> Facility | None:
        return self._by_id().get(facility_id)

    def __getitem__(self, facility_id: str) -> Facility:
        try:
            return self._by_id()[facility_id]
        except KeyError:
            raise KeyError(f"no facility {facility_id!r} in the registry") from None

    def _by_id(self) -> Mapping[str, Facility]:
        return _indexes(self).by_id

    def by_issuer(self, issuer: str) -> Facility | None:
        return _indexes(self).by_issuer.get(issuer)

    def by_mrn_system(self, system: str) -> Facility | None:
        """The facility whose local MRNs are in FHIR identifier system ``system``."""
        return _indexes(self).by_mrn_system.get(system)

    def by_workstation(self, ae_title: str) -> Facility | None:
        """The facility a registered workstation AE title belongs to."""
        return _indexes(self).by_workstation.get(ae_title)

    def by_sending_facility(self, sending_facility: str) -> Facility | None:
        """The facility whose HL7 v2 feed sends as MSH-4 ``sending_facility``."""
        return _indexes(self).by_sending_facility.get(sending_facility)

    def put(self, facility: Facility) -> None:
        """Add or replace one facility, in place (a registration through the admin API).

        Every part of the gateway holds this one registry, so the change is seen by all of
        them at once; the check that the facility does not clash with another is here.
        """
        if any(f.id == facility.id for f in self.facilities):
            replaced = tuple(facility if f.id == facility.id else f for f in self.facilities)
        else:
            replaced = (*self.facilities, facility)
        _check_unique(replaced, self.alliances)
        object.__setattr__(self, "facilities", replaced)  # frozen: this is the one writer
        _INDEXES.pop(id(self), None)


@dataclass(frozen=True, slots=True)
class _Indexes:
    by_id: Mapping[str, Facility]
    by_issuer: Mapping[str, Facility]
    by_mrn_system: Mapping[str, Facility]
    by_workstation: Mapping[str, Facility]
    by_sending_facility: Mapping[str, Facility]


_INDEXES: dict[int, tuple[Registry, _Indexes]] = {}


def _indexes(registry: Registry) -> _Indexes:
    """The registry's lookup tables, built once per registry (they are read per request)."""
    kept = _INDEXES.get(id(registry))
    if kept is not None and kept[0] is registry:
        return kept[1]
    fs = registry.facilities
    built = _Indexes(
        by_id={f.id: f for f in fs},
        by_issuer={f.mrn_issuer: f for f in fs},
        by_mrn_system={f.mrn_system: f for f in fs},
        by_workstation={title: f for f in fs for title in f.workstations},
        by_sending_facility={f.lab.sending_facility: f for f in fs if isinstance(f.lab, Hl7v2Feed)},
    )
    if len(_INDEXES) > 64:  # registries replaced over time: keep the recent ones
        _INDEXES.clear()
    _INDEXES[id(registry)] = (registry, built)
    return built


def default_registry_path() -> Path:
    return Path(str(resources.files("seeds").joinpath("facilities.json")))


def load_registry(path: Path | str | None = None) -> Registry:
    """Read and validate a registry file; raise `RegistryError` naming entry and field."""
    path = Path(path) if path is not None else default_registry_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path} is not UTF-8 JSON: {exc}") from None
    return parse_registry(raw)


def parse_registry(raw: Any) -> Registry:
    if not isinstance(raw, dict):
        raise RegistryError("top level must be an object")
    version = _text(raw, "version", None)
    city = _text(raw, "city", None)
    alliances = tuple(_alliance(a, i) for i, a in enumerate(_list(raw, "alliances", None)))
    facilities = tuple(_facility(f, i) for i, f in enumerate(_list(raw, "facilities", None)))
    _check_unique(facilities, alliances)
    return Registry(version=version, city=city, facilities=facilities, alliances=alliances)


def parse_facility(raw: Any, registry: Registry, *, status: str = "pending") -> Facility:
    """One facility in the registry file's form (a registration through the admin API),
    checked like the file's entries, and against the registry's alliances."""
    facility = _facility(raw, 0)
    unknown = sorted(set(raw) - FACILITY_FIELDS)
    if unknown:
        raise RegistryError(f"unknown fields {unknown}", entry=facility.id)
    known = {a.id for a in registry.alliances}
    for alliance in facility.alliances:
        if alliance not in known:
            raise RegistryError(f"no alliance {alliance}", entry=facility.id, field="alliances")
    if status not in STATUSES:
        raise RegistryError(f"status is one of {list(STATUSES)}", entry=facility.id)
    return dataclasses.replace(facility, status=status)


def facility_json(f: Facility) -> dict[str, Any]:
    """A facility in the registry file's form (what the admin API answers)."""
    out: dict[str, Any] = {
        "id": f.id,
        "name_zh": f.name_zh,
        "name_en": f.name_en,
        "level": f.level,
        "kind": f.kind,
        "district": f.district,
        "alliances": list(f.alliances),
        "mrn_issuer": f.mrn_issuer,
        "workstations": list(f.workstations),
        "imaging": _endpoint_json(f.imaging),
        "lab": _endpoint_json(f.lab),
    }
    if f.short_name_zh is not None:
        out["short_name_zh"] = f.short_name_zh
    return out


def _endpoint_json(endpoint: ImagingEndpoint | LabEndpoint) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(endpoint).items()}


def _alliance(raw: Any, index: int) -> Alliance:
    entry = f"alliances[{index}]"
    if not isinstance(raw, dict):
        raise RegistryError("must be an object", entry=entry)
    entry = str(raw.get("id", entry))
    alliance = Alliance(
        id=_match(raw, "id", entry, _ALLIANCE_ID, "like A01"),
        name_zh=_text(raw, "name_zh", entry),
        name_en=_text(raw, "name_en", entry),
        kind=_choice(raw, "kind", entry, ALLIANCE_KINDS),
        lead=_match(raw, "lead", entry, _ID, "a facility id like F001"),
    )
    return alliance


def _facility(raw: Any, index: int) -> Facility:
    entry = f"facilities[{index}]"
    if not isinstance(raw, dict):
        raise RegistryError("must be an object", entry=entry)
    entry = str(raw.get("id", entry))
    short = raw.get("short_name_zh")
    if short is not None and not (isinstance(short, str) and short.strip()):
        raise RegistryError(
            "must be a non-empty string when present", entry=entry, field="short_name_zh"
        )
    alliances = _list(raw, "alliances", entry)
    for a in alliances:
        if not (isinstance(a, str) and _ALLIANCE_ID.fullmatch(a)):
            raise RegistryError(
                f"expected alliance ids like A01, got {a!r}", entry=entry, field="alliances"
            )
    return Facility(
        id=_match(raw, "id", entry, _ID, "like F001"),
        name_zh=_text(raw, "name_zh", entry),
        name_en=_text(raw, "name_en", entry),
        short_name_zh=short,
        level=_choice(raw, "level", entry, LEVELS),
        kind=_choice(raw, "kind", entry, KINDS),
        district=_choice(raw, "district", entry, DISTRICTS),
        alliances=tuple(alliances),
        mrn_issuer=_text(raw, "mrn_issuer", entry, max_len=64),
        workstations=_workstations(raw, entry),
        imaging=_imaging(raw.get("imaging"), entry),
        lab=_lab(raw.get("lab"), entry),
    )


def _workstations(raw: Any, entry: str) -> tuple[str, ...]:
    titles = raw.get("workstations", [])
    if not isinstance(titles, list):
        raise RegistryError("must be a list of AE titles", entry=entry, field="workstations")
    for title in titles:
        if not (isinstance(title, str) and _AE_TITLE.fullmatch(title)):
            raise RegistryError(
                f"expected AE titles of 1-16 printable ASCII characters, got {title!r}",
                entry=entry,
                field="workstations",
            )
    return tuple(titles)


def _imaging(raw: Any, entry: str) -> ImagingEndpoint:
    kind = _system_kind(raw, entry, "imaging", ("dicomweb", "dimse", "none"))
    if kind == "dicomweb":
        return DicomWebEndpoint("dicomweb", _url(raw, entry, "imaging.url"))
    if kind == "dimse":
        port = raw.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise RegistryError(
                f"expected a TCP port, got {port!r}", entry=entry, field="imaging.port"
            )
        return DimseEndpoint(
            "dimse",
            host=_text(raw, "host", entry, field="imaging.host"),
            port=port,
            ae_title=_match(
                raw,
                "ae_title",
                entry,
                _AE_TITLE,
                "1-16 printable ASCII characters",
                field="imaging.ae_title",
            ),
        )
    return NoImaging("none")


def _lab(raw: Any, entry: str) -> LabEndpoint:
    kind = _system_kind(raw, entry, "lab", ("fhir", "hl7v2", "none"))
    if kind == "fhir":
        return FhirEndpoint("fhir", _url(raw, entry, "lab.url"))
    if kind == "hl7v2":
        return Hl7v2Feed(
            "hl7v2",
            sending_application=_text(
                raw, "sending_application", entry, field="lab.sending_application"
            ),
            sending_facility=_text(raw, "sending_facility", entry, field="lab.sending_facility"),
        )
    return NoLab("none")


def _system_kind(raw: Any, entry: str, name: str, kinds: tuple[str, ...]) -> str:
    if not isinstance(raw, dict):
        raise RegistryError(
            f"expected an object with 'kind' one of {list(kinds)}, got {raw!r}",
            entry=entry,
            field=name,
        )
    return _choice(raw, "kind", entry, kinds, field=f"{name}.kind")


def _url(raw: dict[str, Any], entry: str, field: str) -> str:
    url = _text(raw, "url", entry, field=field)
    if not url.startswith(("http://", "https://")):
        raise RegistryError(f"expected an http(s) URL, got {url!r}", entry=entry, field=field)
    return url.rstrip("/")


def _text(
    raw: dict[str, Any],
    key: str,
    entry: str | None,
    *,
    field: str | None = None,
    max_len: int = 200,
) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise RegistryError(
            f"expected a non-empty string of at most {max_len} characters, got {value!r}",
            entry=entry,
            field=field or key,
        )
    return value


def _list(raw: dict[str, Any], key: str, entry: str | None) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise RegistryError(f"expected a list, got {value!r}", entry=entry, field=key)
    return value


def _choice(
    raw: dict[str, Any], key: str, entry: str, choices: tuple[str, ...], *, field: str | None = None
) -> str:
    value = raw.get(key)
    if value not in choices:
        raise RegistryError(
            f"expected one of {list(choices)}, got {value!r}", entry=entry, field=field or key
        )
    return str(value)


def _match(
    raw: dict[str, Any],
    key: str,
    entry: str,
    pattern: re.Pattern[str],
    expected: str,
    *,
    field: str | None = None,
) -> str:
    value = raw.get(key)
    # fullmatch: with match(), "$" also accepts a trailing newline ("F001\n").
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RegistryError(f"expected {expected}, got {value!r}", entry=entry, field=field or key)
    return value


def _check_unique(facilities: tuple[Facility, ...], alliances: tuple[Alliance, ...]) -> None:
    seen: dict[str, str] = {}
    for f in facilities:
        unique = [("id", f.id), ("mrn_issuer", f.mrn_issuer), ("name_zh", f.name_zh)]
        unique += [("workstations", title) for title in f.workstations]
        for field, value in unique:
            key = f"{field}={value}"
            if key in seen:
                raise RegistryError(
                    f"{value!r} is already used by {seen[key]}", entry=f.id, field=field
                )
            seen[key] = f.id
    endpoints: dict[tuple[str, int], str] = {}
    for f in facilities:
        if isinstance(f.imaging, DimseEndpoint):
            where = (f.imaging.host, f.imaging.port)
            if where in endpoints:
                raise RegistryError(
                    f"DIMSE port {where} is already used by {endpoints[where]}",
                    entry=f.id,
                    field="imaging.port",
                )
            endpoints[where] = f.id
    alliance_ids: set[str] = set()
    for a in alliances:
        if a.id in alliance_ids:
            raise RegistryError(
                f"{a.id!r} is already used by another alliance", entry=a.id, field="id"
            )
        alliance_ids.add(a.id)
    facility_ids = {f.id for f in facilities}
    for a in alliances:
        if a.lead not in facility_ids:
            raise RegistryError(f"lead {a.lead!r} is not a facility", entry=a.id, field="lead")
    for f in facilities:
        for a_id in f.alliances:
            if a_id not in alliance_ids:
                raise RegistryError(f"unknown alliance {a_id!r}", entry=f.id, field="alliances")
