"""WADO-RS (PS3.18 10.4) and QIDO-RS below study level, for one study at its holder.

`/facilities/{id}/dicomweb/...` asks that facility; `/dicomweb/...` asks whichever facility
holds the study (found by a federated search, then remembered). Instances are relayed as a
stream from the upstream to the client: the gateway never holds a study, nor a whole instance
it did not have to reassemble (DIMSE sends each instance whole).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from adapters.multipart import Part, multipart_body, new_boundary, related_content_type
from adapters.types import RetrievedInstance, Target
from gateway.web import CORE

from .errors import dicom_error, failure_response
from .qido import DICOM_JSON, annotate, parse_match

# PS3.5 9.1: a UID is dot-separated numeric components, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _uid(request: web.Request, name: str) -> str | None:
    value = request.match_info.get(name)
    if value is not None and (len(value) > 64 or not _UID.match(value)):
        raise dicom_error(400, f"{name} is not a valid UID")
    return value


def _target(request: web.Request) -> Target:
    study = _uid(request, "study")
    assert study is not None
    return Target(study, _uid(request, "series"), _uid(request, "instance"))


async def search_series(request: web.Request) -> web.Response:
    core = request.app[CORE]
    target = _target(request)
    match, limit, offset = parse_match(request.query)
    async with failure_response():
        fid, found = await core.imaging.search_series(
            request.match_info.get("facility"), target.study, match, offset + limit
        )
    return _answer(request, fid, found[offset : offset + limit])


async def search_instances(request: web.Request) -> web.Response:
    core = request.app[CORE]
    target = _target(request)
    match, limit, offset = parse_match(request.query)
    async with failure_response():
        fid, found = await core.imaging.search_instances(
            request.match_info.get("facility"), target.study, target.series, match, offset + limit
        )
    return _answer(request, fid, found[offset : offset + limit])


async def metadata(request: web.Request) -> web.Response:
    core = request.app[CORE]
    async with failure_response():
        fid, found = await core.imaging.metadata(
            request.match_info.get("facility"), _target(request)
        )
    body = json.dumps(found, ensure_ascii=False).encode()
    return web.Response(body=body, content_type=DICOM_JSON, headers={"Huren-Facility": fid})


async def retrieve(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    _check_accept(request)
    async with failure_response():
        fid, instances = await core.imaging.retrieve(
            request.match_info.get("facility"), _target(request)
        )
    boundary = new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": related_content_type(boundary), "Huren-Facility": fid}
    )
    try:
        await resp.prepare(request)
        async for data in multipart_body(_parts(instances), boundary):
            await resp.write(data)
        await resp.write_eof()
    finally:
        # A client that leaves mid-study must not leave the upstream stream or association open.
        with contextlib.suppress(Exception):
            await instances.aclose()  # type: ignore[attr-defined]
    return resp


async def _parts(instances: AsyncIterator[RetrievedInstance]) -> AsyncIterator[Part]:
    async for inst in instances:
        ctype = "application/dicom"
        if inst.transfer_syntax:
            ctype += f"; transfer-syntax={inst.transfer_syntax}"
        yield Part(ctype, inst.chunks)


def _check_accept(request: web.Request) -> None:
    """Only multipart/related; type=application/dicom as stored (PS3.18 8.7.3.5.2) for now."""
    accept = request.headers.get("Accept", "*/*")
    acceptable = ("*/*", "multipart/related", "multipart/*", "application/dicom")
    if not any(a in accept for a in acceptable):
        raise dicom_error(406, "retrievals are multipart/related; type=application/dicom")
    if "transfer-syntax=" in accept and not re.search(r"transfer-syntax=\"?\*", accept):
        # Transcoding arrives with the rendering work; say so rather than ignore the ask.
        ts = re.findall(r"transfer-syntax=\"?([0-9.]+)", accept)
        if ts and not any(t in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2") for t in ts):
            raise dicom_error(406, "only transfer syntaxes as stored are served")


def _answer(request: web.Request, fid: str, found: list[dict[str, Any]]) -> web.Response:
    base = f"{request.scheme}://{request.host}"
    registry = request.app[CORE].registry
    body = [annotate(ds, fid, registry, base) for ds in found]
    return web.Response(body=json.dumps(body, ensure_ascii=False).encode(), content_type=DICOM_JSON)
