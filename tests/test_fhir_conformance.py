"""The conformance resources in fhir/ (recognition's codes, extensions, profile and operations)
and the FHIR face's read, search and $expand of them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B import get_fhir_model_class

from fhirapi import conformance
from fhirapi.conformance import FHIR_DIR, by_url, resource, retest_reasons

Client = TestClient[web.Request, web.Application]
VERDICT = "urn:huren:StructureDefinition/recognition-verdict"
SUB_EXTENSIONS = ("recognised", "mark", "catalogue", "item", "reason", "asker", "on", "validUntil")


def _files() -> list[Path]:
    return sorted(FHIR_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _of_type(rtype: str) -> list[dict[str, Any]]:
    return [d for d in map(_load, _files()) if d["resourceType"] == rtype]


# -- the files --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_every_file_is_a_valid_fhir_resource_named_after_itself(path: Path) -> None:
    data = _load(path)
    model = get_fhir_model_class(data["resourceType"]).model_validate(data)
    assert path.stem == f"{data['resourceType']}-{data['id']}"
    assert model.publisher == "Huren" and model.status == "active"  # type: ignore[attr-defined]


def test_the_recognition_files_are_there() -> None:
    names = {p.name for p in _files()}
    for rtype, rid in [
        ("CodeSystem", "recognition-reason"),
        ("ValueSet", "recognition-reason"),
        ("CodeSystem", "retest-reason"),
        ("ValueSet", "retest-reason"),
        ("CodeSystem", "recognition-decision"),
        ("ValueSet", "recognition-decision"),
        ("CodeSystem", "recognition-mark"),
        ("StructureDefinition", "recognition-verdict"),
        ("StructureDefinition", "recognition-decision"),
        ("StructureDefinition", "recognition-decision-result"),
        ("StructureDefinition", "recognition-decision-reason"),
        ("StructureDefinition", "recognition-decision-holder"),
        ("OperationDefinition", "recognition"),
        ("OperationDefinition", "recognized-priors"),
    ]:
        assert f"{rtype}-{rid}.json" in names
        assert resource(rtype, rid)["url"] == f"urn:huren:{rtype}/{rid}"


def test_canonical_urls_are_unique() -> None:
    urls = Counter(d["url"] for d in map(_load, _files()) if "url" in d)
    assert urls and max(urls.values()) == 1, urls


@pytest.mark.parametrize("vs", _of_type("ValueSet"), ids=lambda d: d["id"])
def test_every_value_set_expands_to_exactly_its_code_system(vs: dict[str, Any]) -> None:
    (include,) = vs["compose"]["include"]
    cs = by_url(include["system"])
    assert cs is not None and cs["resourceType"] == "CodeSystem" and cs["content"] == "complete"
    codes = [c["code"] for c in cs["concept"]]
    contains = vs["expansion"]["contains"]
    assert [c["code"] for c in contains] == codes
    assert {c["system"] for c in contains} == {cs["url"]}
    assert vs["expansion"]["total"] == len(codes) == cs["count"]
    assert [c["display"] for c in contains] == [c["display"] for c in cs["concept"]]


def test_every_concept_is_chinese_with_an_english_designation() -> None:
    for cs in _of_type("CodeSystem"):
        for c in cs["concept"]:
            assert any("\u4e00" <= ch <= "\u9fff" for ch in c["display"]), c
            assert [d["language"] for d in c["designation"]] == ["en"], c
            assert c["definition"].isascii() or "国卫医发" in c["definition"], c


def test_every_sub_extension_of_the_verdict_is_defined_once() -> None:
    elements = resource("StructureDefinition", "recognition-verdict")["differential"]["element"]
    slices = Counter(e.get("sliceName") for e in elements if e["path"] == "Extension.extension")
    assert slices.pop(None) == 1  # the slicing itself
    assert slices == Counter(SUB_EXTENSIONS)
    urls = Counter(e["fixedUri"] for e in elements if e["path"] == "Extension.extension.url")
    assert urls == Counter(SUB_EXTENSIONS)
    by_id = {e["id"]: e for e in elements}
    assert by_id["Extension.url"]["fixedUri"] == VERDICT
    assert by_id["Extension.value[x]"]["max"] == "0"
    required = {"recognised", "catalogue", "on"}
    for name in SUB_EXTENSIONS:
        ext = by_id[f"Extension.extension:{name}"]
        assert (ext["min"], ext["max"]) == (int(name in required), "*" if name == "reason" else "1")
        assert len(by_id[f"Extension.extension:{name}.value[x]"]["type"]) == 1


def test_the_decision_profile_uses_extensions_that_exist() -> None:
    sd = resource("StructureDefinition", "recognition-decision")
    profiles = [
        t["profile"][0]
        for e in sd["differential"]["element"]
        if e["path"] == "Basic.extension" and "sliceName" in e
        for t in e["type"]
    ]
    assert len(profiles) == 4 and VERDICT in profiles
    for url in profiles:
        ext = by_url(url)
        assert ext is not None and ext["type"] == "Extension"
        assert {"type": "element", "expression": "Basic"} in ext["context"]
    bindings = [
        e["binding"]["valueSet"]
        for d in map(_load, _files())
        if d["resourceType"] == "StructureDefinition"
        for e in d["differential"]["element"]
        if "binding" in e
    ]
    assert bindings and all(by_url(vs) is not None for vs in bindings)


def test_retest_reasons() -> None:
    reasons = retest_reasons()
    assert list(reasons) == ["01", "02", "03", "04", "05", "06", "07", "08", "98", "99"]
    assert {c for c, r in reasons.items() if not r.counts_against} == {"98", "99"}
    assert {c for c, r in reasons.items() if r.requires_text} == {"08", "99"}
    assert reasons["04"].display == "急诊、急救、抢救等紧急情况"
    assert reasons["04"].english == "emergency, resuscitation or critical state"
    reasons.clear()  # a copy: the next caller still gets all ten
    assert len(retest_reasons()) == 10


def test_resource_is_a_copy() -> None:
    resource("CodeSystem", "recognition-mark")["concept"].clear()
    assert resource("CodeSystem", "recognition-mark")["concept"][0]["code"] == "HR"
    with pytest.raises(KeyError):
        resource("CodeSystem", "nothing")
    assert by_url("urn:huren:ValueSet/retest-reason|2026.11.1") is not None
    assert by_url("urn:huren:ValueSet/retest-reason|1999") is None


# -- the handlers -----------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    app = web.Application()
    app.router.add_get("/fhir/ValueSet/$expand", conformance.expand)
    app.router.add_get("/fhir/ValueSet/{id}/$expand", conformance.expand)
    app.router.add_get("/fhir/{type}", conformance.search)
    app.router.add_get("/fhir/{type}/{id}", conformance.read)
    async with TestClient(TestServer(app)) as c:
        yield c


async def _json(client: Client, path: str, status: int, **params: str) -> dict[str, Any]:
    response = await client.get(path, params=params)
    assert response.status == status, await response.text()
    assert response.content_type == "application/fhir+json"
    data: dict[str, Any] = await response.json(content_type=None)
    return data


async def test_read(client: Client) -> None:
    data = await _json(client, "/fhir/CodeSystem/retest-reason", 200)
    assert data == resource("CodeSystem", "retest-reason")
    data = await _json(client, "/fhir/OperationDefinition/recognized-priors", 200)
    assert data["code"] == "recognized-priors"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/fhir/CodeSystem/nothing", "not-found"),
        ("/fhir/ValueSet/recognition-mark", "not-found"),
        ("/fhir/ConceptMap/recognition-reason", "not-supported"),
        ("/fhir/CapabilityStatement/huren", "not-supported"),
    ],
)
async def test_read_refuses_unknown_ids_and_types(client: Client, path: str, code: str) -> None:
    data = await _json(client, path, 404)
    assert data["resourceType"] == "OperationOutcome"
    assert data["issue"][0]["code"] == code


async def test_search(client: Client) -> None:
    data = await _json(client, "/fhir/StructureDefinition", 200)
    assert data["type"] == "searchset" and data["total"] == 5
    data = await _json(client, "/fhir/StructureDefinition", 200, url=VERDICT)
    assert data["total"] == 1
    (entry,) = data["entry"]
    assert entry["resource"]["url"] == VERDICT
    assert entry["fullUrl"].endswith("/fhir/StructureDefinition/recognition-verdict")
    data = await _json(client, "/fhir/CodeSystem", 200, url=VERDICT)
    assert data["total"] == 0 and data["entry"] == []
    await _json(client, "/fhir/Basic", 404)
    await _json(client, "/fhir/CodeSystem", 400, name="x")


async def test_expand(client: Client) -> None:
    by_id = await _json(client, "/fhir/ValueSet/retest-reason/$expand", 200)
    url = "urn:huren:ValueSet/retest-reason"
    assert by_id == await _json(client, "/fhir/ValueSet/$expand", 200, url=url)
    assert by_id["expansion"]["total"] == 10
    await _json(client, "/fhir/ValueSet/nothing/$expand", 404)
    await _json(client, "/fhir/ValueSet/$expand", 404, url="urn:huren:CodeSystem/retest-reason")
    await _json(client, "/fhir/ValueSet/$expand", 400)
