"""The deterministic seed generator: patients, DICOM studies and FHIR lab/radiology resources."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydicom.uid import UID, ExplicitVRLittleEndian

from gateway.lab_codes import LabCodeMap
from gateway.registry import Registry, parse_registry
from seeds import generator
from seeds.generator import (
    DISTRICT_CODES,
    IMPLEMENTATION_CLASS_UID,
    NATIONAL_ID_SYSTEM,
    WINDOW_END,
    WINDOW_START,
    generate,
    id_check_digit,
    is_synthetic_national_id,
    is_valid_national_id,
    main_seed,
    read_manifest,
    seed_exists,
)

REAL_REGISTRY = Path(generator.__file__).parent / "facilities.json"
LAB_PANELS = json.loads((Path(generator.__file__).parent / "lab_panels.json").read_text("utf-8"))
LAB_ITEMS = {i["code"]: i for p in LAB_PANELS["panels"] for i in p["items"]}
PANEL_CODES = {p["code"]["code"] for p in LAB_PANELS["panels"]}

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
LAB_CODES = LabCodeMap.load()


def _facility(
    fid: str, name: str, level: str, kind: str, district: str, imaging: Any, lab: Any
) -> dict[str, Any]:
    return {
        "id": fid,
        "name_zh": name,
        "name_en": f"Test facility {fid}",
        "level": level,
        "kind": kind,
        "district": district,
        "alliances": [],
        "mrn_issuer": f"TEST-{fid}",
        "imaging": imaging,
        "lab": lab,
    }


def _small_registry() -> Registry:
    web = {"kind": "dicomweb", "url": "http://127.0.0.1:18001/dicomweb"}
    fhir = {"kind": "fhir", "url": "http://127.0.0.1:18001/fhir"}
    hl7 = {"kind": "hl7v2", "sending_application": "LIS", "sending_facility": "F002"}
    none = {"kind": "none"}

    def dimse(port: int) -> dict[str, Any]:
        return {"kind": "dimse", "host": "127.0.0.1", "port": port, "ae_title": f"PACS{port}"}

    return parse_registry(
        {
            "version": "test-1",
            "city": "常州市",
            "alliances": [],
            "facilities": [
                _facility("F001", "常州市第一人民医院", "三级甲等", "general", "天宁区", web, fhir),
                _facility("F002", "测试中医医院", "二级甲等", "tcm", "武进区", dimse(11201), hl7),
                _facility("F003", "测试镇卫生院", "一级", "township", "武进区", none, none),
                _facility("F004", "测试社区卫生服务中心", "一级", "community", "天宁区", web, hl7),
                _facility(
                    "F005", "测试妇幼保健院", "三级甲等", "maternal_child", "钟楼区", none, fhir
                ),
                _facility(
                    "F006",
                    "新北社区卫生服务中心",
                    "一级",
                    "community",
                    "新北区",
                    dimse(11202),
                    none,
                ),
                _facility("F007", "测试区人民医院", "二级甲等", "general", "新北区", web, hl7),
                _facility("F008", "溧阳测试镇卫生院", "一级", "township", "溧阳市", none, fhir),
            ],
        }
    )


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _resources(seed_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((seed_dir / "fhir").glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield path.stem, json.loads(line)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return _small_registry()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    generate(data_dir, patients=20, seed=7, registry=registry)
    return data_dir / "seed"


@pytest.fixture(scope="module")
def datasets(seeded: Path) -> list[tuple[Path, pydicom.Dataset]]:
    return [(p, pydicom.dcmread(p)) for p in sorted((seeded / "dicom").rglob("*.dcm"))]


@pytest.fixture(scope="module")
def people(seeded: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((seeded / "patients.json").read_text("utf-8"))
    return data


def test_same_seed_gives_identical_bytes(tmp_path: Path, registry: Registry) -> None:
    """Two runs with the same seed write byte-identical file trees."""
    generate(tmp_path / "a", patients=8, seed=3, registry=registry)
    generate(tmp_path / "b", patients=8, seed=3, registry=registry)
    a = _tree_digest(tmp_path / "a" / "seed")
    assert a == _tree_digest(tmp_path / "b" / "seed")
    assert any(name.endswith(".dcm") for name in a)


def test_different_seed_differs(tmp_path: Path, registry: Registry) -> None:
    """Another seed gives other patients and other files."""
    generate(tmp_path / "a", patients=8, seed=3, registry=registry)
    generate(tmp_path / "b", patients=8, seed=4, registry=registry)
    a = (tmp_path / "a" / "seed" / "patients.json").read_bytes()
    assert a != (tmp_path / "b" / "seed" / "patients.json").read_bytes()
    assert _tree_digest(tmp_path / "a" / "seed") != _tree_digest(tmp_path / "b" / "seed")


def test_regenerating_replaces_the_seed(tmp_path: Path, registry: Registry) -> None:
    """A second generation replaces the first: no stale files remain, no partial dirs linger."""
    assert not seed_exists(tmp_path)
    generate(tmp_path, patients=6, seed=1, registry=registry)
    assert seed_exists(tmp_path)
    first = set(_tree_digest(tmp_path / "seed"))
    manifest = generate(tmp_path, patients=3, seed=2, registry=registry)
    second = set(_tree_digest(tmp_path / "seed"))
    assert not {name for name in first if name.endswith(".dcm")} & second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed"]
    assert read_manifest(tmp_path) == manifest


def test_bad_arguments_are_refused(tmp_path: Path, registry: Registry) -> None:
    """Zero patients or an unusable image size raise ValueError before anything is written."""
    with pytest.raises(ValueError, match="patients"):
        generate(tmp_path, patients=0, seed=1, registry=registry)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, patients=1, seed=1, registry=registry, image_size=8)
    assert not seed_exists(tmp_path)


def test_manifest_counts_match_the_files(seeded: Path, registry: Registry) -> None:
    """manifest.json names seed, sizes and registry version, and its counts match the files."""
    m = json.loads((seeded / "manifest.json").read_text("utf-8"))
    assert (m["seed"], m["patients"], m["image_size"]) == (7, 20, 64)
    assert m["registry_version"] == registry.version
    dicom = seeded / "dicom"
    kinds = Counter(r["resourceType"] for _, r in _resources(seeded))
    assert m["counts"] == {
        "studies": len([p for p in dicom.glob("*/*") if p.is_dir()]),
        "series": len([p for p in dicom.glob("*/*/*") if p.is_dir()]),
        "instances": len(list(dicom.rglob("*.dcm"))),
        "observations": kinds["Observation"],
        "diagnostic_reports": kinds["DiagnosticReport"],
    }
    assert m["counts"]["studies"] > 0 and m["counts"]["observations"] > 0


def test_known_national_id_check_digit() -> None:
    """The check digit follows ISO 7064 MOD 11-2, including the X case."""
    assert id_check_digit("11010519491231002") == "X"
    assert is_valid_national_id("11010519491231002X")
    assert not is_valid_national_id("110105194912310021")
    assert not is_synthetic_national_id("11010519491231002X")


def test_national_ids_are_valid_and_marked_synthetic(people: list[dict[str, Any]]) -> None:
    """Every ID: Changzhou region code, birth date, 9xx sequence, sex digit and check digit."""
    ids = [p["national_id"] for p in people]
    assert len(set(ids)) == len(ids) == 20
    for p in people:
        nid = p["national_id"]
        assert is_valid_national_id(nid) and is_synthetic_national_id(nid), nid
        assert nid[:6] == DISTRICT_CODES[p["district"]]
        assert nid[6:14] == p["birth_date"].replace("-", "")
        assert nid[14] == "9"
        assert int(nid[16]) % 2 == (1 if p["sex"] == "M" else 0)
        assert date.fromisoformat(p["birth_date"]) < WINDOW_START


def test_patients_have_names_and_records(people: list[dict[str, Any]], registry: Registry) -> None:
    """Names come in Chinese and DICOM forms; each patient has 1-4 local MRNs, unique per site."""
    mrns: dict[str, list[str]] = {}
    for p in people:
        assert re.fullmatch(r"[\u4e00-\u9fff]{2,4}", p["name"])
        alphabetic, ideographic = p["name_dicom"].split("=")
        assert re.fullmatch(r"[A-Z]+\^[A-Z]+", alphabetic)
        assert ideographic.replace("^", "") == p["name"]
        assert p["sex"] in ("M", "F")
        assert 1 <= len(p["records"]) <= 4
        for fid, mrn in p["records"].items():
            assert registry.get(fid) is not None
            mrns.setdefault(fid, []).append(mrn)
    for fid, values in mrns.items():
        assert len(set(values)) == len(values), fid
    assert all(re.fullmatch(r"1000\d{5}", m) for m in mrns.get("F001", []))


def test_dicom_headers_carry_identity_and_institution(
    datasets: list[tuple[Path, pydicom.Dataset]],
    people: list[dict[str, Any]],
    registry: Registry,
) -> None:
    """Files are Part 10 Explicit VR LE with UTF-8 text, local MRN + issuer and the national ID."""
    by_nid = {p["national_id"]: p for p in people}
    assert datasets
    for path, ds in datasets:
        facility = registry[path.parts[-4]]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == SOP_CLASSES[ds.Modality]
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.InstitutionName == facility.name_zh
        assert ds.IssuerOfPatientID == facility.mrn_issuer
        (other,) = ds.OtherPatientIDsSequence
        assert other.IssuerOfPatientID == "CN-RID"
        person = by_nid[other.PatientID]
        assert ds.PatientID == person["records"][facility.id]
        assert str(ds.PatientName) == person["name_dicom"]
        assert ds.PatientName.ideographic == person["name_dicom"].split("=")[1]
        assert ds.PatientBirthDate == person["birth_date"].replace("-", "")
        assert ds.PatientSex == person["sex"]
        study_day = date(int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]), int(ds.StudyDate[6:]))
        assert WINDOW_START <= study_day <= WINDOW_END
        assert path.parts[-3:] == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            f"{ds.SOPInstanceUID}.dcm",
        )
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid and len(uid) <= 64
        for keyword in ("StudyDescription", "ReferringPhysicianName", "BodyPartExamined"):
            assert str(ds.get(keyword, "")), keyword
        if ds.Modality in ("CT", "MR"):
            assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
            assert float(ds.SliceThickness) > 0 and len(ds.PixelSpacing) == 2
        if ds.Modality == "CT":
            assert ds.RescaleType == "HU" and float(ds.RescaleSlope) == 1.0


def test_chinese_text_round_trips(datasets: list[tuple[Path, pydicom.Dataset]]) -> None:
    """InstitutionName is stored as UTF-8 bytes on disk and decodes back to the same Chinese."""
    path, ds = datasets[0]
    raw = path.read_bytes()
    assert ds.InstitutionName.encode("utf-8") in raw
    assert re.search(r"[\u4e00-\u9fff]", ds.InstitutionName)


def test_accession_numbers_are_unique_and_facility_prefixed(
    datasets: list[tuple[Path, pydicom.Dataset]], seeded: Path
) -> None:
    """One accession number per study, never shared, prefixed with the facility id."""
    per_study: dict[str, set[str]] = {}
    for path, ds in datasets:
        per_study.setdefault(ds.StudyInstanceUID, set()).add(ds.AccessionNumber)
        assert ds.AccessionNumber.startswith(path.parts[-4]) and len(ds.AccessionNumber) <= 16
    assert all(len(a) == 1 for a in per_study.values())
    accessions = [next(iter(a)) for a in per_study.values()]
    assert len(set(accessions)) == len(accessions)
    index = json.loads((seeded / "studies.json").read_text("utf-8"))
    assert {s["accession_number"] for s in index} == set(accessions)


def test_pixel_data_matches_header_and_is_not_flat(
    datasets: list[tuple[Path, pydicom.Dataset]],
) -> None:
    """pixel_array has the header's shape and type, the image size, and real variation."""
    for _, ds in datasets:
        pixels = ds.pixel_array
        expected = (ds.Rows, ds.Columns) + ((3,) if ds.SamplesPerPixel == 3 else ())
        assert pixels.shape == expected == (64, 64, *expected[2:])
        assert pixels.dtype.itemsize * 8 == ds.BitsAllocated
        assert (pixels.dtype.kind == "i") == (ds.PixelRepresentation == 1)
        assert pixels.std() > 1.0
        if ds.SamplesPerPixel == 3:
            assert ds.PhotometricInterpretation == "RGB"
            assert not np.array_equal(pixels[..., 0], pixels[..., 2])


def test_ct_values_are_realistic_hounsfield_units(
    datasets: list[tuple[Path, pydicom.Dataset]],
) -> None:
    """CT holds air near -1000 HU and soft tissue or bone above 0 HU."""
    cts = [ds for _, ds in datasets if ds.Modality == "CT"]
    if not cts:
        pytest.skip("no CT in this small sample")
    for ds in cts:
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hu.min() < -900 and hu.max() > 0


def test_study_structure_follows_modality(seeded: Path) -> None:
    """CT/MR have 2-3 series of 4-8 slices, DX/CR 1-2 images, US 1-3 images."""
    index = json.loads((seeded / "studies.json").read_text("utf-8"))
    for s in index:
        study_dir = seeded / "dicom" / s["facility_id"] / s["study_instance_uid"]
        series = [sorted(d.glob("*.dcm")) for d in sorted(study_dir.iterdir())]
        counts = [len(files) for files in series]
        assert len(series) == s["series"] and sum(counts) == s["instances"]
        if s["modality"] in ("CT", "MR"):
            assert 2 <= len(series) <= 3 and all(4 <= c <= 8 for c in counts), s
        elif s["modality"] in ("DX", "CR"):
            assert 1 <= sum(counts) <= 2, s
        else:
            assert len(series) == 1 and 1 <= counts[0] <= 3, s
    assert len({s["modality"] for s in index}) >= 3


def test_every_fhir_resource_validates(seeded: Path) -> None:
    """Every NDJSON line is a valid FHIR R4 resource (fhir.resources' R4B models)."""
    kinds: Counter[str] = Counter()
    for _, resource in _resources(seeded):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        kinds[resource["resourceType"]] += 1
    assert set(kinds) == {"Patient", "Observation", "DiagnosticReport"}


def test_fhir_files_follow_the_registry(seeded: Path, registry: Registry) -> None:
    """An NDJSON file exists for each lab system and each facility with studies, and no other."""
    with_studies = {p.name for p in (seeded / "dicom").iterdir()}
    expected = {f.id for f in registry if f.lab.kind != "none"} | with_studies
    assert {p.stem for p in (seeded / "fhir").glob("*.ndjson")} == expected
    for fid, resource in _resources(seeded):
        if resource["resourceType"] == "Observation":
            assert registry[fid].lab.kind in ("fhir", "hl7v2")


def test_fhir_ids_unique_and_references_resolve(
    seeded: Path, registry: Registry, people: list[dict[str, Any]]
) -> None:
    """Ids are unique per file; subjects and results point at resources in the same file."""
    by_nid = {p["national_id"]: p for p in people}
    files: dict[str, list[dict[str, Any]]] = {}
    for fid, resource in _resources(seeded):
        files.setdefault(fid, []).append(resource)
    for fid, resources in files.items():
        keys = [f"{r['resourceType']}/{r['id']}" for r in resources]
        assert len(set(keys)) == len(keys)
        assert all(r["id"].startswith(f"{fid}-") for r in resources)
        known = set(keys)
        for r in resources:
            if r["resourceType"] == "Patient":
                mrn, national = r["identifier"]
                assert national["system"] == NATIONAL_ID_SYSTEM
                assert mrn["system"] == registry[fid].mrn_system
                assert by_nid[national["value"]]["records"][fid] == mrn["value"]
                assert r["name"][0]["text"] == by_nid[national["value"]]["name"]
            else:
                assert r["subject"]["reference"] in known
            for ref in r.get("result", []):
                assert ref["reference"] in known and ref["reference"].startswith("Observation/")


def test_observation_interpretation_agrees_with_reference_range(seeded: Path) -> None:
    """H above high, L below low, N within; a share of results is abnormal."""
    flags: Counter[str] = Counter()
    for _, r in _resources(seeded):
        if r["resourceType"] != "Observation":
            continue
        value = r["valueQuantity"]["value"]
        (ref,) = r["referenceRange"]
        low = ref.get("low", {}).get("value")
        high = ref.get("high", {}).get("value")
        expected = (
            "H"
            if high is not None and value > high
            else "L"
            if low is not None and value < low
            else "N"
        )
        code = r["interpretation"][0]["coding"][0]
        assert code["system"].endswith("v3-ObservationInterpretation")
        assert code["code"] == expected, (r["id"], value, low, high)
        flags[expected] += 1
    abnormal = (flags["H"] + flags["L"]) / sum(flags.values())
    assert 0.03 < abnormal < 0.35


def test_observations_carry_loinc_and_ucum(seeded: Path) -> None:
    """Each Observation is coded in LOINC from lab_panels.json (directly, or through the
    ConceptMap of local codes), with Chinese text and UCUM units."""
    seen = 0
    for _, r in _resources(seeded):
        if (
            r["resourceType"] == "DiagnosticReport"
            and r["category"][0]["coding"][0]["code"] == "LAB"
        ):
            assert r["code"]["coding"][0]["code"] in PANEL_CODES and r["result"]
        if r["resourceType"] != "Observation":
            continue
        seen += 1
        loinc = LAB_CODES.standard_code(r)
        assert loinc is not None, r["code"]
        item = LAB_ITEMS[loinc]
        assert r["code"]["text"] == item["name_zh"]
        assert r["category"][0]["coding"][0]["code"] == "laboratory"
        assert r["status"] == "final"
        quantity = r["valueQuantity"]
        assert quantity["system"] == UCUM and quantity["code"] == item["unit"]
        for bound in r["referenceRange"][0].values():
            if isinstance(bound, dict):
                assert bound["code"] == item["unit"]
    assert seen


def test_facilities_in_the_concept_map_send_only_their_local_codes(
    seeded: Path, registry: Registry
) -> None:
    """A facility the ConceptMap lists codes each Observation in its own system only, with
    a local code the map takes to the item's LOINC code; the others still send LOINC."""
    local_only: Counter[str] = Counter()
    with_loinc: Counter[str] = Counter()
    for fid, r in _resources(seeded):
        if r["resourceType"] != "Observation":
            continue
        system = f"urn:huren:lab-code:{fid}"
        codings = r["code"]["coding"]
        if LAB_CODES.has_local_codes(system):
            local_only[registry[fid].lab.kind] += 1
            (coding,) = codings
            assert coding["system"] == system
            assert coding["display"] == r["code"]["text"]
            mapped = LAB_CODES.to_standard(system, coding["code"], LOINC)
            assert mapped is not None, coding
            assert LAB_ITEMS[mapped[1]]["name_zh"] == r["code"]["text"]
            translated = LAB_CODES.translate(r)
            assert [c["system"] for c in translated["code"]["coding"]] == [system, LOINC]
        else:
            with_loinc[registry[fid].lab.kind] += 1
            assert codings[0]["system"] == LOINC and codings[0]["code"] in LAB_ITEMS
            assert codings[1] == {
                "system": system,
                "code": LAB_ITEMS[codings[0]["code"]]["abbr"],
                "display": r["code"]["text"],
            }
            assert LAB_CODES.translate(r) is r
    # The small registry has mapped and unmapped labs of both kinds, with results.
    assert local_only.keys() == with_loinc.keys() == {"fhir", "hl7v2"}


def test_without_a_concept_map_every_facility_sends_loinc(
    tmp_path: Path, registry: Registry
) -> None:
    generate(tmp_path, patients=3, seed=7, registry=registry, lab_codes=LabCodeMap.empty())
    observations = [
        r for _, r in _resources(tmp_path / "seed") if r["resourceType"] == "Observation"
    ]
    assert observations
    assert all(r["code"]["coding"][0]["system"] == LOINC for r in observations)


def test_a_concept_map_missing_an_item_is_refused(tmp_path: Path, registry: Registry) -> None:
    """A facility listed in the map must have a local code for every lab item."""
    partial = LabCodeMap.from_json(
        {
            "resourceType": "ConceptMap",
            "group": [
                {
                    "source": "urn:huren:lab-code:F002",
                    "target": LOINC,
                    "element": [
                        {"code": "1", "target": [{"code": "6690-2", "equivalence": "equal"}]}
                    ],
                }
            ],
        }
    )
    with pytest.raises(ValueError, match=r"F002 has no local code for LOINC \['789-8'"):
        generate(tmp_path, patients=3, seed=7, registry=registry, lab_codes=partial)
    assert not (tmp_path / "seed").exists()


def test_radiology_reports_match_the_studies(seeded: Path) -> None:
    """Each study has one RAD report naming its StudyInstanceUID and accession number."""
    index = json.loads((seeded / "studies.json").read_text("utf-8"))
    reports = {
        (fid, r["id"]): r
        for fid, r in _resources(seeded)
        if r["resourceType"] == "DiagnosticReport"
        and r["category"][0]["coding"][0]["code"] == "RAD"
    }
    assert len(reports) == len(index)
    for s in index:
        r = reports[(s["facility_id"], s["report_id"])]
        values = {i["value"] for i in r["identifier"]}
        assert f"urn:oid:{s['study_instance_uid']}" in values
        assert s["accession_number"] in values
        assert r["code"]["coding"][0]["code"] == "18748-4"
        assert re.search(r"[\u4e00-\u9fff]", r["conclusion"])
        text = base64.b64decode(r["presentedForm"][0]["data"]).decode("utf-8")
        assert r["conclusion"] in text


def test_lab_panels_file_is_sane() -> None:
    """LOINC codes carry valid check digits; ranges are ordered; units are UCUM-shaped."""

    def loinc_ok(code: str) -> bool:
        number, check = code.split("-")
        total = 0
        for i, ch in enumerate(reversed(number)):
            d = int(ch) * (2 if i % 2 == 0 else 1)
            total += d - 9 if d > 9 else d
        return str((10 - total % 10) % 10) == check

    for panel in LAB_PANELS["panels"]:
        if panel["code"]["system"] == LOINC:
            assert loinc_ok(panel["code"]["code"]), panel["id"]
        for item in panel["items"]:
            assert loinc_ok(item["code"]), item["code"]
            assert item["name_zh"] and item["unit"] and " " not in item["unit"]
            ranges = [item["ref"]["M"], item["ref"]["F"]] if "M" in item["ref"] else [item["ref"]]
            for ref in ranges:
                assert ref["high"] is not None or ref["low"] is not None
                if ref["high"] is not None and ref["low"] is not None:
                    assert ref["low"] < ref["high"]


@pytest.mark.skipif(not REAL_REGISTRY.exists(), reason="seeds/facilities.json not written yet")
def test_real_registry_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main_seed on the city's registry writes a valid seed and prints a one-line summary."""
    main_seed(tmp_path, 5, 11)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "5 patients" in out[0] and "instances" in out[0]
    seed_dir = tmp_path / "seed"
    manifest = read_manifest(tmp_path)
    assert manifest.patients == 5 and manifest.counts["studies"] > 0
    for path in (seed_dir / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.shape[:2] == (64, 64)
    for _, resource in _resources(seed_dir):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
