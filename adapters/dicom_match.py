"""DICOM attribute matching (PS3.4 C.2.2.2) over DICOM JSON datasets.

One implementation serves every place that answers a query from records it holds: the
gateway's own archive, and the simulated facilities' PACS.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from .types import DicomJson

#: Attributes whose matching ignores case: PN in practice (most PACS do it, PS3.4 C.2.2.2.1.1).
_CASE_INSENSITIVE_VRS = {"PN"}
_RANGE_VRS = {"DA", "TM", "DT"}


@lru_cache(maxsize=512)
def tag_hex(keyword_or_tag: str) -> str:
    """``PatientID`` or ``00100020`` -> ``00100020``; raise KeyError for an unknown name."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", keyword_or_tag):
        return keyword_or_tag.upper()
    tag = tag_for_keyword(keyword_or_tag)
    if tag is None:
        raise KeyError(keyword_or_tag)
    return f"{tag:08X}"


@lru_cache(maxsize=512)
def vr_of(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def values(ds: DicomJson, tag: str) -> list[str]:
    """An element's values as strings (PN as its alphabetic/ideographic text)."""
    element = ds.get(tag)
    if not element:
        return []
    out: list[str] = []
    for v in element.get("Value", []):
        if isinstance(v, dict):  # PN: {"Alphabetic": ..., "Ideographic": ...}
            out.extend(str(x) for x in v.values())
        else:
            out.append(str(v))
    return out


def matches(ds: DicomJson, match: Mapping[str, str]) -> bool:
    """Whether ``ds`` matches every key of ``match`` (keyword or tag -> DICOM matching value)."""
    for key, wanted in match.items():
        if wanted in ("", "*"):
            continue  # universal matching
        tag = tag_hex(key)
        if not _element_matches(values(ds, tag), wanted, vr_of(tag)):
            return False
    return True


def _element_matches(have: list[str], wanted: str, vr: str) -> bool:
    if not have:
        return False
    if vr in _RANGE_VRS and "-" in wanted:
        low, _, high = wanted.partition("-")
        return any((not low or v >= low) and (not high or v[: len(high)] <= high) for v in have)
    if vr == "UI" and "\\" in wanted:
        return bool(set(wanted.split("\\")) & set(have))
    if "\\" in wanted:  # a list of values: any of them (ModalitiesInStudy, PS3.4 C.6.2.1.2)
        return any(_element_matches(have, w, vr) for w in wanted.split("\\"))
    if "*" in wanted or "?" in wanted:
        if vr in _CASE_INSENSITIVE_VRS:
            return any(fnmatch.fnmatchcase(v.lower(), wanted.lower()) for v in have)
        return any(fnmatch.fnmatchcase(v, wanted) for v in have)
    if vr in _CASE_INSENSITIVE_VRS:
        return any(v.lower() == wanted.lower() for v in have)
    return wanted in have


def first(ds: DicomJson, keyword: str) -> Any:
    element = ds.get(tag_hex(keyword))
    if not element or not element.get("Value"):
        return None
    return element["Value"][0]
