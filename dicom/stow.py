"""STOW-RS (PS3.18 10.5) at /facilities/{id}/dicomweb/studies: instances into a facility's
archive, with a per-instance answer (PS3.18 Table 10.5.3-1).

The body is read part by part; parts are stored in batches of bounded size as they arrive, so
an upload of any length needs only one batch in memory, and what was stored before a failure
(a truncated body, a dead upstream) stays stored and is reported as such.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import BodyPartReader, web

from adapters.part10 import identify
from adapters.types import StoredInstance
from gateway.guard import access_of
from gateway.web import CORE

from .errors import dicom_error, failure_response
from .qido import DICOM_JSON

#: Largest single instance accepted (a large multi-frame study object fits; a disk does not).
MAX_INSTANCE_BYTES = 1024 * 1024**2
#: Bytes of instances stored together in one upstream request.
BATCH_BYTES = 32 * 1024**2
# PS3.18 Table 10.5.3-2 / PS3.4 Annex B failure reasons.
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
REFUSED_OUT_OF_RESOURCES = 0xA700
STUDY_MISMATCH = 0xC122  # instance not in the study the request named


async def store(request: web.Request) -> web.Response:
    core = request.app[CORE]
    fid = request.match_info["facility"]
    if core.registry.get(fid) is None:
        raise dicom_error(404, f"no facility {fid}")
    core.policy.store(access_of(request), fid)
    if (
        request.content_type != "multipart/related"
        or "application/dicom" not in request.headers.get("Content-Type", "")
    ):
        raise dicom_error(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    study = request.match_info.get("study")
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    batch: list[StoredInstance] = []
    batch_bytes = 0
    base = f"{request.scheme}://{request.host}/facilities/{fid}/dicomweb"

    async def flush() -> None:
        nonlocal batch, batch_bytes
        if not batch:
            return
        try:
            async with failure_response():
                statuses = await core.imaging.store_instances(fid, batch)
        except web.HTTPException:
            statuses = [PROCESSING_FAILURE] * len(batch)
        for inst, status in zip(batch, statuses, strict=True):
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                referenced.append(_referenced(inst, base))
            else:
                failed.append(_failed(inst.sop_class, inst.sop_instance, status))
        batch, batch_bytes = [], 0

    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                failed.append(_failed(None, None, CANNOT_UNDERSTAND))
                continue
            data = await _read_part(part)
            if data is None:
                failed.append(_failed(None, None, REFUSED_OUT_OF_RESOURCES))
                continue
            inst = await asyncio.to_thread(identify, data)
            if inst is None:
                failed.append(_failed(None, None, CANNOT_UNDERSTAND))
                continue
            if study is not None and inst.study_instance != study:
                failed.append(_failed(inst.sop_class, inst.sop_instance, STUDY_MISMATCH))
                continue
            batch.append(inst)
            batch_bytes += len(data)
            if batch_bytes >= BATCH_BYTES:
                await flush()
    except (ValueError, AssertionError, ConnectionError, asyncio.IncompleteReadError):
        # A truncated or malformed multipart body: keep what was read whole, report the rest.
        failed.append(_failed(None, None, CANNOT_UNDERSTAND))
    await flush()
    if not referenced and not failed:
        raise dicom_error(400, "the body held no instances")
    answer: dict[str, Any] = {}
    if referenced:
        answer["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if referenced else 409
    return web.Response(
        status=status,
        body=json.dumps(answer).encode(),
        content_type=DICOM_JSON,
        headers={"Huren-Facility": fid},
    )


async def _read_part(part: BodyPartReader) -> bytes | None:
    """A part's bytes, or None (the rest drained unread) past MAX_INSTANCE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1024 * 1024):
        size += len(chunk)
        if size > MAX_INSTANCE_BYTES:
            chunks.clear()
            while await part.read_chunk(1024 * 1024):
                pass
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _referenced(inst: StoredInstance, base: str) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [inst.sop_class]},
        "00081155": {"vr": "UI", "Value": [inst.sop_instance]},
        "00081190": {"vr": "UR", "Value": [f"{base}/studies/{inst.study_instance}"]},
    }


def _failed(sop_class: str | None, sop_instance: str | None, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item
