"""The gateway's HTTP surface over a real socket: health, readiness, metrics, federated QIDO."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient

from adapters.types import DicomWebEndpoint
from gateway.registry import load_registry
from tests.city import City, Client, bearer, open_gateway


@pytest.fixture
async def client(city: City) -> AsyncIterator[Client]:
    async with open_gateway(city, probe=True, federation_deadline=1.0) as (c, _):
        yield c


async def test_healthz(client: Client) -> None:
    """Liveness answers ok."""
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json()) == {"status": "ok"}


async def test_readyz_reports_111_reachable_facilities(client: Client) -> None:
    """/readyz has the contract's shape and every facility is reachable."""
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "ready"
    assert len(body["facilities"]) == 111
    assert all(set(f) >= {"id", "name", "reachable"} for f in body["facilities"])
    assert all(f["reachable"] is True for f in body["facilities"])
    assert body["facilities"][0] == {
        **body["facilities"][0],
        "id": "F001",
        "name": "常州市第一人民医院",
    }


async def test_metrics_count_upstream_calls(client: Client) -> None:
    """Prometheus text carries per-facility upstream counters after a search."""
    await client.get("/dicomweb/studies")
    text = await (await client.get("/metrics")).text()
    assert (
        'huren_upstream_calls_total{facility="F001",operation="search-studies",outcome="ok"}'
        in text
    )
    assert "huren_http_request_seconds_bucket" in text


async def test_federated_qido_filters_and_names_the_holding_facility(client: Client) -> None:
    """ModalitiesInStudy filters across facilities; each result has RetrieveURL and its holder."""
    resp = await client.get("/dicomweb/studies", params={"ModalitiesInStudy": "CT"})
    assert resp.status == 200 and resp.content_type == "application/dicom+json"
    studies = await resp.json()
    assert studies
    holders = set()
    for ds in studies:
        assert "CT" in ds["00080061"]["Value"]
        fid = ds["00111001"]["Value"][0]
        holders.add(fid)
        uid = ds["0020000D"]["Value"][0]
        assert ds["00081190"]["Value"][0].endswith(f"/facilities/{fid}/dicomweb/studies/{uid}")
        assert ds["00110010"]["Value"] == ["HUREN"]
    assert len(holders) > 1
    assert "Warning" not in resp.headers


async def test_one_facility_endpoint_asks_only_that_facility(client: Client) -> None:
    """/facilities/{id}/dicomweb/studies answers from that facility alone."""
    studies = await (await client.get("/dicomweb/studies")).json()
    fid = studies[0]["00111001"]["Value"][0]
    resp = await client.get(f"/facilities/{fid}/dicomweb/studies")
    only = await resp.json()
    assert only and {ds["00111001"]["Value"][0] for ds in only} == {fid}


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("NoSuchAttribute=1", 400),
        ("limit=zero", 400),
        ("limit=0", 400),
        ("limit=100000", 400),
        ("offset=-1", 400),
        ("FFFFFFFF=1", 400),
    ],
)
async def test_bad_qido_queries_get_a_dicom_json_error(
    client: Client,
    query: str,
    status: int,
) -> None:
    """Bad parameters are refused with the status and a DICOM JSON ErrorComment."""
    resp = await client.get(f"/dicomweb/studies?{query}")
    assert resp.status == status
    assert resp.content_type == "application/dicom+json"
    body = await resp.json()
    assert body[0]["00000902"]["vr"] == "LO" and body[0]["00000902"]["Value"][0]


async def test_unknown_facility_is_404(client: Client) -> None:
    """A facility not in the registry is a 404 in DICOM JSON form."""
    resp = await client.get("/facilities/F999/dicomweb/studies")
    assert resp.status == 404
    assert "F999" in (await resp.json())[0]["00000902"]["Value"][0]


async def test_partial_failure_sets_warning_header(client: Client, city: City) -> None:
    """A facility that is down is named in a 299 Warning and in the per-facility detail."""
    down = next(
        f.id
        for f in load_registry()
        if isinstance(f.imaging, DicomWebEndpoint)
        and (city.data_dir / "seed" / "dicom" / f.id).is_dir()
    )
    city.fault(down, "down")
    resp = await client.get("/dicomweb/studies")
    assert resp.status == 200
    assert resp.headers["Warning"].startswith('299 HUREN "1 of 111 facilities did not answer')
    assert down in resp.headers["Warning"]
    detail = json.loads(resp.headers["Huren-Federation"])
    assert detail[0]["facility"] == down and detail[0]["status"] == "error"
    assert all(ds["00111001"]["Value"][0] != down for ds in await resp.json())


async def test_the_console_shows_recent_error_rates(client: Client, city: City) -> None:
    """After a facility failed two searches of three, the console's facility table shows it
    at 67% (flagged), one that answered at 0%, and one never called as no rate at all."""
    down, fine, quiet = "F001", "F002", "F003"
    for mode in ("down", "down", "ok"):
        city.fault(down, mode)
        assert (await client.get(f"/facilities/{down}/dicomweb/studies")).status in (200, 502)
    assert (await client.get(f"/facilities/{fine}/dicomweb/studies")).status == 200
    admin = bearer(city.data_dir, "admin", subject="ops")
    page = await (await client.get("/admin", params={"lang": "en"}, headers=admin)).text()

    def errors(fid: str) -> str:
        """The error-rate cell of the facility's row: the one after the latency."""
        row = page[page.index(f'<td class="id">{fid}</td>') :]
        cells = row[: row.index("</tr>")].split("<td")
        latency = next(i for i, c in enumerate(cells) if c.endswith(" ms</td>") or "–" in c)
        return cells[latency + 1]

    assert "errors-high" in errors(down) and ">66.7%<" in errors(down)
    assert ">0.0%<" in errors(fine) and "errors-high" not in errors(fine)
    assert ">–<" in errors(quiet)


async def test_dicomweb_client_searches_through_the_gateway(client: Client, city: City) -> None:
    """dicomweb-client (an independent client) runs QIDO studies search through the gateway."""
    url = str(client.make_url("/dicomweb"))
    patients = city.patients()
    nid = str(patients[0]["national_id"])

    def search() -> list[dict[str, Any]]:
        dw = DICOMwebClient(url=url, headers=bearer(city.data_dir))
        found: list[dict[str, Any]] = dw.search_for_studies(search_filters={"PatientID": nid})
        return found

    studies = await asyncio.to_thread(search)
    assert studies
    records = patients[0]["records"]
    assert all(s["00100020"]["Value"][0] == records[s["00111001"]["Value"][0]] for s in studies)


async def test_includefield_reaches_the_facilities(client: Client) -> None:
    """includefield=PatientAge comes back (empty if unknown) from DIMSE PACS, which are asked
    for it as a return key; an unknown includefield is a 400."""
    from adapters.types import DimseEndpoint

    dimse = {f.id for f in load_registry() if isinstance(f.imaging, DimseEndpoint)}
    params = {"includefield": "PatientAge", "limit": "1000"}
    resp = await client.get("/dicomweb/studies", params=params)
    studies = await resp.json()
    from_dimse = [s for s in studies if s["00111001"]["Value"][0] in dimse]
    assert from_dimse and all("00101010" in s for s in from_dimse)
    bad = await client.get("/dicomweb/studies", params={"includefield": "NoSuchThing"})
    assert bad.status == 400
