"""A simulated facility PACS speaking DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydicom
from aiohttp import BodyPartReader, web

from adapters.dicom_index import DicomIndex, Instance
from adapters.dicom_match import tag_hex
from adapters.files import file_chunks, header_json
from adapters.multipart import Part, multipart_body, new_boundary, related_content_type

DICOM_JSON = "application/dicom+json"
_CONTROL_PARAMS = {"limit", "offset", "includefield", "fuzzymatching"}


def add_routes(app: web.Application, index: DicomIndex, stow_dir: Path) -> None:
    """Mount the DICOMweb routes of one facility's PACS on ``app`` under /dicomweb."""
    r = app.router
    r.add_get(
        "/dicomweb/studies",
        _qido(lambda req, m, lim, off: index.search_studies(m, limit=lim, offset=off)),
    )
    r.add_get(
        "/dicomweb/studies/{study}/series",
        _qido(
            lambda req, m, lim, off: index.search_series(
                req.match_info["study"], m, limit=lim, offset=off
            )
        ),
    )
    r.add_get(
        "/dicomweb/series",
        _qido(lambda req, m, lim, off: index.search_series(None, m, limit=lim, offset=off)),
    )
    r.add_get(
        "/dicomweb/studies/{study}/instances",
        _qido(
            lambda req, m, lim, off: index.search_instances(
                req.match_info["study"], None, m, limit=lim, offset=off
            )
        ),
    )
    r.add_get(
        "/dicomweb/studies/{study}/series/{series}/instances",
        _qido(
            lambda req, m, lim, off: index.search_instances(
                req.match_info["study"], req.match_info["series"], m, limit=lim, offset=off
            )
        ),
    )
    for path in (
        "/dicomweb/studies/{study}",
        "/dicomweb/studies/{study}/series/{series}",
        "/dicomweb/studies/{study}/series/{series}/instances/{sop}",
    ):
        r.add_get(path, _retrieve(index))
        r.add_get(path + "/metadata", _metadata(index))
    r.add_post("/dicomweb/studies", _stow(index, stow_dir))


QueryFn = Callable[[web.Request, dict[str, str], int | None, int], list[dict[str, Any]]]


def _qido(query: QueryFn) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        match: dict[str, str] = {}
        for key, value in request.query.items():
            if key in _CONTROL_PARAMS:
                continue
            try:
                tag_hex(key)
            except KeyError:
                return _error(400, f"unknown query attribute {key!r}")
            match[key] = value
        try:
            limit = int(request.query["limit"]) if "limit" in request.query else None
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _error(400, "limit and offset must be integers")
        found = query(request, match, limit, offset)
        if not found:
            return web.Response(status=204)
        return web.Response(
            body=json.dumps(found, ensure_ascii=False).encode(), content_type=DICOM_JSON
        )

    return handler


def _select(index: DicomIndex, request: web.Request) -> list[Instance]:
    mi = request.match_info
    return index.instances(mi["study"], mi.get("series"), mi.get("sop"))


def _retrieve(index: DicomIndex) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        instances = _select(index, request)
        if not instances:
            return _error(404, "no such study, series or instance")
        boundary = new_boundary()
        resp = web.StreamResponse(headers={"Content-Type": related_content_type(boundary)})
        await resp.prepare(request)

        async def parts() -> AsyncIterator[Part]:
            for inst in instances:
                size = (await asyncio.to_thread(inst.path.stat)).st_size
                ctype = f"application/dicom; transfer-syntax={inst.transfer_syntax}"
                yield Part(ctype, file_chunks(inst.path), size)

        # Streamed: a study can be far larger than we want in memory.
        async for data in multipart_body(parts(), boundary):
            await resp.write(data)
        await resp.write_eof()
        return resp

    return handler


def _metadata(index: DicomIndex) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        instances = _select(index, request)
        if not instances:
            return _error(404, "no such study, series or instance")

        body = [await asyncio.to_thread(header_json, inst.path) for inst in instances]
        return web.Response(
            body=json.dumps(body, ensure_ascii=False).encode(), content_type=DICOM_JSON
        )

    return handler


def _stow(index: DicomIndex, stow_dir: Path) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/related"):
            return _error(415, "STOW-RS expects multipart/related; type=application/dicom")
        reader = await request.multipart()
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
                sop_class, sop_uid = ds.SOPClassUID, ds.SOPInstanceUID
                _ = ds.StudyInstanceUID, ds.SeriesInstanceUID  # required: AttributeError if absent
            except Exception:
                # PS3.18 Table I.2-1: 0xC000 "Cannot understand"
                failed.append({tag_hex("FailureReason"): {"vr": "US", "Value": [0xC000]}})
                continue
            path = stow_dir / f"{sop_uid}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(path.write_bytes, data)
            index.add(path, ds)
            stored.append(
                {
                    tag_hex("ReferencedSOPClassUID"): {"vr": "UI", "Value": [sop_class]},
                    tag_hex("ReferencedSOPInstanceUID"): {"vr": "UI", "Value": [sop_uid]},
                }
            )
        answer: dict[str, Any] = {}
        if stored:
            answer[tag_hex("ReferencedSOPSequence")] = {"vr": "SQ", "Value": stored}
        if failed:
            answer[tag_hex("FailedSOPSequence")] = {"vr": "SQ", "Value": failed}
        status = 200 if not failed else (202 if stored else 409)
        return web.Response(
            status=status, body=json.dumps(answer).encode(), content_type=DICOM_JSON
        )

    return handler


def _error(status: int, message: str) -> web.Response:
    body = [{tag_hex("ErrorComment"): {"vr": "LO", "Value": [message[:64]]}}]
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=DICOM_JSON)
