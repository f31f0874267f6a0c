"""A facility's go-live conformance self-test: probe its real systems the way the gateway uses
them, and say for each probe what passed and, for what failed, what to fix.

An integrator runs it against a hospital's PACS and lab system before the facility joins the
city network::

    python -m gateway.facility_check F008 --mllp 127.0.0.1:2575 --html f008.html

The battery, per kind of system (each probe bounded by ``timeout``; a probe that an earlier
failure makes meaningless is reported failed with a ``skipped: …`` detail):

- DICOMweb: QIDO-RS studies (DICOM JSON, PS3.18 F.2), series and instances of one study,
  WADO-RS of one instance (its SOPInstanceUID checked), its rendered JPEG.
- DIMSE: C-ECHO (association rejections explained), C-FIND at STUDY, SERIES and IMAGE levels
  (Study Root), C-GET of one instance (its SOPInstanceUID checked). The gateway retrieves with
  C-GET only; C-MOVE is not run (it needs a move destination registered at the PACS).
- Both DICOM kinds: character sets. Non-ASCII text must come with a Specific Character Set
  that decodes it (ISO_IR 192 or GB18030 expected; ISO 2022 IR 58 accepted).
- FHIR: the CapabilityStatement (R4, Observation and DiagnosticReport searchable), then one
  search of each answering a searchset Bundle.
- HL7 v2: the feed pushes to the gateway, so one ORU^R01 marked as a test (MSH-11 ``T``) goes
  through the gateway's own MLLP listener as the facility; the lab feed acknowledges such a
  message without storing it.

Details and fixes never carry patient identifiers: no names, no patient ids, no UIDs.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import aiohttp
import pydicom
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from yarl import URL

from adapters import mllp
from adapters.dicomweb import DicomWebImaging
from adapters.dimse import RETRIEVABLE_STORAGE, STUDY_ROOT_FIND, VERIFICATION, DimseImaging
from adapters.dul import Association
from adapters.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from adapters.http import upstream_errors
from adapters.types import (
    DicomJson,
    DicomWebEndpoint,
    DimseEndpoint,
    FhirEndpoint,
    Hl7v2Feed,
    StudyQuery,
    Target,
)

from .registry import Facility

log = logging.getLogger(__name__)

T = TypeVar("T")
Protocol = Literal["DICOMweb", "DIMSE", "FHIR", "HL7v2"]

DICOM_JSON = "application/dicom+json"
FHIR_JSON = "application/fhir+json"
#: Studies read from the first search: enough to find non-ASCII names, little load.
STUDY_LIMIT = 5
#: Largest JSON answer and rendered image read; largest instance retrieved.
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_INSTANCE_BYTES = 512 * 1024 * 1024
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
#: Value representations whose bytes Specific Character Set governs (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
#: Python codecs of the character sets a Chinese facility is expected to use.
_CHINESE_CODECS = frozenset({"UTF8", "GB18030", "GBK", "iso_ir_58", "GB2312"})
_EXPECTED_CHARSETS = "ISO_IR 192 or GB18030"
_CHARSET_FIX = (
    f"declare SpecificCharacterSet (0008,0005) {_EXPECTED_CHARSETS} and encode text in it"
)
# PS3.8 Table 9-21: A-ASSOCIATE-RJ (source, reason) -> meaning.
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
_REJECTED = re.compile(r"association rejected \(result (\d+), source (\d+), reason (\d+)\)")


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckItem:
    #: Short id, e.g. ``dicomweb.qido-studies``, ``dimse.c-echo``, ``hl7.test-message``.
    name: str
    protocol: str  # "DICOMweb" | "DIMSE" | "FHIR" | "HL7v2"
    passed: bool
    #: What happened (never patient identifiers).
    detail: str
    #: For a failure, what to fix, concretely.
    fix: str | None
    ms: float

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "passed": self.passed,
            "detail": self.detail,
            "fix": self.fix,
            "ms": self.ms,
        }


@dataclass(frozen=True, slots=True)
class CheckReport:
    facility: str  # the registry id
    passed: bool  # every item passed
    started: datetime  # UTC
    items: tuple[CheckItem, ...]
    #: The facility's name, for people reading the report.
    facility_name: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "facility": self.facility,
            "facility_name": self.facility_name,
            "passed": self.passed,
            "started": self.started.isoformat(),
            "items": [item.as_json() for item in self.items],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckReport:
        """A report as ``as_json`` wrote it (read back from the database)."""
        return cls(
            facility=str(data["facility"]),
            passed=bool(data["passed"]),
            started=datetime.fromisoformat(str(data["started"])),
            items=tuple(
                CheckItem(
                    name=str(i["name"]),
                    protocol=str(i["protocol"]),
                    passed=bool(i["passed"]),
                    detail=str(i["detail"]),
                    fix=i.get("fix"),
                    ms=float(i.get("ms", 0.0)),
                )
                for i in data.get("items", [])
            ),
            facility_name=str(data.get("facility_name", "")),
        )


async def check_facility(
    facility: Facility,
    *,
    session: aiohttp.ClientSession,
    calling_ae: str = "HUREN",
    mllp: tuple[str, int] | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 -- a bound per probe, not on the whole battery
) -> CheckReport:
    """Run the battery against the facility's real systems (imaging and lab at once).

    ``mllp`` is the gateway's own MLLP listener (host, port), for a facility whose lab pushes
    HL7 v2; without it that probe is reported not checked (failed).
    """
    started = datetime.now(UTC)
    chains: list[tuple[Protocol, Awaitable[list[CheckItem]]]] = []
    imaging, lab = facility.imaging, facility.lab
    if isinstance(imaging, DicomWebEndpoint):
        chains.append(("DICOMweb", _DicomWebCheck(imaging, session, timeout).run()))
    elif isinstance(imaging, DimseEndpoint):
        chains.append(("DIMSE", _DimseCheck(imaging, calling_ae, timeout).run()))
    if isinstance(lab, FhirEndpoint):
        chains.append(("FHIR", _FhirCheck(lab, session, timeout).run()))
    elif isinstance(lab, Hl7v2Feed):
        chains.append(("HL7v2", _hl7_check(facility, lab, mllp, timeout)))
    results = await asyncio.gather(*(run for _, run in chains), return_exceptions=True)
    items = tuple(
        item
        for (protocol, _), chain in zip(chains, results, strict=True)
        for item in _chain_items(protocol, chain)
    )
    for item in items:
        log.info(
            "facility check %s %s: %s",
            facility.id,
            item.name,
            "pass" if item.passed else "FAIL",
        )
    return CheckReport(
        facility=facility.id,
        passed=all(item.passed for item in items),
        started=started,
        items=items,
        facility_name=facility.name_zh,
    )


def _chain_items(protocol: Protocol, chain: list[CheckItem] | BaseException) -> list[CheckItem]:
    """A chain's items; a chain that broke (a bug in the check) reports as a failed item."""
    if not isinstance(chain, BaseException):
        return chain
    if not isinstance(chain, Exception):
        raise chain  # cancelled, interrupted: not a finding about the facility
    log.error("facility check: a chain of probes broke (%s)", type(chain).__name__)
    return [
        CheckItem(
            f"{protocol.lower()}.internal",
            protocol,
            False,
            f"the check itself failed ({type(chain).__name__}); its later probes did not run",
            "run the check again; if it persists, report it to the gateway's maintainers",
            0.0,
        )
    ]


# -- running one probe ----------------------------------------------------------------------


class _Fail(Exception):
    """A probe's failure: what happened, and what to fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


Explain = Callable[[BaseException], _Fail]


async def _probe(
    name: str,
    protocol: Protocol,
    timeout: float,  # noqa: ASYNC109
    run: Callable[[], Awaitable[tuple[str, T]]],
    explain: Explain,
) -> tuple[CheckItem, T | None]:
    """Run one probe under its deadline; its value, or None when it failed."""
    start = time.perf_counter()
    value: T | None = None
    failure: _Fail | None = None
    detail = ""
    try:
        async with asyncio.timeout(timeout):
            detail, value = await run()
    except _Fail as exc:
        failure = exc
    except (TimeoutError, UpstreamError, OSError, aiohttp.ClientError) as exc:
        failure = explain(exc)
    except Exception as exc:  # a probe reports; it never stops the battery
        log.warning("facility check %s: unexpected %s", name, type(exc).__name__)
        failure = _Fail(
            f"unexpected error in the check itself ({type(exc).__name__})",
            "run the check again; if it persists, report it to the gateway's maintainers",
        )
    ms = round((time.perf_counter() - start) * 1000, 1)
    if failure is not None:
        return CheckItem(name, protocol, False, failure.detail, failure.fix, ms), None
    return CheckItem(name, protocol, True, detail, None, ms), value


def _skipped(name: str, protocol: Protocol, reason: str, fix: str) -> CheckItem:
    return CheckItem(name, protocol, False, f"skipped: {reason}", fix, 0.0)


NO_STUDY = "no study to probe: store a test study first"
NO_STUDY_FIX = (
    "store a test study (with at least one image) in the archive: a facility going live must "
    "show it can serve one"
)


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    content_type: str
    body: bytes


def _shown(url: str) -> str:
    """A URL as reports show it: without credentials."""
    try:
        parsed = URL(url)
    except ValueError:
        return url
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


async def _fetch(
    session: aiohttp.ClientSession, url: str, accept: str, max_bytes: int = MAX_JSON_BYTES
) -> _Answer:
    async with upstream_errors():
        async with session.get(
            URL(url, encoded=True), headers={"Accept": accept}, allow_redirects=True
        ) as resp:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise _Fail(
                        f"the answer from {_shown(url)} exceeds {max_bytes // 1_048_576} MiB",
                        "answer searches in pages (honour limit / _count)",
                    )
                chunks.append(chunk)
            return _Answer(resp.status, resp.content_type.lower(), b"".join(chunks))


def _http_failure(answer: _Answer, what: str, url: str, base: str) -> _Fail:
    status = answer.status
    shown = _shown(url)
    if status in (401, 403):
        fix = (
            "allow the gateway at the server: its address, and the credentials or certificate "
            "it is given"
        )
    elif status == 404:
        fix = f"check the base URL (now {_shown(base)}): it must be the service's root"
    elif status == 406:
        fix = f"serve {what} in the media type the standard names"
    elif status >= 500:
        fix = "the server failed: look at its log for this request"
    else:
        fix = f"the server must answer {what} with HTTP 200"
    return _Fail(f"{what}: HTTP {status} from {shown}", fix)


def _http_explain(what: str, url: str, base: str, timeout: float) -> Explain:
    shown, base_shown = _shown(url), _shown(base)

    def explain(exc: BaseException) -> _Fail:
        where = (
            f"check the base URL (now {base_shown}): host, port and path, that its name "
            "resolves, and that the firewall lets the gateway reach it"
        )
        if isinstance(exc, TimeoutError):
            return _Fail(
                f"{what}: no answer from {shown} within {timeout:g} s",
                f"{where}; the server must answer within {timeout:g} s",
            )
        if isinstance(exc, UpstreamUnavailable | aiohttp.ClientError | OSError):
            reason = exc.detail if isinstance(exc, UpstreamError) else type(exc).__name__
            return _Fail(f"{what}: cannot connect to {shown} ({reason})", where)
        if isinstance(exc, UpstreamError):
            if exc.status is not None:
                return _Fail(
                    f"{what}: HTTP {exc.status} from {shown}",
                    "the server must answer with HTTP 200; look at its log for this request",
                )
            return _Fail(
                f"{what}: {shown} answered outside the protocol ({exc.detail})",
                "the server's answer does not follow the standard: fix the server, or point "
                f"the base URL (now {base_shown}) at the standard service",
            )
        return _Fail(f"{what}: {type(exc).__name__}", where)

    return explain


def _json_body(answer: _Answer, what: str, expected: str, url: str, fix: str) -> Any:
    """The body as JSON; an HTML page or garbage fails naming ``expected``."""
    body = answer.body
    ctype = answer.content_type or "no Content-Type"
    if "html" in answer.content_type or body.lstrip()[:1] == b"<":
        raise _Fail(
            f"{what}: {_shown(url)} answers an HTML page ({ctype}), not {expected}",
            fix,
        )
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Fail(
            f"{what}: {_shown(url)} answers {ctype} that is not JSON, so not {expected}",
            fix,
        ) from None


# -- DICOM JSON and datasets ----------------------------------------------------------------


def _dicom_json_problem(data: Any) -> str | None:
    """Why ``data`` is not a DICOM JSON answer (PS3.18 F.2), or None when it is."""
    if not isinstance(data, list):
        return f"a JSON {type(data).__name__}, not an array of datasets"
    for d in data:
        if not isinstance(d, dict):
            return f"an array holding a JSON {type(d).__name__}, not datasets"
        for tag, element in d.items():
            if not _TAG.fullmatch(tag):
                return "keys that are not 8-hex-digit tags"
            if not isinstance(element, dict) or not isinstance(element.get("vr"), str):
                return "elements without a VR"
    return None


def _first(ds: DicomJson, tag: str) -> str | None:
    values = ds.get(tag, {}).get("Value") or []
    return str(values[0]) if values and values[0] not in (None, "") else None


def _tag_name(tag: int) -> str:
    t = Tag(tag)
    return f"{keyword_for_tag(t) or 'element'} ({t.group:04X},{t.element:04X})"


@dataclass(slots=True)
class _Charsets:
    """What the datasets looked at say about their character sets."""

    looked_at: int = 0
    non_ascii: int = 0
    declared: set[str] = field(default_factory=set)
    problems: dict[str, str] = field(default_factory=dict)  # problem -> fix

    def problem(self, text: str, fix: str = _CHARSET_FIX) -> None:
        self.problems.setdefault(text, fix)

    def item(self, protocol: Protocol, sources: str, ms: float) -> CheckItem:
        if self.problems:
            detail = "; ".join(self.problems)
            fixes = "; ".join(dict.fromkeys(self.problems.values()))
            return CheckItem("dicom.charset", protocol, False, detail, fixes, ms)
        if not self.non_ascii:
            detail = f"names are ASCII only ({self.looked_at} datasets looked at: {sources})"
        else:
            declared = ", ".join(sorted(self.declared)) or "none"
            detail = (
                f"non-ASCII text in {self.non_ascii} of {self.looked_at} datasets ({sources}); "
                f"declared {declared}; all decode"
            )
            if not any(python_encoding.get(c) in _CHINESE_CODECS for c in self.declared):
                detail += f" (note: {_EXPECTED_CHARSETS} is expected in China)"
        return CheckItem("dicom.charset", protocol, True, detail, None, ms)

    def look_json(self, datasets: Iterable[DicomJson], source: str) -> None:
        """DICOM JSON is Unicode already: look for text the server could not decode."""
        try:
            self._look_json(datasets, source)
        except Exception as exc:  # malformed beyond the QIDO check: say so, go on
            self.problem(f"{source} could not be read for text ({type(exc).__name__})")

    def look_dataset(self, ds: Dataset, source: str) -> None:
        """Check the raw bytes of each top-level text element against the declared set."""
        try:
            self._look_dataset(ds, source)
        except Exception as exc:
            self.problem(f"{source} could not be read for text ({type(exc).__name__})")

    def _look_json(self, datasets: Iterable[DicomJson], source: str) -> None:
        for ds in datasets:
            self.looked_at += 1
            charset = [str(v) for v in ds.get("00080005", {}).get("Value") or [] if v]
            self.declared.update(charset)
            non_ascii = False
            for tag, element in ds.items():
                vr = element.get("vr") if isinstance(element, dict) else None
                if vr not in _TEXT_VRS or not _TAG.fullmatch(tag):
                    continue
                name = _tag_name(int(tag, 16))
                for text in _json_texts(element):
                    if text.isascii():
                        if vr == "PN" and _lost_letters(text):
                            self.problem(
                                f"{name} in {source} has lost its letters "
                                "(only '?' or delimiters are left)",
                                _ANSWER_CHARSET_FIX,
                            )
                        continue
                    non_ascii = True
                    if "\ufffd" in text:
                        self.problem(
                            f"{name} in {source} holds bytes the server could not decode",
                        )
                    elif _mojibake(text):
                        self.problem(
                            f"{name} in {source} is Chinese text decoded in the wrong "
                            "character set (mojibake)",
                        )
                    elif vr == "PN" and _lost_letters(text):
                        self.problem(
                            f"{name} in {source} has lost characters ('?')",
                            _ANSWER_CHARSET_FIX,
                        )
            self.non_ascii += non_ascii

    def _look_dataset(self, ds: Dataset, source: str) -> None:
        self.looked_at += 1
        terms = _charset_terms(ds)
        self.declared.update(t for t in terms if t)
        codecs = [python_encoding.get(t) for t in terms] if terms else [None]
        non_ascii = False
        for tag in list(ds.keys()):
            if tag.group == 0x0002 or tag.is_private or tag == 0x00080005:
                continue
            elem = ds.get_item(tag)
            if elem is None:
                continue
            vr = elem.VR or _dictionary_vr(tag)
            if vr not in _TEXT_VRS:
                continue
            raw = elem.value
            name = _tag_name(tag)
            if isinstance(raw, str):  # already decoded (not read from bytes)
                if vr == "PN" and _lost_letters(raw):
                    self.problem(f"{name} in {source} has lost its letters", _ANSWER_CHARSET_FIX)
                non_ascii |= not raw.isascii()
                continue
            if not isinstance(raw, bytes) or not raw.strip(b" \x00"):
                continue
            if raw.isascii() and b"\x1b" not in raw:
                if vr == "PN" and _lost_letters(raw.decode("ascii")):
                    shown = terms[0] if terms and terms[0] else "the default repertoire"
                    self.problem(
                        f"{name} in {source} has lost its letters (declared {shown}): the "
                        "system could not encode the name in the character set it answered in",
                        _ANSWER_CHARSET_FIX,
                    )
                continue
            non_ascii = True
            if not terms:
                self.problem(
                    f"{name} in {source} holds non-ASCII bytes but SpecificCharacterSet "
                    "(0008,0005) is absent"
                )
                continue
            declared = "\\".join(t for t in terms if t)
            unknown = [t for t in terms if t and t not in python_encoding]
            if unknown:
                self.problem(
                    f"SpecificCharacterSet {declared!r} in {source} is not a defined term "
                    "pydicom decodes"
                )
                continue
            text = _strict_decode(raw, codecs)
            if text is None:
                self.problem(f"{name} in {source} is not valid {declared}")
            elif not any(c in _CHINESE_CODECS for c in codecs) and _cjk_in_other_codec(raw):
                self.problem(f"{name} in {source} is Chinese text but declared {declared}")
            elif vr == "PN" and _lost_letters(text):
                self.problem(f"{name} in {source} has lost characters ('?')", _ANSWER_CHARSET_FIX)
        self.non_ascii += non_ascii


_ANSWER_CHARSET_FIX = (
    "configure the system to store and answer text in ISO_IR 192 (or GB18030), e.g. Orthanc: "
    '"DefaultEncoding": "Utf8"'
)


def _json_texts(element: dict[str, Any]) -> Iterable[str]:
    for value in element.get("Value") or []:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):  # PN: Alphabetic, Ideographic, Phonetic
            yield from (v for v in value.values() if isinstance(v, str))


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _charset_terms(ds: Dataset) -> list[str]:
    elem = ds.get_item(0x00080005)
    if elem is None or elem.value is None:
        return []
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        parts = value.split("\\")
    else:
        parts = [str(v) for v in value]
    terms = [p.strip(" \x00") for p in parts]
    return [] if not any(terms) else terms


def _strict_decode(raw: bytes, codecs: Sequence[str | None]) -> str | None:
    """``raw`` decoded with the declared sets, code extensions (ISO 2022) honoured; None when
    it does not decode."""
    from pydicom.charset import CODES_TO_ENCODINGS, handled_encodings

    first = codecs[0] or "ascii"
    if first == "iso8859":  # the default repertoire: ISO IR 6, ASCII
        first = "ascii"
    try:
        if b"\x1b" not in raw:
            return raw.decode(first)
        out = []
        for fragment in re.findall(rb"(^[^\x1b]+|\x1b[^\x1b]*)", raw):
            if not fragment.startswith(b"\x1b"):
                out.append(fragment.decode(first))
                continue
            length = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
            encoding = CODES_TO_ENCODINGS.get(fragment[:length])
            if encoding is None or (encoding not in codecs and encoding != "iso8859"):
                return None
            if encoding in handled_encodings:
                out.append(fragment.decode(encoding))
            else:
                out.append(fragment[length:].decode("ascii" if encoding == "iso8859" else encoding))
        return "".join(out)
    except (UnicodeDecodeError, LookupError):
        return None


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _cjk_in_other_codec(raw: bytes) -> bool:
    """True when bytes read in a Latin set are in fact UTF-8 or GB18030 Chinese."""
    for codec in ("utf-8", "gb18030"):
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if any(_is_cjk(ch) for ch in text):
            return True
    return False


def _mojibake(text: str) -> bool:
    """Chinese UTF-8 or GB18030 bytes shown as Latin-1 characters."""
    if any(ord(ch) > 0xFF for ch in text):
        return False
    try:
        return _cjk_in_other_codec(text.encode("latin-1"))
    except UnicodeEncodeError:
        return False


def _lost_letters(text: str) -> bool:
    """A person name reduced to '?' or bare delimiters by a failed conversion."""
    stripped = text.strip(" \x00")
    if not stripped:
        return False
    if "?" in stripped or "\ufffd" in stripped:
        return True
    return not any(ch.isalnum() for ch in stripped)


def _read_part10(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise _Fail(
            f"the retrieved part is not a DICOM Part 10 file ({type(exc).__name__})",
            "send each instance as a PS3.10 file (preamble, DICM, file meta information)",
        ) from None


# -- DICOMweb -------------------------------------------------------------------------------


class _DicomWebCheck:
    P: Protocol = "DICOMweb"

    def __init__(
        self, endpoint: DicomWebEndpoint, session: aiohttp.ClientSession, timeout: float
    ) -> None:
        self.endpoint = endpoint
        self.base = endpoint.url.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.fix_root = (
            f"point the registry's imaging.url (now {_shown(self.base)}) at the PACS's DICOMweb "
            "root, the URL under which /studies answers QIDO-RS"
        )

    async def run(self) -> list[CheckItem]:
        items: list[CheckItem] = []
        qido = (
            f"{self.base}/studies?limit={STUDY_LIMIT}&includefield=PatientName,SpecificCharacterSet"
        )
        item, studies = await _probe(
            "dicomweb.qido-studies",
            self.P,
            self.timeout,
            lambda: self._qido(qido, "QIDO-RS studies", "0020000D", "StudyInstanceUID"),
            _http_explain("QIDO-RS studies", qido, self.base, self.timeout),
        )
        items.append(item)
        later = (
            "dicomweb.qido-series",
            "dicomweb.qido-instances",
            "dicomweb.wado-instance",
            "dicomweb.rendered",
        )
        if studies is None:
            reason = "the study search failed (see dicomweb.qido-studies)"
            items += [_skipped(n, self.P, reason, item.fix or "") for n in later]
            items.append(_skipped("dicom.charset", self.P, reason, item.fix or ""))
            return items
        charsets = _Charsets()
        charsets.look_json(studies, "QIDO-RS study answers")
        if not studies:
            items += [CheckItem(n, self.P, False, NO_STUDY, NO_STUDY_FIX, 0.0) for n in later]
            items.append(charsets.item(self.P, "no study held", 0.0))
            return items
        study = _first(studies[0], "0020000D") or ""
        study_url = f"{self.base}/studies/{study}"
        shown_study = f"{self.base}/studies/{{study}}"
        item, series = await _probe(
            "dicomweb.qido-series",
            self.P,
            self.timeout,
            lambda: self._qido(
                f"{study_url}/series", "QIDO-RS series", "0020000E", "SeriesInstanceUID"
            ),
            _http_explain("QIDO-RS series", f"{shown_study}/series", self.base, self.timeout),
        )
        items.append(item)
        if not series:
            reason = (
                "the study's series search failed (see dicomweb.qido-series)"
                if series is None
                else "the first study found has no series"
            )
            fix = item.fix or "the PACS must list the series of a study it finds"
            items += [_skipped(n, self.P, reason, fix) for n in later[1:]]
            items.append(charsets.item(self.P, "QIDO-RS study answers", 0.0))
            return items
        series_uid = _first(series[0], "0020000E") or ""
        series_url = f"{study_url}/series/{series_uid}"
        shown_series = f"{shown_study}/series/{{series}}"
        item, instances = await _probe(
            "dicomweb.qido-instances",
            self.P,
            self.timeout,
            lambda: self._qido(
                f"{series_url}/instances", "QIDO-RS instances", "00080018", "SOPInstanceUID"
            ),
            _http_explain(
                "QIDO-RS instances", f"{shown_series}/instances", self.base, self.timeout
            ),
        )
        items.append(item)
        if not instances:
            reason = (
                "the instance search failed (see dicomweb.qido-instances)"
                if instances is None
                else "the first series found has no instances"
            )
            fix = item.fix or "the PACS must list the instances of a series it finds"
            items += [_skipped(n, self.P, reason, fix) for n in later[2:]]
            items.append(charsets.item(self.P, "QIDO-RS study answers", 0.0))
            return items
        instance = _first(instances[0], "00080018") or ""
        target = Target(study, series_uid, instance)
        shown_instance = f"{shown_series}/instances/{{instance}}"
        (wado, retrieved), (rendered, _) = await asyncio.gather(
            _probe(
                "dicomweb.wado-instance",
                self.P,
                self.timeout,
                lambda: self._wado(target),
                _http_explain("WADO-RS", shown_instance, self.base, self.timeout),
            ),
            _probe(
                "dicomweb.rendered",
                self.P,
                self.timeout,
                lambda: self._rendered(f"{series_url}/instances/{instance}/rendered"),
                _http_explain(
                    "WADO-RS rendered", f"{shown_instance}/rendered", self.base, self.timeout
                ),
            ),
        )
        items += [wado, rendered]
        sources = "QIDO-RS study answers"
        if retrieved is not None:
            charsets.look_dataset(retrieved, "the retrieved instance")
            sources += " and the retrieved instance"
        items.append(charsets.item(self.P, sources, 0.0))
        return items

    async def _qido(
        self, url: str, what: str, key_tag: str, key_name: str
    ) -> tuple[str, list[DicomJson]]:
        answer = await _fetch(self.session, url, DICOM_JSON)
        if answer.status == 204:
            return "HTTP 204: nothing matches", []
        if answer.status != 200:
            raise _http_failure(answer, what, url, self.base)
        if not answer.body.strip():
            return "HTTP 200 with an empty body: nothing matches", []
        data = _json_body(answer, what, "DICOM JSON (PS3.18 F.2)", url, self.fix_root)
        problem = _dicom_json_problem(data)
        if problem is not None:
            raise _Fail(
                f"{what}: answers JSON that is not DICOM JSON (PS3.18 F.2): {problem}",
                f"the URL answers JSON of another API: {self.fix_root}",
            )
        if any(not _first(d, key_tag) for d in data):
            raise _Fail(
                f"{what}: some answers lack {key_name} ({key_tag[:4]},{key_tag[4:]})",
                f"return {key_name}, the unique key of the level, in every QIDO-RS answer",
            )
        detail = f"HTTP 200 {answer.content_type or 'without Content-Type'}: {len(data)} found"
        if answer.content_type != DICOM_JSON:
            detail += f" (note: PS3.18 names {DICOM_JSON} for QIDO-RS answers)"
        return detail, data

    async def _wado(self, target: Target) -> tuple[str, Dataset]:
        imaging = DicomWebImaging(self.endpoint, self.session)
        data: bytes | None = None
        parts = 0
        syntax: str | None = None
        async for part in imaging.retrieve(target):
            parts += 1
            chunks: list[bytes] = []
            size = 0
            async for chunk in part.chunks:
                size += len(chunk)
                if size > MAX_INSTANCE_BYTES:
                    raise _Fail(
                        f"WADO-RS: the instance exceeds {MAX_INSTANCE_BYTES // 1_048_576} MiB",
                        "retrieve a smaller test instance",
                    )
                chunks.append(chunk)
            if data is None:
                data, syntax = b"".join(chunks), part.transfer_syntax
        if data is None:
            raise _Fail(
                "WADO-RS answered a multipart body without parts",
                "answer WADO-RS with one application/dicom part per instance",
            )
        ds = await asyncio.to_thread(_read_part10, data)
        got = str(ds.get("SOPInstanceUID", ""))
        if got != target.instance:
            raise _Fail(
                "WADO-RS answered an instance other than the one asked for "
                "(SOPInstanceUID differs)",
                "return the instance the URL names",
            )
        detail = f"multipart/related application/dicom: {parts} part(s), {len(data)} bytes"
        if syntax:
            detail += f", transfer syntax {syntax}"
        return detail + ", SOPInstanceUID matches", ds

    async def _rendered(self, url: str) -> tuple[str, None]:
        answer = await _fetch(self.session, url, "image/jpeg")
        if answer.status != 200:
            raise _http_failure(answer, "WADO-RS rendered", url, self.base)
        if answer.content_type != "image/jpeg" or not answer.body.startswith(b"\xff\xd8"):
            raise _Fail(
                f"WADO-RS rendered answered {answer.content_type or 'no Content-Type'}, "
                "not a JPEG image",
                "serve the rendered resource (PS3.18 10.4.1.1.3) as image/jpeg",
            )
        return f"image/jpeg, {len(answer.body)} bytes", None


# -- DIMSE ----------------------------------------------------------------------------------


class _DimseCheck:
    P: Protocol = "DIMSE"

    def __init__(self, endpoint: DimseEndpoint, calling_ae: str, timeout: float) -> None:
        self.e = endpoint
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.where = f"{endpoint.host}:{endpoint.port}"

    async def run(self) -> list[CheckItem]:
        items: list[CheckItem] = []
        echo, ok = await _probe(
            "dimse.c-echo", self.P, self.timeout, self._echo, self._explain("C-ECHO")
        )
        items.append(echo)
        later = ("dimse.c-find.study", "dimse.c-find.series", "dimse.c-find.image", "dimse.c-get")
        if ok is None:
            reason = "no association with the PACS (see dimse.c-echo)"
            items += [_skipped(n, self.P, reason, echo.fix or "") for n in later]
            items.append(_skipped("dicom.charset", self.P, reason, echo.fix or ""))
            return items
        item, studies = await _probe(
            "dimse.c-find.study",
            self.P,
            self.timeout,
            self._find_studies,
            self._explain("C-FIND (STUDY)", find=True),
        )
        items.append(item)
        if studies is None:
            reason = "the study-level C-FIND failed (see dimse.c-find.study)"
            items += [_skipped(n, self.P, reason, item.fix or "") for n in later[1:]]
            items.append(_skipped("dicom.charset", self.P, reason, item.fix or ""))
            return items
        charsets = _Charsets()
        for ds in studies:
            charsets.look_dataset(ds, "C-FIND study answers")
        if not studies:
            items += [CheckItem(n, self.P, False, NO_STUDY, NO_STUDY_FIX, 0.0) for n in later[1:]]
            items.append(charsets.item(self.P, "no study held", 0.0))
            return items
        study = str(studies[0].get("StudyInstanceUID", ""))
        imaging = DimseImaging(self.e, calling_ae=self.calling_ae, timeout=self.timeout)
        try:
            more = await self._below_study(imaging, study, charsets)
        finally:
            await imaging.close()
        return items + more

    async def _below_study(
        self, imaging: DimseImaging, study: str, charsets: _Charsets
    ) -> list[CheckItem]:
        items: list[CheckItem] = []
        item, series = await _probe(
            "dimse.c-find.series",
            self.P,
            self.timeout,
            lambda: self._find_below(
                imaging.search_series(study, StudyQuery()),
                "0020000E",
                "SERIES",
                "series of the study",
            ),
            self._explain("C-FIND (SERIES)", find=True),
        )
        items.append(item)
        sources = "C-FIND study answers"
        if not series:
            reason = (
                "the series-level C-FIND failed (see dimse.c-find.series)"
                if series is None
                else "the PACS found the study but no series of it"
            )
            fix = item.fix or "answer SERIES-level C-FIND for a study the PACS finds"
            items += [
                _skipped(n, self.P, reason, fix) for n in ("dimse.c-find.image", "dimse.c-get")
            ]
            items.append(charsets.item(self.P, sources, 0.0))
            return items
        series_uid = _first(series[0], "0020000E") or ""
        item, instances = await _probe(
            "dimse.c-find.image",
            self.P,
            self.timeout,
            lambda: self._find_below(
                imaging.search_instances(study, series_uid, StudyQuery()),
                "00080018",
                "IMAGE",
                "instances of the series",
            ),
            self._explain("C-FIND (IMAGE)", find=True),
        )
        items.append(item)
        if not instances:
            reason = (
                "the image-level C-FIND failed (see dimse.c-find.image)"
                if instances is None
                else "the PACS found the series but no instance of it"
            )
            fix = item.fix or "answer IMAGE-level C-FIND for a series the PACS finds"
            items.append(_skipped("dimse.c-get", self.P, reason, fix))
            items.append(charsets.item(self.P, sources, 0.0))
            return items
        instance = _first(instances[0], "00080018") or ""
        sop_class = _first(instances[0], "00080016")
        target = Target(study, series_uid, instance)
        item, retrieved = await _probe(
            "dimse.c-get",
            self.P,
            self.timeout,
            lambda: self._get(imaging, target),
            self._explain("C-GET", sop_class=sop_class),
        )
        items.append(item)
        if retrieved is None:
            items.append(
                CheckItem(
                    "dimse.c-move",
                    self.P,
                    False,
                    "not checked: C-GET failed, and C-MOVE needs a move destination registered "
                    "at the PACS",
                    f"the gateway retrieves with C-GET only: enable C-GET for calling AE title "
                    f"{self.calling_ae!r} at the PACS",
                    0.0,
                )
            )
        else:
            charsets.look_dataset(retrieved, "the retrieved instance")
            sources += " and the retrieved instance"
        items.append(charsets.item(self.P, sources, 0.0))
        return items

    async def _open(self, *syntaxes: str, **kwargs: Any) -> Association:
        return await Association.open(
            self.e.host,
            self.e.port,
            calling_ae=self.calling_ae,
            called_ae=self.e.ae_title,
            abstract_syntaxes=syntaxes,
            **kwargs,
        )

    async def _echo(self) -> tuple[str, bool]:
        assoc = await self._open(VERIFICATION)
        try:
            status = await assoc.c_echo()
        except BaseException:
            assoc.abort()
            raise
        await assoc.release()
        if status != 0x0000:
            raise _Fail(
                f"association accepted, but C-ECHO answered status 0x{status:04X}",
                "the PACS's Verification service failed: look at its log",
            )
        return (
            f"association accepted ({self.calling_ae} -> {self.e.ae_title} at {self.where}), "
            "C-ECHO status 0x0000"
        ), True

    async def _find_studies(self) -> tuple[str, list[Dataset]]:
        """Study-level C-FIND for any study; the first few answers are kept, then the rest
        of a long answer is cut short (the association aborted) to spare the PACS."""
        identifier = Dataset()
        identifier.SpecificCharacterSet = "ISO_IR 192"
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword in (
            "StudyInstanceUID",
            "StudyDate",
            "PatientName",
            "ReferringPhysicianName",
            "StudyDescription",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances",
        ):
            setattr(identifier, keyword, None)
        assoc = await self._open(STUDY_ROOT_FIND)
        found: list[Dataset] = []
        cut = False
        try:
            answers = cast(AsyncGenerator[Dataset, None], assoc.c_find(identifier, STUDY_ROOT_FIND))
            async with aclosing(answers):
                async for ds in answers:
                    found.append(ds)
                    if len(found) >= STUDY_LIMIT:
                        cut = True
                        break
        except BaseException:
            assoc.abort()
            raise
        if cut:
            assoc.abort()
        else:
            await assoc.release()
        if any(not ds.get("StudyInstanceUID") for ds in found):
            raise _Fail(
                "C-FIND (STUDY): some answers lack StudyInstanceUID (0020,000D)",
                "return StudyInstanceUID, the unique key of the STUDY level, in every answer",
            )
        more = f" (the first {STUDY_LIMIT} read)" if cut else ""
        return f"Study Root C-FIND at STUDY level: {len(found)} studies{more}", found

    async def _find_below(
        self, search: Awaitable[list[DicomJson]], key_tag: str, level: str, what: str
    ) -> tuple[str, list[DicomJson]]:
        found = await search
        if any(not _first(d, key_tag) for d in found):
            name = _tag_name(int(key_tag, 16))
            raise _Fail(
                f"some {level}-level C-FIND answers lack {name}",
                f"return {name}, the unique key of the level, in every answer",
            )
        return f"Study Root C-FIND at {level} level: {len(found)} {what}", found

    async def _get(self, imaging: DimseImaging, target: Target) -> tuple[str, Dataset]:
        data: list[bytes] = []
        count = 0
        syntax: str | None = None
        async for instance in imaging.retrieve(target):
            count += 1
            chunks = [chunk async for chunk in instance.chunks]
            if not data:
                data, syntax = chunks, instance.transfer_syntax
        ds = await asyncio.to_thread(_read_part10, b"".join(data))
        if str(ds.get("SOPInstanceUID", "")) != target.instance:
            raise _Fail(
                "C-GET sent an instance other than the one asked for (SOPInstanceUID differs)",
                "answer an IMAGE-level C-GET with the instance its SOPInstanceUID names",
            )
        return (
            f"C-GET at IMAGE level: {count} instance(s), transfer syntax {syntax}, "
            "SOPInstanceUID matches"
        ), ds

    def _explain(self, what: str, *, find: bool = False, sop_class: str | None = None) -> Explain:
        e, ours = self.e, self.calling_ae
        check_address = (
            f"check the registry's imaging.host and imaging.port (now {self.where}) and that "
            "the firewall lets the gateway reach the PACS's DICOM port"
        )

        def explain(exc: BaseException) -> _Fail:
            if isinstance(exc, TimeoutError) and not isinstance(exc, UpstreamError):
                return _Fail(
                    f"{what}: no answer from {self.where} within {self.timeout:g} s",
                    f"{check_address}; a filtered port times out rather than refusing",
                )
            detail = exc.detail if isinstance(exc, UpstreamError) else type(exc).__name__
            if isinstance(exc, UpstreamTimeout):
                return _Fail(f"{what}: {detail}", check_address)
            rejected = _REJECTED.search(detail)
            if rejected:
                result, source, reason = (int(g) for g in rejected.groups())
                meaning = _REJECT_REASONS.get((source, reason), f"reason {reason}")
                kind = "permanently" if result == 1 else "for now"
                if (source, reason) == (1, 7):
                    fix = (
                        f"correct the called AE title: the registry's imaging.ae_title (now "
                        f"{e.ae_title!r}) must be the PACS's own AE title"
                    )
                elif (source, reason) == (1, 3):
                    fix = (
                        f"register calling AE title {ours!r} (with the gateway's address) at "
                        "the PACS"
                    )
                elif source == 3:
                    fix = "the PACS is at its association limit: raise it, or check again later"
                else:
                    fix = (
                        f"the PACS refused association: register calling AE title {ours!r} at "
                        f"the PACS, or correct the called AE title (now {e.ae_title!r})"
                    )
                return _Fail(
                    f"{what}: the PACS rejected the association {kind} (A-ASSOCIATE-RJ: "
                    f"{meaning}; result {result}, source {source}, reason {reason})",
                    fix,
                )
            if "cannot connect" in detail:
                return _Fail(f"{what}: cannot connect to {self.where} ({detail})", check_address)
            if isinstance(exc, UpstreamUnavailable):
                return _Fail(
                    f"{what}: the PACS closed or aborted the association ({detail})",
                    f"the PACS may accept only known peers: register calling AE title {ours!r} "
                    f"and the gateway's address at the PACS, and check the called AE title "
                    f"(now {e.ae_title!r})",
                )
            if "peer did not accept" in detail:
                service = "C-GET" if what == "C-GET" else "C-FIND" if find else "C-ECHO"
                model = {
                    "C-GET": "Study Root Query/Retrieve - GET",
                    "C-FIND": "Study Root Query/Retrieve - FIND",
                    "C-ECHO": "Verification",
                }[service]
                return _Fail(
                    f"{what}: the PACS accepted the association but not {model}",
                    f"enable {service} ({model} SCP) for calling AE title {ours!r} at the PACS",
                )
            if what == "C-GET" and isinstance(exc, UpstreamError) and exc.status == 404:
                fix = (
                    "the PACS must send the instance back on the C-GET association: allow "
                    "SCP/SCU role selection for its storage class"
                )
                if sop_class and sop_class not in RETRIEVABLE_STORAGE:
                    fix = (
                        f"the instance's SOP class {sop_class} is not among the storage classes "
                        "the gateway proposes for C-GET: store a test study of a common image "
                        "class (CT, MR, CR, DX, US, SC)"
                    )
                return _Fail(f"{what}: the PACS answered but sent no instance", fix)
            if isinstance(exc, UpstreamProtocolError):
                return _Fail(
                    f"{what}: {self.where} answered outside the DICOM protocol ({detail})",
                    f"{check_address}: the port must be the PACS's DICOM (DIMSE) port",
                )
            status = re.search(r"status (0x[0-9A-F]{4})", detail)
            if status:
                return _Fail(
                    f"{what}: the PACS answered failure status {status.group(1)}",
                    f"allow {what.split()[0]} for calling AE title {ours!r} at the PACS, and "
                    "look at its log for this request",
                )
            return _Fail(f"{what}: {detail}", check_address)

        return explain


# -- FHIR -----------------------------------------------------------------------------------


class _FhirCheck:
    P: Protocol = "FHIR"
    TYPES = ("Observation", "DiagnosticReport")

    def __init__(
        self, endpoint: FhirEndpoint, session: aiohttp.ClientSession, timeout: float
    ) -> None:
        self.base = endpoint.url.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.fix_root = (
            f"point the registry's lab.url (now {_shown(self.base)}) at the FHIR R4 server's "
            "root, the URL whose /metadata answers the CapabilityStatement"
        )

    async def run(self) -> list[CheckItem]:
        url = f"{self.base}/metadata"
        capability, ok = await _probe(
            "fhir.capability",
            self.P,
            self.timeout,
            lambda: self._capability(url),
            _http_explain("FHIR capabilities", url, self.base, self.timeout),
        )
        names = [f"fhir.search-{t.lower()}" for t in self.TYPES]
        if ok is None and capability.detail.startswith(
            ("FHIR capabilities: cannot connect", "FHIR capabilities: no answer")
        ):
            reason = "the FHIR server is unreachable (see fhir.capability)"
            return [capability] + [_skipped(n, self.P, reason, capability.fix or "") for n in names]
        searches = await asyncio.gather(
            *(
                _probe(
                    name,
                    self.P,
                    self.timeout,
                    partial(self._search, rtype),
                    _http_explain(
                        f"{rtype} search", f"{self.base}/{rtype}", self.base, self.timeout
                    ),
                )
                for name, rtype in zip(names, self.TYPES, strict=True)
            )
        )
        return [capability] + [item for item, _ in searches]

    def _fhir_json(self, answer: _Answer, what: str, expected: str, url: str) -> Any:
        if answer.status != 200:
            raise _http_failure(answer, what, url, self.base)
        data = _json_body(answer, what, expected, url, self.fix_root)
        ctype = answer.content_type
        if ctype not in (FHIR_JSON, "application/json", "application/json+fhir"):
            raise _Fail(
                f"{what}: answered JSON as {ctype or 'no Content-Type'}",
                f"serve FHIR JSON as {FHIR_JSON}",
            )
        return data

    async def _capability(self, url: str) -> tuple[str, bool]:
        answer = await _fetch(self.session, url, FHIR_JSON)
        data = self._fhir_json(answer, "FHIR capabilities", "a FHIR CapabilityStatement", url)
        kind = data.get("resourceType") if isinstance(data, dict) else None
        if kind != "CapabilityStatement":
            raise _Fail(
                f"FHIR capabilities: /metadata answers JSON that is not a CapabilityStatement "
                f"(resourceType {kind!r})",
                self.fix_root,
            )
        version = str(data.get("fhirVersion", ""))
        if not version.startswith("4.0."):
            raise _Fail(
                f"FHIR capabilities: fhirVersion {version or 'absent'}, not R4 (4.0.x)",
                "serve FHIR R4 (4.0.1): the gateway speaks R4 only",
            )
        searchable = set()
        for rest in data.get("rest") or []:
            if not isinstance(rest, dict) or rest.get("mode") not in (None, "server"):
                continue
            for resource in rest.get("resource") or []:
                if not isinstance(resource, dict):
                    continue
                codes = {
                    i.get("code") for i in resource.get("interaction") or [] if isinstance(i, dict)
                }
                if "search-type" in codes:
                    searchable.add(resource.get("type"))
        missing = [t for t in self.TYPES if t not in searchable]
        if missing:
            raise _Fail(
                "FHIR capabilities: the CapabilityStatement does not list search-type for "
                + " and ".join(missing),
                "serve search on Observation and DiagnosticReport, and list them (with the "
                "search-type interaction) in the CapabilityStatement",
            )
        software = data.get("software") if isinstance(data.get("software"), dict) else {}
        name = f", {software['name']}" if software and software.get("name") else ""
        return (
            f"CapabilityStatement, FHIR {version}{name}; Observation and DiagnosticReport "
            "searchable"
        ), True

    async def _search(self, rtype: str) -> tuple[str, None]:
        what = f"{rtype} search"
        url = f"{self.base}/{rtype}?_count=1"
        answer = await _fetch(self.session, url, FHIR_JSON)
        if 400 <= answer.status < 500 and answer.status not in (401, 403, 404):
            url = f"{self.base}/{rtype}?_summary=count"
            answer = await _fetch(self.session, url, FHIR_JSON)
        data = self._fhir_json(answer, what, "a FHIR Bundle", url)
        kind = data.get("resourceType") if isinstance(data, dict) else None
        if kind != "Bundle" or data.get("type") != "searchset":
            shown = f"a {kind} of type {data.get('type')!r}" if kind == "Bundle" else repr(kind)
            raise _Fail(
                f"{what}: answers {shown}, not a searchset Bundle",
                f"answer GET [base]/{rtype} with a Bundle of type searchset",
            )
        entries = [e for e in data.get("entry") or [] if isinstance(e, dict)]
        wrong = [
            e
            for e in entries
            if (e.get("search") or {}).get("mode", "match") == "match"
            and (e.get("resource") or {}).get("resourceType") != rtype
        ]
        if wrong:
            raise _Fail(
                f"{what}: the Bundle's matches are not all {rtype} resources",
                f"a search of {rtype} must match {rtype} resources",
            )
        total = data.get("total")
        shown_total = f", total {total}" if isinstance(total, int) else ""
        return f"searchset Bundle ({url.rsplit('?', 1)[1]}){shown_total}", None


# -- HL7 v2 ---------------------------------------------------------------------------------


def _hl7_escape(text: str) -> str:
    out = text.replace("\\", "\\E\\")
    for ch, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(ch, esc)
    return out


def build_test_message(
    facility: Facility, feed: Hl7v2Feed, control_id: str, now: datetime
) -> bytes:
    """An ORU^R01 (v2.5.1) marked as a test (MSH-11 ``T``), sent as the facility's feed, about
    a made-up patient: one glucose result."""
    ts = now.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    sender = _hl7_escape(feed.sending_facility)
    system = _hl7_escape(facility.mrn_system)
    app = _hl7_escape(feed.sending_application)
    filler = f"{control_id}^{sender}"
    glucose = "2345-7^Glucose^LN"
    segments = [
        f"MSH|^~\\&|{app}|{sender}|HUREN|HUREN|{ts}||ORU^R01^ORU_R01|{control_id}|T|2.5.1"
        "|||||CHN|UNICODE UTF-8",
        f"PID|1||HURENCHECK^^^{_hl7_escape(facility.id)}&{system}&URI^MR||CHECK^CONFORMANCE",
        f"ORC|RE||{filler}||CM",
        f"OBR|1||{filler}|{glucose}|||{ts}" + "|" * 15 + f"{ts}||LAB|F",
        f"OBX|1|NM|{glucose}||5.0|mmol/L^^UCUM|3.9-6.1|N|||F|||{ts}",
    ]
    return "".join(f"{seg}\r" for seg in segments).encode("utf-8")


def _read_ack(data: bytes) -> tuple[str, str, str | None]:
    """(MSA-1, MSA-2, error or note text) of an ACK."""
    text = data.decode("utf-8", errors="replace")
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise _Fail(
            "the MLLP listener answered something that is not an HL7 message",
            "give the gateway's own MLLP listener as host:port",
        )
    sep = segments[0][3]
    fields = {seg[:3]: seg.split(sep) for seg in reversed(segments[1:])}
    msa = fields.get("MSA")
    if msa is None or len(msa) < 2:
        raise _Fail(
            "the answer has no MSA segment: it is not an acknowledgement",
            "give the gateway's own MLLP listener as host:port",
        )
    err = fields.get("ERR", [])
    note = (err[8] if len(err) > 8 else "") or (msa[3] if len(msa) > 3 else "")
    for esc, ch in (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~")):
        note = note.replace(esc, ch)
    note = note.replace("\\E\\", "\\")
    return msa[1], msa[2] if len(msa) > 2 else "", note or None


async def _hl7_check(
    facility: Facility,
    feed: Hl7v2Feed,
    listener: tuple[str, int] | None,
    timeout: float,  # noqa: ASYNC109
) -> list[CheckItem]:
    name = "hl7.test-message"
    protocol: Protocol = "HL7v2"
    if listener is None:
        return [
            CheckItem(
                name,
                protocol,
                False,
                "not checked: no MLLP listener of the gateway was given",
                "run the check with the gateway's MLLP listener (host:port) to send a test "
                "message as the facility",
                0.0,
            )
        ]
    host, port = listener
    control_id = f"HURENCHK{secrets.token_hex(6).upper()}"
    message = build_test_message(facility, feed, control_id, datetime.now(UTC))
    where = f"{host}:{port}"

    async def run() -> tuple[str, None]:
        answer = await mllp.send_and_wait_ack(host, port, message, timeout=timeout)
        code, echoed, note = _read_ack(answer)
        if code in ("AA", "CA"):
            if echoed != control_id:
                raise _Fail(
                    f"{code}, but MSA-2 does not echo the message control id",
                    "the listener must answer each message with MSA-2 = its MSH-10",
                )
            extra = f" ({note})" if note else ""
            return (
                f"{code} for a test ORU^R01 (MSH-11 T) as {feed.sending_application}/"
                f"{feed.sending_facility}{extra}"
            ), None
        if note and "unknown sending facility" in note:
            fix = (
                f"the gateway does not know sending facility {feed.sending_facility!r} "
                "(MSH-4): load a registry listing this facility's HL7 v2 feed into the gateway, "
                "and restart it"
            )
        else:
            fix = "the gateway refused the test message: see its reason, and the lab feed's log"
        raise _Fail(f"the gateway answered {code}: {note or 'no reason given'}", fix)

    def explain(exc: BaseException) -> _Fail:
        detail = exc.detail if isinstance(exc, UpstreamError) else type(exc).__name__
        fix = (
            f"check that the gateway's lab feed listens on {where} and that the facility's "
            "network reaches it"
        )
        if isinstance(exc, TimeoutError):
            return _Fail(f"no ACK from {where} within {timeout:g} s", fix)
        return _Fail(f"cannot exchange a message with {where}: {detail}", fix)

    item, _ = await _probe(name, protocol, timeout, run, explain)
    return [item]


# -- the page -------------------------------------------------------------------------------

_WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "接入自检报告",
        "facility": "机构",
        "started": "开始时间(UTC)",
        "result": "结论",
        "pass": "通过",
        "fail": "未通过",
        "check": "检查项",
        "protocol": "协议",
        "status": "结果",
        "detail": "详情",
        "fix": "如何修复",
        "ms": "耗时(毫秒)",
        "summary": "{passed}/{total} 项通过",
        "nothing": "该机构没有登记影像或检验系统,无可检查项。",
    },
    "en": {
        "title": "Facility conformance check",
        "facility": "Facility",
        "started": "Started (UTC)",
        "result": "Result",
        "pass": "PASS",
        "fail": "FAIL",
        "check": "Check",
        "protocol": "Protocol",
        "status": "Result",
        "detail": "What happened",
        "fix": "What to fix",
        "ms": "ms",
        "summary": "{passed} of {total} checks passed",
        "nothing": "The facility registers no imaging or lab system: nothing to check.",
    },
}

_CSS = """
body{font-family:system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;
margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.5rem;margin:0 0 .5rem}
.meta{color:#57606a;margin:.25rem 0}
.verdict{display:inline-block;font-weight:700;font-size:1.25rem;padding:.3rem .9rem;
border-radius:.4rem;margin:.75rem 0}
.verdict.pass{background:#dafbe1;color:#116329}.verdict.fail{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;width:100%;margin-top:1rem;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.45rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}
td.name{white-space:nowrap}
tr.fail td{background:#fff8f7}
td.mark{font-size:1.1rem;text-align:center;font-weight:700}
tr.pass td.mark{color:#1a7f37}tr.fail td.mark{color:#cf222e}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.88em}
td.ms{text-align:right;white-space:nowrap}
"""


def report_page(report: CheckReport, lang: Literal["zh", "en"] = "zh") -> str:
    """The report as a self-contained HTML page (inline CSS, no external assets)."""
    w = _WORDS[lang]
    e = html.escape
    verdict = "pass" if report.passed else "fail"
    shown_verdict = f" ({verdict.upper()})" if lang == "zh" else ""
    passed = sum(1 for i in report.items if i.passed)
    who = report.facility + (f" {report.facility_name}" if report.facility_name else "")
    rows = []
    for item in report.items:
        state = "pass" if item.passed else "fail"
        rows.append(
            f'<tr class="{state}"><td class="name"><code>{e(item.name)}</code></td>'
            f"<td>{e(item.protocol)}</td>"
            f'<td class="mark">{"✓" if item.passed else "✗"}</td>'
            f"<td>{e(item.detail)}</td><td>{e(item.fix or '')}</td>"
            f'<td class="ms">{item.ms:.0f}</td></tr>'
        )
    table = (
        f"<table><thead><tr><th>{e(w['check'])}</th><th>{e(w['protocol'])}</th>"
        f"<th>{e(w['status'])}</th><th>{e(w['detail'])}</th><th>{e(w['fix'])}</th>"
        f"<th>{e(w['ms'])}</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else f"<p>{e(w['nothing'])}</p>"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="{"zh-CN" if lang == "zh" else "en"}"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(w['title'])} · {e(who)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(w['title'])}</h1>"
        f'<p class="meta">{e(w["facility"])}: <strong>{e(who)}</strong></p>'
        f'<p class="meta">{e(w["started"])}: {e(report.started.strftime("%Y-%m-%d %H:%M:%S"))}'
        "</p>"
        f'<div class="verdict {verdict}">{e(w["result"])}: '
        f"{e(w['pass'] if report.passed else w['fail'])}{e(shown_verdict)}</div>"
        f'<p class="meta">{e(w["summary"].format(passed=passed, total=len(report.items)))}</p>'
        f"{table}</body></html>\n"
    )


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.facility_check FACILITY``: exit 0 when every probe passed."""
    from .registry import load_registry

    p = argparse.ArgumentParser(
        prog="python -m gateway.facility_check",
        description="Go-live conformance check of one facility's imaging and lab systems",
    )
    p.add_argument("facility", help="facility id in the registry, e.g. F008")
    p.add_argument("--registry", type=Path, help="registry file (default: the packaged one)")
    p.add_argument("--calling-ae", default="HUREN", help="our AE title (default HUREN)")
    p.add_argument("--mllp", help="the gateway's MLLP listener as HOST:PORT (HL7 v2 feeds)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per probe")
    p.add_argument("--html", type=Path, help="write the report page here")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="language of the page")
    args = p.parse_args(argv)
    registry = load_registry(args.registry)
    facility = registry.get(args.facility)
    if facility is None:
        print(f"no facility {args.facility!r} in the registry", file=sys.stderr)
        return 2
    listener: tuple[str, int] | None = None
    if args.mllp:
        host, _, port = args.mllp.rpartition(":")
        if not host or not port.isdigit():
            print(f"--mllp must be HOST:PORT, got {args.mllp!r}", file=sys.stderr)
            return 2
        listener = (host, int(port))

    async def run() -> CheckReport:
        async with aiohttp.ClientSession() as session:
            return await check_facility(
                facility,
                session=session,
                calling_ae=args.calling_ae,
                mllp=listener,
                timeout=args.timeout,
            )

    report = asyncio.run(run())
    print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    if args.html:
        args.html.write_text(report_page(report, args.lang), encoding="utf-8")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
