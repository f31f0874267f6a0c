"""QIDO-RS (PS3.18 10.6) over the federation: /dicomweb and /facilities/{id}/dicomweb."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from gateway.federation import FederatedResult, OutcomeStatus
from gateway.guard import access_of
from gateway.identity import is_national_id, resolve_person
from gateway.registry import Registry
from gateway.web import CORE

from .errors import dicom_error
from .verdict_elements import asker_of, holder_elements, judge_studies

DICOM_JSON = "application/dicom+json"
#: Largest page one QIDO request may ask for; a federated search is not a bulk export.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 200
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
# The private block (holder and recognition verdict, 互认) is dicom/verdict_elements.py's,
# shared with the DIMSE face.


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
    if person is not None:
        verdicts = await judge_studies(core, page, asker_of(access))
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
    out.update(holder_elements(fid))
    out.update(extra or {})
    return dict(sorted(out.items()))


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
