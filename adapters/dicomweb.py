"""A facility PACS reached over DICOMweb (PS3.18): QIDO-RS for search."""

from __future__ import annotations

import aiohttp

from .errors import UpstreamProtocolError
from .http import get_json
from .types import DicomJson, DicomWebEndpoint, StudyQuery

DICOM_JSON = "application/dicom+json"


class DicomWebImaging:
    def __init__(self, endpoint: DicomWebEndpoint, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self.session = session

    async def ping(self) -> None:
        await self.search_studies(StudyQuery(match={}, limit=1))

    async def search_studies(self, query: StudyQuery) -> list[DicomJson]:
        params = {k: v for k, v in query.match.items() if v}
        if query.limit is not None:
            params["limit"] = str(query.limit)
        data = await get_json(
            self.session,
            f"{self.endpoint.url}/studies",
            params=params,
            accept=DICOM_JSON,
            ok_empty=True,
        )
        return _datasets(data)


def _datasets(data: object) -> list[DicomJson]:
    """Check the QIDO answer has the PS3.18 F.2 shape: an array of objects keyed by tags."""
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UpstreamProtocolError("QIDO-RS answer is not an array of DICOM JSON datasets")
    for d in data:
        for tag, element in d.items():
            if len(tag) != 8 or not isinstance(element, dict) or "vr" not in element:
                raise UpstreamProtocolError(f"QIDO-RS answer has a malformed element {tag[:16]!r}")
    return data
