"""Rendered images, thumbnails, frames and transcoding through the gateway, including a
JPEG 2000 source stored through STOW-RS."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, generate_uid

from tests.city import City, Client, open_gateway
from tests.test_dicomweb_face import KINDS, REGISTRY


@pytest.fixture
async def client(city: City) -> AsyncIterator[Client]:
    async with open_gateway(city) as (c, _):
        yield c


def _ct(city: City) -> tuple[str, pydicom.Dataset]:
    """A CT instance of a DICOMweb facility: (facility, dataset)."""
    for f in REGISTRY:
        root = city.data_dir / "seed" / "dicom" / f.id
        if isinstance(f.imaging, KINDS["dicomweb"]) and root.is_dir():
            for path in sorted(root.rglob("*.dcm")):
                ds = pydicom.dcmread(path)
                if ds.Modality == "CT":
                    return f.id, ds
    raise AssertionError("no CT in the seed")


def _url(fid: str, ds: pydicom.Dataset, tail: str = "") -> str:
    return (
        f"/facilities/{fid}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{tail}"
    )


async def test_rendered_jpeg_png_window_and_viewport(client: Client, city: City) -> None:
    """JPEG by default, PNG on Accept; the viewport bounds the size; windows change the image."""
    fid, ds = _ct(city)
    resp = await client.get(_url(fid, ds, "/rendered"), params={"viewport": "32,32"})
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    image = Image.open(io.BytesIO(await resp.read()))
    assert image.format == "JPEG" and max(image.size) <= 32
    lung = await client.get(
        _url(fid, ds, "/rendered"), params={"window": "-600,1500"}, headers={"Accept": "image/png"}
    )
    bone = await client.get(
        _url(fid, ds, "/rendered"), params={"window": "400,1800"}, headers={"Accept": "image/png"}
    )
    assert lung.content_type == "image/png"
    a = np.asarray(Image.open(io.BytesIO(await lung.read())), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(await bone.read())), dtype=float)
    assert a.shape == (ds.Rows, ds.Columns) and abs(a.mean() - b.mean()) > 5


async def test_thumbnails_of_instance_series_and_study(client: Client, city: City) -> None:
    """Thumbnails are small JPEGs for an instance, a series, a study."""
    fid, ds = _ct(city)
    base = f"/facilities/{fid}/dicomweb/studies/{ds.StudyInstanceUID}"
    for url in (
        _url(fid, ds, "/thumbnail"),
        f"{base}/series/{ds.SeriesInstanceUID}/thumbnail",
        f"{base}/thumbnail",
    ):
        resp = await client.get(url)
        assert resp.status == 200, url
        assert max(Image.open(io.BytesIO(await resp.read())).size) <= 128


async def test_frames_are_the_stored_pixel_bytes(client: Client, city: City) -> None:
    """frames/1 of a single-frame instance is its PixelData, as octet-stream."""
    fid, ds = _ct(city)
    resp = await client.get(_url(fid, ds, "/frames/1"))
    assert resp.status == 200
    assert 'type="application/octet-stream"' in resp.headers["Content-Type"]
    assert ds.PixelData in await resp.read()


@pytest.mark.parametrize(
    ("tail", "params", "accept", "status"),
    [
        ("/frames/2", {}, "*/*", 400),
        ("/frames/x", {}, "*/*", 400),
        ("/frames/0", {}, "*/*", 400),
        ("/rendered", {"window": "40"}, "image/jpeg", 400),
        ("/rendered", {"window": "40,0"}, "image/jpeg", 400),
        ("/rendered", {"viewport": "0,0"}, "image/jpeg", 400),
        ("/rendered", {"quality": "500"}, "image/jpeg", 400),
        ("/rendered", {}, "text/html", 406),
    ],
)
async def test_bad_render_requests(
    client: Client,
    city: City,
    tail: str,
    params: dict[str, str],
    accept: str,
    status: int,
) -> None:
    """Bad frame numbers, windows, viewports, qualities and media types: DICOM JSON errors."""
    fid, ds = _ct(city)
    resp = await client.get(_url(fid, ds, tail), params=params, headers={"Accept": accept})
    assert resp.status == status


async def test_jpeg2000_source_renders_and_transcodes(
    client: Client, city: City, tmp_path: Path
) -> None:
    """A JPEG 2000 instance stored through STOW renders, and comes back decompressed to
    Explicit VR Little Endian when the client asks only for that."""
    _, original = _ct(city)
    ds = pydicom.dcmread(io.BytesIO(_save(original)))
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.compress(JPEG2000Lossless)
    fid = next(f.id for f in REGISTRY if isinstance(f.imaging, KINDS["archive"]))
    boundary = "j2k"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + _save(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = await client.post(
        f"/facilities/{fid}/dicomweb/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert resp.status == 200, await resp.text()
    rendered = await client.get(_url(fid, ds, "/rendered"))
    assert rendered.status == 200 and Image.open(io.BytesIO(await rendered.read())).format == "JPEG"
    frames = await client.get(_url(fid, ds, "/frames/1"))
    assert 'type="image/jp2"' in frames.headers["Content-Type"]
    as_stored = await client.get(_url(fid, ds))
    assert b"transfer-syntax=1.2.840.10008.1.2.4.90" in await as_stored.read()
    explicit = await client.get(
        _url(fid, ds),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.1"
        },
    )
    payload = await explicit.read()
    start = payload.index(b"\r\n\r\n") + 4
    got = pydicom.dcmread(io.BytesIO(payload[start:]))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, original.pixel_array)


def _save(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def test_metadata_points_bulk_data_at_the_gateway(client: Client, city: City) -> None:
    """Metadata carries PixelData as a BulkDataURI of this gateway; fetching it gives the pixels."""
    fid, ds = _ct(city)
    meta = await (await client.get(_url(fid, ds, "/metadata"))).json()
    uri = meta[0]["7FE00010"]["BulkDataURI"]
    assert uri == str(client.make_url(_url(fid, ds, "/bulkdata/7FE00010")))
    resp = await client.get(_url(fid, ds, "/bulkdata/7FE00010"))
    assert resp.status == 200 and ds.PixelData in await resp.read()
    assert (await client.get(_url(fid, ds, "/bulkdata/00100010"))).status == 404
    assert (await client.get(_url(fid, ds, "/bulkdata/xyz"))).status == 400
