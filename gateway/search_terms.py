"""What FHIR search terms mean for a resource, in one place for the services and the face:
a date at the precision it was given, a code with or without its system."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches_date(have: str | None, prefix: str, value: str) -> bool:
    """Whether a date/dateTime ``have`` matches a date search at the search's precision
    (``date=2025-03`` matches any time in March 2025); prefix eq, ge, le, gt or lt."""
    if not have:
        return False
    head = have[: len(value)]
    return {
        "eq": head == value,
        "ge": head >= value,
        "le": head <= value,
        "gt": head > value,
        "lt": head < value,
    }[prefix]


def has_coding(concept: Mapping[str, Any], system: str | None, code: str) -> bool:
    """Whether a CodeableConcept has ``code`` (in ``system``, when one is given)."""
    return any(
        c.get("code") == code and system in (None, c.get("system"))
        for c in concept.get("coding", [])
    )


def token(value: str) -> tuple[str | None, str]:
    """``[system|]code`` as (system or None, code)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system or None, code
    return None, value
