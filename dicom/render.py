"""Pixel work for WADO-RS: rendered images (PS3.18 8.3.5, 10.4.1.1.3), thumbnails, frames and
transcoding. Every function here blocks (decompression, numpy, image encoding): callers run
them in a thread, never on the event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, convert_color_space
from pydicom.uid import ExplicitVRLittleEndian

MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG"}
MAX_VIEWPORT = 4096
THUMBNAIL = 128


class RenderError(ValueError):
    """The request cannot be rendered (bad parameters, no pixel data, no such frame)."""


@dataclass(frozen=True, slots=True)
class RenderParams:
    media: str = "image/jpeg"
    window: tuple[float, float] | None = None  # (center, width)
    viewport: tuple[int, int] | None = None  # (width, height) the image must fit
    quality: int = 90
    frame: int = 1


def parse_params(query: dict[str, str], media: str, frame: int = 1) -> RenderParams:
    """PS3.18 8.3.5.1: window=center,width[,function], viewport=vw,vh, quality=1..100."""
    window = viewport = None
    try:
        if "window" in query:
            parts = query["window"].split(",")
            center, width = float(parts[0]), float(parts[1])
            if width <= 0:
                raise RenderError("window width must be positive")
            window = (center, width)
        if "viewport" in query:
            vw, vh = (int(p) for p in query["viewport"].split(",")[:2])
            if not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
                raise RenderError(f"viewport must be within 1..{MAX_VIEWPORT}")
            viewport = (vw, vh)
        quality = int(query.get("quality", "90"))
    except (ValueError, IndexError):
        raise RenderError(
            "window is center,width; viewport is width,height; quality 1..100"
        ) from None
    if not 1 <= quality <= 100:
        raise RenderError("quality must be 1..100")
    return RenderParams(media, window, viewport, quality, frame)


def render(data: bytes, params: RenderParams) -> bytes:
    """One frame of a Part 10 instance as a JPEG or PNG, windowed and fitted to the viewport."""
    ds = _read(data)
    frame = _frame_array(ds, params.frame)
    if ds.get("SamplesPerPixel", 1) == 1:
        image = Image.fromarray(_windowed(ds, frame, params.window), mode="L")
    else:
        photometric = str(ds.PhotometricInterpretation)
        rgb = frame if photometric == "RGB" else convert_color_space(frame, photometric, "RGB")
        image = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    if params.viewport is not None:
        image.thumbnail(params.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if params.media == "image/jpeg":
        image.save(out, format="JPEG", quality=params.quality)
    else:
        image.save(out, format="PNG")
    return out.getvalue()


def frames(data: bytes, numbers: list[int]) -> tuple[str, list[bytes]]:
    """Raw frames (1-based) of an instance: (media type, frame bytes) as stored."""
    ds = _read(data)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if any(not 1 <= n <= count for n in numbers):
        raise RenderError(f"frames are numbered 1..{count}")
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_encapsulated:
        all_frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=count))
        media = _ENCAPSULATED_MEDIA.get(str(ts), "application/octet-stream")
        return media, [all_frames[n - 1] for n in numbers]
    per_frame = len(ds.PixelData) // count
    return "application/octet-stream", [
        ds.PixelData[(n - 1) * per_frame : n * per_frame] for n in numbers
    ]


def bulk_value(data: bytes, tag: int) -> bytes:
    """The raw value of a top-level element (pixel data: every frame, as stored)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise RenderError(f"not a readable DICOM instance: {exc}") from None
    if tag not in ds:
        raise RenderError(f"the instance has no element {tag:08X}")
    value = ds[tag].value
    if not isinstance(value, bytes):
        raise RenderError(f"element {tag:08X} is not bulk data")
    return value


def transcode_to_explicit(data: bytes) -> bytes:
    """An instance re-encoded as Explicit VR Little Endian (decompressed if need be)."""
    ds = _read(data)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _read(data: bytes) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise RenderError(f"not a readable DICOM instance: {exc}") from None
    if "PixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    return ds


def _frame_array(ds: Dataset, number: int) -> np.ndarray:
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= number <= count:
        raise RenderError(f"frames are numbered 1..{count}")
    try:
        array = ds.pixel_array
    except Exception as exc:  # a codec missing or a corrupt stream
        raise RenderError(f"pixel data cannot be decoded: {exc}") from None
    return array[number - 1] if count > 1 else array


def _windowed(ds: Dataset, frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Modality LUT, then a linear VOI window (PS3.3 C.11.2.1.2) to 8 bits."""
    values = apply_modality_lut(frame, ds).astype(np.float64)
    if window is None:
        center, width = _dataset_window(ds) or (
            (float(values.max()) + float(values.min())) / 2,
            max(float(values.max()) - float(values.min()), 1.0),
        )
    else:
        center, width = window
    low = center - 0.5 - (width - 1) / 2
    scaled = (values - low) / max(width - 1, 1) * 255.0
    out = np.clip(scaled, 0, 255).astype(np.uint8)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return out


def _dataset_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    return _first_number(center), _first_number(width)


def _first_number(value: object) -> float:
    """WindowCenter/Width may be multi-valued (several windows): the first is the default."""
    if isinstance(value, pydicom.multival.MultiValue):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


_ENCAPSULATED_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
