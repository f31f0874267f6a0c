"""The conformance resources in fhir/ served as FHIR: read, search (by url) and ValueSet $expand
for the StructureDefinitions, CodeSystems, ValueSets and OperationDefinitions that describe
mutual recognition (the verdict extension, the decision profile, their codes and operations).

They are files shipped with the gateway, not data: loaded once, never changed at run time, and
each ValueSet carries its expansion. The retest reasons are also read from here
(``retest_reasons``) so that the codes a client is shown and the codes a decision is checked
against are one list.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from . import params as P
from .outcome import FhirError, fhir_response
from .patients import bundle

FHIR_DIR: Final = Path(__file__).resolve().parents[1] / "fhir"
#: The types served here (the CapabilityStatement has /fhir/metadata).
SERVED: Final = frozenset({"StructureDefinition", "CodeSystem", "ValueSet", "OperationDefinition"})
RETEST_REASON: Final = "urn:huren:CodeSystem/retest-reason"
_COUNTS: Final = "counts-against-recognition"
_TEXT: Final = "requires-text"


@dataclass(frozen=True, slots=True)
class RetestReason:
    """A reason for re-testing instead of accepting a recognised result (one concept of
    fhir/CodeSystem-retest-reason.json)."""

    code: str
    display: str  # Chinese
    english: str
    counts_against: bool  # a re-test for it counts against recognition
    requires_text: bool  # the decision must explain it in CodeableConcept.text


# -- the files --------------------------------------------------------------------------------


@functools.cache
def _all() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in fhir/ by (resourceType, id); the file name must say the same."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(FHIR_DIR.glob("*.json")):
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        key = (data["resourceType"], data["id"])
        if path.stem != f"{key[0]}-{key[1]}":
            raise ValueError(f"{path.name} holds {key[0]}/{key[1]}")
        found[key] = data
    return found


@functools.cache
def _urls() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for data in _all().values():
        if "url" in data:
            if data["url"] in found:
                raise ValueError(f"canonical url {data['url']} is used twice in {FHIR_DIR}")
            found[data["url"]] = data
    return found


def resource(rtype: str, id: str) -> dict[str, Any]:
    """The resource ``rtype/id`` from fhir/ (a copy); KeyError when there is none."""
    return copy.deepcopy(_all()[(rtype, id)])


def by_url(url: str) -> dict[str, Any] | None:
    """The resource whose canonical url is ``url`` (optionally ``url|version``), a copy."""
    base, _, version = url.partition("|")
    data = _urls().get(base)
    if data is None or (version and data.get("version") != version):
        return None
    return copy.deepcopy(data)


@functools.cache
def _retest_reasons() -> dict[str, RetestReason]:
    cs = _urls()[RETEST_REASON]
    return {c["code"]: _retest_reason(c) for c in cs["concept"]}


def _retest_reason(concept: dict[str, Any]) -> RetestReason:
    props = {p["code"]: bool(p["valueBoolean"]) for p in concept.get("property", [])}
    english = next(d["value"] for d in concept["designation"] if d.get("language") == "en")
    return RetestReason(
        code=concept["code"],
        display=concept["display"],
        english=english,
        counts_against=props.get(_COUNTS, True),
        requires_text=props.get(_TEXT, False),
    )


def retest_reasons() -> dict[str, RetestReason]:
    """Code -> reason, in the CodeSystem's order."""
    return dict(_retest_reasons())


# -- the handlers -----------------------------------------------------------------------------


async def read(request: web.Request) -> web.Response:
    """GET /fhir/{type}/{id}."""
    rtype = _served(request.match_info["type"])
    rid = request.match_info["id"]
    data = _all().get((rtype, rid))
    if data is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid} not found")
    return fhir_response(data)


async def search(request: web.Request) -> web.Response:
    """GET /fhir/{type}[?url=...]: every resource of the type, or the one with that url."""
    rtype = _served(request.match_info["type"])
    P.check_known(request.query, {"url"})
    found = [data for (t, _), data in _all().items() if t == rtype]
    if "url" in request.query:
        found = [data for data in found if data.get("url") == request.query["url"]]
    return fhir_response(bundle(request, found))


async def expand(request: web.Request) -> web.Response:
    """GET /fhir/ValueSet/{id}/$expand or /fhir/ValueSet/$expand?url=...: the ValueSet with
    its (shipped) expansion."""
    P.check_known(request.query, set() if "id" in request.match_info else {"url"})
    if "id" in request.match_info:
        data = _all().get(("ValueSet", request.match_info["id"]))
        missing = f"ValueSet/{request.match_info['id']}"
    elif "url" in request.query:
        data = by_url(request.query["url"])
        missing = f"ValueSet {request.query['url']}"
    else:
        raise FhirError(400, "required", "$expand needs a ValueSet id or the url parameter")
    if data is None or data["resourceType"] != "ValueSet":
        raise FhirError(404, "not-found", f"{missing} not found")
    if "expansion" not in data:
        raise FhirError(422, "too-costly", f"{missing} has no expansion to give")
    return fhir_response(data)


def _served(rtype: str) -> str:
    if rtype not in SERVED:
        raise FhirError(404, "not-supported", f"resource type {rtype} is not served here")
    return rtype
