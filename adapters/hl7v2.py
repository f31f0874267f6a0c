"""HL7 v2 ORU^R01 lab results in, FHIR R4 resources out; and the ACK that answers them.

A facility's laboratory system pushes one ORU^R01 per report over MLLP (`adapters.mllp`);
`parse_oru` turns it into a FHIR Patient, one DiagnosticReport per OBR group and one
Observation per OBX, and `build_ack` writes the original-mode acknowledgment (AA, AE, AR).

What is read, field by field (HL7 v2.5.1, Chapters 2 and 7; versions 2.3 to 2.9 accepted):

======  =================================================================================
MSH     MSH-1/MSH-2 the delimiters (any; four or five encoding characters); MSH-3/4
        sending application and facility (HD namespace id, else universal id); MSH-7
        message time; MSH-9 ``ORU^R01``; MSH-10 control id; MSH-12 version; MSH-18 the
        character set (UTF-8 when empty; ``UNICODE UTF-8``, ``GB 18030-2000``, GBK, ...)
PID     PID-3 identifiers (CX): ``CN-RID`` or OID 2.16.156.10011.1.5 (or type NNCHN) ->
        ``urn:oid:2.16.156.10011.1.5``; else the assigning authority's URI (or ``urn:oid:``
        for an ISO OID); else ``urn:huren:mrn:<authority namespace>`` for an MR/PI/PT
        identifier, ``urn:huren:mrn:<sending facility>`` for one with no authority.
        PID-5 name(s), PID-7 birth date, PID-8 sex
ORC     ORC-3 filler order number, used when OBR-3 is empty
OBR     starts a DiagnosticReport: OBR-3 filler order number (report id and identifier),
        OBR-4 code, OBR-7 effective time, OBR-22 issued, OBR-25 status (table 0123)
OBX     an Observation of the OBR before it: OBX-2 value type (NM, SN, ST, TX, FT, CE,
        CWE, CNE, DT, DTM, TS), OBX-3 code, OBX-5 value, OBX-6 units (UCUM when so named),
        OBX-7 reference range (``3.5-9.5``, ``>5``, ``<0.3``, else text), OBX-8
        interpretation, OBX-11 status (table 0085), OBX-14 observation time
NTE     after an OBX: a note on its Observation
======  =================================================================================

Segments may end with CR, LF or CRLF; other segments (PV1, SPM, Z-segments, ...) are
skipped. Codes whose coding system is ``LN`` are LOINC; other codes are the facility's own
(``urn:huren:lab-code:<sending facility>``). HL7 times without an offset are taken as
China Standard Time (`DEFAULT_OFFSET`).

Resource ids are stable: a message sent again (or corrected, with the same filler order
number) gives the same ids, so storing it twice overwrites rather than duplicates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Literal
from urllib.parse import quote

from adapters.types import FhirJson

__all__ = [
    "DEFAULT_OFFSET",
    "LOINC_SYSTEM",
    "NATIONAL_ID_SYSTEM",
    "UCUM_SYSTEM",
    "Hl7Error",
    "OruMessage",
    "build_ack",
    "parse_oru",
]

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
SNOMED_SYSTEM = "http://snomed.info/sct"
NATIONAL_ID_SYSTEM = "urn:oid:2.16.156.10011.1.5"
NATIONAL_ID_OID = "2.16.156.10011.1.5"
NATIONAL_ID_NAMESPACE = "CN-RID"
NATIONAL_ID_TYPE = "NNCHN"
MRN_SYSTEM_PREFIX = "urn:huren:mrn:"
LAB_CODE_SYSTEM_PREFIX = "urn:huren:lab-code:"
FILLER_SYSTEM_PREFIX = "urn:huren:lab-order:"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: UTC offset given to HL7 times that carry none (China Standard Time).
DEFAULT_OFFSET = "+08:00"

AckCode = Literal["AA", "AE", "AR"]

#: Table 0357 (message error condition codes): the ones this module uses.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_VERSION = "203"
APPLICATION_INTERNAL_ERROR = "207"
_ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}

_SUPPORTED_VERSION = re.compile(r"2\.[3-9](?:\.\d+)?")
_MR_LIKE_TYPES = frozenset({"", "MR", "PI", "PT", "MRT"})
_SEX = {"M": "male", "F": "female", "U": "unknown", "O": "other", "A": "other", "N": "unknown"}
_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "nickname"}
#: OBR-25 (table 0123) -> DiagnosticReport.status.
_REPORT_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "A": "partial",
    "I": "registered",
    "O": "registered",
    "S": "registered",
    "X": "cancelled",
}
#: OBX-11 (table 0085) -> Observation.status.
_OBSERVATION_STATUS = {
    "F": "final",
    "U": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "A": "amended",
    "I": "registered",
    "O": "registered",
    "X": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
}
#: OBX-8 (table 0078) codes also in v3 ObservationInterpretation, with their display.
_INTERPRETATIONS = {
    "H": "High",
    "HH": "Critical high",
    "HU": "Significantly high",
    "L": "Low",
    "LL": "Critical low",
    "LU": "Significantly low",
    "N": "Normal",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "<": "Off scale low",
    ">": "Off scale high",
    "S": "Susceptible",
    "R": "Resistant",
    "I": "Intermediate",
    "POS": "Positive",
    "NEG": "Negative",
    "IND": "Indeterminate",
    "DET": "Detected",
    "ND": "Not detected",
    "B": "Better",
    "W": "Worse",
    "U": "Significant change up",
    "D": "Significant change down",
}
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_RANGE = re.compile(
    r"(?P<low>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:-|~|～|–|—|to)\s*"
    r"(?P<high>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
)
_BOUND = re.compile(r"(?P<op>[<>≤≥]=?)\s*(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+))")
_DTM = re.compile(
    r"(?P<Y>\d{4})(?:(?P<m>\d{2})(?:(?P<d>\d{2})(?:(?P<H>\d{2})(?:(?P<M>\d{2})"
    r"(?:(?P<S>\d{2})(?P<frac>\.\d{1,4})?)?)?)?)?)?(?P<tz>[+-]\d{4})?"
)
_ISO_DATE = re.compile(r"\d{4}(?:-\d{2}(?:-\d{2})?)?")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9]\d*))+")


class Hl7Error(ValueError):
    """A message that cannot be accepted, with what its ACK should say.

    Attributes
    ----------
    code
        ``AR`` (application reject: not HL7, or a message type, version or character set the
        gateway does not take) or ``AE`` (application error: the content is wrong).
    text
        A short message naming the segment and field, e.g. ``"PID-3: no identifier"``.
    control_id
        MSH-10 of the message, if it could be read.
    error_code
        HL7 table 0357 condition code for ERR-3 (``"101"`` required field missing, ...).
    location
        (segment id, occurrence of that segment, field number or None) for ERR-2.
    """

    def __init__(
        self,
        code: AckCode,
        text: str,
        control_id: str | None = None,
        *,
        error_code: str = APPLICATION_INTERNAL_ERROR,
        location: tuple[str, int, int | None] | None = None,
    ) -> None:
        super().__init__(text)
        self.code: AckCode = code
        self.text = text
        self.control_id = control_id
        self.error_code = error_code
        self.location = location

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"

    def __repr__(self) -> str:
        return (
            f"Hl7Error({self.code!r}, {self.text!r}, control_id={self.control_id!r}, "
            f"error_code={self.error_code!r})"
        )


@dataclass(frozen=True)
class OruMessage:
    """One ORU^R01 as FHIR R4: its patient, one report per OBR, one observation per OBX."""

    control_id: str
    sending_application: str
    sending_facility: str
    #: MSH-7 as an ISO 8601 / FHIR dateTime, None when absent.
    message_time: str | None
    #: PID-3 as FHIR (system, value) pairs, in message order.
    patient_identifiers: list[tuple[str, str]]
    patient: FhirJson
    reports: list[FhirJson]
    observations: list[FhirJson]


# -- delimiters, segments, text ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Delimiters:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str | None = None


STANDARD = _Delimiters("|", "^", "~", "\\", "&")


@dataclass(slots=True)
class _Segment:
    name: str
    #: fields[n] is field n (for MSH, fields[1] is MSH-1, the field separator).
    fields: list[str]
    #: Occurrence of this segment id in the message, from 1 (ERR-2 segment sequence).
    sequence: int

    def __getitem__(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""


@dataclass(slots=True)
class _Head:
    """What MSH says before the body is decoded: delimiters, codec and raw MSH fields."""

    delimiters: _Delimiters
    codec: str | None  # None: MSH-18 names a character set we do not know
    charset: str
    #: MSH fields as in `_Segment.fields`, read as Latin-1 (exact for ASCII).
    fields: list[str]


def _strip_frame(data: bytes) -> bytes:
    data = data.strip(b"\x0b\x1c\r\n\t ")
    return data.removeprefix(b"\xef\xbb\xbf")


def _read_head(data: bytes) -> _Head:
    """Delimiters and character set from the MSH segment; raises `Hl7Error` (AR)."""
    data = _strip_frame(data)
    if not data.startswith(b"MSH"):
        raise Hl7Error(
            "AR",
            "MSH: not an HL7 v2 message (no MSH segment first)",
            error_code=SEGMENT_SEQUENCE_ERROR,
            location=("MSH", 1, None),
        )
    line = re.split(rb"\r|\n", data, maxsplit=1)[0].decode("latin-1")
    sep = line[3:4]
    enc = line[4:].split(sep, 1)[0] if sep else ""
    chars = [sep, *enc]
    if (
        not sep
        or len(enc) not in (4, 5)
        or len(set(chars)) != len(chars)
        or any(ch.isalnum() or ch.isspace() or not ch.isascii() for ch in chars)
    ):
        raise Hl7Error(
            "AR",
            f"MSH-2: bad delimiters {line[3:9]!r} (expected e.g. '|^~\\&')",
            error_code=DATA_TYPE_ERROR,
            location=("MSH", 1, 2),
        )
    delims = _Delimiters(sep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)
    fields = ["MSH", sep, *line[4:].split(sep)]
    charset = _first_component(fields[18] if len(fields) > 18 else "", delims).strip()
    return _Head(delims, _codec(charset), charset, fields)


def _first_component(raw: str, d: _Delimiters) -> str:
    return raw.split(d.repetition, 1)[0].split(d.component, 1)[0]


def _codec(charset: str) -> str | None:
    """The Python codec for an MSH-18 value (table 0211), None when not supported."""
    name = re.sub(r"[\s_\-/]", "", charset).upper()
    if name in ("", "ASCII", "UNICODEUTF8", "UTF8", "UNICODE"):
        return "utf-8"
    if name.startswith("GB18030") or name in ("GBK", "GB2312", "GB23121980", "CP936"):
        return "gb18030"  # a superset of GBK and GB 2312
    if name in ("88591", "ISO88591", "LATIN1"):
        return "latin-1"
    return None


def _escape(text: str, d: _Delimiters = STANDARD) -> str:
    """Escape delimiters and line breaks in `text` (HL7 v2.5.1, 2.7)."""
    e = d.escape
    table = {
        e: f"{e}E{e}",
        d.field: f"{e}F{e}",
        d.component: f"{e}S{e}",
        d.subcomponent: f"{e}T{e}",
        d.repetition: f"{e}R{e}",
        "\r": f"{e}X0D{e}",
        "\n": f"{e}X0A{e}",
    }
    if d.truncation:
        table[d.truncation] = f"{e}P{e}"
    return "".join(table.get(ch, ch) for ch in text)


class _Reader:
    """Field access and unescaping for one message's delimiters and character set."""

    def __init__(self, delimiters: _Delimiters, codec: str) -> None:
        self.d = delimiters
        self.codec = codec
        e = re.escape(delimiters.escape)
        self._escape_re = re.compile(f"{e}([^{e}\r\n]*){e}")
        self._simple = {
            "F": delimiters.field,
            "S": delimiters.component,
            "T": delimiters.subcomponent,
            "R": delimiters.repetition,
            "E": delimiters.escape,
        }
        if delimiters.truncation:
            self._simple["P"] = delimiters.truncation
        # A repetition is read component by component (code, text, system ...): split and
        # unescape it once. Both caches live as long as the message.
        self._raw: dict[str, list[str]] = {}
        self._leaves: dict[str, list[str]] = {}

    def reps(self, raw: str) -> list[str]:
        return raw.split(self.d.repetition) if raw else []

    def raw_comp(self, rep: str, n: int) -> str:
        parts = self._raw.get(rep)
        if parts is None:
            parts = self._raw[rep] = rep.split(self.d.component)
        return parts[n - 1] if n <= len(parts) else ""

    def subs(self, raw_comp: str) -> list[str]:
        return [self.text(sub) for sub in raw_comp.split(self.d.subcomponent)]

    def comp(self, rep: str, n: int) -> str:
        """Component `n` (from 1) of one repetition, its first subcomponent, unescaped."""
        leaves = self._leaves.get(rep)
        if leaves is None:
            sub = self.d.subcomponent
            leaves = self._leaves[rep] = [
                self.text(part.split(sub, 1)[0]).strip() for part in rep.split(self.d.component)
            ]
        return leaves[n - 1] if n <= len(leaves) else ""

    def first(self, raw: str, n: int = 1) -> str:
        """Component `n` of a field's first repetition."""
        reps = self.reps(raw)
        return self.comp(reps[0], n) if reps else ""

    def text(self, raw: str) -> str:
        """Unescape a leaf value; the HL7 null ``""`` is empty."""
        if raw == '""':
            return ""
        if self.d.escape not in raw:
            return raw
        return self._escape_re.sub(self._unescape_one, raw)

    def _unescape_one(self, match: re.Match[str]) -> str:
        body = match.group(1)
        if body in self._simple:
            return self._simple[body]
        if body[:1] == "X" and len(body) % 2 == 1:
            try:
                return bytes.fromhex(body[1:]).decode(self.codec)
            except ValueError:
                return match.group(0)
        if body in ("H", "N"):  # highlighting on / off
            return ""
        if body == ".br" or body.startswith(".sp"):
            return "\n"
        if body.startswith("."):  # other formatting commands of FT
            return ""
        return match.group(0)


# -- values -----------------------------------------------------------------------------------


def _fhir_id(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"{kind}-{digest[:32]}"


def _urn_part(value: str) -> str:
    return quote(value, safe="-._~")


def _json_number(text: str) -> int | float:
    """An HL7 NM string as a JSON number: int when it has no decimal point."""
    text = text.strip()
    if "." in text:
        return float(Decimal(text))
    return int(text)


@lru_cache(maxsize=4096)  # a message repeats its times in every OBX; feeds repeat them too
def _iso_datetime(value: str) -> str | None:
    """An HL7 DTM (or an ISO 8601 string) as a FHIR date or dateTime; None when empty.

    Raises
    ------
    ValueError
        Not a date/time, or not a real one (month 13, 30 February, ...).
    """
    value = value.strip()
    if not value:
        return None
    m = _DTM.fullmatch(value)
    if m is None:
        if _ISO_DATE.fullmatch(value):
            year, month, day = ([*value.split("-"), "01", "01"])[:3]
            datetime(int(year), int(month), int(day))  # checks the calendar
            return value
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is None:
            return when.isoformat(timespec="seconds") + DEFAULT_OFFSET
        return when.isoformat(timespec="seconds")
    year, month, day = m.group("Y"), m.group("m"), m.group("d")
    datetime(int(year), int(month or 1), int(day or 1))  # checks the calendar
    if m.group("H") is None:
        return "-".join(p for p in (year, month, day) if p)
    hour, minute, second = m.group("H"), m.group("M") or "00", m.group("S") or "00"
    datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    frac = m.group("frac") or ""
    tz = m.group("tz")
    if tz is None:
        offset = DEFAULT_OFFSET
    else:
        if int(tz[1:3]) > 14 or int(tz[3:5]) > 59:
            raise ValueError(f"bad UTC offset {tz!r}")
        offset = f"{tz[:3]}:{tz[3:]}"
    return f"{year}-{month}-{day}T{hour}:{minute}:{second}{frac}{offset}"


def _hl7_datetime(value: str) -> str:
    """`now` for an ACK: an HL7 DTM as is, or an ISO 8601 dateTime converted to one."""
    if _DTM.fullmatch(value):
        return value
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    out = when.strftime("%Y%m%d%H%M%S")
    return out + when.strftime("%z") if when.tzinfo is not None else out


# -- the parser -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Result:
    obx: _Segment
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Group:
    obr: _Segment
    orc: _Segment | None
    results: list[_Result] = field(default_factory=list)


class _Parser:
    def __init__(self, reader: _Reader, control_id: str | None) -> None:
        self.r = reader
        self.control_id = control_id
        self.facility = ""

    def error(
        self,
        code: AckCode,
        text: str,
        error_code: str,
        segment: _Segment | None = None,
        field_no: int | None = None,
    ) -> Hl7Error:
        location = (segment.name, segment.sequence, field_no) if segment else None
        return Hl7Error(code, text, self.control_id, error_code=error_code, location=location)

    def when(self, seg: _Segment, n: int) -> str | None:
        raw = self.r.first(seg[n])
        try:
            return _iso_datetime(raw)
        except ValueError:
            raise self.error(
                "AE",
                f"{seg.name}-{n}: {raw!r} is not a valid date/time",
                DATA_TYPE_ERROR,
                seg,
                n,
            ) from None

    def system(self, coding_system: str) -> str:
        name = coding_system.strip().upper()
        if name == "LN":
            return LOINC_SYSTEM
        if name in ("SCT", "SNM", "SNOMEDCT"):
            return SNOMED_SYSTEM
        return LAB_CODE_SYSTEM_PREFIX + _urn_part(self.facility)

    def concept(self, rep: str) -> FhirJson:
        """A CE/CWE/CNE as a CodeableConcept: the code and its alternate, text = display."""
        concept: FhirJson = {}
        codings: list[FhirJson] = []
        for base in (0, 3):
            code = self.r.comp(rep, base + 1)
            display = self.r.comp(rep, base + 2)
            if code:
                coding: FhirJson = {"system": self.system(self.r.comp(rep, base + 3)), "code": code}
                if display:
                    coding["display"] = display
                codings.append(coding)
        if codings:
            concept["coding"] = codings
        text = self.r.comp(rep, 2) or self.r.comp(rep, 5)
        if text:
            concept["text"] = text
        return concept

    # -- PID ----------------------------------------------------------------------------------

    def identifiers(self, pid: _Segment) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for rep in self.r.reps(pid[3]):
            value = self.r.comp(rep, 1)
            if not value:
                continue
            authority = [*self.r.subs(self.r.raw_comp(rep, 4)), "", "", ""]
            namespace, universal, universal_type = (a.strip() for a in authority[:3])
            id_type = self.r.comp(rep, 5).upper()
            system: str | None
            if (
                namespace.upper() == NATIONAL_ID_NAMESPACE
                or universal == NATIONAL_ID_OID
                or id_type == NATIONAL_ID_TYPE
            ):
                system = NATIONAL_ID_SYSTEM
            elif universal and universal_type.upper() == "URI":
                system = universal
            elif universal and universal_type.upper() == "ISO" and _OID.fullmatch(universal):
                system = f"urn:oid:{universal}"
            elif id_type not in _MR_LIKE_TYPES:
                system = None  # a visit number, a passport, ...: not a patient record id
            elif namespace:
                system = MRN_SYSTEM_PREFIX + _urn_part(namespace)
            else:
                system = MRN_SYSTEM_PREFIX + _urn_part(self.facility)
            if system and (system, value) not in out:
                out.append((system, value))
        if not out:
            raise self.error(
                "AE",
                "PID-3: no identifier (an MRN or a resident identity card number)",
                REQUIRED_FIELD_MISSING,
                pid,
                3,
            )
        return out

    def patient(self, pid: _Segment, identifiers: list[tuple[str, str]]) -> FhirJson:
        # A local record number first: the national id only when there is nothing else.
        key = next((i for i in identifiers if i[0] != NATIONAL_ID_SYSTEM), identifiers[0])
        patient: FhirJson = {
            "resourceType": "Patient",
            "id": _fhir_id("pat", *key),
            "identifier": [
                {"use": "official", "system": s, "value": v}
                if s == NATIONAL_ID_SYSTEM
                else {
                    "use": "usual",
                    "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                    "system": s,
                    "value": v,
                }
                for s, v in identifiers
            ],
        }
        names = [name for rep in self.r.reps(pid[5]) if (name := self.name(rep))]
        if names:
            patient["name"] = names
        sex = self.r.first(pid[8]).upper()
        if sex in _SEX:
            patient["gender"] = _SEX[sex]
        birth = self.when(pid, 7)
        if birth:
            patient["birthDate"] = birth.split("T", 1)[0]
        return patient

    def name(self, rep: str) -> FhirJson:
        family = self.r.comp(rep, 1)
        given = [g for g in (self.r.comp(rep, 2), self.r.comp(rep, 3)) if g]
        if not (family or given):
            return {}
        name: FhirJson = {}
        use = _NAME_USE.get(self.r.comp(rep, 7).upper())
        if use:
            name["use"] = use
        parts = [family, *given]
        cjk = any(not ch.isascii() for part in parts for ch in part)
        name["text"] = ("" if cjk else " ").join(p for p in parts if p)
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        if prefix := self.r.comp(rep, 5):
            name["prefix"] = [prefix]
        if suffix := self.r.comp(rep, 4):
            name["suffix"] = [suffix]
        return name

    # -- OBR / OBX ----------------------------------------------------------------------------

    def report(
        self, group: _Group, index: int, patient_ref: str
    ) -> tuple[FhirJson, list[FhirJson]]:
        obr = group.obr
        filler = self.r.reps(obr[3]) or (self.r.reps(group.orc[3]) if group.orc else [])
        filler_id = self.r.comp(filler[0], 1) if filler else ""
        filler_ns = self.r.comp(filler[0], 2) if filler else ""
        key = (self.facility, f"{filler_id}^{filler_ns}" if filler_id else self.control_id or "")
        report_key = (*key, str(index))

        code_rep = self.r.reps(obr[4])
        code = self.concept(code_rep[0]) if code_rep else {}
        if not code:
            raise self.error(
                "AE", "OBR-4: no universal service identifier", REQUIRED_FIELD_MISSING, obr, 4
            )
        status_code = self.r.first(obr[25]).upper()
        effective = self.when(obr, 7)
        issued = self.when(obr, 22)
        report: FhirJson = {
            "resourceType": "DiagnosticReport",
            "id": _fhir_id("dr", *report_key),
        }
        if filler_id:
            report["identifier"] = [
                {
                    "type": {"coding": [{"system": V2_0203, "code": "FILL"}]},
                    "system": FILLER_SYSTEM_PREFIX + _urn_part(filler_ns or self.facility),
                    "value": filler_id,
                }
            ]
        report["status"] = _REPORT_STATUS.get(status_code, "unknown")
        report["category"] = [
            {"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}
        ]
        report["code"] = code
        report["subject"] = {"reference": patient_ref}
        if effective:
            report["effectiveDateTime"] = effective
        if issued and "T" in issued:  # an instant: a date alone will not do
            report["issued"] = issued

        observations = [
            self.observation(result, n, report_key, patient_ref, effective, issued, status_code)
            for n, result in enumerate(group.results, start=1)
        ]
        if observations:
            report["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
        return report, observations

    def observation(
        self,
        result: _Result,
        n: int,
        report_key: Sequence[str],
        patient_ref: str,
        report_effective: str | None,
        report_issued: str | None,
        report_status: str,
    ) -> FhirJson:
        obx = result.obx
        code_rep = self.r.reps(obx[3])
        code = self.concept(code_rep[0]) if code_rep else {}
        if not code:
            raise self.error(
                "AE", "OBX-3: no observation identifier", REQUIRED_FIELD_MISSING, obx, 3
            )
        status = self.r.first(obx[11]).upper()
        obs: FhirJson = {
            "resourceType": "Observation",
            "id": _fhir_id("obs", *report_key, str(n)),
            "status": _OBSERVATION_STATUS.get(
                status, _OBSERVATION_STATUS.get(report_status, "unknown")
            ),
            "category": [
                {
                    "coding": [
                        {
                            "system": OBSERVATION_CATEGORY,
                            "code": "laboratory",
                            "display": "Laboratory",
                        }
                    ]
                }
            ],
            "code": code,
            "subject": {"reference": patient_ref},
        }
        effective = self.when(obx, 14) or report_effective
        if effective:
            obs["effectiveDateTime"] = effective
        if report_issued and "T" in report_issued:
            obs["issued"] = report_issued

        unit = self.units(obx)
        obs.update(self.value(obx, unit))
        ranges = self.reference_range(obx, unit)
        if ranges:
            obs["referenceRange"] = ranges
        interpretation = self.interpretation(obx)
        if interpretation:
            obs["interpretation"] = interpretation
        if result.notes:
            obs["note"] = [{"text": note} for note in result.notes]
        return obs

    def units(self, obx: _Segment) -> FhirJson:
        reps = self.r.reps(obx[6])
        if not reps:
            return {}
        code, text = self.r.comp(reps[0], 1), self.r.comp(reps[0], 2)
        system = self.r.comp(reps[0], 3).upper()
        if not (code or text):
            return {}
        unit: FhirJson = {"unit": text or code}
        if code and system == "UCUM":
            unit.update(system=UCUM_SYSTEM, code=code)
        return unit

    def number(self, raw: str, obx: _Segment, n: int) -> int | float:
        if not _NUMBER.fullmatch(raw.strip()):
            raise self.error(
                "AE",
                f"OBX-{n}: {raw!r} is not a number",
                DATA_TYPE_ERROR,
                obx,
                n,
            )
        return _json_number(raw)

    def value(self, obx: _Segment, unit: FhirJson) -> FhirJson:
        value_type = self.r.first(obx[2]).upper()
        reps = [rep for rep in self.r.reps(obx[5]) if rep and rep != '""']
        if not reps:
            return {}
        if not value_type:  # OBX-2 is required with a value; read it as the sender meant
            value_type = "NM" if _NUMBER.fullmatch(self.r.text(reps[0]).strip()) else "ST"
        if value_type == "NM":
            return {"valueQuantity": {"value": self.number(self.r.text(reps[0]), obx, 5), **unit}}
        if value_type == "SN":
            return self.structured_numeric(obx, reps[0], unit)
        if value_type in ("CE", "CWE", "CNE"):
            concept = self.concept(reps[0])
            return {"valueCodeableConcept": concept} if concept else {}
        if value_type in ("DT", "DTM", "TS"):
            raw = self.r.comp(reps[0], 1)
            try:
                when = _iso_datetime(raw)
            except ValueError:
                raise self.error(
                    "AE", f"OBX-5: {raw!r} is not a valid date/time", DATA_TYPE_ERROR, obx, 5
                ) from None
            return {"valueDateTime": when} if when else {}
        if value_type in ("ED", "RP"):
            raise self.error(
                "AE",
                f"OBX-2: value type {value_type} is not supported",
                TABLE_VALUE_NOT_FOUND,
                obx,
                2,
            )
        text = "\n".join(self.r.text(rep) for rep in reps)  # ST, TX, FT and the rest
        return {"valueString": text} if text.strip() else {}

    def structured_numeric(self, obx: _Segment, rep: str, unit: FhirJson) -> FhirJson:
        comparator = self.r.comp(rep, 1)
        num1, separator, num2 = (self.r.comp(rep, k) for k in (2, 3, 4))
        if comparator in ("", "=") and num1 and not separator and not num2:
            return {"valueQuantity": {"value": self.number(num1, obx, 5), **unit}}
        if comparator in ("<", "<=", ">", ">=") and num1 and not separator and not num2:
            quantity = {"value": self.number(num1, obx, 5), "comparator": comparator, **unit}
            return {"valueQuantity": quantity}
        if not comparator and num1 and num2 and separator == "-":
            return {
                "valueRange": {
                    "low": {"value": self.number(num1, obx, 5), **unit},
                    "high": {"value": self.number(num2, obx, 5), **unit},
                }
            }
        if not comparator and num1 and num2 and separator in (":", "/"):
            return {
                "valueRatio": {
                    "numerator": {"value": self.number(num1, obx, 5)},
                    "denominator": {"value": self.number(num2, obx, 5)},
                }
            }
        text = "".join((comparator, num1, separator, num2))
        return {"valueString": text} if text else {}

    def reference_range(self, obx: _Segment, unit: FhirJson) -> list[FhirJson]:
        text = self.r.text(obx[7]).strip()
        if not text:
            return []
        bound = dict(unit)
        if m := _RANGE.fullmatch(text):
            low, high = (_json_number(m.group(k)) for k in ("low", "high"))
            return [{"low": {"value": low, **bound}, "high": {"value": high, **bound}}]
        if m := _BOUND.fullmatch(text):
            side = "low" if m.group("op")[0] in ">≥" else "high"
            return [{side: {"value": _json_number(m.group("value")), **bound}}]
        return [{"text": text}]

    def interpretation(self, obx: _Segment) -> list[FhirJson]:
        out: list[FhirJson] = []
        for rep in self.r.reps(obx[8]):
            flag = self.r.comp(rep, 1)
            if not flag:
                continue
            key = flag.upper() if flag.upper() in _INTERPRETATIONS else flag
            if key in _INTERPRETATIONS:
                coding = {
                    "system": INTERPRETATION_SYSTEM,
                    "code": key,
                    "display": _INTERPRETATIONS[key],
                }
                out.append({"coding": [coding]})
            else:
                out.append({"text": flag})
        return out


def _segments(text: str, reader: _Reader, parser: _Parser) -> list[_Segment]:
    lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
    counts: dict[str, int] = {}
    segments: list[_Segment] = []
    sep = reader.d.field
    for number, line in enumerate(lines, start=1):
        name = line[:3]
        if not _SEGMENT_ID.fullmatch(name) or line[3:4] not in ("", sep):
            raise parser.error(
                "AE",
                f"segment {number}: {line[:20]!r} is not an HL7 segment",
                SEGMENT_SEQUENCE_ERROR,
            )
        counts[name] = counts.get(name, 0) + 1
        if name == "MSH":
            fields = ["MSH", sep, *line[4:].split(sep)]
        else:
            fields = line.split(sep)
        segments.append(_Segment(name, fields, counts[name]))
    return segments


def _head_control_id(head: _Head) -> str | None:
    raw = head.fields[10] if len(head.fields) > 10 else ""
    if not raw.isascii():
        return None
    value = _Reader(head.delimiters, "ascii").first(raw)
    return value or None


def parse_oru(message: bytes) -> OruMessage:
    """Parse one HL7 v2 ORU^R01 into FHIR R4 resources (see the module's table).

    Parameters
    ----------
    message
        The message without MLLP framing (framing bytes are tolerated), in the character
        set MSH-18 names (UTF-8 when it names none).

    Returns
    -------
    OruMessage
        The header fields, the patient, one DiagnosticReport per OBR group (its ``result``
        listing that group's Observations) and every Observation, in message order.

    Raises
    ------
    Hl7Error
        ``AR``: not HL7 v2 (no MSH first, bad delimiters), not decodable in its character
        set, a character set, message type (other than ORU^R01) or version (other than 2.3
        to 2.9) not supported, or MSH-4/MSH-10 missing. ``AE``: the content is wrong (no
        PID, no usable PID-3, OBR before PID, OBX before any OBR, a value not of its type, a
        date that is not one). A message with no OBR at all is not an error: it yields no
        reports, and the caller decides (it may first reject an unknown sender).
        `Hl7Error.control_id` is MSH-10 when readable.
    """
    head = _read_head(message)
    control_id = _head_control_id(head)
    if head.codec is None:
        raise Hl7Error(
            "AR",
            f"MSH-18: character set {head.charset!r} is not supported",
            control_id,
            error_code=APPLICATION_INTERNAL_ERROR,
            location=("MSH", 1, 18),
        )
    try:
        text = _strip_frame(message).decode(head.codec)
    except UnicodeDecodeError as exc:
        raise Hl7Error(
            "AR",
            f"MSH-18: message is not valid {head.codec} (byte {exc.start})",
            control_id,
            error_code=DATA_TYPE_ERROR,
            location=("MSH", 1, 18),
        ) from None

    reader = _Reader(head.delimiters, head.codec)
    parser = _Parser(reader, control_id)
    segments = _segments(text, reader, parser)
    msh = segments[0]
    parser.control_id = control_id = reader.first(msh[10]) or None
    if control_id is None:
        raise parser.error("AR", "MSH-10: no message control id", REQUIRED_FIELD_MISSING, msh, 10)

    message_type = reader.first(msh[9], 1).upper()
    event = reader.first(msh[9], 2).upper()
    if message_type != "ORU":
        shown = reader.text(reader.reps(msh[9])[0]) if msh[9] else ""
        raise parser.error(
            "AR",
            f"MSH-9: message type {shown!r} is not supported (only ORU^R01)",
            UNSUPPORTED_MESSAGE_TYPE,
            msh,
            9,
        )
    if event != "R01":
        raise parser.error(
            "AR",
            f"MSH-9: event {event!r} is not supported (only ORU^R01)",
            UNSUPPORTED_EVENT_CODE,
            msh,
            9,
        )
    version = reader.first(msh[12])
    if not _SUPPORTED_VERSION.fullmatch(version):
        raise parser.error(
            "AR",
            f"MSH-12: version {version!r} is not supported (2.3 to 2.9)",
            UNSUPPORTED_VERSION,
            msh,
            12,
        )
    sending_application = reader.first(msh[3]) or reader.first(msh[3], 2)
    facility = reader.first(msh[4]) or reader.first(msh[4], 2)
    if not facility:
        raise parser.error("AR", "MSH-4: no sending facility", REQUIRED_FIELD_MISSING, msh, 4)
    parser.facility = facility
    message_time = parser.when(msh, 7)

    pid = next((seg for seg in segments if seg.name == "PID"), None)
    if pid is None:
        raise parser.error(
            "AE", "PID: segment missing", SEGMENT_SEQUENCE_ERROR, _Segment("PID", [], 1)
        )
    groups: list[_Group] = []
    orc: _Segment | None = None
    seen_pid = False
    for seg in segments[1:]:
        if seg.name == "PID":
            if seen_pid:
                raise parser.error(
                    "AE",
                    "PID: only one patient per message is supported",
                    SEGMENT_SEQUENCE_ERROR,
                    seg,
                )
            seen_pid = True
        elif seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            if not seen_pid:
                raise parser.error("AE", "OBR: before PID", SEGMENT_SEQUENCE_ERROR, seg)
            groups.append(_Group(seg, orc))
            orc = None
        elif seg.name == "OBX":
            if not groups:
                raise parser.error("AE", "OBX: before any OBR", SEGMENT_SEQUENCE_ERROR, seg)
            groups[-1].results.append(_Result(seg))
        elif seg.name == "NTE" and groups and groups[-1].results:
            note = "\n".join(reader.text(rep) for rep in reader.reps(seg[3])).strip()
            if note:
                groups[-1].results[-1].notes.append(note)
    identifiers = parser.identifiers(pid)
    patient = parser.patient(pid, identifiers)
    patient_ref = f"Patient/{patient['id']}"
    reports: list[FhirJson] = []
    observations: list[FhirJson] = []
    for index, group in enumerate(groups, start=1):
        report, results = parser.report(group, index, patient_ref)
        reports.append(report)
        observations.extend(results)
    return OruMessage(
        control_id=control_id,
        sending_application=sending_application,
        sending_facility=facility,
        message_time=message_time,
        patient_identifiers=identifiers,
        patient=patient,
        reports=reports,
        observations=observations,
    )


# -- ACK --------------------------------------------------------------------------------------


def _reencode(raw: str, source: _Reader) -> str:
    """A field written with `source`'s delimiters, rewritten with the standard ones."""
    first = source.reps(raw)[:1]
    if not first:
        return ""
    comps = first[0].split(source.d.component)
    return "^".join(
        "&".join(_escape(source.text(sub)) for sub in comp.split(source.d.subcomponent))
        for comp in comps
    )


def _ack_control_id(original: str | None, seed: str) -> str:
    """MSH-10 of the ACK: ``A`` + the original's, hashed when over 20 characters."""
    if original and len(original) < 20:
        return f"A{original}"
    digest = hashlib.sha256((original or seed).encode()).hexdigest()
    return f"A{digest[:19]}"


def build_ack(
    message: bytes | None,
    code: str,
    text: str | None = None,
    *,
    receiving_application: str = "HUREN",
    receiving_facility: str = "HUREN",
    control_id: str | None = None,
    now: str,
    error_code: str | None = None,
) -> bytes:
    """Build the HL7 v2.5.1 original-mode ACK^R01 answering `message`.

    Parameters
    ----------
    message
        The message answered, or None when nothing usable was received. Its MSH-3/4
        become the ACK's MSH-5/6 and its MSH-10 the ACK's MSA-2, when readable.
    code
        ``AA``, ``AE`` or ``AR`` (MSA-1).
    text
        For AE/AR the user message (ERR-8, and MSA-3 for senders older than 2.5); for AA an
        optional note (MSA-3). Escaped as needed. For AE/AR without text, the reason
        `parse_oru` gives, else the ERR-3 condition's name.
    receiving_application, receiving_facility
        Who we are: the ACK's MSH-3/4.
    control_id
        The original's control id when the caller knows it (`Hl7Error.control_id`);
        otherwise it is read from `message`.
    now
        MSH-7, an HL7 DTM or an ISO 8601 dateTime.
    error_code
        ERR-3 (table 0357). By default the condition `parse_oru` finds in `message` (e.g.
        101 required field missing, 102 data type error, 200 unsupported message type),
        else 207 application internal error.

    Returns
    -------
    bytes
        The ACK, segments ending with CR; UTF-8 (GB18030 when the original was in it).

    Raises
    ------
    ValueError
        `code` is not AA/AE/AR, or `now` is not a date/time.
    """
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"ACK code must be AA, AE or AR, got {code!r}")
    timestamp = _hl7_datetime(now)

    head: _Head | None = None
    if message is not None:
        try:
            head = _read_head(message)
        except Hl7Error:
            head = None
    sender = ["", ""]
    processing_id = "P"
    codec, charset = "utf-8", "UNICODE UTF-8"
    if head is not None:
        if head.codec == "gb18030":
            codec, charset = "gb18030", head.charset
        line = re.split(rb"\r|\n", _strip_frame(message or b""), maxsplit=1)[0]
        line_text = line.decode(head.codec or "utf-8", errors="replace")
        fields = ["MSH", head.delimiters.field, *line_text[4:].split(head.delimiters.field)]
        reader = _Reader(head.delimiters, head.codec or "utf-8")
        sender = [_reencode(fields[n] if n < len(fields) else "", reader) for n in (3, 4)]
        processing_id = reader.first(fields[11] if len(fields) > 11 else "") or "P"
        if control_id is None:
            control_id = reader.first(fields[10] if len(fields) > 10 else "") or None

    location: tuple[str, int, int | None] | None = None
    if code != "AA" and (error_code is None or text is None) and message is not None:
        try:
            parse_oru(message)
        except Hl7Error as err:
            error_code = error_code or err.error_code
            location = err.location
            text = text if text is not None else err.text
    error_code = error_code or APPLICATION_INTERNAL_ERROR
    if code != "AA" and not text:
        text = _ERROR_TEXT.get(error_code, "Application error")

    msh = [
        "MSH",
        "^~\\&",
        _escape(receiving_application),
        _escape(receiving_facility),
        sender[0],
        sender[1],
        timestamp,
        "",
        "ACK^R01^ACK",
        _escape(_ack_control_id(control_id, f"{timestamp}|{code}|{text}")),
        _escape(processing_id),
        "2.5.1",
        *[""] * 5,  # MSH-13 to MSH-17
        _escape(charset),
    ]
    msa = ["MSA", code, _escape(control_id or "")]
    if text:
        msa.append(_escape(text[:80]))  # MSA-3 is 80 characters at most
    segments = ["|".join(msh), "|".join(msa)]
    if code != "AA":
        erl = ""
        if location is not None:
            segment_id, sequence, field_no = location
            erl = f"{segment_id}^{sequence}" + (f"^{field_no}" if field_no else "")
        condition = f"{error_code}^{_escape(_ERROR_TEXT.get(error_code, ''))}^HL70357"
        user_message = _escape((text or "")[:250])  # ERR-8 is 250 characters at most
        segments.append("|".join(["ERR", "", erl, condition, "E", "", "", "", user_message]))
    return "".join(f"{seg}\r" for seg in segments).encode(codec)
