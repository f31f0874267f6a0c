"""The resident portal (cloud film) on a phone: a 300-slice CT opened from a share link.

1. Time to the first rendered image, server side: the viewer page (the study's series and
   instances listed) and then its first image, rendered through WADO-RS at the PACS's
   image, windowed and JPEG-encoded by the gateway; p50 over repeated opens.
2. Frames per second while stepping through the series: every slice rendered in order, one
   at a time (a slow phone) and with 4 in flight (the viewer prefetches ahead).

The CT (512x512, 16-bit, a phantom chest with noise) sits in a simulated facility's PACS
(DICOMweb, on loopback); the gateway fetches each instance from it for each image.

    python bench/portal.py            # 300 slices, 30 opens
    python bench/portal.py --quick    # 300 slices, 8 opens

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_ENV, percentile, service_headers, wait_ready
from gateway.config import Settings
from gateway.core import open_core
from gateway.registry import load_registry
from gateway.seed_import import import_seed
from seeds.generator import generate
from tests.city import huren_command, start_simulator, stop_process
from tests.ports import free_port

SLICES = 300
_SERIES_DATA = re.compile(r'<script type="application/json" id="series-data">(.*?)</script>', re.S)


def make_ct(data_dir: Path) -> tuple[str, str, str]:
    """A 300-slice chest CT for a resident, in a DICOMweb facility's PACS folder; returns
    (facility, national ID, study UID)."""
    dicomweb = {f.id for f in load_registry() if f.imaging.kind == "dicomweb"}
    studies = json.loads((data_dir / "seed" / "studies.json").read_text(encoding="utf-8"))
    seed_ct = next(s for s in studies if s["modality"] == "CT" and s["facility_id"] in dicomweb)
    fid = seed_ct["facility_id"]
    template = pydicom.dcmread(
        next((data_dir / "seed" / "dicom" / fid / seed_ct["study_instance_uid"]).rglob("*.dcm"))
    )
    study, series = generate_uid(), generate_uid()
    folder = data_dir / "seed" / "dicom" / fid / study / series
    folder.mkdir(parents=True)
    t = template
    t.Rows = t.Columns = 512
    t.BitsAllocated, t.BitsStored, t.HighBit = 16, 16, 15
    t.PixelRepresentation, t.SamplesPerPixel = 1, 1
    t.PhotometricInterpretation = "MONOCHROME2"
    t.RescaleIntercept, t.RescaleSlope = 0, 1
    t.StudyInstanceUID, t.SeriesInstanceUID = study, series
    t.SeriesDescription, t.SeriesNumber, t.BodyPartExamined = "Chest 1.0", 1, "CHEST"
    t.SliceThickness = 1.0
    y, x = np.mgrid[-256:256, -256:256].astype(np.float32)
    rng = np.random.default_rng(3)
    for i in range(SLICES):
        phase = i / SLICES
        body = (x / 220) ** 2 + (y / 160) ** 2 < 1
        lungs = ((np.abs(x) - 95) / (70 + 20 * phase)) ** 2 + (y / 110) ** 2 < 1
        spine = (x / 22) ** 2 + ((y - 120) / 22) ** 2 < 1
        hu = np.full((512, 512), -1000.0, dtype=np.float32)
        hu[body] = 40
        hu[lungs & body] = -820
        hu[spine] = 700
        hu += rng.normal(0, 12, size=hu.shape).astype(np.float32)
        t.PixelData = hu.astype(np.int16).tobytes()
        t.SOPInstanceUID = generate_uid()
        t.file_meta.MediaStorageSOPInstanceUID = t.SOPInstanceUID
        t.InstanceNumber = i + 1
        t.ImagePositionPatient = [-256.0, -256.0, -float(i)]
        t.save_as(folder / f"{t.SOPInstanceUID}.dcm", enforce_file_format=True)
    return fid, seed_ct["national_id"], study


async def run(
    base: str, headers: dict[str, str], fid: str, nid: str, study: str, opens: int
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/portal/shares",
            json={"patient": nid, "study": study, "facility": fid},
            headers=headers,
        ) as resp:
            assert resp.status == 201, await resp.text()
            link = (await resp.json())["url"]
        viewer = f"{link}/studies/{fid}/{study}"

        async def open_study() -> tuple[float, float, list[str], str]:
            t = time.perf_counter()
            async with session.get(viewer) as resp:
                page = await resp.text()
                assert resp.status == 200, page[:300]
            found = _SERIES_DATA.search(page)
            assert found is not None, page[:300]
            data = json.loads(found.group(1))
            first = data["series"][0]
            images = [f"{base}{u}" for u in first["images"]]
            center, width = data["presets"][first["preset"]]
            preset = f"{center},{width}"
            page_ms = (time.perf_counter() - t) * 1000
            async with session.get(f"{images[0]}?window={preset}") as resp:
                body = await resp.read()
                assert resp.status == 200 and body[:2] == b"\xff\xd8", resp.status
            return page_ms, (time.perf_counter() - t) * 1000, images, preset

        await open_study()  # warm: the first open learns where the study is
        firsts, pages = [], []
        images: list[str] = []
        preset = ""
        for _ in range(opens):
            page_ms, first_ms, images, preset = await open_study()
            pages.append(page_ms)
            firsts.append(first_ms)
        assert len(images) == SLICES, len(images)

        async def step(in_flight: int) -> tuple[float, int]:
            queue = list(images)
            sizes = 0

            async def worker() -> None:
                nonlocal sizes
                while queue:
                    url = queue.pop(0)
                    async with session.get(f"{url}?window={preset}") as resp:
                        body = await resp.read()
                        assert resp.status == 200
                        sizes += len(body)

            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return len(images) / (time.perf_counter() - t), sizes // len(images)

        one, size = await step(1)
        four, _ = await step(4)
    return {
        "first_p50": percentile(firsts, 50),
        "first_p95": percentile(firsts, 95),
        "page_p50": percentile(pages, 50),
        "fps_1": one,
        "fps_4": four,
        "jpeg_bytes": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    opens = 8 if args.quick else 30
    data_dir = Path(tempfile.mkdtemp(prefix="huren-bench-portal-"))
    generate(data_dir, patients=30, seed=3)
    t = time.monotonic()
    fid, nid, study = make_ct(data_dir)
    print(f"made a {SLICES}-slice CT (512x512, 16-bit) at {fid} in {time.monotonic() - t:.0f} s")

    async def prepare() -> None:
        async with open_core(Settings(data_dir=data_dir), probe=False) as core:
            await import_seed(core.store, core.archive, core.registry, data_dir)

    asyncio.run(prepare())
    sim, _ = start_simulator(data_dir)
    port = free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "HUREN_DIMSE_PORT": str(free_port()),
        "HUREN_MLLP_PORT": str(free_port()),
        "HUREN_PROBE_INTERVAL": "3600",
    }
    gateway = subprocess.Popen(huren_command(data_dir, "serve", "--port", str(port)), env=env)
    try:
        wait_ready(port)
        base = f"http://127.0.0.1:{port}"
        f = asyncio.run(run(base, service_headers(data_dir), fid, nid, study, opens))
    finally:
        gateway.terminate()
        gateway.wait(15)
        stop_process(sim)
    print(
        f"  first rendered image of the {SLICES}-slice CT from the share link: p50"
        f" {f['first_p50']:.0f} ms, p95 {f['first_p95']:.0f} ms ({opens} opens; the viewer"
        f" page itself p50 {f['page_p50']:.0f} ms)"
    )
    print(
        f"  stepping through all {SLICES} slices: {f['fps_1']:.0f} frames/s one at a time,"
        f" {f['fps_4']:.0f} frames/s with 4 in flight (JPEG ~{f['jpeg_bytes'] / 1e3:.0f} kB)"
    )
    print(
        json.dumps(
            {
                "slices": SLICES,
                "first_image_p50_ms": round(f["first_p50"], 1),
                "first_image_p95_ms": round(f["first_p95"], 1),
                "viewer_page_p50_ms": round(f["page_p50"], 1),
                "frames_per_s_sequential": round(f["fps_1"], 1),
                "frames_per_s_4_in_flight": round(f["fps_4"], 1),
                "jpeg_bytes": f["jpeg_bytes"],
            }
        )
    )


if __name__ == "__main__":
    main()
