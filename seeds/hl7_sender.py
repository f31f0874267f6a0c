"""The simulator's HL7 v2 lab feed: FHIR lab results as ORU^R01 messages, sent over MLLP.

A facility's laboratory system in the simulated city pushes its results to Huren the way most
Chinese hospital LISes do: one ORU^R01 (HL7 v2.5.1, Chapter 7) per lab report, over MLLP, in
original acknowledgment mode (one ACK per message, the next message waits for it).

The messages are built from the FHIR R4 resources the seed generator writes (ndjson, one
resource a line). The mapping, field by field:

======  =================================================================================
MSH     ``^~\\&``; MSH-3/4 sending application and facility, MSH-5/6 receiving; MSH-7 the
        timestamp; MSH-9 ``ORU^R01^ORU_R01``; MSH-10 the control id; MSH-11 ``P``;
        MSH-12 ``2.5.1``; MSH-17 ``CHN``; MSH-18 ``UNICODE UTF-8``
PID     PID-3, repeated: each facility MRN (system ``urn:huren:mrn:<facility>``) as
        ``<mrn>^^^<facility>&urn:huren:mrn:<facility>&URI^MR``, the sending facility's
        first; the resident identity card number (system ``urn:oid:2.16.156.10011.1.5``)
        as ``<id>^^^CN-RID&2.16.156.10011.1.5&ISO^NNCHN`` (table 0203: NNxxx, national
        person identifier of the country with ISO 3166 code xxx).
        PID-5 ``<family>^<given>^^^^^L`` in Chinese (the name's text in the family
        component when it has no parts); PID-7 birth date; PID-8 sex (table 0001)
ORC     ORC-1 ``RE``; ORC-3 filler order number ``<report id>^<sending facility>``;
        ORC-5 ``CM``; ORC-9 the report's issued time
OBR     OBR-1 ``1``; OBR-3 as ORC-3; OBR-4 ``<panel LOINC>^<name>^LN`` (``^L`` when the
        panel has no LOINC code); OBR-7 the report's effective time; OBR-22 its issued time;
        OBR-24 ``LAB``; OBR-25 status (table 0123)
OBX     one per result, in the report's order: OBX-2 ``NM`` (``SN`` for a value with a
        comparator, ``ST`` for text); OBX-3 ``<LOINC>^<Chinese name>^LN``, or, for an item
        without a LOINC coding (a laboratory system that knows only its own item codes),
        ``<local code>^<Chinese name>^L`` (table 0396: L, local); OBX-5 value;
        OBX-6 ``<UCUM code>^^UCUM``; OBX-7 ``low-high`` (``>low``, ``<high``);
        OBX-8 interpretation (H, L, N, ...); OBX-11 status; OBX-14 observation time
======  =================================================================================

Free text is escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``), segments end with CR, and the
message is encoded in UTF-8, as MSH-18 says.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.errors import UpstreamError, UpstreamProtocolError
from adapters.mllp import MllpConnection

FhirJson = dict[str, Any]

MRN_SYSTEM_PREFIX = "urn:huren:mrn:"
NATIONAL_ID_SYSTEM = "urn:oid:2.16.156.10011.1.5"
LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
#: Assigning authority (HD: namespace & universal id & type) of the resident identity card.
NATIONAL_ID_AUTHORITY = "CN-RID&2.16.156.10011.1.5&ISO"

#: Acknowledgment codes (table 0008), original mode then enhanced mode.
ACCEPT_CODES = frozenset({"AA", "CA"})
NEGATIVE_CODES = frozenset({"AE", "AR", "CE", "CR"})

_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}  # table 0001
#: FHIR DiagnosticReport / Observation status -> result status (table 0085 / 0123).
_RESULT_STATUS = {
    "final": "F",
    "amended": "C",
    "corrected": "C",
    "appended": "C",
    "preliminary": "P",
    "partial": "P",
    "registered": "I",
    "cancelled": "X",
    "entered-in-error": "W",
}
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_UNESCAPES = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}
_FHIR_DATETIME = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<frac>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_HL7_DTM = re.compile(r"\d{4}(?:\d{2}){0,5}(?:\.\d{1,4})?(?:[+-]\d{4})?")


# -- text ---------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Escape the delimiters ``| ^ & ~ \\`` and line breaks in `text` (HL7 v2.5.1, 2.7)."""
    out = "".join(_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")


def unescape(text: str) -> str:
    """Undo `escape`: the delimiter escapes and ``\\Xhh..\\``; other sequences are kept."""

    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _UNESCAPES:
            return _UNESCAPES[body]
        if body.startswith("X") and len(body) % 2 == 1:
            try:
                return bytes.fromhex(body[1:]).decode("utf-8")
            except ValueError:
                pass
        return match.group(0)

    return re.sub(r"\\([^\\]*)\\", one, text)


def hl7_datetime(value: str) -> str:
    """A FHIR date, dateTime or instant as an HL7 DTM (``YYYYMMDDHHMMSS[.S][+ZZZZ]``).

    A value that is already a DTM is returned unchanged.

    Raises
    ------
    ValueError
        `value` is neither.
    """
    if _HL7_DTM.fullmatch(value):
        return value
    m = _FHIR_DATETIME.fullmatch(value)
    if m is None:
        raise ValueError(f"expected a FHIR dateTime or HL7 DTM, got {value!r}")
    out = "".join(m.group(k) or "" for k in ("y", "m", "d", "H", "M", "S"))
    if m.group("frac"):
        out += m.group("frac")[:5]  # DTM holds at most four fractional digits
    tz = m.group("tz")
    if tz == "Z":
        out += "+0000"
    elif tz:
        out += tz.replace(":", "")
    return out


def _number(value: Any, what: str) -> str:
    """A JSON number as an HL7 NM: plain decimal notation, never an exponent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return format(Decimal(str(value)), "f")


# -- FHIR lookups ---------------------------------------------------------------------------


def _coding(concept: Mapping[str, Any] | None, system: str | None = None) -> FhirJson:
    """The first coding of a CodeableConcept, from `system` when given."""
    codings = (concept or {}).get("coding") or []
    for coding in codings:
        if system is None or coding.get("system") == system:
            return dict(coding)
    return {}


def _coded(concept: Mapping[str, Any] | None, what: str) -> tuple[str, str, str]:
    """(code, display, HL7 coding system): LOINC ("LN") when there is one, else the first
    coding as a local code ("L", table 0396): panels without a LOINC code, and the items of
    laboratory systems that know only their own codes."""
    coding, system = _coding(concept, LOINC_SYSTEM), "LN"
    if not coding.get("code"):
        coding, system = _coding(concept), "L"
    code = coding.get("code")
    if not code:
        raise ValueError(f"{what} has no coding with a code (got {concept!r})")
    display = coding.get("display") or (concept or {}).get("text") or ""
    return str(code), str(display), system


def _status(resource: Mapping[str, Any]) -> str:
    status = resource.get("status", "final")
    try:
        return _RESULT_STATUS[status]
    except KeyError:
        raise ValueError(
            f"{resource.get('resourceType')}/{resource.get('id')}: status must be one of "
            f"{sorted(_RESULT_STATUS)}, got {status!r}"
        ) from None


def is_lab_report(report: Mapping[str, Any]) -> bool:
    """True for a DiagnosticReport whose category holds the code LAB (table 0074)."""
    return any(
        coding.get("code") == "LAB"
        for concept in report.get("category") or []
        for coding in concept.get("coding") or []
    )


# -- segments -------------------------------------------------------------------------------


def _segment(name: str, *fields: str) -> str:
    """One segment; trailing empty fields are dropped, as senders should."""
    values = list(fields)
    while values and not values[-1]:
        values.pop()
    return "|".join([name, *values])


def _pid(patient: Mapping[str, Any], sending_facility: str) -> str:
    mrns: list[tuple[str, str]] = []
    national: list[str] = []
    for ident in patient.get("identifier") or []:
        system, value = ident.get("system") or "", ident.get("value")
        if not value:
            continue
        if system.startswith(MRN_SYSTEM_PREFIX):
            mrns.append((system.removeprefix(MRN_SYSTEM_PREFIX), value))
        elif system == NATIONAL_ID_SYSTEM:
            national.append(value)
    # The sending facility's own MRN first: receivers often read only the first repetition.
    mrns.sort(key=lambda item: item[0] != sending_facility)
    cx = [
        f"{escape(value)}^^^{escape(fac)}&{escape(MRN_SYSTEM_PREFIX + fac)}&URI^MR"
        for fac, value in mrns
    ]
    cx += [f"{escape(value)}^^^{NATIONAL_ID_AUTHORITY}^NNCHN" for value in national]
    if not cx:
        raise ValueError(f"Patient/{patient.get('id')} has neither an MRN nor a national ID")

    names = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    family, given = name.get("family") or "", "".join(name.get("given") or [])
    if not (family or given):
        family = name.get("text") or ""
    xpn = f"{escape(family)}^{escape(given)}^^^^^L" if family or given else ""

    sex = _SEX.get(patient.get("gender") or "", "")
    birth = hl7_datetime(patient["birthDate"]) if patient.get("birthDate") else ""
    return _segment("PID", "1", "", "~".join(cx), "", xpn, "", birth, sex)


def _obx(set_id: int, obs: Mapping[str, Any], default_time: str) -> str:
    what = f"Observation/{obs.get('id')}"
    code, display, code_system = _coded(obs.get("code"), what)
    units = ""
    if "valueQuantity" in obs:
        quantity = obs["valueQuantity"]
        value = _number(quantity.get("value"), f"{what} valueQuantity.value")
        comparator = quantity.get("comparator")
        value_type, value = ("SN", f"{escape(comparator)}^{value}") if comparator else ("NM", value)
        unit = quantity.get("code") or quantity.get("unit")
        units = f"{escape(unit)}^^UCUM" if unit else ""
    elif "valueString" in obs:
        value_type, value = "ST", escape(obs["valueString"])
    else:
        raise ValueError(f"{what} has neither valueQuantity nor valueString")

    ref_range = ""
    for ref in (obs.get("referenceRange") or [])[:1]:
        low, high = ref.get("low", {}).get("value"), ref.get("high", {}).get("value")
        low_s = _number(low, f"{what} referenceRange.low") if low is not None else ""
        high_s = _number(high, f"{what} referenceRange.high") if high is not None else ""
        if low_s and high_s:
            ref_range = f"{low_s}-{high_s}"
        elif low_s:
            ref_range = f">{low_s}"
        elif high_s:
            ref_range = f"<{high_s}"
        else:
            ref_range = escape(ref.get("text") or "")

    interpretation = ""
    for concept in (obs.get("interpretation") or [])[:1]:
        interpretation = escape(_coding(concept).get("code") or "")

    effective = obs.get("effectiveDateTime")
    when = hl7_datetime(effective) if effective else default_time
    return _segment(
        "OBX",
        str(set_id),
        value_type,
        f"{escape(code)}^{escape(display)}^{code_system}",
        "",
        value,
        units,
        ref_range,
        interpretation,
        "",
        "",
        _status(obs),
        "",
        "",
        when,
    )


def _ordered_results(report: Mapping[str, Any], observations: list[FhirJson]) -> list[FhirJson]:
    """The observations in the order the report lists them."""
    refs = [r.get("reference", "") for r in report.get("result") or []]
    if not refs:
        return observations
    by_ref = {f"Observation/{o.get('id')}": o for o in observations}
    missing = [ref for ref in refs if ref not in by_ref]
    if missing:
        raise ValueError(
            f"DiagnosticReport/{report.get('id')} refers to {missing}, "
            f"not among the observations given ({sorted(by_ref)})"
        )
    return [by_ref[ref] for ref in refs]


def build_oru(
    patient: FhirJson,
    report: FhirJson,
    observations: list[FhirJson],
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str = "HUREN",
    receiving_facility: str = "HUREN",
    control_id: str,
    timestamp: str,
) -> bytes:
    """Build the ORU^R01 (v2.5.1) for one lab DiagnosticReport; see the module's table.

    Parameters
    ----------
    patient, report, observations
        FHIR R4 resources as parsed JSON; `observations` must hold every result the report
        refers to (others are ignored).
    sending_application, sending_facility, receiving_application, receiving_facility
        MSH-3 to MSH-6, as HD namespace ids (escaped, not split into components).
    control_id
        MSH-10; the ACK echoes it in MSA-2.
    timestamp
        MSH-7, a FHIR dateTime or an HL7 DTM.

    Returns
    -------
    bytes
        The message, segments ending with CR, in UTF-8; the same inputs give the same bytes.

    Raises
    ------
    ValueError
        The resources lack what the message needs (a code, an identifier, a value),
        or the report belongs to another patient.
    """
    subject = (report.get("subject") or {}).get("reference")
    if subject and patient.get("id") and subject != f"Patient/{patient['id']}":
        raise ValueError(
            f"DiagnosticReport/{report.get('id')} is about {subject}, not Patient/{patient['id']}"
        )
    panel_code, panel_name, panel_system = _coded(
        report.get("code"), f"DiagnosticReport/{report.get('id')}"
    )
    effective = hl7_datetime(report["effectiveDateTime"]) if "effectiveDateTime" in report else ""
    issued = hl7_datetime(report["issued"]) if "issued" in report else ""
    filler = f"{escape(str(report.get('id', '')))}^{escape(sending_facility)}"

    segments = [
        _segment(
            "MSH",
            "^~\\&",
            escape(sending_application),
            escape(sending_facility),
            escape(receiving_application),
            escape(receiving_facility),
            hl7_datetime(timestamp),
            "",
            "ORU^R01^ORU_R01",
            escape(control_id),
            "P",
            "2.5.1",
            "",
            "",
            "",
            "",
            "CHN",
            "UNICODE UTF-8",
        ),
        _pid(patient, sending_facility),
        _segment("ORC", "RE", "", filler, "", "CM", "", "", "", issued),
        _segment(
            "OBR",
            "1",
            "",
            filler,
            f"{escape(panel_code)}^{escape(panel_name)}^{panel_system}",
            "",
            "",
            effective,
            *[""] * 14,  # OBR-8 to OBR-21
            issued,
            "",
            "LAB",
            _status(report),
        ),
    ]
    for n, obs in enumerate(_ordered_results(report, observations), start=1):
        segments.append(_obx(n, obs, effective))
    return "".join(f"{seg}\r" for seg in segments).encode("utf-8")


# -- ACK ------------------------------------------------------------------------------------


def _segments(text: str) -> list[str]:
    # CR is the terminator; LF and CRLF are tolerated, as many receivers emit them.
    return [seg for seg in re.split(r"\r\n|\r|\n", text) if seg]


def parse_ack(data: bytes) -> tuple[str, str, str | None]:
    """Read an ACK: (MSA-1 acknowledgment code, MSA-2 control id, error text or None).

    The error text is ERR-8 (user message), else MSA-3, else the text of ERR-3.

    Raises
    ------
    ValueError
        `data` is not UTF-8, does not begin with MSH, is not of message type ACK, or has no
        MSA with a known acknowledgment code (table 0008).
    """
    text = data.decode("utf-8")
    segments = _segments(text)
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise ValueError(f"expected an HL7 message beginning with MSH, got {data[:16]!r}")
    sep = segments[0][3]
    component = segments[0][4]
    msh = segments[0].split(sep)
    message_type = msh[8] if len(msh) > 8 else ""  # MSH-9: MSH-1 is the separator itself
    if message_type.split(component)[0] != "ACK":
        raise ValueError(f"expected message type ACK, got {message_type!r}")
    fields = {seg[:3]: seg.split(sep) for seg in reversed(segments[1:])}  # first one wins
    msa = fields.get("MSA")
    if msa is None:
        raise ValueError("ACK has no MSA segment")
    code = msa[1] if len(msa) > 1 else ""
    if code not in ACCEPT_CODES | NEGATIVE_CODES:
        raise ValueError(
            f"MSA-1 must be one of {sorted(ACCEPT_CODES | NEGATIVE_CODES)}, got {code!r}"
        )
    control_id = unescape(msa[2]) if len(msa) > 2 else ""
    err = fields.get("ERR", [])
    candidates = [
        err[8] if len(err) > 8 else "",
        msa[3] if len(msa) > 3 else "",
        err[3].split(component)[1] if len(err) > 3 and component in err[3] else "",
    ]
    error = next((unescape(c) for c in candidates if c), None)
    return code, control_id, error


def control_id_of(message: bytes) -> str:
    """MSH-10 of an encoded message (UTF-8 or ASCII)."""
    first = _segments(message.decode("utf-8"))[0] if message else ""
    if not first.startswith("MSH") or len(first) < 4:
        raise ValueError(f"expected an HL7 message beginning with MSH, got {message[:16]!r}")
    msh = first.split(first[3])
    return unescape(msh[9]) if len(msh) > 9 else ""


# -- the feed -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedResult:
    #: Messages answered AA (or CA).
    accepted: int
    #: Messages still answered AE/AR (or CE/CR) after every retry.
    rejected: int
    #: Re-sends, summed over all messages (a message sent three times counts two).
    retried: int


async def send_feed(
    host: str,
    port: int,
    messages: Iterable[bytes],
    *,
    # ASYNC109: a per-attempt deadline, not one for the whole feed, so not the caller's.
    timeout: float = 5.0,  # noqa: ASYNC109
    retries: int = 3,
    backoff: float = 0.1,
) -> FeedResult:
    """Send messages one after another over one MLLP connection, each waiting for its ACK.

    A message answered AE or AR, or not answered (timeout, connection closed or refused,
    garbage, an ACK for another control id) is sent again, up to `retries` times, after
    `backoff` seconds doubling each time; a connection that failed is reopened first.

    Parameters
    ----------
    timeout
        Seconds for each connection attempt and for each ACK.

    Returns
    -------
    FeedResult
        The counts. A message still rejected after its retries is counted and skipped.

    Raises
    ------
    UpstreamError
        A message still unanswered after its retries (the last failure: `UpstreamUnavailable`
        when the listener cannot be reached). Messages are sent in order, so the feed stops
        there rather than skip one the receiver may never have seen.
    """
    accepted = rejected = retried = 0
    conn: MllpConnection | None = None
    try:
        for message in messages:
            expected = control_id_of(message)
            for attempt in range(retries + 1):
                if attempt:
                    retried += 1
                    await asyncio.sleep(backoff * 2 ** (attempt - 1))
                try:
                    if conn is None or not conn.usable:
                        if conn is not None:
                            await conn.aclose()
                        conn = None  # if open() fails, try again on the next attempt
                        conn = await MllpConnection.open(host, port, timeout=timeout)
                    code = _ack_code(await conn.exchange(message, timeout=timeout), expected)
                except UpstreamError:
                    if attempt == retries:
                        raise
                    continue
                if code in ACCEPT_CODES:
                    accepted += 1
                    break
                if attempt == retries:
                    rejected += 1
    finally:
        if conn is not None:
            await conn.aclose()
    return FeedResult(accepted=accepted, rejected=rejected, retried=retried)


def _ack_code(answer: bytes, expected_control_id: str) -> str:
    try:
        code, control_id, _error = parse_ack(answer)
    except ValueError as exc:
        raise UpstreamProtocolError(f"answer is not an ACK: {exc}") from None
    if control_id != expected_control_id:
        raise UpstreamProtocolError(
            f"ACK for control id {control_id!r}, expected {expected_control_id!r}"
        )
    return code


# -- from the generator's ndjson -----------------------------------------------------------


def _read_ndjson(path: Path) -> Iterator[FhirJson]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            resource = json.loads(line)
            if not isinstance(resource, dict) or "resourceType" not in resource:
                raise ValueError(f"{path}:{number}: expected a FHIR resource, got {line[:40]!r}")
            yield resource


def control_id_for(sending_facility: str, report_id: str) -> str:
    """A control id that names the facility and, by a hash, the report: stable across runs."""
    digest = hashlib.sha256(f"{sending_facility}/{report_id}".encode()).hexdigest()
    return f"{sending_facility}-{digest[:12]}"


def messages_for_facility(
    ndjson_path: Path, *, sending_application: str, sending_facility: str
) -> list[bytes]:
    """One ORU^R01 per lab DiagnosticReport in a generator ndjson file, in file order.

    Radiology reports (category RAD) and resources other than Patient, Observation and
    DiagnosticReport are skipped. MSH-7 is the report's issued time (else its effective
    time); MSH-10 comes from `control_id_for`.

    Raises
    ------
    ValueError
        A line is not a resource, or a lab report's patient or results are missing.
    """
    patients: dict[str, FhirJson] = {}
    observations: dict[str, FhirJson] = {}
    reports: list[FhirJson] = []
    for resource in _read_ndjson(ndjson_path):
        kind = resource["resourceType"]
        if kind == "Patient":
            patients[f"Patient/{resource.get('id')}"] = resource
        elif kind == "Observation":
            observations[f"Observation/{resource.get('id')}"] = resource
        elif kind == "DiagnosticReport" and is_lab_report(resource):
            reports.append(resource)

    out = []
    for report in reports:
        subject = (report.get("subject") or {}).get("reference", "")
        if subject not in patients:
            raise ValueError(f"DiagnosticReport/{report.get('id')}: no {subject or 'subject'}")
        results = [
            observations[ref]
            for ref in (r.get("reference", "") for r in report.get("result") or [])
            if ref in observations
        ]
        timestamp = report.get("issued") or report.get("effectiveDateTime")
        if not timestamp:
            raise ValueError(f"DiagnosticReport/{report.get('id')} has no issued time")
        out.append(
            build_oru(
                patients[subject],
                report,
                results,
                sending_application=sending_application,
                sending_facility=sending_facility,
                control_id=control_id_for(sending_facility, str(report.get("id"))),
                timestamp=timestamp,
            )
        )
    return out
