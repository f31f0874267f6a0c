"""The simulator's HL7 v2 lab feed: ORU^R01 built from FHIR, sent to a loopback MLLP receiver."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from adapters.errors import UpstreamUnavailable
from adapters.hl7v2 import parse_oru
from adapters.mllp import frame, read_frame
from gateway.lab_codes import LabCodeMap
from seeds.hl7_sender import (
    FeedResult,
    build_oru,
    control_id_for,
    messages_for_facility,
    parse_ack,
    send_feed,
    unescape,
)
from tests.loopback import Serve
from tests.ports import free_port

Resource = dict[str, Any]

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _patient() -> Resource:
    return {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [
            {"system": "urn:huren:mrn:F001", "value": "MRN000123"},
            {"system": "urn:oid:2.16.156.10011.1.5", "value": "32040219850712341X"},
        ],
        "name": [{"use": "official", "text": "王小明", "family": "王", "given": ["小明"]}],
        "gender": "male",
        "birthDate": "1985-07-12",
    }


def _report(report_id: str = "rep-1", category: str = "LAB") -> Resource:
    return {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": category}]}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "血常规"}]
        },
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2024-03-05T08:30:00+08:00",
        "issued": "2024-03-05T10:15:00+08:00",
        "result": [{"reference": "Observation/obs-wbc"}, {"reference": "Observation/obs-hgb"}],
    }


def _observation(
    obs_id: str,
    loinc: str,
    display: str,
    value: float,
    unit: str,
    low: float,
    high: float,
    flag: str,
) -> Resource:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}]},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2024-03-05T08:30:00+08:00",
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
        "referenceRange": [
            {"low": {"value": low, "unit": unit}, "high": {"value": high, "unit": unit}}
        ],
        "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag}]}],
    }


def _observations() -> list[Resource]:
    return [
        # Listed in the opposite order to the report's, which must win.
        _observation("obs-hgb", "718-7", "血红蛋白", 135, "g/L", 130, 175, "N"),
        _observation("obs-wbc", "6690-2", "白细胞计数", 11.2, "10*9/L", 3.5, 9.5, "H"),
    ]


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


def _fields(message: bytes) -> list[list[str]]:
    """The message's segments, each split into fields (raw, not unescaped)."""
    text = message.decode("utf-8")
    assert text.endswith("\r")
    return [segment.split("|") for segment in text.split("\r")[:-1]]


def _ack(message: bytes, code: str, *, text: str = "") -> bytes:
    control_id = message.split(b"\r", 1)[0].split(b"|")[9].decode()
    msa = f"MSA|{code}|{control_id}" + (f"|{text}" if text else "")
    msh = f"MSH|^~\\&|HUREN|HUREN|LIS|F001|20240305101600||ACK^R01^ACK|A{control_id}|P|2.5.1"
    return f"{msh}\r{msa}\r".encode()


class Receiver:
    """A stand-in for the gateway's MLLP listener, answering from a script.

    Each received message takes the next answer: an ACK code, or "close" to hang up without
    one. Once the script runs out, every message is answered AA.
    """

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.received: list[bytes] = []
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (message := await read_frame(reader)) is not None:
                self.received.append(message)
                answer = self.answers.pop(0) if self.answers else "AA"
                if answer == "close":
                    return
                writer.write(frame(_ack(message, answer)))
                await writer.drain()
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


def _messages(n: int) -> list[bytes]:
    return [_oru(report=_report(f"rep-{i}"), control_id=f"F001-{i:04d}") for i in range(n)]


# -- build_oru -------------------------------------------------------------------------------


def test_build_oru_segments_in_order() -> None:
    """The message is MSH, PID, ORC, OBR, then one OBX per result, each ending in CR."""
    assert [seg[0] for seg in _fields(_oru())] == ["MSH", "PID", "ORC", "OBR", "OBX", "OBX"]


def test_build_oru_msh_fields() -> None:
    """MSH carries the encoding characters, parties, ORU^R01^ORU_R01, P, 2.5.1 and UTF-8."""
    msh = _fields(_oru())[0]
    # msh[n] is MSH-(n+1): MSH-1 is the field separator itself.
    assert msh[1] == "^~\\&"
    assert msh[2:6] == ["LIS", "F001", "HUREN", "HUREN"]
    assert msh[6] == "20240305101500+0800"
    assert msh[8] == "ORU^R01^ORU_R01"
    assert msh[9] == "F001-0001"
    assert msh[10] == "P"
    assert msh[11] == "2.5.1"
    assert msh[17] == "UNICODE UTF-8"


def test_build_oru_pid_fields() -> None:
    """PID-3 repeats MRN (authority = facility, MR) and national ID; PID-5/7/8 follow FHIR."""
    pid = _fields(_oru())[1]
    mrn, national = pid[3].split("~")
    mrn_cx, national_cx = mrn.split("^"), national.split("^")
    assert mrn_cx[0] == "MRN000123"
    assert mrn_cx[3].split("&")[0] == "F001"
    assert mrn_cx[4] == "MR"
    assert national_cx[0] == "32040219850712341X"
    assert national_cx[3] == "CN-RID&2.16.156.10011.1.5&ISO"
    assert national_cx[4] == "NNCHN"
    assert pid[5] == "王^小明^^^^^L"
    assert pid[7] == "19850712"
    assert pid[8] == "M"


def test_build_oru_orc_and_obr_fields() -> None:
    """OBR-4 is the panel LOINC, OBR-7 effective, OBR-22 issued, OBR-25 F."""
    orc, obr = _fields(_oru())[2:4]
    assert orc[1] == "RE"
    assert obr[3] == orc[3] == "rep-1^F001"
    assert obr[4] == "58410-2^血常规^LN"
    assert obr[7] == "20240305083000+0800"
    assert obr[22] == "20240305101500+0800"
    assert obr[25] == "F"


def test_build_oru_obx_fields_follow_the_report_order() -> None:
    """Each OBX holds NM, LOINC^Chinese name^LN, value, UCUM unit, range, flag, F and time."""
    wbc, hgb = _fields(_oru())[4:]
    assert wbc[1:9] == [
        "1",
        "NM",
        "6690-2^白细胞计数^LN",
        "",
        "11.2",
        "10*9/L^^UCUM",
        "3.5-9.5",
        "H",
    ]
    assert (wbc[11], wbc[14]) == ("F", "20240305083000+0800")
    assert hgb[1:9] == ["2", "NM", "718-7^血红蛋白^LN", "", "135", "g/L^^UCUM", "130-175", "N"]


def test_build_oru_is_deterministic_and_utf8() -> None:
    """The same inputs give the same bytes, and the Chinese text is UTF-8."""
    message = _oru()
    assert message == _oru()
    for text in ("王", "小明", "血常规", "白细胞计数", "血红蛋白"):
        assert text.encode("utf-8") in message


def test_build_oru_escapes_delimiters() -> None:
    """| ^ & ~ and \\ in text are sent as \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and read back intact."""
    tricky = "血红蛋白|Hb^HGB&x~y\\z"
    observations = _observations()
    observations[0]["code"]["coding"][0]["display"] = tricky
    hgb = _fields(_oru(observations=observations))[-1]
    assert len(hgb) == 15  # no extra fields: the | inside the name was escaped
    code, name, system = hgb[3].split("^")
    assert name == "血红蛋白\\F\\Hb\\S\\HGB\\T\\x\\R\\y\\E\\z"
    assert (code, unescape(name), system) == ("718-7", tricky, "LN")


def test_build_oru_sends_a_local_code_as_l_and_it_parses_back() -> None:
    """An item without LOINC (a LIS that knows only its own codes) goes as code^name^L; the
    parser reads it as urn:huren:lab-code:<MSH-4>, which the ConceptMap takes to LOINC."""
    codes = LabCodeMap.load()
    system = "urn:huren:lab-code:F010"
    local = codes.to_local(system, "http://loinc.org", "6690-2")
    assert local is not None
    observations = _observations()
    observations[1]["code"] = {
        "coding": [{"system": system, "code": local, "display": "白细胞计数"}],
        "text": "白细胞计数",
    }
    message = _oru(observations=observations, sending_facility="F010")
    wbc, hgb = _fields(message)[4:]
    assert wbc[3] == f"{local}^白细胞计数^L"
    assert hgb[3] == "718-7^血红蛋白^LN"

    oru = parse_oru(message)
    parsed_wbc, parsed_hgb = oru.observations
    assert parsed_wbc["code"]["coding"] == [
        {"system": system, "code": local, "display": "白细胞计数"}
    ]
    assert parsed_hgb["code"]["coding"][0]["system"] == "http://loinc.org"
    assert codes.standard_code(parsed_wbc) == "6690-2"
    assert codes.translate(parsed_wbc)["code"]["coding"][1]["code"] == "6690-2"


def test_build_oru_falls_back_to_text_for_the_local_name() -> None:
    """A local coding without display is named by the concept's text."""
    observations = _observations()
    observations[1]["code"] = {
        "coding": [{"system": "urn:huren:lab-code:F001", "code": "1001"}],
        "text": "白细胞计数",
    }
    assert _fields(_oru(observations=observations))[4][3] == "1001^白细胞计数^L"


def test_build_oru_refuses_an_observation_without_a_code() -> None:
    observations = _observations()
    observations[0]["code"] = {"text": "血红蛋白"}
    with pytest.raises(ValueError, match="Observation/obs-hgb has no coding"):
        _oru(observations=observations)


def test_build_oru_refuses_another_patients_report() -> None:
    """A report about another patient is not sent under this one."""
    report = _report()
    report["subject"] = {"reference": "Patient/someone-else"}
    with pytest.raises(ValueError, match="someone-else"):
        _oru(report=report)


def test_build_oru_refuses_missing_result() -> None:
    """A report whose results are not all given is refused, not sent short."""
    with pytest.raises(ValueError, match="obs-wbc"):
        _oru(observations=_observations()[:1])


# -- messages_for_facility ---------------------------------------------------------------------


def test_messages_for_facility_builds_one_oru_per_lab_report(tmp_path: Path) -> None:
    """Lab reports become ORU^R01s with stable control ids; radiology reports are skipped."""
    radiology = _report("rad-1", category="RAD")
    radiology["result"] = []
    resources = [_patient(), *_observations(), radiology, _report("rep-1")]
    path = tmp_path / "F001.ndjson"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in resources), encoding="utf-8"
    )

    messages = messages_for_facility(path, sending_application="LIS", sending_facility="F001")

    assert len(messages) == 1
    msh = _fields(messages[0])[0]
    assert msh[6] == "20240305101500+0800"  # the report's issued time
    assert msh[9] == control_id_for("F001", "rep-1")
    assert msh[9].startswith("F001-")
    assert messages == messages_for_facility(
        path, sending_application="LIS", sending_facility="F001"
    )
    assert control_id_for("F001", "rep-2") != msh[9]


# -- parse_ack ---------------------------------------------------------------------------------


def test_parse_ack_reads_accept() -> None:
    """An AA gives the code and control id, and no error text."""
    assert parse_ack(_ack(_oru(), "AA")) == ("AA", "F001-0001", None)


def test_parse_ack_reads_error_text() -> None:
    """An AE gives MSA-3's text, unescaped and in Chinese."""
    ack = _ack(_oru(), "AE", text="患者不存在\\F\\PID-3")
    assert parse_ack(ack) == ("AE", "F001-0001", "患者不存在|PID-3")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"MSH|^~\\&|LIS|F001|HUREN|HUREN|20240305||ORU^R01^ORU_R01|1|P|2.5.1\rMSA|AA|1\r",
        b"MSH|^~\\&|HUREN|HUREN|LIS|F001|20240305||ACK|1|P|2.5.1\r",
        b"MSH|^~\\&|HUREN|HUREN|LIS|F001|20240305||ACK|1|P|2.5.1\rMSA|OK|1\r",
        "MSH|^~\\&|HUREN|HUREN|LIS|F001|20240305||ACK|1|P|2.5.1\rMSA|AA|1\r".encode("utf-16"),
    ],
    ids=["empty", "not-hl7", "oru", "no-msa", "unknown-code", "not-utf8"],
)
def test_parse_ack_rejects_non_ack(data: bytes) -> None:
    """Anything but an HL7 ACK with a known MSA-1 code is a ValueError."""
    with pytest.raises(ValueError):
        parse_ack(data)


# -- send_feed ---------------------------------------------------------------------------------


async def test_send_feed_gets_aa_for_each(serve: Serve) -> None:
    """Every message is acknowledged AA over one connection, and arrives intact."""
    receiver = Receiver()
    messages = _messages(3)
    result = await send_feed("127.0.0.1", await serve(receiver), messages, timeout=5)
    assert result == FeedResult(accepted=3, rejected=0, retried=0)
    assert receiver.received == messages
    assert receiver.connections == 1
    assert "王^小明" in receiver.received[0].decode("utf-8")


async def test_send_feed_retries_after_ae(serve: Serve) -> None:
    """A message answered AE once, then AA, is sent again and counted as retried."""
    receiver = Receiver("AA", "AE")
    messages = _messages(3)
    result = await send_feed("127.0.0.1", await serve(receiver), messages, backoff=0.01)
    assert result == FeedResult(accepted=3, rejected=0, retried=1)
    assert receiver.received == [messages[0], messages[1], messages[1], messages[2]]


async def test_send_feed_counts_a_message_still_rejected(serve: Serve) -> None:
    """A message rejected on every try is counted rejected after 3 retries; the feed goes on."""
    receiver = Receiver("AR", "AE", "AE", "AE")
    messages = _messages(2)
    result = await send_feed("127.0.0.1", await serve(receiver), messages, backoff=0.01)
    assert result == FeedResult(accepted=1, rejected=1, retried=3)
    assert receiver.received == [messages[0]] * 4 + [messages[1]]


async def test_send_feed_reconnects_when_peer_closes_without_ack(serve: Serve) -> None:
    """A receiver hanging up without an ACK makes the sender reconnect and resend."""
    receiver = Receiver("close")
    messages = _messages(2)
    result = await send_feed("127.0.0.1", await serve(receiver), messages, backoff=0.01)
    assert result == FeedResult(accepted=2, rejected=0, retried=1)
    assert receiver.connections == 2
    assert receiver.received == [messages[0], messages[0], messages[1]]


async def test_send_feed_to_unreachable_port_raises_upstream_unavailable() -> None:
    """With nobody listening, the feed fails with UpstreamUnavailable after its retries."""
    with pytest.raises(UpstreamUnavailable):
        await send_feed("127.0.0.1", free_port(), _messages(1), timeout=1, backoff=0.01)


async def test_send_feed_of_nothing_opens_no_connection(serve: Serve) -> None:
    """An empty feed neither connects nor fails."""
    receiver = Receiver()
    result = await send_feed("127.0.0.1", await serve(receiver), [])
    assert result == FeedResult(accepted=0, rejected=0, retried=0)
    assert receiver.connections == 0
