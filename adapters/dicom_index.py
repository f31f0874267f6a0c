"""An in-memory index of DICOM instances, answering study/series/instance queries.

Holds only headers (no pixel data) and each instance's file path, so a PACS with thousands
of instances fits in a few megabytes. Used by the gateway's archive and by the simulator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from .dicom_match import first, matches, tag_hex
from .types import DicomJson

STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
)
SERIES_KEYWORDS = (
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
)
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)
_HEADER_TAGS = [tag_hex(k) for k in (*STUDY_KEYWORDS, *SERIES_KEYWORDS, *INSTANCE_KEYWORDS)]


@dataclass(slots=True)
class Instance:
    path: Path
    header: DicomJson  # study + series + instance level attributes
    transfer_syntax: str


@dataclass(slots=True)
class Study:
    uid: str
    series: dict[str, list[Instance]] = field(default_factory=dict)
    #: The study-level record, computed once and dropped whenever an instance is added.
    record: DicomJson | None = None

    def instances(self) -> Iterator[Instance]:
        for instances in self.series.values():
            yield from instances


def header_of(ds: Dataset) -> DicomJson:
    """The indexed attributes of a dataset as DICOM JSON."""
    subset = Dataset()
    for keyword in (*STUDY_KEYWORDS, *SERIES_KEYWORDS, *INSTANCE_KEYWORDS):
        if keyword in ds:
            setattr(subset, keyword, ds.data_element(keyword).value)  # type: ignore[union-attr]
    return subset.to_json_dict()


class DicomIndex:
    """Thread-safe: DIMSE handlers (threads) and HTTP handlers (the loop) share one."""

    def __init__(self) -> None:
        self._studies: dict[str, Study] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._studies)

    def add_file(self, path: Path) -> Instance:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return self.add(path, ds)

    def add(self, path: Path, ds: Dataset) -> Instance:
        ts = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else ""
        inst = Instance(path=path, header=header_of(ds), transfer_syntax=ts)
        with self._lock:
            study = self._studies.setdefault(ds.StudyInstanceUID, Study(ds.StudyInstanceUID))
            series = study.series.setdefault(ds.SeriesInstanceUID, [])
            series[:] = [
                i for i in series if first(i.header, "SOPInstanceUID") != ds.SOPInstanceUID
            ]
            series.append(inst)
        return inst

    def add_tree(self, root: Path) -> int:
        n = 0
        for path in sorted(root.rglob("*.dcm")):
            self.add_file(path)
            n += 1
        return n

    def study(self, uid: str) -> Study | None:
        return self._studies.get(uid)

    def studies(self) -> list[Study]:
        with self._lock:
            return list(self._studies.values())

    # -- queries -------------------------------------------------------------------------

    def search_studies(
        self, match: Mapping[str, str], *, limit: int | None = None, offset: int = 0
    ) -> list[DicomJson]:
        out: list[DicomJson] = []
        for study in self.studies():
            if study.record is None:
                study.record = study_record(study)
            record = study.record
            if matches(record, match):
                out.append(record)
        out.sort(
            key=lambda r: (str(first(r, "StudyDate") or ""), str(first(r, "StudyInstanceUID")))
        )
        return _page(out, limit, offset)

    def search_series(
        self,
        study_uid: str | None,
        match: Mapping[str, str],
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DicomJson]:
        out: list[DicomJson] = []
        studies = self.studies() if study_uid is None else [s for s in [self.study(study_uid)] if s]
        for study in studies:
            for instances in study.series.values():
                record = series_record(instances)
                if matches(record, match):
                    out.append(record)
        return _page(out, limit, offset)

    def search_instances(
        self,
        study_uid: str | None,
        series_uid: str | None,
        match: Mapping[str, str],
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DicomJson]:
        out = [
            dict(i.header)
            for i in self.instances(study_uid, series_uid)
            if matches(i.header, match)
        ]
        return _page(out, limit, offset)

    def instances(
        self, study_uid: str | None, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[Instance]:
        studies = self.studies() if study_uid is None else [s for s in [self.study(study_uid)] if s]
        out: list[Instance] = []
        for study in studies:
            for uid, instances in study.series.items():
                if series_uid is None or uid == series_uid:
                    out.extend(
                        i
                        for i in instances
                        if sop_uid is None or first(i.header, "SOPInstanceUID") == sop_uid
                    )
        return out


def study_record(study: Study) -> DicomJson:
    """Study-level attributes plus the computed ones (PS3.18 Table 10.6.3-2, PS3.4 C.3.4)."""
    instances = list(study.instances())
    record = {t: v for t, v in instances[0].header.items() if t in _STUDY_TAGS}
    modalities = sorted({m for i in instances for m in _str_values(i.header, "Modality")})
    record[tag_hex("ModalitiesInStudy")] = {"vr": "CS", "Value": modalities}
    record[tag_hex("NumberOfStudyRelatedSeries")] = {"vr": "IS", "Value": [len(study.series)]}
    record[tag_hex("NumberOfStudyRelatedInstances")] = {"vr": "IS", "Value": [len(instances)]}
    return record


def series_record(instances: list[Instance]) -> DicomJson:
    head = instances[0].header
    record = {
        t: v for t, v in head.items() if t in _SERIES_TAGS or t == tag_hex("StudyInstanceUID")
    }
    record[tag_hex("NumberOfSeriesRelatedInstances")] = {"vr": "IS", "Value": [len(instances)]}
    return record


def _str_values(ds: DicomJson, keyword: str) -> Iterable[str]:
    element = ds.get(tag_hex(keyword)) or {}
    return (str(v) for v in element.get("Value", []))


def _page(items: list[DicomJson], limit: int | None, offset: int) -> list[DicomJson]:
    end = None if limit is None else offset + limit
    return items[offset:end]


_STUDY_TAGS = frozenset(tag_hex(k) for k in STUDY_KEYWORDS)
_SERIES_TAGS = frozenset(tag_hex(k) for k in (*SERIES_KEYWORDS, "SpecificCharacterSet"))
