"""The HUREN private block both DICOM faces answer a study with: the facility that holds it
and its recognition verdict (互认). QIDO-RS (dicom/qido.py) always adds the block; the DIMSE
C-FIND SCP (dicom/scp.py) adds the elements a query asks for. One piece of code judges for
both, so a viewer sees the same verdict whichever face it asks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Final

from gateway.access import Access
from gateway.core import Core
from gateway.recognition import Recognition, Verdict, city_today, facts_of_study

# Viewers ignore private elements they do not know, safely (PS3.5 7.8).
PRIVATE_CREATOR: Final = "HUREN"
PRIVATE_GROUP: Final = 0x0011
#: The tags as DICOM JSON keys, in block 0x10: the creator at (0011,0010), the holder at
#: (0011,1001). A DIMSE query may reserve another block; the SCP moves them there.
CREATOR_TAG, FACILITY_TAG = "00110010", "00111001"
#: (0011,1002) CS "HR" when the study carries the mark; (0011,1003) CS YES/NO recognised by the
#: asking facility today; (0011,1004) LO catalogue version; (0011,1005) LO catalogue item;
#: (0011,1006) LO reasons (multi-valued: the recognition-reason codes); (0011,1007) DA the last
#: day the images count.
MARK_TAG, RECOGNISED_TAG, CATALOGUE_TAG = "00111002", "00111003", "00111004"
ITEM_TAG, REASONS_TAG, VALID_UNTIL_TAG = "00111005", "00111006", "00111007"
#: The verdict's elements: a study is judged only for a caller that asks for one of them.
VERDICT_TAGS: Final = frozenset(
    {MARK_TAG, RECOGNISED_TAG, CATALOGUE_TAG, ITEM_TAG, REASONS_TAG, VALID_UNTIL_TAG}
)


def holder_elements(fid: str) -> dict[str, Any]:
    """The block's creator and the facility holding the study, as DICOM JSON."""
    return {
        CREATOR_TAG: {"vr": "LO", "Value": [PRIVATE_CREATOR]},
        FACILITY_TAG: {"vr": "LO", "Value": [fid]},
    }


def asker_of(access: Access) -> str | None:
    """The facility a verdict is for: the caller's own (None for a service, which sees the
    result as such)."""
    return access.principal.facility_id if access.principal else None


async def judge_studies(
    core: Core, studies: Sequence[tuple[str, dict[str, Any]]], asker: str | None
) -> list[dict[str, Any]]:
    """The verdict elements of each (holder, study-level dataset) as ``asker`` sees it today;
    none when the gateway is set not to judge. Callers judge a patient's studies only (what
    a clinician looks at before ordering): a city-wide listing would ask every listed
    study's facility for the study's series."""
    if not core.settings.verdicts:
        return [{} for _ in studies]
    series = await core.imaging.series_of_studies(studies)
    on = city_today()
    return [
        judged(core.recognition, fid, ds, parts_of(listed), asker, on)
        for (fid, ds), listed in zip(studies, series, strict=True)
    ]


#: Verdict elements by everything a study's verdict depends on: the same studies are looked
#: up again and again (a ward round), and judging one costs more than finding it here.
_JUDGED: dict[tuple[Any, ...], dict[str, Any]] = {}
_JUDGED_KEPT: Final = 50_000


def judged(
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
    """The verdict as elements of the private block (DICOM JSON)."""
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


def parts_of(series: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(modality, body part) of each series that says both."""
    found = ((_value(s, "00080060"), _value(s, "00180015")) for s in series)
    return [(m, b) for m, b in found if m and b]


def _value(ds: dict[str, Any], tag: str) -> str:
    return str((ds.get(tag) or {}).get("Value", [""])[0])
