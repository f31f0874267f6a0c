"""Facilities' local lab codes to LOINC: the shipped ConceptMap and the loader's refusals."""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.conceptmap import ConceptMap

from gateway.errors import ConfigError
from gateway.lab_codes import DEFAULT_PATH, LOINC_SYSTEM, LabCodeMap
from gateway.registry import load_registry

LAB_PANELS = Path(__file__).resolve().parents[2] / "seeds" / "lab_panels.json"
WBC = "6690-2"


def _lab(fid: str) -> str:
    return f"urn:huren:lab-code:{fid}"


@functools.cache
def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    return data


@functools.cache
def _items() -> dict[str, str]:
    """LOINC code -> Chinese name of every item in seeds/lab_panels.json."""
    panels = json.loads(LAB_PANELS.read_text(encoding="utf-8"))["panels"]
    return {item["code"]: item["name_zh"] for p in panels for item in p["items"]}


@pytest.fixture(scope="module")
def codes() -> LabCodeMap:
    return LabCodeMap.load()


def _observation(*codings: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [dict(c) for c in codings], "text": "白细胞计数"},
        "valueQuantity": {"value": 5.1},
    }


# -- the shipped map --------------------------------------------------------------------------


def test_shipped_map_is_a_valid_fhir_r4_conceptmap() -> None:
    """The file validates with fhir.resources and names itself as the task says."""
    cm = ConceptMap.model_validate(_shipped())
    assert cm.id == "lab-local-codes"
    assert cm.url == "urn:huren:ConceptMap/lab-local-codes"
    assert cm.status == "active" and cm.version
    assert cm.title and any("\u4e00" <= ch <= "\u9fff" for ch in cm.description or "")


def test_shipped_map_covers_every_item_at_about_a_third_of_the_labs() -> None:
    """One group per listed lab facility (both FHIR and HL7 v2 kinds), each mapping every
    lab item once to LOINC, with local codes unique within the facility."""
    registry = load_registry()
    labs = {f.id: f.lab.kind for f in registry if f.lab.kind != "none"}
    groups = _shipped()["group"]
    fids = [g["source"].removeprefix("urn:huren:lab-code:") for g in groups]
    assert len(set(fids)) == len(fids) and set(fids) <= set(labs)
    assert len(labs) / 4 <= len(fids) <= len(labs) / 2
    assert Counter(labs[fid] for fid in fids).keys() == {"fhir", "hl7v2"}
    for group in groups:
        assert group["target"] == LOINC_SYSTEM
        local = [e["code"] for e in group["element"]]
        assert len(set(local)) == len(local), group["source"]
        targets = [e["target"][0]["code"] for e in group["element"]]
        assert sorted(targets) == sorted(_items()), group["source"]
        for e in group["element"]:
            assert e["display"] == _items()[e["target"][0]["code"]]
            assert e["target"][0]["equivalence"] == "equivalent"


def test_facilities_use_different_local_code_styles(codes: LabCodeMap) -> None:
    """The same test has different local codes at different facilities."""
    wbc = {s: codes.to_local(s, LOINC_SYSTEM, WBC) for s in codes.sources}
    assert None not in wbc.values()
    assert len(set(wbc.values())) >= 4


def test_same_item_from_two_facilities_is_the_same_loinc(codes: LabCodeMap) -> None:
    """WBC at F001 and at F004 carry different local codes and translate to one LOINC code."""
    a = codes.to_local(_lab("F001"), LOINC_SYSTEM, WBC)
    b = codes.to_local(_lab("F004"), LOINC_SYSTEM, WBC)
    assert a and b and a != b
    assert codes.to_standard(_lab("F001"), a) == codes.to_standard(_lab("F004"), b)
    assert codes.to_standard(_lab("F001"), a) == (
        LOINC_SYSTEM,
        WBC,
        "Leukocytes [#/volume] in Blood by Automated count",
    )
    obs_a = _observation({"system": _lab("F001"), "code": a})
    obs_b = _observation({"system": _lab("F004"), "code": b})
    assert codes.standard_code(obs_a) == codes.standard_code(obs_b) == WBC
    # The local code of one facility means nothing at another.
    assert codes.to_standard(_lab("F004"), a) is None


def test_reverse_mapping(codes: LabCodeMap) -> None:
    """to_local answers in the facility's own codes, and only for what the map holds."""
    for loinc in _items():
        local = codes.to_local(_lab("F010"), LOINC_SYSTEM, loinc)
        assert local is not None
        mapped = codes.to_standard(_lab("F010"), local, LOINC_SYSTEM)
        assert mapped is not None and mapped[1] == loinc
    assert codes.to_local(_lab("F010"), LOINC_SYSTEM, "0000-0") is None
    assert codes.to_local(_lab("F010"), "http://snomed.info/sct", WBC) is None
    assert codes.to_local(_lab("F002"), LOINC_SYSTEM, WBC) is None


def test_has_local_codes(codes: LabCodeMap) -> None:
    assert codes.has_local_codes(_lab("F001"))
    assert not codes.has_local_codes(_lab("F002"))
    assert not codes.has_local_codes(LOINC_SYSTEM)
    assert len(codes) == len(_shipped()["group"]) * len(_items())
    assert codes.version == _shipped()["version"]


# -- translate ------------------------------------------------------------------------------


def test_translate_adds_loinc_after_the_local_coding(codes: LabCodeMap) -> None:
    local = codes.to_local(_lab("F004"), LOINC_SYSTEM, WBC)
    assert local is not None
    obs = _observation(
        {"system": _lab("F004"), "code": local, "display": "白细胞计数"},
        {"system": "urn:other", "code": "x"},
    )
    before = copy.deepcopy(obs)
    out = codes.translate(obs)
    assert obs == before  # the argument is not changed
    assert out["code"]["coding"] == [
        {"system": _lab("F004"), "code": local, "display": "白细胞计数"},
        {
            "system": LOINC_SYSTEM,
            "code": WBC,
            "display": "Leukocytes [#/volume] in Blood by Automated count",
        },
        {"system": "urn:other", "code": "x"},
    ]
    assert out["code"]["text"] == "白细胞计数" and out["valueQuantity"] == obs["valueQuantity"]
    assert codes.translate(out) is out  # already translated


def test_translate_leaves_loinc_coded_resources_alone(codes: LabCodeMap) -> None:
    """A resource already in LOINC, or with no mapped coding, comes back as it is."""
    local = codes.to_local(_lab("F001"), LOINC_SYSTEM, "718-7")
    assert local is not None
    both = _observation(
        {"system": LOINC_SYSTEM, "code": "718-7"}, {"system": _lab("F001"), "code": local}
    )
    assert codes.translate(both) is both
    assert codes.standard_code(both) == "718-7"
    unmapped = _observation({"system": _lab("F002"), "code": "WBC"})
    assert codes.translate(unmapped) is unmapped
    assert codes.standard_code(unmapped) is None
    unknown_code = _observation({"system": _lab("F001"), "code": "NO-SUCH"})
    assert codes.translate(unknown_code) is unknown_code
    for odd in ({"resourceType": "Patient"}, {"code": "x"}, {"code": {"text": "t"}}):
        assert codes.translate(odd) is odd
        assert codes.standard_code(odd) is None


def test_empty_map_translates_nothing() -> None:
    empty = LabCodeMap.empty()
    obs = _observation({"system": _lab("F001"), "code": "WBC"})
    assert empty.translate(obs) is obs
    assert empty.standard_code(obs) is None
    assert empty.standard_code(_observation({"system": LOINC_SYSTEM, "code": WBC})) == WBC
    assert not empty.has_local_codes(_lab("F001")) and len(empty) == 0


# -- refusals -------------------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    def element(code: str, loinc: str) -> dict[str, Any]:
        return {"code": code, "target": [{"code": loinc, "equivalence": "equivalent"}]}

    return {
        "resourceType": "ConceptMap",
        "status": "active",
        "group": [
            {
                "source": _lab("F001"),
                "target": LOINC_SYSTEM,
                "element": [element("WBC", WBC), element("HGB", "718-7")],
            },
            {
                "source": _lab("F002"),
                "target": LOINC_SYSTEM,
                "element": [element("1001", WBC)],
            },
        ],
    }


def _spoil(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with value ... delete) the item at a dotted path such as group.1.element.0."""
    *parents, last = path.split(".")
    node: Any = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key_: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key_]
    else:
        node[key_] = value


BAD = [
    ("resourceType", "ValueSet", r"expected a FHIR ConceptMap, got 'ValueSet'"),
    ("group", {"source": "x"}, r"group must be a list"),
    ("group.0.source", ..., r"group 1: source must be a non-empty"),
    ("group.1.target", "", r"group 2 \(urn:huren:lab-code:F002\): target must be"),
    ("group.1.element", [], r"group 2 \(urn:huren:lab-code:F002\): element must be a non-empty"),
    ("group.0.element.1.code", ..., r"group 1 \(urn:huren:lab-code:F001\), element 2: code"),
    (
        "group.0.element.1.target",
        [
            {"code": "718-7", "equivalence": "equivalent"},
            {"code": "20509-6", "equivalence": "equivalent"},
        ],
        r"group 1 \(urn:huren:lab-code:F001\), element 2 \('HGB'\): target must be a list of "
        r"exactly one mapping, got 2",
    ),
    ("group.0.element.0.target", [], r"element 1 \('WBC'\): target must be .* got 0"),
    ("group.0.element.0.target", ..., r"element 1 \('WBC'\): target must be .* got None"),
    ("group.1.element.0.target.0.code", " ", r"group 2 .*element 1 \('1001'\): target code"),
    (
        "group.1.element.0.target.0.equivalence",
        "unmatched",
        r"group 2 .*element 1 \('1001'\): target equivalence must be one of .*'unmatched'",
    ),
    ("group.0.element.0.target.0.equivalence", ..., r"element 1 \('WBC'\): target equivalence"),
    ("group.0.element.1.code", "WBC", r"element 2 \('WBC'\): code is listed twice"),
    ("group.1.source", _lab("F001"), r"group 2 \(urn:huren:lab-code:F001\): a group from"),
    ("group.0.element.0.target.0.display", 7, r"element 1 \('WBC'\): target display"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_maps_are_refused_naming_the_entry(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    raw = _valid()
    LabCodeMap.from_json(copy.deepcopy(raw))  # the unspoilt map loads
    _spoil(raw, path, value)
    file = tmp_path / "map.json"
    file.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        LabCodeMap.load(file)
    assert str(file) in str(info.value)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        LabCodeMap.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="not UTF-8 JSON"):
        LabCodeMap.load(broken)
    with pytest.raises(ConfigError, match="got 'list'"):
        LabCodeMap.from_json([])


def test_a_map_with_two_targets_answers_per_target_system() -> None:
    """A source mapped into two systems (two groups) answers for the system asked."""
    raw = _valid()
    raw["group"].append(
        {
            "source": _lab("F001"),
            "target": "urn:huren:national-lab-item",
            "element": [{"code": "WBC", "target": [{"code": "N1", "equivalence": "equal"}]}],
        }
    )
    codes = LabCodeMap.from_json(raw)
    assert codes.to_standard(_lab("F001"), "WBC") == (LOINC_SYSTEM, WBC, None)
    assert codes.to_standard(_lab("F001"), "WBC", "urn:huren:national-lab-item") == (
        "urn:huren:national-lab-item",
        "N1",
        None,
    )
    assert codes.to_local(_lab("F001"), "urn:huren:national-lab-item", "N1") == "WBC"
    out = codes.translate(_observation({"system": _lab("F001"), "code": "WBC"}))
    assert [c["system"] for c in out["code"]["coding"]] == [
        _lab("F001"),
        LOINC_SYSTEM,
        "urn:huren:national-lab-item",
    ]
