"""The shipped facility registry (seeds/facilities.json) and the loader's refusals."""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.types import DicomWebEndpoint, DimseEndpoint, FhirEndpoint, Hl7v2Feed
from gateway.errors import RegistryError
from gateway.registry import (
    ALLIANCE_KINDS,
    Registry,
    default_registry_path,
    load_registry,
    parse_registry,
)

NAMED = {
    # name_zh: (short_name_zh, district) as the city's documents give them
    "常州市第一人民医院": ("市一院", None),
    "常州市第二人民医院": ("市二院", None),
    "常州市中医医院": ("市中医院", None),
    "常州市儿童医院": (None, "天宁区"),
    "常州市妇幼保健院": ("市妇保院", "钟楼区"),
    "钟楼区公共卫生中心": (None, "钟楼区"),
    "邹区人民医院": (None, "钟楼区"),
    "南大街社区卫生服务中心": (None, "钟楼区"),
    "荷花池社区卫生服务中心": (None, "钟楼区"),
    "郑陆镇卫生院": (None, "天宁区"),
    "焦溪卫生院": (None, "天宁区"),
    "金坛区第一人民医院": ("金坛一院", "金坛区"),
    "金坛区中医医院": (None, "金坛区"),
    "金坛区第三人民医院": (None, "金坛区"),
    "直溪中心卫生院": (None, "金坛区"),
}


@functools.cache
def _shipped_text() -> str:
    return default_registry_path().read_text(encoding="utf-8")


@pytest.fixture
def raw() -> dict[str, Any]:
    """A fresh, mutable copy of the shipped registry JSON."""
    return copy.deepcopy(json.loads(_shipped_text()))


@pytest.fixture
def registry() -> Registry:
    """The shipped registry, loaded through the default path."""
    return load_registry()


def _index(raw: dict[str, Any], facility_id: str) -> int:
    return next(i for i, f in enumerate(raw["facilities"]) if f["id"] == facility_id)


def _refused(raw: dict[str, Any]) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_registry(raw)
    return info.value


def test_shipped_registry_loads_with_111_facilities(registry: Registry) -> None:
    """The shipped registry validates and holds exactly the city's 111 public facilities."""
    assert len(registry) == 111
    assert registry.city == "常州市"
    assert registry.version == "2026.11.1"
    assert default_registry_path().name == "facilities.json"


def test_named_facilities_are_present(registry: Registry) -> None:
    """Every facility the city's documents name is in the registry, with its short name."""
    by_name = {f.name_zh: f for f in registry}
    for name, (short, district) in NAMED.items():
        assert name in by_name, name
        facility = by_name[name]
        assert facility.short_name_zh == short, name
        if district is not None:
            assert facility.district == district, name
    first = registry["F001"]
    assert first.name_zh == "常州市第一人民医院"
    assert first.level == "三级甲等"


def test_zhenglu_keeps_its_legacy_pacs(registry: Registry) -> None:
    """郑陆镇卫生院, which has CT and MRI, is reached over DIMSE."""
    zhenglu = next(f for f in registry if f.name_zh == "郑陆镇卫生院")
    assert isinstance(zhenglu.imaging, DimseEndpoint)


def test_ids_are_unique_and_sequential(registry: Registry) -> None:
    """Ids run F001..F111 in order; MRN issuers and Chinese names are unique."""
    ids = [f.id for f in registry]
    assert ids == [f"F{n:03d}" for n in range(1, 112)]
    assert all(f.mrn_issuer == f"CZ-{f.id}" for f in registry)
    assert len({f.name_zh for f in registry}) == 111
    assert len({f.name_en for f in registry}) == 111
    assert registry.by_issuer("CZ-F042") is registry.get("F042")
    assert registry["F001"].mrn_system == "urn:huren:mrn:F001"
    with pytest.raises(KeyError, match="F112"):
        registry["F112"]


def test_systems_mix_covers_every_kind(registry: Registry) -> None:
    """Imaging and lab systems mix all kinds, in the proportions later code relies on."""
    imaging = Counter(f.imaging.kind for f in registry)
    lab = Counter(f.lab.kind for f in registry)
    assert set(imaging) == {"dicomweb", "dimse", "none"}
    assert set(lab) == {"fhir", "hl7v2", "none"}
    assert 55 <= imaging["dicomweb"] <= 65
    assert 20 <= imaging["dimse"] <= 30
    assert 20 <= imaging["none"] <= 30
    assert lab["hl7v2"] >= 15
    assert lab["fhir"] >= 30
    # Every tertiary hospital speaks DICOMweb.
    assert all(isinstance(f.imaging, DicomWebEndpoint) for f in registry if "三级" in f.level)


def test_endpoints_follow_the_port_plan(registry: Registry) -> None:
    """Facility n serves HTTP on 18000+n and DIMSE on 19000+n, AE title F0xxPACS."""
    for f in registry:
        n = int(f.id[1:])
        if isinstance(f.imaging, DicomWebEndpoint):
            assert f.imaging.url == f"http://127.0.0.1:{18000 + n}/dicomweb"
        if isinstance(f.imaging, DimseEndpoint):
            assert (f.imaging.host, f.imaging.port) == ("127.0.0.1", 19000 + n)
            assert f.imaging.ae_title == f"{f.id}PACS"
        if isinstance(f.lab, FhirEndpoint):
            assert f.lab.url == f"http://127.0.0.1:{18000 + n}/fhir"
        if isinstance(f.lab, Hl7v2Feed):
            assert (f.lab.sending_application, f.lab.sending_facility) == (f"{f.id}LIS", f.id)


def test_every_alliance_has_members(registry: Registry) -> None:
    """Each alliance has members, and its lead is one of them."""
    assert 6 <= len(registry.alliances) <= 9
    for alliance in registry.alliances:
        assert alliance.kind in ALLIANCE_KINDS
        members = [f.id for f in registry if alliance.id in f.alliances]
        assert len(members) >= 2, alliance.id
        assert alliance.lead in members, alliance.id
    primary = [f for f in registry if f.kind in ("township", "community")]
    assert sum(1 for f in primary if f.alliances) > len(primary) // 2


def test_bad_level_is_refused(raw: dict[str, Any]) -> None:
    """A level outside the national grades names the entry and the field."""
    raw["facilities"][3]["level"] = "三甲"
    err = _refused(raw)
    assert (err.entry, err.field) == ("F004", "level")
    assert "entry F004" in str(err)
    assert "field 'level'" in str(err)
    assert "'三甲'" in str(err)


def test_missing_name_en_is_refused(raw: dict[str, Any]) -> None:
    """A facility without an English name is refused."""
    del raw["facilities"][9]["name_en"]
    err = _refused(raw)
    assert (err.entry, err.field) == ("F010", "name_en")
    assert "entry F010 field 'name_en'" in str(err)
    assert "got None" in str(err)


def test_duplicate_id_is_refused(raw: dict[str, Any]) -> None:
    """Two facilities with the same id are refused, naming the one already holding it."""
    raw["facilities"][1]["id"] = "F001"
    err = _refused(raw)
    assert (err.entry, err.field) == ("F001", "id")
    assert "'F001' is already used by F001" in str(err)


def test_duplicate_name_is_refused(raw: dict[str, Any]) -> None:
    """Two facilities with the same Chinese name are refused."""
    raw["facilities"][1]["name_zh"] = "常州市第一人民医院"
    err = _refused(raw)
    assert (err.entry, err.field) == ("F002", "name_zh")
    assert "already used by F001" in str(err)


def test_unknown_alliance_is_refused(raw: dict[str, Any]) -> None:
    """A facility naming an alliance that does not exist is refused."""
    raw["facilities"][10]["alliances"] = ["A99"]
    err = _refused(raw)
    assert (err.entry, err.field) == ("F011", "alliances")
    assert "unknown alliance 'A99'" in str(err)


def test_unknown_alliance_lead_is_refused(raw: dict[str, Any]) -> None:
    """An alliance led by a facility that does not exist is refused."""
    raw["alliances"][0]["lead"] = "F999"
    err = _refused(raw)
    assert (err.entry, err.field) == ("A01", "lead")
    assert "'F999' is not a facility" in str(err)


def test_duplicate_alliance_id_is_refused(raw: dict[str, Any]) -> None:
    """Two alliances with the same id are refused."""
    raw["alliances"][1]["id"] = "A01"
    err = _refused(raw)
    assert (err.entry, err.field) == ("A01", "id")
    assert "already used by another alliance" in str(err)


def test_bad_imaging_kind_is_refused(raw: dict[str, Any]) -> None:
    """An imaging system of an unknown kind is refused."""
    raw["facilities"][0]["imaging"] = {"kind": "wado-uri", "url": "http://127.0.0.1:18001/wado"}
    err = _refused(raw)
    assert (err.entry, err.field) == ("F001", "imaging.kind")
    assert "entry F001 field 'imaging.kind'" in str(err)
    assert "'wado-uri'" in str(err)


def test_missing_imaging_is_refused(raw: dict[str, Any]) -> None:
    """A facility without an imaging object is refused rather than defaulted."""
    del raw["facilities"][0]["imaging"]
    err = _refused(raw)
    assert (err.entry, err.field) == ("F001", "imaging")


@pytest.mark.parametrize("port", [0, 70000, "19001", True, None])
def test_bad_dimse_port_is_refused(raw: dict[str, Any], port: object) -> None:
    """A DIMSE port that is not an integer in 1..65535 is refused."""
    i = next(i for i, f in enumerate(raw["facilities"]) if f["imaging"]["kind"] == "dimse")
    facility_id = raw["facilities"][i]["id"]
    raw["facilities"][i]["imaging"]["port"] = port
    err = _refused(raw)
    assert (err.entry, err.field) == (facility_id, "imaging.port")
    assert f"entry {facility_id} field 'imaging.port'" in str(err)
    assert f"got {port!r}" in str(err)


def test_shared_dimse_port_is_refused(raw: dict[str, Any]) -> None:
    """Two facilities listening on the same DIMSE host and port are refused."""
    first, second = [f for f in raw["facilities"] if f["imaging"]["kind"] == "dimse"][:2]
    second["imaging"]["port"] = first["imaging"]["port"]
    err = _refused(raw)
    assert (err.entry, err.field) == (second["id"], "imaging.port")
    assert f"already used by {first['id']}" in str(err)


def test_trailing_newline_in_ids_is_refused(raw: dict[str, Any]) -> None:
    """Ids and AE titles must match their pattern whole, not up to a trailing newline."""
    raw["facilities"][0]["id"] = "F001\n"
    assert _refused(raw).field == "id"
    raw = json.loads(_shipped_text())
    i = _index(raw, "F010")
    raw["facilities"][i]["imaging"]["ae_title"] = "F010PACS\n"
    err = _refused(raw)
    assert (err.entry, err.field) == ("F010", "imaging.ae_title")


def test_non_json_file_is_refused(tmp_path: Path) -> None:
    """A file that is not JSON is refused with its path, before any entry is read."""
    path = tmp_path / "x.json"
    path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    err = info.value
    assert (err.entry, err.field) == (None, None)
    assert str(path) in str(err)
    assert "is not UTF-8 JSON" in str(err)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A registry path that does not exist is refused, not silently empty."""
    with pytest.raises(RegistryError, match="file not found"):
        load_registry(tmp_path / "absent.json")
