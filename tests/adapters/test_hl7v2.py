"""HL7 v2 ORU^R01 parsing into FHIR R4 and the ACKs that answer it (no sockets)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from adapters.hl7v2 import Hl7Error, OruMessage, build_ack, parse_oru
from seeds.hl7_sender import build_oru, parse_ack

Resource = dict[str, Any]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
MRN_F001 = "urn:huren:mrn:F001"
NATIONAL = "urn:oid:2.16.156.10011.1.5"
NOW = "20240305101600+0800"


def _patient() -> Resource:
    return {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [
            {"system": MRN_F001, "value": "MRN000123"},
            {"system": NATIONAL, "value": "32040219850712341X"},
        ],
        "name": [{"use": "official", "text": "王小明", "family": "王", "given": ["小明"]}],
        "gender": "male",
        "birthDate": "1985-07-12",
    }


def _observation(
    obs_id: str, loinc: str, display: str, value: float, unit: str, low: float, high: float,
    flag: str,
) -> Resource:  # fmt: skip
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2024-03-05T08:30:00+08:00",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "referenceRange": [
            {"low": {"value": low, "unit": unit}, "high": {"value": high, "unit": unit}}
        ],
        "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag}]}],
    }


def _observations() -> list[Resource]:
    return [
        _observation("obs-wbc", "6690-2", "白细胞计数", 11.2, "10*9/L", 3.5, 9.5, "H"),
        _observation("obs-hgb", "718-7", "血红蛋白", 135, "g/L", 130, 175, "N"),
        _observation("obs-plt", "777-3", "血小板计数", 98, "10*9/L", 125, 350, "L"),
    ]


def _report(report_id: str = "rep-1", obs_ids: tuple[str, ...] = ()) -> Resource:
    ids = obs_ids or tuple(o["id"] for o in _observations())
    return {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "LAB"}]}],
        "code": {"coding": [{"system": LOINC, "code": "58410-2", "display": "血常规"}]},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2024-03-05T08:30:00+08:00",
        "issued": "2024-03-05T10:15:00+08:00",
        "result": [{"reference": f"Observation/{i}"} for i in ids],
    }


def _oru(**changes: Any) -> bytes:
    args: dict[str, Any] = {
        "patient": _patient(),
        "report": _report(),
        "observations": _observations(),
        "sending_application": "LIS",
        "sending_facility": "F001",
        "control_id": "F001-0001",
        "timestamp": "2024-03-05T10:15:00+08:00",
    }
    args.update(changes)
    return build_oru(**args)


def _validate(oru: OruMessage) -> None:
    Patient.model_validate(oru.patient)
    for report in oru.reports:
        DiagnosticReport.model_validate(report)
    for obs in oru.observations:
        Observation.model_validate(obs)


def _replace_segment(message: bytes, name: str, new: str | None) -> bytes:
    segments = message.decode().split("\r")
    out = [new if seg.startswith(name + "|") else seg for seg in segments]
    return "\r".join(s for s in out if s is not None).encode()


def _error(message: bytes) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        parse_oru(message)
    return info.value


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_header_and_patient() -> None:
    """MSH and PID of a seeds-built ORU come back as header fields and a FHIR Patient."""
    oru = parse_oru(_oru())
    assert oru.control_id == "F001-0001"
    assert (oru.sending_application, oru.sending_facility) == ("LIS", "F001")
    assert oru.message_time == "2024-03-05T10:15:00+08:00"
    assert oru.patient_identifiers == [
        (MRN_F001, "MRN000123"),
        (NATIONAL, "32040219850712341X"),
    ]
    patient = oru.patient
    assert [(i["system"], i["value"]) for i in patient["identifier"]] == oru.patient_identifiers
    assert patient["name"][0]["text"] == "王小明"
    assert (patient["name"][0]["family"], patient["name"][0]["given"]) == ("王", ["小明"])
    assert patient["gender"] == "male"
    assert patient["birthDate"] == "1985-07-12"


def test_round_trip_report_and_observations() -> None:
    """The report and its three results keep LOINC codes, values, units, ranges, flags, times."""
    oru = parse_oru(_oru())
    [report] = oru.reports
    assert report["status"] == "final"
    assert report["category"][0]["coding"][0] == {
        "system": V2_0074,
        "code": "LAB",
        "display": "Laboratory",
    }
    assert report["code"]["coding"][0]["system"] == LOINC
    assert report["code"]["coding"][0]["code"] == "58410-2"
    assert report["subject"] == {"reference": f"Patient/{oru.patient['id']}"}
    assert report["effectiveDateTime"] == "2024-03-05T08:30:00+08:00"
    assert report["issued"] == "2024-03-05T10:15:00+08:00"
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in oru.observations]

    expected = _observations()
    assert len(oru.observations) == len(expected)
    for got, want in zip(oru.observations, expected, strict=True):
        assert got["status"] == "final"
        assert got["category"][0]["coding"][0]["code"] == "laboratory"
        assert got["code"]["coding"][0]["system"] == LOINC
        assert got["code"]["coding"][0]["code"] == want["code"]["coding"][0]["code"]
        assert got["code"]["text"] == want["code"]["coding"][0]["display"]
        assert got["subject"] == report["subject"]
        assert got["effectiveDateTime"] == want["effectiveDateTime"]
        quantity = got["valueQuantity"]
        assert quantity["value"] == want["valueQuantity"]["value"]
        assert (quantity["unit"], quantity["code"], quantity["system"]) == (
            want["valueQuantity"]["unit"],
            want["valueQuantity"]["code"],
            UCUM,
        )
        [ref] = got["referenceRange"]
        assert ref["low"]["value"] == want["referenceRange"][0]["low"]["value"]
        assert ref["high"]["value"] == want["referenceRange"][0]["high"]["value"]
        coding = got["interpretation"][0]["coding"][0]
        assert coding["system"] == INTERPRETATION
        assert coding["code"] == want["interpretation"][0]["coding"][0]["code"]
    assert [o["interpretation"][0]["coding"][0]["code"] for o in oru.observations] == [
        "H",
        "N",
        "L",
    ]


def test_every_resource_validates_with_r4b() -> None:
    """The Patient, DiagnosticReport and Observations all validate with fhir.resources R4B."""
    _validate(parse_oru(_oru()))


def test_ids_are_deterministic_and_distinct() -> None:
    """The same message gives the same ids; each resource's id is its own."""
    first, second = parse_oru(_oru()), parse_oru(_oru())
    ids = [r["id"] for r in (first.patient, *first.reports, *first.observations)]
    assert ids == [r["id"] for r in (second.patient, *second.reports, *second.observations)]
    assert len(set(ids)) == len(ids)


# -- real-world variants --------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_segment_separators(separator: str) -> None:
    """Segments ending with LF or CRLF parse like those ending with CR."""
    message = _oru().decode().replace("\r", separator).encode()
    oru = parse_oru(message)
    assert oru == parse_oru(_oru())
    _validate(oru)


@pytest.mark.parametrize(
    ("table", "encoding", "value"),
    [
        # \F\ names the field separator, whichever it is: here it stands for "#".
        (
            str.maketrans({"|": "#", "^": "$", "~": "%", "\\": "!", "&": "@"}),
            "$%!@",
            "阳性#弱$阳@性",
        ),
        ({}, "^~\\&?", "阳性|弱^阳&性"),  # five encoding characters (v2.7 truncation)
    ],
    ids=["custom", "truncation-char"],
)
def test_custom_encoding_characters(table: dict[int, str], encoding: str, value: str) -> None:
    """Delimiters declared in MSH-1/MSH-2 are honoured, escapes included."""
    obs = _observations()
    obs[1] = {**obs[1], "valueString": "阳性|弱^阳&性"}
    del obs[1]["valueQuantity"]
    text = _oru(observations=obs).decode().translate(table)
    text = text.replace(text[3:8], text[3] + encoding, 1)
    oru = parse_oru(text.encode())
    assert oru.patient_identifiers == [
        (MRN_F001, "MRN000123"),
        (NATIONAL, "32040219850712341X"),
    ]
    assert [o["code"]["coding"][0]["code"] for o in oru.observations] == [
        "6690-2",
        "718-7",
        "777-3",
    ]
    assert oru.observations[0]["valueQuantity"]["unit"] == "10*9/L"
    assert oru.observations[1]["valueString"] == value
    _validate(oru)


def test_two_obr_groups_give_two_reports() -> None:
    """Each OBR with its following OBX becomes its own DiagnosticReport."""
    first = _oru(report=_report("rep-1", ("obs-wbc", "obs-hgb")))
    second = _oru(report=_report("rep-2", ("obs-plt",)))
    tail = [s for s in second.decode().split("\r") if s[:3] in ("ORC", "OBR", "OBX")]
    tail = [s.replace("OBR|1|", "OBR|2|", 1) for s in tail]
    message = first + "\r".join(tail).encode() + b"\r"
    oru = parse_oru(message)
    assert len(oru.reports) == 2
    assert [r["identifier"][0]["value"] for r in oru.reports] == ["rep-1", "rep-2"]
    assert oru.reports[0]["id"] != oru.reports[1]["id"]
    by_id = {o["id"]: o for o in oru.observations}
    codes = [
        [by_id[ref["reference"].split("/")[1]]["code"]["coding"][0]["code"] for ref in r["result"]]
        for r in oru.reports
    ]
    assert codes == [["6690-2", "718-7"], ["777-3"]]
    _validate(oru)


def test_escapes_are_unescaped_in_text() -> None:
    """\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and \\X0A\\ in values and names come back as text."""
    obs = _observations()
    obs[0] = {**obs[0], "valueString": "见备注|a^b&c~d\\e\n第二行"}
    del obs[0]["valueQuantity"]
    obs[0]["code"]["coding"][0]["display"] = "白细胞|计数"
    message = _oru(observations=obs)
    assert b"\\F\\" in message and b"\\X0A\\" in message
    oru = parse_oru(message)
    assert oru.observations[0]["valueString"] == "见备注|a^b&c~d\\e\n第二行"
    assert oru.observations[0]["code"]["text"] == "白细胞|计数"
    _validate(oru)


def test_minimal_message_with_local_codes_and_no_offsets() -> None:
    """Optional fields left out, local codes, units without UCUM and times without offset."""
    message = (
        "MSH|^~\\&|LIS|F002|||20240305||ORU^R01|c1|P|2.4\r"
        "PID|||M1^^^F002^MR||张^三||19800101|F\r"
        "OBR|1||R1|GLU^葡萄糖^L|||202403050830\r"
        "OBX|1|NM|GLU^葡萄糖^L||5.6|mmol/L|3.9-6.1|N\r"
        "NTE|1||空腹\r"
        "OBX|2|ST|COM^备注||溶血\\.br\\复查|||A\r"
        "OBX|3|SN|HBSAG^乙肝表面抗原||<^0.05|IU/mL|<0.05\r"
    ).encode()
    oru = parse_oru(message)
    assert oru.message_time == "2024-03-05"
    assert oru.patient_identifiers == [("urn:huren:mrn:F002", "M1")]
    assert oru.patient["gender"] == "female"
    assert oru.patient["name"][0]["text"] == "张三"
    [report] = oru.reports
    assert report["status"] == "unknown"
    assert report["code"]["coding"][0] == {
        "system": "urn:huren:lab-code:F002",
        "code": "GLU",
        "display": "葡萄糖",
    }
    assert report["effectiveDateTime"] == "2024-03-05T08:30:00+08:00"
    glucose, comment, hbsag = oru.observations
    assert glucose["valueQuantity"] == {"value": 5.6, "unit": "mmol/L"}
    assert glucose["referenceRange"][0]["low"]["value"] == 3.9
    assert glucose["note"] == [{"text": "空腹"}]
    assert glucose["effectiveDateTime"] == report["effectiveDateTime"]
    assert comment["valueString"] == "溶血\n复查"
    assert hbsag["valueQuantity"]["comparator"] == "<"
    assert hbsag["referenceRange"] == [{"high": {"value": 0.05, "unit": "IU/mL"}}]
    _validate(oru)


def test_message_without_obr_has_no_reports() -> None:
    """A PID with no OBR parses to a patient and no results (the caller decides)."""
    message = _oru().split(b"\rORC|", 1)[0] + b"\r"
    oru = parse_oru(message)
    assert (oru.reports, oru.observations) == ([], [])
    assert oru.patient_identifiers[0] == (MRN_F001, "MRN000123")


def test_gb18030_message() -> None:
    """A message whose MSH-18 names GB 18030 is decoded with it."""
    text = _oru().decode().replace("UNICODE UTF-8", "GB 18030-2000")
    oru = parse_oru(text.encode("gb18030"))
    assert oru.patient["name"][0]["text"] == "王小明"
    assert oru.observations[0]["code"]["text"] == "白细胞计数"


# -- bad input ------------------------------------------------------------------------------------


def test_random_bytes_are_rejected() -> None:
    """Bytes that are not HL7 are rejected (AR) with no control id."""
    junk = random.Random(7).randbytes(200)
    for message in (junk, b"", b"MSH", b"hello\rworld"):
        err = _error(message)
        assert err.code == "AR"
        assert err.control_id is None


def test_bad_encoding_characters_are_rejected() -> None:
    """MSH-2 with too few or repeated delimiters is rejected (AR)."""
    err = _error(b"MSH|^^|LIS|F001|||20240305||ORU^R01|c1|P|2.5.1\rPID|||M1\r")
    assert err.code == "AR"
    assert err.text.startswith("MSH-2")


def test_other_message_type_is_rejected() -> None:
    """An ADT^A01 is rejected (AR), naming MSH-9 and carrying the control id."""
    err = _error(_oru().replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01"))
    assert (err.code, err.control_id, err.error_code) == ("AR", "F001-0001", "200")
    assert err.text.startswith("MSH-9")


def test_unsupported_version_is_rejected() -> None:
    """A version outside 2.3 to 2.9 is rejected (AR)."""
    err = _error(_oru().replace(b"|2.5.1|", b"|3.0|"))
    assert (err.code, err.control_id, err.error_code) == ("AR", "F001-0001", "203")


def test_missing_pid_is_an_error() -> None:
    """A message without PID is an application error (AE)."""
    err = _error(_replace_segment(_oru(), "PID", None))
    assert (err.code, err.control_id) == ("AE", "F001-0001")
    assert err.text.startswith("PID")


def test_pid_without_identifiers_is_an_error() -> None:
    """A PID whose PID-3 is empty is an application error (AE) naming PID-3."""
    err = _error(_replace_segment(_oru(), "PID", "PID|1||||王^小明||19850712|M"))
    assert (err.code, err.control_id, err.error_code) == ("AE", "F001-0001", "101")
    assert err.text.startswith("PID-3")


def test_obx_before_obr_is_an_error() -> None:
    """An OBX before any OBR is an application error (AE)."""
    segments = _oru().decode().split("\r")
    obr = next(i for i, s in enumerate(segments) if s.startswith("OBR"))
    segments.insert(obr, segments.pop(obr + 1))
    err = _error("\r".join(segments).encode())
    assert (err.code, err.control_id, err.error_code) == ("AE", "F001-0001", "100")
    assert err.text.startswith("OBX")


def test_non_numeric_nm_value_is_an_error() -> None:
    """An NM value "abc" is an application error (AE) naming OBX-5."""
    err = _error(_oru().replace(b"||11.2|", b"||abc|"))
    assert (err.code, err.control_id, err.error_code) == ("AE", "F001-0001", "102")
    assert err.text.startswith("OBX-5")


def test_bad_date_is_an_error() -> None:
    """A date that is not one (month 13) is an application error (AE) naming the field."""
    err = _error(_oru().replace(b"|19850712|", b"|19851312|"))
    assert (err.code, err.control_id, err.error_code) == ("AE", "F001-0001", "102")
    assert err.text.startswith("PID-7")


def test_invalid_utf8_is_rejected() -> None:
    """Bytes that are not UTF-8 (as MSH-18 says) are rejected (AR), with the control id."""
    err = _error(_oru().replace("王".encode(), b"\xff\xfe"))
    assert (err.code, err.control_id) == ("AR", "F001-0001")


# -- ACK ------------------------------------------------------------------------------------------


def _ack_fields(ack: bytes) -> dict[str, list[str]]:
    return {seg[:3]: seg.split("|") for seg in ack.decode().split("\r") if seg}


@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_ack_parses_with_seeds_parse_ack(code: str) -> None:
    """AA, AE and AR ACKs read back with seeds.parse_ack, echoing the control id."""
    text = None if code == "AA" else "PID-3: bad | value ^ with & delimiters ~ \\ here"
    ack = build_ack(_oru(), code, text, now=NOW)
    got_code, control_id, error = parse_ack(ack)
    assert (got_code, control_id, error) == (code, "F001-0001", text)
    fields = _ack_fields(ack)
    assert fields["MSH"][2:6] == ["HUREN", "HUREN", "LIS", "F001"]
    assert fields["MSH"][8] == "ACK^R01^ACK"
    assert fields["MSH"][9] not in ("", "F001-0001")
    assert fields["MSH"][11] == "2.5.1"
    assert ("ERR" in fields) == (code != "AA")


def test_ack_error_codes_follow_the_problem() -> None:
    """ERR-3 names the condition the message has: 102, 200, 101, or 207 when it parses."""
    cases = [
        (_oru().replace(b"||11.2|", b"||abc|"), "AE", "102"),
        (_oru().replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01"), "AR", "200"),
        (_replace_segment(_oru(), "PID", "PID|1||||王^小明"), "AE", "101"),
        (_oru(), "AE", "207"),  # parsed fine; the gateway failed afterwards
    ]
    for message, code, condition in cases:
        ack = build_ack(message, code, now=NOW)
        err = _ack_fields(ack)["ERR"]
        assert err[3].split("^")[0] == condition
        got_code, control_id, text = parse_ack(ack)
        assert (got_code, control_id) == (code, "F001-0001")
        assert text


def test_ack_for_unreadable_message() -> None:
    """An AR for junk (or no message) parses, with the control id the caller gives if any."""
    for message in (None, b"\x00garbage"):
        ack = build_ack(message, "AR", "not HL7", now="2024-03-05T10:16:00+08:00")
        assert parse_ack(ack) == ("AR", "", "not HL7")
    ack = build_ack(None, "AE", "not stored", control_id="X-1", now=NOW)
    assert parse_ack(ack) == ("AE", "X-1", "not stored")


def test_ack_for_error_from_parse() -> None:
    """The ACK built from a caught Hl7Error carries its code, text and control id."""
    message = _oru().replace(b"||11.2|", b"||abc|")
    err = _error(message)
    ack = build_ack(message, err.code, err.text, control_id=err.control_id, now=NOW)
    assert parse_ack(ack) == ("AE", "F001-0001", err.text)


def test_ack_with_custom_delimiters_in_original() -> None:
    """An original with custom delimiters gets a standard ACK naming its sender."""
    table = str.maketrans({"|": "#", "^": "$", "~": "%", "\\": "!", "&": "@"})
    text = _oru().decode().translate(table)
    ack = build_ack(text.encode(), "AA", now=NOW)
    assert parse_ack(ack) == ("AA", "F001-0001", None)
    assert _ack_fields(ack)["MSH"][4:6] == ["LIS", "F001"]
