"""Reading stored instances off the event loop: streamed bytes and header-only metadata."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom

from .types import DicomJson

CHUNK = 256 * 1024


async def file_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes, read in a thread a chunk at a time."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
    finally:
        f.close()


def header_json(path: Path) -> DicomJson:
    """An instance's attributes as DICOM JSON, without pixel data (blocking: use a thread)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    data: DicomJson = ds.to_json_dict(bulk_data_threshold=1 << 20)
    return data
