"""FHIR search parameter values, read once here for every resource type: dates with prefixes,
tokens, references, counts, and the strict/lenient handling of unknown parameters."""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Mapping
from typing import Final

__all__ = ["check_known", "count", "date", "day_bounds", "matches_date", "reference_id", "token"]

from gateway.search_terms import matches_date, token

from .outcome import FhirError

#: Parameters a client may send that change nothing here (answers are always JSON).
RESULT_PARAMS: Final = frozenset({"_format", "_pretty", "handling"})
_DATE = re.compile(
    r"^(eq|ne|ge|le|gt|lt|sa|eb|ap)?"
    r"(\d{4}(?:-\d{2}(?:-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?)$"
)
_SUPPORTED_PREFIXES: Final = ("eq", "ge", "le", "gt", "lt")


def check_known(params: Mapping[str, str], allowed: set[str] | frozenset[str]) -> None:
    """Refuse unknown parameters unless the client asked for ``handling=lenient``."""
    unknown = sorted(set(params) - allowed - RESULT_PARAMS)
    if unknown and params.get("handling", "strict") != "lenient":
        raise FhirError(400, "not-supported", f"unknown search parameters {unknown}")
    handling = params.get("handling", "strict")
    if handling not in ("strict", "lenient"):
        raise FhirError(400, "value", f"handling must be strict or lenient (got {handling!r})")


def date(name: str, value: str) -> tuple[str, str]:
    """``[prefix]YYYY[-MM[-DD[Thh:mm[:ss][zone]]]]`` as (prefix, value); prefix eq by default."""
    m = _DATE.match(value)
    if m is None:
        raise FhirError(400, "value", f"{name} {value!r} is not [prefix]YYYY[-MM[-DD[Thh:mm]]]")
    day = [int(p) for p in m.group(2)[:10].split("-")]
    try:
        datetime.date(day[0], *[*day[1:], 1, 1][:2])
    except ValueError:
        raise FhirError(400, "value", f"{name} {value!r} is not a real date") from None
    prefix = m.group(1) or "eq"
    if prefix not in _SUPPORTED_PREFIXES:
        raise FhirError(400, "not-supported", f"{name}: prefix {prefix} is not supported here")
    return prefix, m.group(2)


def day_bounds(prefix: str, value: str) -> list[tuple[str, str]]:
    """A date search on a YYYY[-MM[-DD]] value as comparisons of whole dates (strings).

    ``birthdate=1933`` means any day of 1933: [1933, 1934). As text, '1933-08-02' sorts
    between '1933' and '1934', so the bounds work on ISO dates stored as text.
    """
    start = value[:10]
    end = _next(start)
    return {
        "eq": [("ge", start), ("lt", end)],
        "ge": [("ge", start)],
        "gt": [("ge", end)],
        "le": [("lt", end)],
        "lt": [("lt", start)],
    }[prefix]


def _next(day: str) -> str:
    """The first value after the period ``day`` names (a year, a month or a day)."""
    parts = [int(p) for p in day.split("-")]
    if len(parts) == 1:
        return f"{parts[0] + 1:04d}"
    if len(parts) == 2:
        year, month = parts
        return f"{year + 1:04d}-01" if month == 12 else f"{year:04d}-{month + 1:02d}"
    year, month, d = parts
    if d < calendar.monthrange(year, month)[1]:
        return f"{year:04d}-{month:02d}-{d + 1:02d}"
    if month < 12:
        return f"{year:04d}-{month + 1:02d}-01"
    return f"{year + 1:04d}-01-01"


def reference_id(value: str, rtype: str) -> str:
    """The id of ``[base/]Type/id`` or a bare id, refusing a reference to another type."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] != rtype:
        raise FhirError(400, "value", f"expected a reference to a {rtype} (got {value!r})")
    if not parts[-1]:
        raise FhirError(400, "value", f"empty reference {value!r}")
    return parts[-1]


def count(params: Mapping[str, str], default: int, maximum: int) -> int:
    try:
        n = int(params.get("_count", str(default)))
    except ValueError:
        raise FhirError(400, "value", "_count must be a number") from None
    if not 0 < n <= maximum:
        raise FhirError(400, "value", f"_count must be 1..{maximum}")
    return n
