"""ImagingStudy (FHIR R4) from the DICOM side: a federated study search, each study mapped
with an Endpoint for retrieving it through the gateway's WADO-RS."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from gateway.federation import FederatedResult
from gateway.registry import Registry

DCM = "http://dicom.nema.org/resources/ontology/DCM"
_CHINA = "+08:00"


def imaging_study(
    fid: str,
    ds: dict[str, Any],
    registry: Registry,
    series: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The ImagingStudy of a study-level DICOM JSON dataset held at ``fid``, with its
    ``series`` (series-level datasets) where they were asked for."""
    uid = _v(ds, "0020000D")
    facility = registry[fid]
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        # A study UID is up to 64 characters: with the facility it would not fit an id.
        "id": f"{fid}-{hashlib.sha256(str(uid).encode()).hexdigest()[:24]}",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": {
            "identifier": {"system": facility.mrn_system, "value": str(_v(ds, "00100020") or "")},
        },
        "endpoint": [{"reference": f"Endpoint/{fid}-wado"}],
    }
    accession = _v(ds, "00080050")
    if accession:
        study["identifier"].append(
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": str(accession),
                "assigner": {"reference": f"Organization/{fid}"},
            }
        )
    modalities = (ds.get("00080061") or {}).get("Value") or []
    if modalities:
        study["modality"] = [{"system": DCM, "code": str(m)} for m in modalities]
    started = _started(_v(ds, "00080020"), _v(ds, "00080030"))
    if started:
        study["started"] = started
    for tag, key in (("00201206", "numberOfSeries"), ("00201208", "numberOfInstances")):
        value = _v(ds, tag)
        if value not in (None, ""):
            study[key] = int(value)
    description = _v(ds, "00081030")
    if description:
        study["description"] = str(description)
    listed = [s for s in (_series(one) for one in series) if s is not None]
    if listed:
        study["series"] = listed
    return study


def _series(ds: dict[str, Any]) -> dict[str, Any] | None:
    """An ImagingStudy.series; None without the UID and modality R4 requires of one."""
    uid, modality = _v(ds, "0020000E"), _v(ds, "00080060")
    if not uid or not modality:
        return None
    out: dict[str, Any] = {"uid": str(uid), "modality": {"system": DCM, "code": str(modality)}}
    number = _v(ds, "00200011")
    if number not in (None, ""):
        out["number"] = int(number)
    description = _v(ds, "0008103E")
    if description:
        out["description"] = str(description)
    count = _v(ds, "00201209")
    if count not in (None, ""):
        out["numberOfInstances"] = int(count)
    body_part = _v(ds, "00180015")
    if body_part:
        # DICOM's Body Part Examined as written (PS3.16 CID 4031 has no FHIR code system).
        out["bodySite"] = {"display": str(body_part)}
    return out


def studies(
    result: FederatedResult[Any],
    registry: Registry,
    series: Sequence[Sequence[dict[str, Any]]] | None = None,
) -> FederatedResult[Any]:
    """The same federated result with each DICOM JSON study as an ImagingStudy (with the
    series listed in ``series``, one list per study, where given)."""
    out: FederatedResult[Any] = FederatedResult(outcomes=result.outcomes)
    per_study = series if series is not None else [()] * len(result.items)
    out.items = [
        (fid, imaging_study(fid, ds, registry, listed))
        for (fid, ds), listed in zip(result.items, per_study, strict=True)
    ]
    out.items.sort(key=lambda pair: str(pair[1].get("started", "")), reverse=True)
    return out


def _started(date: Any, time: Any) -> str | None:
    d = str(date or "")
    if len(d) != 8 or not d.isdigit():
        return None
    t = str(time or "").split(".")[0]
    if len(t) >= 4 and t[:4].isdigit():
        seconds = t[4:6] if len(t) >= 6 else "00"
        return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{seconds}{_CHINA}"
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def _v(ds: dict[str, Any], tag: str) -> Any:
    value = (ds.get(tag) or {}).get("Value") or [None]
    return value[0]
