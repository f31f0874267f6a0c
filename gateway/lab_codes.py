"""Facilities' own lab item codes, mapped to LOINC through a FHIR R4 ConceptMap.

Many laboratory systems (LIS) in the city code their items in a scheme of their own — English
abbreviations, item numbers, pinyin initials — and know no LOINC. The mapping is data, kept in
``seeds/ConceptMap-lab-local-codes.json``: one ``group`` per facility, from its local code
system ``urn:huren:lab-code:<facility id>`` to ``http://loinc.org``, one ``element`` per item.
With it the same test from two hospitals is recognised as the same.

`LabCodeMap.load` reads and checks the file once; a file that does not validate is refused
with a `ConfigError` naming the group and the element, never half-loaded. Lookups afterwards
are dictionary lookups.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "LOCAL_SYSTEM_PREFIX",
    "LOINC_SYSTEM",
    "MAPPING_EQUIVALENCES",
    "LabCodeMap",
]

#: The shipped map (a data file beside the facility registry, not an import of ``seeds``).
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "seeds" / "ConceptMap-lab-local-codes.json"
LOINC_SYSTEM = "http://loinc.org"
#: A facility's own lab code system is this prefix and its id (as HL7 v2 feeds' "L" codes are
#: read, with MSH-4 the facility id).
LOCAL_SYSTEM_PREFIX = "urn:huren:lab-code:"
#: ConceptMap equivalences (R4, ``concept-map-equivalence``) that state a mapping. The other
#: two, ``unmatched`` and ``disjoint``, state that there is none and are refused.
MAPPING_EQUIVALENCES = frozenset(
    {
        "relatedto",
        "equivalent",
        "equal",
        "wider",
        "subsumes",
        "narrower",
        "specializes",
        "inexact",
    }
)

#: (target system, target code, target display)
Target = tuple[str, str, str | None]


class LabCodeMap:
    """Local lab codes to standard ones (and back), read from one FHIR R4 ConceptMap."""

    __slots__ = ("_forward", "_reverse", "_sources", "url", "version")

    def __init__(
        self,
        forward: Mapping[tuple[str, str], tuple[Target, ...]],
        reverse: Mapping[tuple[str, str, str], str],
        *,
        url: str | None = None,
        version: str | None = None,
    ) -> None:
        self._forward = dict(forward)
        self._reverse = dict(reverse)
        self._sources = frozenset(system for system, _ in self._forward)
        self.url = url
        self.version = version

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def empty(cls) -> LabCodeMap:
        """A map with no local codes: every resource is left as it is."""
        return cls({}, {})

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> LabCodeMap:
        """Read and validate a ConceptMap JSON file.

        Raises
        ------
        ConfigError
            The file is missing, not UTF-8 JSON, or not a valid map (the message names the
            group and the element).
        """
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"lab code map: file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"lab code map: {path} is not UTF-8 JSON: {exc}") from None
        return cls.from_json(raw, origin=str(path))

    @classmethod
    def from_json(cls, raw: Any, *, origin: str = "ConceptMap") -> LabCodeMap:
        """Build the map from a parsed ConceptMap; `origin` names it in error messages.

        Each group needs ``source`` and ``target`` (systems) and at least one element; each
        element a ``code``, unique within its group, and exactly one ``target`` with a
        ``code`` and a mapping ``equivalence`` (`MAPPING_EQUIVALENCES`). Two groups may not
        share both source and target.

        Raises
        ------
        ConfigError
            Naming the group (number and source) and the element (number and code).
        """

        def fail(where: str, detail: str) -> ConfigError:
            return ConfigError(f"lab code map {origin}: {where}{': ' if where else ''}{detail}")

        if not isinstance(raw, dict) or raw.get("resourceType") != "ConceptMap":
            kind = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
            raise fail("", f"expected a FHIR ConceptMap, got {kind!r}")
        groups = raw.get("group", [])
        if not isinstance(groups, list):
            raise fail("", "group must be a list")
        forward: dict[tuple[str, str], list[Target]] = {}
        reverse: dict[tuple[str, str, str], str] = {}
        seen_pairs: set[tuple[str, str]] = set()
        for g_no, group in enumerate(groups, start=1):
            where = f"group {g_no}"
            if not isinstance(group, dict):
                raise fail(where, "must be an object")
            source, target = group.get("source"), group.get("target")
            if isinstance(source, str) and source:
                where = f"group {g_no} ({source})"
            if not isinstance(source, str) or not source.strip():
                raise fail(where, f"source must be a non-empty system URI, got {source!r}")
            if not isinstance(target, str) or not target.strip():
                raise fail(where, f"target must be a non-empty system URI, got {target!r}")
            if (source, target) in seen_pairs:
                raise fail(where, f"a group from {source} to {target} is already listed")
            seen_pairs.add((source, target))
            elements = group.get("element")
            if not isinstance(elements, list) or not elements:
                raise fail(where, "element must be a non-empty list")
            codes: set[str] = set()
            for e_no, element in enumerate(elements, start=1):
                at = f"{where}, element {e_no}"
                if not isinstance(element, dict):
                    raise fail(at, "must be an object")
                code = element.get("code")
                if not isinstance(code, str) or not code.strip():
                    raise fail(at, f"code must be a non-empty string, got {code!r}")
                at = f"{where}, element {e_no} ({code!r})"
                if code in codes:
                    raise fail(at, "code is listed twice in this group")
                codes.add(code)
                targets = element.get("target")
                if not isinstance(targets, list) or len(targets) != 1:
                    count = len(targets) if isinstance(targets, list) else targets
                    raise fail(at, f"target must be a list of exactly one mapping, got {count!r}")
                (mapped,) = targets
                if not isinstance(mapped, dict):
                    raise fail(at, "target must be an object")
                t_code, display = mapped.get("code"), mapped.get("display")
                if not isinstance(t_code, str) or not t_code.strip():
                    raise fail(at, f"target code must be a non-empty string, got {t_code!r}")
                if display is not None and not isinstance(display, str):
                    raise fail(at, f"target display must be a string, got {display!r}")
                equivalence = mapped.get("equivalence")
                if equivalence not in MAPPING_EQUIVALENCES:
                    raise fail(
                        at,
                        f"target equivalence must be one of {sorted(MAPPING_EQUIVALENCES)}, "
                        f"got {equivalence!r}",
                    )
                forward.setdefault((source, code), []).append((target, t_code, display))
                # Two local codes for one standard code: asking back uses the first listed.
                reverse.setdefault((source, target, t_code), code)
        return cls(
            {key: tuple(value) for key, value in forward.items()},
            reverse,
            url=raw.get("url") if isinstance(raw.get("url"), str) else None,
            version=raw.get("version") if isinstance(raw.get("version"), str) else None,
        )

    # -- lookups ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """How many local codes the map knows."""
        return len(self._forward)

    @property
    def sources(self) -> frozenset[str]:
        """The local code systems the map translates from."""
        return self._sources

    def has_local_codes(self, system: str) -> bool:
        """True when `system` (e.g. ``urn:huren:lab-code:F001``) is a source of the map."""
        return system in self._sources

    def to_standard(
        self, system: str, code: str, target_system: str | None = None
    ) -> Target | None:
        """(target system, code, display) of a local code, or None when it is not mapped.

        With `target_system`, only a mapping into that system counts; without, the first
        group that maps the code wins.
        """
        targets = self._forward.get((system, code))
        if not targets:
            return None
        if target_system is None:
            return targets[0]
        return next((t for t in targets if t[0] == target_system), None)

    def to_local(self, source_system: str, target_system: str, code: str) -> str | None:
        """The local code in `source_system` of `code` in `target_system`, or None.

        For asking a facility in its own codes (e.g. a search by LOINC at a facility whose
        laboratory system knows only its item numbers).
        """
        return self._reverse.get((source_system, target_system, code))

    def translate(self, resource: dict[str, Any]) -> dict[str, Any]:
        """`resource` with the mapped standard codings added to its ``code.coding``.

        Each mapped coding goes right after the local coding it comes from, unless a coding
        in that target system is already there. Returns `resource` itself when there is
        nothing to add; otherwise a copy (the argument is never changed).
        """
        concept = resource.get("code")
        if not self._forward or not isinstance(concept, dict):
            return resource
        codings = concept.get("coding")
        if not isinstance(codings, list):
            return resource
        present = {c.get("system") for c in codings if isinstance(c, dict)}
        out: list[Any] = []
        added = False
        for coding in codings:
            out.append(coding)
            if not isinstance(coding, dict):
                continue
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            for target, t_code, display in self._forward.get((system, code), ()):
                if target in present:
                    continue
                mapped: dict[str, Any] = {"system": target, "code": t_code}
                if display is not None:
                    mapped["display"] = display
                out.append(mapped)
                present.add(target)
                added = True
        if not added:
            return resource
        result = copy.copy(resource)
        result["code"] = {**concept, "coding": out}
        return result

    def standard_code(
        self, resource: Mapping[str, Any], target_system: str = LOINC_SYSTEM
    ) -> str | None:
        """The code of `resource` in `target_system` (LOINC by default), given or mapped.

        A coding already in `target_system` wins; else the first local coding the map
        translates. None when there is neither.
        """
        concept = resource.get("code")
        codings = concept.get("coding") if isinstance(concept, dict) else None
        if not isinstance(codings, list):
            return None
        dicts = [c for c in codings if isinstance(c, dict)]
        for coding in dicts:
            code = coding.get("code")
            if coding.get("system") == target_system and isinstance(code, str):
                return code
        for coding in dicts:
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                mapped = self.to_standard(system, code, target_system)
                if mapped is not None:
                    return mapped[1]
        return None
