"""The DICOM face under load: federated QIDO through the gateway, and WADO-RS retrieval of a
large study through the gateway against the same retrieval straight from the upstream PACS,
with the gateway's memory watched while it relays. Orthanc (Debian) answers the same search and
retrieval as a peer figure.

    python bench/dicom.py            # a 500 MB study, 100 queries
    python bench/dicom.py --quick    # a 100 MB study, 30 queries

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BENCH_ENV,
    percentile,
    rss_bytes,
    service_headers,
    timed_queries,
    wait_ready,
)
from gateway.config import Settings
from gateway.core import open_core
from gateway.seed_import import import_seed
from seeds.generator import generate
from tests.city import huren_command, start_simulator, stop_process
from tests.orthanc import orthanc_missing, start_orthanc, stop_orthanc
from tests.ports import free_port

FACILITY = "F001"  # a DICOMweb PACS in the registry
SIM_BASE = "http://127.0.0.1:18001/dicomweb"
ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def make_big_study(root: Path, megabytes: int) -> tuple[str, list[Path]]:
    """A CT study of 512x512 16-bit slices adding up to about `megabytes`, under root."""
    template = pydicom.dcmread(next(root.rglob("*.dcm")))
    study, series = generate_uid(), generate_uid()
    folder = root / study / series
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4000, size=(512, 512), dtype=np.uint16)
    template.Rows = template.Columns = 512
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 12, 11
    template.PixelRepresentation, template.SamplesPerPixel = 0, 1
    template.PhotometricInterpretation = "MONOCHROME2"
    template.PixelData = pixels.tobytes()
    template.StudyInstanceUID, template.SeriesInstanceUID = study, series
    paths = []
    for i in range(max(1, megabytes * 1024 * 1024 // (512 * 512 * 2))):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = i + 1
        path = folder / f"{template.SOPInstanceUID}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


async def stream(url: str, auth: dict[str, str] | None = None) -> tuple[int, float]:
    """GET a WADO-RS retrieval, reading it as it comes; return (bytes, seconds)."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t = time.perf_counter()
        async with session.get(url, headers={**ACCEPT, **(auth or {})}) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            n = 0
            async for chunk in resp.content.iter_chunked(1 << 20):
                n += len(chunk)
        return n, time.perf_counter() - t


class RssWatch:
    """Samples a process's RSS every 20 ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--megabytes", type=int, default=500)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="retrievals each way, interleaved")
    args = ap.parse_args()
    megabytes = 100 if args.quick else args.megabytes
    queries = 30 if args.quick else args.queries

    data_dir = Path(tempfile.mkdtemp(prefix="huren-bench-dicom-"))
    generate(data_dir, patients=30, seed=3)
    t = time.monotonic()
    study, paths = make_big_study(data_dir / "seed" / "dicom" / FACILITY, megabytes)
    size = sum(p.stat().st_size for p in paths)
    print(
        f"made a study of {len(paths)} instances, {size / 1e6:.0f} MB"
        f" in {time.monotonic() - t:.0f} s"
    )

    async def prepare() -> None:
        async with open_core(Settings(data_dir=data_dir), probe=False) as core:
            await import_seed(core.store, core.archive, core.registry, data_dir)

    asyncio.run(prepare())
    sim, _ = start_simulator(data_dir)
    port = free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "HUREN_FEDERATION_DEADLINE": "2.0",
        "HUREN_DIMSE_PORT": str(free_port()),
    }
    auth = service_headers(data_dir)
    gateway = subprocess.Popen(huren_command(data_dir, "serve", "--port", str(port)), env=env)
    orthanc = None
    figures: dict[str, float | int | str] = {"study_mb": round(size / 1e6), "instances": len(paths)}
    try:
        wait_ready(port)
        base = f"http://127.0.0.1:{port}"
        asyncio.run(timed_queries(f"{base}/dicomweb/studies", 10, headers=auth))
        qido, count, _ = asyncio.run(
            timed_queries(f"{base}/dicomweb/studies", queries, headers=auth)
        )
        print(
            f"QIDO through the gateway, 111 facilities: p50 {percentile(qido, 50):.1f} ms, "
            f"p99 {percentile(qido, 99):.1f} ms ({queries} queries, {count} studies each)"
        )
        figures |= {
            "qido_p50_ms": round(percentile(qido, 50), 1),
            "qido_p99_ms": round(percentile(qido, 99), 1),
        }

        idle = rss_bytes(gateway.pid)
        direct, through, peak = [], [], 0
        for _ in range(args.rounds):
            n, secs = asyncio.run(stream(f"{SIM_BASE}/studies/{study}"))
            direct.append(n / secs)
            with RssWatch(gateway.pid) as watch:
                m, secs = asyncio.run(
                    stream(f"{base}/facilities/{FACILITY}/dicomweb/studies/{study}", auth)
                )
            assert abs(m - n) < len(paths) * 256, (m, n)  # same instances (part headers differ)
            through.append(m / secs)
            peak = max(peak, watch.peak)
        d, g = statistics.median(direct), statistics.median(through)
        print(
            f"WADO-RS {size / 1e6:.0f} MB: straight from the PACS {d / 1e6:.0f} MB/s, through the "
            f"gateway {g / 1e6:.0f} MB/s: ratio {g / d:.2f}"
        )
        print(
            f"gateway RSS: idle {idle / 1e6:.0f} MB, peak while relaying {peak / 1e6:.0f} MB "
            f"(+{(peak - idle) / 1e6:.0f} MB)"
        )
        figures |= {
            "wado_direct_mb_s": round(d / 1e6, 1),
            "wado_gateway_mb_s": round(g / 1e6, 1),
            "wado_ratio": round(g / d, 2),
            "gateway_rss_idle_mb": round(idle / 1e6),
            "gateway_rss_peak_above_idle_mb": round((peak - idle) / 1e6),
        }

        reason = orthanc_missing()
        if reason is None:
            orthanc = start_orthanc(data_dir / "orthanc")
            t = time.monotonic()
            orthanc.upload(paths)
            big = set(paths)
            everything = sorted((data_dir / "seed" / "dicom").rglob("*.dcm"))
            seeded = [p for p in everything if p not in big]
            orthanc.upload(seeded)
            print(f"Orthanc: uploaded in {time.monotonic() - t:.0f} s")
            asyncio.run(timed_queries(f"{orthanc.dicomweb_url}/studies", 5, params={}))
            oq, ocount, _ = asyncio.run(
                timed_queries(f"{orthanc.dicomweb_url}/studies", queries, params={})
            )
            n, secs = asyncio.run(stream(f"{orthanc.dicomweb_url}/studies/{study}"))
            print(
                f"Orthanc directly: QIDO p50 {percentile(oq, 50):.1f} ms,"
                f" p99 {percentile(oq, 99):.1f} ms "
                f"({ocount} studies); WADO-RS {n / secs / 1e6:.0f} MB/s"
            )
            figures |= {
                "orthanc_qido_p50_ms": round(percentile(oq, 50), 1),
                "orthanc_qido_p99_ms": round(percentile(oq, 99), 1),
                "orthanc_wado_mb_s": round(n / secs / 1e6, 1),
            }
        else:
            print(f"Orthanc figures skipped: {reason}")
        print(json.dumps(figures))
    finally:
        if orthanc is not None:
            stop_orthanc(orthanc)
        gateway.terminate()
        gateway.wait(15)
        stop_process(sim)


if __name__ == "__main__":
    main()
