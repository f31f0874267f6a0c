"""WADO-RS (PS3.18 10.4) and QIDO-RS below study level, for one study at its holder.

`/facilities/{id}/dicomweb/...` asks that facility; `/dicomweb/...` asks whichever facility
holds the study (found by a federated search, then remembered). Instances are relayed as a
stream from the upstream to the client: the gateway never holds a study, nor a whole instance
it did not have to reassemble (DIMSE sends each instance whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from aiohttp import web

from adapters.multipart import Part, multipart_body, new_boundary, related_content_type
from adapters.types import RetrievedInstance, Target
from gateway.errors import Forbidden, NotFound
from gateway.guard import access_of
from gateway.web import CORE

from . import render
from .errors import dicom_error, failure_response
from .qido import DICOM_JSON, annotate, parse_include, parse_match

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


async def authorized_holder(request: web.Request, study: str) -> str:
    """The facility holding the study, once the asker may read it (else 403, audited)."""
    core = request.app[CORE]
    access = access_of(request)
    async with failure_response():
        fid = await core.imaging.holder(request.match_info.get("facility"), study)
        try:
            person = await core.imaging.study_patient(fid, study)
        except NotFound:
            if request.method == "GET" and request.path.endswith(("/series", "/instances")):
                raise NothingThere(fid) from None  # a search that finds nothing: empty
            raise
    access.holders.add(fid)
    if access.share is not None:  # a resident's link: only the studies it covers
        visit = access.share.scope == "visit"  # a visit's link needs the study's date
        day = await _study_day(request, fid, study) if visit else None
        core.policy.share_study(access, fid, study, day)
    if person is not None:
        await core.policy.patient(access, person, "ImagingStudy", "r", only_at=fid)
    else:
        core.policy.require_scope(access, "ImagingStudy", "r")
        if not await core.policy.may_read(access, None, fid):
            raise Forbidden("the study's patient is not known here: only its facility reads it")
    return fid


async def _study_day(request: web.Request, fid: str, study: str) -> date | None:
    """The date of a study (what a share for one visit is checked against)."""
    found = await request.app[CORE].imaging.search_studies(
        {"StudyInstanceUID": study}, facility_ids=[fid], limit=1
    )
    for _, ds in found.items:
        value = str(_v(ds, "00080020") or "")
        if len(value) == 8 and value.isdigit():
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    return None


class NothingThere(Exception):
    """The searched study is not at the facility: the search answers empty."""

    def __init__(self, fid: str) -> None:
        self.fid = fid


async def search_series(request: web.Request) -> web.Response:
    core = request.app[CORE]
    target = _target(request)
    match, limit, offset = parse_match(request.query)
    try:
        holder = await authorized_holder(request, target.study)
    except NothingThere as empty:
        return _answer(request, empty.fid, [])
    async with failure_response():
        fid, found = await core.imaging.search_series(
            holder,
            target.study,
            match,
            offset + limit,
            parse_include(request.query),
        )
    return _answer(request, fid, found[offset : offset + limit])


async def search_instances(request: web.Request) -> web.Response:
    core = request.app[CORE]
    target = _target(request)
    match, limit, offset = parse_match(request.query)
    try:
        holder = await authorized_holder(request, target.study)
    except NothingThere as empty:
        return _answer(request, empty.fid, [])
    async with failure_response():
        fid, found = await core.imaging.search_instances(
            holder,
            target.study,
            target.series,
            match,
            offset + limit,
            parse_include(request.query),
        )
    return _answer(request, fid, found[offset : offset + limit])


async def metadata(request: web.Request) -> web.Response:
    core = request.app[CORE]
    target = _target(request)
    holder = await authorized_holder(request, target.study)
    async with failure_response():
        fid, found = await core.imaging.metadata(holder, target)
    base = f"{request.scheme}://{request.host}/facilities/{fid}/dicomweb"
    body = json.dumps([_own_bulkdata(ds, base) for ds in found], ensure_ascii=False).encode()
    return web.Response(body=body, content_type=DICOM_JSON, headers={"Huren-Facility": fid})


async def bulkdata(request: web.Request) -> web.StreamResponse:
    """A top-level bulk value of an instance (PS3.18 10.4.1.1.5), as application/octet-stream."""
    tag = request.match_info["tag"].upper()
    if not re.fullmatch(r"[0-9A-F]{8}", tag):
        raise dicom_error(400, "bulkdata is addressed by an 8-digit hex tag")
    fid, data = await _one_instance(request)
    try:
        value = await asyncio.to_thread(render.bulk_value, data, int(tag, 16))
    except render.RenderError as exc:
        raise dicom_error(404, str(exc)) from None
    boundary = new_boundary()
    resp = web.StreamResponse(
        headers={
            "Content-Type": related_content_type(boundary, "application/octet-stream"),
            "Huren-Facility": fid,
        }
    )
    await resp.prepare(request)
    part = Part("application/octet-stream", _once(value), len(value))
    async for chunk in multipart_body(_iterate([part]), boundary):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def _own_bulkdata(ds: dict[str, Any], base: str) -> dict[str, Any]:
    """Point every top-level BulkDataURI at this gateway (an upstream's own URLs must not leak
    to clients); nested ones, which have no address here, are dropped."""
    url = (
        f"{base}/studies/{_v(ds, '0020000D')}/series/{_v(ds, '0020000E')}"
        f"/instances/{_v(ds, '00080018')}/bulkdata"
    )
    out = {}
    for tag, element in ds.items():
        if "BulkDataURI" in element:
            element = {**element, "BulkDataURI": f"{url}/{tag}"}
        elif element.get("vr") == "SQ":
            element = {
                **element,
                "Value": [_drop_bulkdata(item) for item in element.get("Value", [])],
            }
        out[tag] = element
    return out


def _drop_bulkdata(ds: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for tag, element in ds.items():
        if "BulkDataURI" in element:
            element = {"vr": element.get("vr", "UN")}
        elif element.get("vr") == "SQ":
            element = {
                **element,
                "Value": [_drop_bulkdata(item) for item in element.get("Value", [])],
            }
        out[tag] = element
    return out


async def retrieve(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    accepted = _accepted_syntaxes(request)
    target = _target(request)
    holder = await authorized_holder(request, target.study)
    async with failure_response():
        fid, instances = await core.imaging.retrieve(holder, target)
    boundary = new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": related_content_type(boundary), "Huren-Facility": fid}
    )
    try:
        await resp.prepare(request)
        async for data in multipart_body(_parts(instances, accepted), boundary):
            await resp.write(data)
        await resp.write_eof()
    finally:
        # A client that leaves mid-study must not leave the upstream stream or association open.
        with contextlib.suppress(Exception):
            await instances.aclose()  # type: ignore[attr-defined]
    return resp


async def rendered(request: web.Request) -> web.Response:
    """An instance (or one of its frames) as JPEG or PNG, with window and viewport."""
    media = _image_media(request)
    frame_list = _frame_numbers(request)
    try:
        params = render.parse_params(dict(request.query), media, frame_list[0] if frame_list else 1)
    except render.RenderError as exc:
        raise dicom_error(400, str(exc)) from None
    return await _render(request, params)


async def thumbnail(request: web.Request) -> web.Response:
    """A small rendering: of the instance, or of the middle instance of a series or study."""
    media = _image_media(request)
    params = render.RenderParams(media=media, viewport=(render.THUMBNAIL, render.THUMBNAIL))
    return await _render(request, params)


async def frames(request: web.Request) -> web.StreamResponse:
    """Frames of an instance as stored (PS3.18 10.4.1.1.4): octet-stream or the codec's type."""
    numbers = _frame_numbers(request)
    fid, data = await _one_instance(request)
    try:
        media, payloads = await asyncio.to_thread(render.frames, data, numbers)
    except render.RenderError as exc:
        raise dicom_error(400, str(exc)) from None
    boundary = new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": related_content_type(boundary, media), "Huren-Facility": fid}
    )
    await resp.prepare(request)
    parts = [Part(media, _once(p), len(p)) for p in payloads]
    async for chunk in multipart_body(_iterate(parts), boundary):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def _render(request: web.Request, params: render.RenderParams) -> web.Response:
    fid, data = await _one_instance(request)
    try:
        image = await asyncio.to_thread(render.render, data, params)
    except render.RenderError as exc:
        raise dicom_error(400, str(exc)) from None
    # Kept by the browser (a viewer steps back and forth), never by shared caches.
    headers = {"Huren-Facility": fid, "Cache-Control": "private, max-age=600"}
    return web.Response(body=image, content_type=params.media, headers=headers)


async def _one_instance(request: web.Request) -> tuple[str, bytes]:
    """The named instance, or the middle one of the named series or study, read whole."""
    core = request.app[CORE]
    target = _target(request)
    facility = await authorized_holder(request, target.study)
    if target.instance is None:
        async with failure_response():
            fid, found = await core.imaging.search_instances(
                facility, target.study, target.series, {}, None
            )
        if not found:
            raise dicom_error(404, "no instances to render")
        found.sort(key=lambda ds: (str(_v(ds, "0020000E")), int(_v(ds, "00200013") or 0)))
        middle = found[len(found) // 2]
        target = Target(target.study, str(_v(middle, "0020000E")), str(_v(middle, "00080018")))
        facility = fid
    async with failure_response():
        fid, instances = await core.imaging.retrieve(facility, target)
        try:
            first = await anext(instances)
            data = b"".join([chunk async for chunk in first.chunks])
        finally:
            await instances.aclose()  # type: ignore[attr-defined]
    return fid, data


async def _parts(
    instances: AsyncIterator[RetrievedInstance], accepted: set[str]
) -> AsyncIterator[Part]:
    async for inst in instances:
        if accepted and "*" not in accepted and inst.transfer_syntax not in accepted:
            # The client takes nothing this instance is stored in: Explicit VR Little Endian,
            # which every client takes (PS3.18 8.7.3.5.2). Read whole and re-encoded off-loop.
            data = b"".join([chunk async for chunk in inst.chunks])
            try:
                data = await asyncio.to_thread(render.transcode_to_explicit, data)
            except Exception as exc:  # a codec missing: keep the stream going, as stored
                log.warning("transcoding failed: %s", type(exc).__name__)
                ctype = f"application/dicom; transfer-syntax={inst.transfer_syntax}"
                yield Part(ctype, _once(data), len(data))
                continue
            ctype = f"application/dicom; transfer-syntax={EXPLICIT_LE}"
            yield Part(ctype, _once(data), len(data))
            continue
        ctype = "application/dicom"
        if inst.transfer_syntax:
            ctype += f"; transfer-syntax={inst.transfer_syntax}"
        yield Part(ctype, inst.chunks)


def _accepted_syntaxes(request: web.Request) -> set[str]:
    """Transfer syntaxes the Accept header names for application/dicom (empty: as stored)."""
    accept = request.headers.get("Accept", "*/*")
    acceptable = ("*/*", "multipart/related", "multipart/*", "application/dicom")
    if not any(a in accept for a in acceptable):
        raise dicom_error(406, "retrievals are multipart/related; type=application/dicom")
    return set(re.findall(r"transfer-syntax=\"?([0-9.]+|\*)", accept))


def _image_media(request: web.Request) -> str:
    accept = request.headers.get("Accept", "image/jpeg")
    for media in ("image/jpeg", "image/png"):
        if media in accept:
            return media
    if "*/*" in accept or "image/*" in accept:
        return "image/jpeg"
    raise dicom_error(406, "rendered images are image/jpeg or image/png")


def _frame_numbers(request: web.Request) -> list[int]:
    raw = request.match_info.get("frames")
    if raw is None:
        return []
    try:
        numbers = [int(n) for n in raw.split(",")]
    except ValueError:
        raise dicom_error(400, "frames are a comma-separated list of numbers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise dicom_error(400, "frame numbers start at 1")
    return numbers


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _iterate(parts: list[Part]) -> AsyncIterator[Part]:
    for part in parts:
        yield part


def _v(ds: dict[str, Any], tag: str) -> Any:
    return (ds.get(tag) or {}).get("Value", [None])[0]


EXPLICIT_LE = "1.2.840.10008.1.2.1"
log = logging.getLogger(__name__)


def _answer(request: web.Request, fid: str, found: list[dict[str, Any]]) -> web.Response:
    base = f"{request.scheme}://{request.host}"
    registry = request.app[CORE].registry
    body = [annotate(ds, fid, registry, base) for ds in found]
    return web.Response(body=json.dumps(body, ensure_ascii=False).encode(), content_type=DICOM_JSON)
