"""A facility PACS reached over DICOMweb (PS3.18): QIDO-RS to search, WADO-RS to retrieve.

Retrieval streams: each multipart part is relayed chunk by chunk as it arrives, so a study of
any size passes through in constant memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from .errors import UpstreamError, UpstreamProtocolError
from .http import get_json, upstream_errors
from .multipart import Part, multipart_body, new_boundary, related_content_type
from .types import (
    DicomJson,
    DicomWebEndpoint,
    RetrievedInstance,
    StoredInstance,
    StudyQuery,
    Target,
)

DICOM_JSON = "application/dicom+json"
#: Ask for instances as stored: the gateway relays, it does not transcode on the way.
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK = 256 * 1024


class DicomWebImaging:
    def __init__(self, endpoint: DicomWebEndpoint, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self.session = session

    async def ping(self) -> None:
        await self.search_studies(StudyQuery(match={}, limit=1))

    async def search_studies(self, query: StudyQuery) -> list[DicomJson]:
        return await self._qido("studies", query)

    async def search_series(self, study: str, query: StudyQuery) -> list[DicomJson]:
        return await self._qido(f"studies/{study}/series", query)

    async def search_instances(
        self, study: str, series: str | None, query: StudyQuery
    ) -> list[DicomJson]:
        path = (
            f"studies/{study}/series/{series}/instances" if series else f"studies/{study}/instances"
        )
        return await self._qido(path, query)

    async def metadata(self, target: Target) -> list[DicomJson]:
        data = await get_json(self.session, f"{self._url(target)}/metadata", accept=DICOM_JSON)
        return _datasets(data)

    async def retrieve(self, target: Target) -> AsyncIterator[RetrievedInstance]:
        async with upstream_errors():
            async with self.session.get(
                self._url(target), headers={"Accept": MULTIPART_DICOM}
            ) as resp:
                if resp.status >= 400:
                    raise UpstreamError(f"HTTP {resp.status} from WADO-RS", status=resp.status)
                if not resp.content_type.startswith("multipart/"):
                    raise UpstreamProtocolError(
                        f"WADO-RS answered {resp.content_type}, not multipart"
                    )
                reader = aiohttp.MultipartReader(resp.headers, resp.content)
                while (part := await reader.next()) is not None:
                    if not isinstance(part, aiohttp.BodyPartReader):
                        raise UpstreamProtocolError("nested multipart in a WADO-RS answer")
                    yield RetrievedInstance(_transfer_syntax(part), _chunks(part))

    async def store(self, instances: Sequence[StoredInstance]) -> list[int]:
        """STOW-RS the batch; map the answer's Referenced/Failed SOP Sequences to statuses."""
        boundary = new_boundary()

        async def parts() -> AsyncIterator[Part]:
            for inst in instances:
                yield Part("application/dicom", _once(inst.data), len(inst.data))

        async def body() -> AsyncIterator[bytes]:
            async for data in multipart_body(parts(), boundary):
                yield data

        headers = {"Content-Type": related_content_type(boundary), "Accept": DICOM_JSON}
        async with upstream_errors():
            async with self.session.post(
                f"{self.endpoint.url}/studies", data=body(), headers=headers
            ) as resp:
                answer = await resp.read()
                if resp.status not in (200, 202, 409):
                    raise UpstreamError(f"HTTP {resp.status} from STOW-RS", status=resp.status)
        try:
            result = json.loads(answer) if answer else {}
        except ValueError:
            raise UpstreamProtocolError("STOW-RS answer is not JSON") from None
        stored = {
            str(item.get("00081155", {}).get("Value", [""])[0])
            for item in result.get("00081199", {}).get("Value", [])
        }
        return [0x0000 if i.sop_instance in stored else 0xA700 for i in instances]

    async def _qido(self, path: str, query: StudyQuery) -> list[DicomJson]:
        params = tuple(sorted((k, v) for k, v in query.match.items() if v))
        if query.limit is not None:
            params += (("limit", str(query.limit)),)
        if query.include:
            params += (("includefield", ",".join(query.include)),)
        url = URL(f"{self.endpoint.url}/{path}?{_query_string(params)}", encoded=True)
        data = await get_json(self.session, url, accept=DICOM_JSON, ok_empty=True)
        return _datasets(data)

    def _url(self, target: Target) -> str:
        url = f"{self.endpoint.url}/studies/{target.study}"
        if target.series:
            url += f"/series/{target.series}"
            if target.instance:
                url += f"/instances/{target.instance}"
        return url


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _chunks(part: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
    async with upstream_errors():
        while chunk := await part.read_chunk(CHUNK):
            yield chunk


def _transfer_syntax(part: aiohttp.BodyPartReader) -> str | None:
    ctype = part.headers.get("Content-Type", "")
    for param in ctype.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "transfer-syntax":
            return value.strip('"') or None
    return None


@lru_cache(maxsize=1024)
def _query_string(params: tuple[tuple[str, str], ...]) -> str:
    """Encoded once per query for every facility asked (yarl's per-request encoding showed
    up as a tenth of the gateway's CPU in the fan-out benchmark)."""
    return urlencode(params, quote_via=quote)


def _datasets(data: object) -> list[DicomJson]:
    """Check a DICOM JSON answer has the PS3.18 F.2 shape: an array of objects keyed by tags."""
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UpstreamProtocolError("answer is not an array of DICOM JSON datasets")
    for d in data:
        for tag, element in d.items():
            if len(tag) != 8 or not isinstance(element, dict) or "vr" not in element:
                raise UpstreamProtocolError(f"answer has a malformed element {tag[:16]!r}")
    return data
