"""Reading stored instances off the event loop: streamed bytes and header-only metadata."""

from __future__ import annotations

import asyncio
import io
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


def header_json(source: Path | bytes) -> DicomJson:
    """An instance's attributes as DICOM JSON (PS3.18 F.2), values of more than
    BULK_THRESHOLD bytes (pixel data among them) as BulkDataURI placeholders that the face
    turns into its own bulkdata URLs. Blocking: use a thread."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    ds = pydicom.dcmread(fp, defer_size=BULK_THRESHOLD)
    data: DicomJson = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=_placeholder
    )
    return data


def _placeholder(element: pydicom.DataElement) -> str:
    return f"bulkdata:{element.tag:08X}"


#: Values larger than this are bulk data: referenced from metadata, fetched on their own.
BULK_THRESHOLD = 1024
