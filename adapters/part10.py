"""DICOM Part 10 files (PS3.10) as bytes: wrapping a received data set, unwrapping one to
send, and checking an arriving file is whole before anything is stored."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from .dimse_codec import Message
from .types import StoredInstance


def dataset_bytes(part10_file: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the preamble and file meta (group 0002,
    whose length its first element, FileMetaInformationGroupLength, gives)."""
    if part10_file[128:132] != b"DICM" or part10_file[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a DICOM Part 10 file with a file meta group length")
    (group_length,) = struct.unpack_from("<L", part10_file, 140)
    return part10_file[144 + group_length :]


def part10(msg: Message, transfer_syntax: str) -> bytes:
    """A received C-STORE dataset as a DICOM Part 10 file (preamble and file meta added)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(msg.get("AffectedSOPClassUID", "")))
    meta.MediaStorageSOPInstanceUID = UID(str(msg.get("AffectedSOPInstanceUID", "")))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(buf), meta)
    buf.write(msg.dataset or b"")
    return buf.getvalue()


def identify(data: bytes) -> StoredInstance | None:
    """An arriving file's identifiers (blocking); None if it is not a whole Part 10 file.

    The whole instance is parsed, pixel data included: a part cut short (a truncated upload
    can still look complete) must fail here, not be stored half.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" in ds and not _pixel_data_whole(ds):
            return None
        return StoredInstance(
            data=data,
            sop_class=str(ds.SOPClassUID),
            sop_instance=str(ds.SOPInstanceUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            study_instance=str(ds.StudyInstanceUID),
        )
    except (
        InvalidDicomError,
        AttributeError,
        KeyError,
        ValueError,
        EOFError,
        OSError,
        struct.error,
        UserWarning,  # pydicom's warnings about malformed input, where they are errors
    ):
        return None


def _pixel_data_whole(ds: pydicom.Dataset) -> bool:
    """pydicom reads a value cut short without complaint: check its length ourselves."""
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        try:
            return bool(list(generate_fragments(ds.PixelData)))
        except ValueError:
            return False
    return len(ds.PixelData) >= get_expected_length(ds)
