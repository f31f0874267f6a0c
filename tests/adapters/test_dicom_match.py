"""Attribute matching of PS3.4 C.2.2.2 over DICOM JSON."""

from __future__ import annotations

import pytest

from adapters.dicom_match import matches

DS = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Wang^Wei", "Ideographic": "王^伟"}]},
    "00100020": {"vr": "LO", "Value": ["MRN0042"]},
    "00080020": {"vr": "DA", "Value": ["20250317"]},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
}


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, True),
        ({"PatientID": "MRN0042"}, True),
        ({"PatientID": "MRN004"}, False),
        ({"PatientID": "MRN00*"}, True),
        ({"PatientID": "MRN00?2"}, True),
        ({"PatientName": "wang*"}, True),  # PN matching ignores case
        ({"PatientName": "王*"}, True),
        ({"PatientName": "Li*"}, False),
        ({"StudyDate": "20250101-20251231"}, True),
        ({"StudyDate": "20250318-"}, False),
        ({"StudyDate": "-20250317"}, True),
        ({"StudyDate": "20250317"}, True),
        ({"ModalitiesInStudy": "CT"}, True),
        ({"ModalitiesInStudy": "MR\\CT"}, True),
        ({"ModalitiesInStudy": "MR"}, False),
        ({"StudyInstanceUID": "9.9\\1.2.3.4"}, True),
        ({"StudyInstanceUID": "1.2.3"}, False),
        ({"AccessionNumber": "A1"}, False),  # absent attribute with a value: no match
        ({"0020000D": "1.2.3.4"}, True),  # tags work as keys
    ],
)
def test_matching(match: dict[str, str], expected: bool) -> None:
    """Single value, wildcard, range, list and UID-list matching."""
    assert matches(DS, match) is expected


def test_unknown_keyword_raises() -> None:
    with pytest.raises(KeyError):
        matches(DS, {"NotAKeyword": "x"})
