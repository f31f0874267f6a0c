"""QIDO-RS (PS3.18 10.6) over the federation: /dicomweb and /facilities/{id}/dicomweb."""

from __future__ import annotations

import json
from datetime import date
from typing import Any, Final

import orjson
from aiohttp import web
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from gateway.federation import FederatedResult, OutcomeStatus
from gateway.guard import access_of
from gateway.identity import is_national_id, resolve_person
from gateway.recognition import Recognition, Verdict, city_today, facts_of_study
from gateway.registry import Registry
from gateway.web import CORE

from .errors import dicom_error

DICOM_JSON = "application/dicom+json"
#: Largest page one QIDO request may ask for; a federated search is not a bulk export.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 200
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
# Private block naming the facility that holds a result and the study's recognition verdict
# (互认); viewers ignore private elements they do not know, safely (PS3.5 7.8).
PRIVATE_CREATOR = "HUREN"
_CREATOR_TAG, _FACILITY_TAG = "00110010", "00111001"
#: (0011,1002) CS "HR" when the study carries the mark; (0011,1003) CS YES/NO recognised by the
#: asking facility today; (0011,1004) LO catalogue version; (0011,1005) LO catalogue item;
#: (0011,1006) LO reasons (multi-valued: the recognition-reason codes); (0011,1007) DA the last
#: day the images count.
MARK_TAG, RECOGNISED_TAG, CATALOGUE_TAG = "00111002", "00111003", "00111004"
ITEM_TAG, REASONS_TAG, VALID_UNTIL_TAG = "00111005", "00111006", "00111007"


def parse_match(query: Any) -> tuple[dict[str, str], int, int]:
    """QIDO query parameters -> (keyword -> value, limit, offset); raise 400 on bad input."""
    match: dict[str, str] = {}
    for key, value in query.items():
        if key in _CONTROL:
            continue
        keyword = _keyword(key)
        if keyword is None:
            raise dicom_error(400, f"unknown or unsupported query attribute {key!r}")
        match[keyword] = value
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
        offset = int(query.get("offset", 0))
    except ValueError:
        raise dicom_error(400, "limit and offset must be integers") from None
    if not (0 < limit <= MAX_LIMIT) or offset < 0:
        raise dicom_error(400, f"limit must be 1..{MAX_LIMIT} and offset at least 0")
    return match, limit, offset


def parse_include(query: Any) -> tuple[str, ...]:
    """includefield (repeated or comma-separated keywords or tags, or "all") as keywords."""
    out: list[str] = []
    for raw in query.getall("includefield", []):
        for item in filter(None, (x.strip() for x in raw.split(","))):
            keyword = "all" if item == "all" else _keyword(item)
            if keyword is None:
                raise dicom_error(400, f"unknown includefield {item!r}")
            out.append(keyword)
    return tuple(dict.fromkeys(out))


def _keyword(key: str) -> str | None:
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return keyword_for_tag(int(key, 16)) or None
    return key if tag_for_keyword(key) is not None else None


async def search_studies(request: web.Request) -> web.Response:
    core = request.app[CORE]
    match, limit, offset = parse_match(request.query)
    facility_id = request.match_info.get("facility")
    if facility_id is not None and core.registry.get(facility_id) is None:
        raise dicom_error(404, f"no facility {facility_id}")
    access = access_of(request)
    person = await _named_patient(request, match)
    if person is not None:
        await core.policy.patient(access, person, "ImagingStudy", "s", only_at=facility_id)
    else:
        core.policy.require_scope(access, "ImagingStudy", "s")
    result = await core.imaging.search_studies(
        match,
        facility_ids=None if facility_id is None else [facility_id],
        limit=offset + limit,
        include=parse_include(request.query),
    )
    if person is None:  # results may be anyone's: each is shown only to who may see it
        result.items = [
            (fid, ds)
            for fid, ds in result.items
            if await core.policy.may_read(access, await core.imaging.person_of(fid, ds), fid)
        ]
    access.holders.update(fid for fid, _ in result.items)
    base = f"{request.scheme}://{request.host}"
    page = result.items[offset : offset + limit]
    verdicts: list[dict[str, Any]] = [{} for _ in page]
    # A patient's studies are judged (what a clinician looks at before ordering); a city-wide
    # listing is not: it would ask every listed study's facility for the study's series.
    if core.settings.verdicts and person is not None:
        asker = access.principal.facility_id if access.principal else None
        series = await core.imaging.series_of_studies(page)
        on = city_today()
        verdicts = [
            _judged(core.recognition, fid, ds, _parts(listed), asker, on)
            for (fid, ds), listed in zip(page, series, strict=True)
        ]
    datasets = [
        annotate(ds, fid, core.registry, base, extra)
        for (fid, ds), extra in zip(page, verdicts, strict=True)
    ]
    return _federated_response(result, datasets)


async def _named_patient(request: web.Request, match: dict[str, str]) -> str | None:
    """The person a search names by PatientID (national ID, or an MRN with its issuer; an
    MRN alone at a facility's own endpoint), if the gateway knows them."""
    patient_id = match.get("PatientID", "")
    if not patient_id or "*" in patient_id or "?" in patient_id:
        return None
    core = request.app[CORE]
    issuer = match.get("IssuerOfPatientID")
    facility_id = request.match_info.get("facility")
    if issuer is None and facility_id is not None and not is_national_id(patient_id):
        return await core.store.person_for(core.registry[facility_id].mrn_system, patient_id)
    return await resolve_person(core.store, core.registry, patient_id, issuer)


def annotate(
    ds: dict[str, Any],
    fid: str,
    registry: Registry,
    base: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add RetrieveURL (at the dataset's level), InstitutionName, the holding facility, and
    ``extra`` elements of the private block (a study's recognition verdict)."""
    out = dict(ds)
    url = f"{base}/facilities/{fid}/dicomweb/studies/{_value(out, '0020000D')}"
    if "0020000E" in out:
        url += f"/series/{_value(out, '0020000E')}"
        if "00080018" in out:
            url += f"/instances/{_value(out, '00080018')}"
    out["00081190"] = {"vr": "UR", "Value": [url]}
    if not out.get("00080080", {}).get("Value"):
        out["00080080"] = {"vr": "LO", "Value": [registry[fid].name_zh]}
    out[_CREATOR_TAG] = {"vr": "LO", "Value": [PRIVATE_CREATOR]}
    out[_FACILITY_TAG] = {"vr": "LO", "Value": [fid]}
    out.update(extra or {})
    return dict(sorted(out.items()))


#: Verdict elements by everything a study's verdict depends on: the same studies are looked
#: up again and again (a ward round), and judging one costs more than finding it here.
_JUDGED: dict[tuple[Any, ...], dict[str, Any]] = {}
_JUDGED_KEPT: Final = 50_000


def _judged(
    recognition: Recognition,
    fid: str,
    ds: dict[str, Any],
    parts: list[tuple[str, str]],
    asker: str | None,
    on: date,
) -> dict[str, Any]:
    key = (recognition.version, id(recognition), fid, _value(ds, "00080020"), *parts, asker, on)
    found = _JUDGED.get(key)
    if found is None:
        if len(_JUDGED) >= _JUDGED_KEPT:
            _JUDGED.clear()
        verdict = recognition.verdict(facts_of_study(ds, fid, parts), asker, on)
        found = _JUDGED[key] = verdict_elements(verdict)
    return found


def verdict_elements(v: Verdict) -> dict[str, Any]:
    """The verdict as elements of the private block ``annotate`` opens."""
    out: dict[str, Any] = {
        RECOGNISED_TAG: {"vr": "CS", "Value": ["YES" if v.recognised else "NO"]},
        CATALOGUE_TAG: {"vr": "LO", "Value": [v.catalogue]},
    }
    if v.mark is not None:
        out[MARK_TAG] = {"vr": "CS", "Value": [v.mark]}
    if v.item is not None:
        out[ITEM_TAG] = {"vr": "LO", "Value": [v.item.id]}
    if v.reasons:
        out[REASONS_TAG] = {"vr": "LO", "Value": [str(r) for r in v.reasons]}
    if v.valid_until is not None:
        out[VALID_UNTIL_TAG] = {"vr": "DA", "Value": [v.valid_until.strftime("%Y%m%d")]}
    return out


def _parts(series: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(modality, body part) of each series that says both."""
    found = ((_value(s, "00080060"), _value(s, "00180015")) for s in series)
    return [(m, b) for m, b in found if m and b]


def _value(ds: dict[str, Any], tag: str) -> str:
    return str((ds.get(tag) or {}).get("Value", [""])[0])


def _federated_response(
    result: FederatedResult[Any], datasets: list[dict[str, Any]]
) -> web.Response:
    headers: dict[str, str] = {}
    failures = result.failures
    if failures:
        asked = len(result.outcomes)
        names = ", ".join(f"{o.facility_id} ({o.status.value})" for o in failures[:20])
        more = "" if len(failures) <= 20 else f" and {len(failures) - 20} more"
        # PS3.18 8.3.3.1 / RFC 7234 5.5: 299 "miscellaneous persistent warning" for partial results.
        headers["Warning"] = (
            f'299 HUREN "{len(failures)} of {asked} facilities did not answer: {names}{more}"'
        )
        headers["Huren-Federation"] = json.dumps(
            [o.as_json() for o in failures], ensure_ascii=True, separators=(",", ":")
        )
        if all(o.status is not OutcomeStatus.OK for o in result.outcomes.values()):
            raise dicom_error(502, "no facility answered", headers=headers)
    return web.Response(body=orjson.dumps(datasets), content_type=DICOM_JSON, headers=headers)
