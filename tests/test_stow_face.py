"""STOW-RS through the gateway into each kind of facility archive, and every bad upload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

import dicom.stow
from tests.city import City, Client, bearer, open_gateway
from tests.test_dicomweb_face import KINDS, REGISTRY


@pytest.fixture
async def client(city: City) -> AsyncIterator[Client]:
    async with open_gateway(city) as (c, _):
        yield c


def _fresh_instances(city: City, n: int = 2) -> list[pydicom.Dataset]:
    """Copies of seed instances under a new study: nobody holds them yet."""
    paths = sorted((city.data_dir / "seed" / "dicom").rglob("*.dcm"))[:n]
    study, series = generate_uid(), generate_uid()
    out: list[pydicom.Dataset] = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def _facility(kind: str) -> str:
    return next(f.id for f in REGISTRY if isinstance(f.imaging, KINDS[kind]))


def _multipart(*parts: bytes, boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
            for p in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    return body, {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
    }


def _bytes(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_stow_then_retrieve_through_the_gateway(
    client: Client,
    city: City,
    kind: str,
) -> None:
    """dicomweb-client stores into a facility; the gateway then returns the same pixels."""
    fid = _facility(kind)
    instances = _fresh_instances(city)
    dw = DICOMwebClient(
        url=str(client.make_url(f"/facilities/{fid}/dicomweb")), headers=bearer(city.data_dir)
    )
    answer = await asyncio.to_thread(dw.store_instances, instances)
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in instances
    ]
    assert "FailedSOPSequence" not in answer
    study = instances[0].StudyInstanceUID
    got = await asyncio.to_thread(dw.retrieve_study, study)
    assert {g.SOPInstanceUID: g.PixelData for g in got} == {
        d.SOPInstanceUID: d.PixelData for d in instances
    }
    # And it is found by a federated search across the city.
    found = await (await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})).json()
    assert [s["00111001"]["Value"][0] for s in found] == [fid]


async def test_stow_mixed_good_and_bad_parts_is_202(client: Client, city: City) -> None:
    """A part that is not DICOM fails with 0xC000; the good one is stored: 202."""
    fid = _facility("archive")
    good = _fresh_instances(city, 1)[0]
    body, headers = _multipart(_bytes(good), b"this is not DICOM at all")
    resp = await client.post(f"/facilities/{fid}/dicomweb/studies", data=body, headers=headers)
    assert resp.status == 202
    answer = await resp.json()
    assert answer["00081199"]["Value"][0]["00081155"]["Value"] == [good.SOPInstanceUID]
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


async def test_stow_all_bad_is_409_and_gateway_keeps_serving(client: Client) -> None:
    """Nothing storable: 409 with a failure per part; the gateway still answers after."""
    body, headers = _multipart(b"junk one", b"junk two")
    resp = await client.post(
        f"/facilities/{_facility('dicomweb')}/dicomweb/studies", data=body, headers=headers
    )
    assert resp.status == 409
    assert len((await resp.json())["00081198"]["Value"]) == 2
    assert (await client.get("/healthz")).status == 200


async def test_stow_truncated_body_keeps_what_arrived_whole(client: Client, city: City) -> None:
    """A body cut off mid-part: the whole parts before it are stored and reported."""
    fid = _facility("archive")
    first, second = _fresh_instances(city, 2)
    body, headers = _multipart(_bytes(first), _bytes(second))
    cut = body[: len(body) - len(_bytes(second)) // 2]
    resp = await client.post(f"/facilities/{fid}/dicomweb/studies", data=cut, headers=headers)
    assert resp.status == 202
    answer = await resp.json()
    assert [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]] == [
        first.SOPInstanceUID
    ]
    got = await client.get(
        f"/facilities/{fid}/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}"
    )
    # Read the whole answer: a stream left unread is cut when the client closes, after the
    # request was audited as answered.
    assert got.status == 200 and len(await got.read()) > len(_bytes(first)) // 2


async def test_stow_oversized_instance_is_refused(
    client: Client,
    city: City,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An instance over the size limit fails with 0xA700 (out of resources), unread."""
    monkeypatch.setattr(dicom.stow, "MAX_INSTANCE_BYTES", 1000)
    body, headers = _multipart(_bytes(_fresh_instances(city, 1)[0]))
    resp = await client.post(
        f"/facilities/{_facility('archive')}/dicomweb/studies", data=body, headers=headers
    )
    assert resp.status == 409
    assert (await resp.json())["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]


async def test_stow_to_a_named_study_refuses_other_studies(client: Client, city: City) -> None:
    """POST .../studies/{uid} with an instance of another study: 0xC122 for that instance."""
    ds = _fresh_instances(city, 1)[0]
    body, headers = _multipart(_bytes(ds))
    resp = await client.post(
        f"/facilities/{_facility('archive')}/dicomweb/studies/1.2.3.4", data=body, headers=headers
    )
    assert resp.status == 409
    assert (await resp.json())["00081198"]["Value"][0]["00081197"]["Value"] == [0xC122]


@pytest.mark.parametrize(
    ("path", "ctype", "status"),
    [
        (
            "/facilities/F999/dicomweb/studies",
            'multipart/related; type="application/dicom"; boundary=x',
            404,
        ),
        ("/facilities/F001/dicomweb/studies", "application/json", 415),
        (
            "/facilities/F001/dicomweb/studies",
            "multipart/related; type=application/json; boundary=x",
            415,
        ),
    ],
)
async def test_stow_refusals(client: Client, path: str, ctype: str, status: int) -> None:
    """Unknown facility 404; not multipart/related of application/dicom 415; in DICOM JSON."""
    resp = await client.post(path, data=b"--x--\r\n", headers={"Content-Type": ctype})
    assert resp.status == status
    assert resp.content_type == "application/dicom+json"
