"""A facility lab system reached over FHIR R4 REST: search, following `next` links."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from .errors import UpstreamProtocolError
from .http import get_json
from .types import FhirEndpoint, FhirJson

FHIR_JSON = "application/fhir+json"
#: Upper bound on pages followed for one search: a runaway upstream must not loop us forever.
MAX_PAGES = 20


class FhirLab:
    def __init__(self, endpoint: FhirEndpoint, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self.session = session

    async def ping(self) -> None:
        data = await get_json(self.session, f"{self.endpoint.url}/metadata", accept=FHIR_JSON)
        if not isinstance(data, dict) or data.get("resourceType") != "CapabilityStatement":
            raise UpstreamProtocolError("metadata is not a CapabilityStatement")

    async def search(self, resource_type: str, params: Mapping[str, str]) -> list[FhirJson]:
        url: str | None = f"{self.endpoint.url}/{resource_type}"
        query: Mapping[str, str] | None = params
        out: list[FhirJson] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            bundle = await get_json(self.session, url, params=query, accept=FHIR_JSON)
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise UpstreamProtocolError("search answer is not a Bundle")
            for entry in bundle.get("entry", []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict) or "resourceType" not in resource:
                    raise UpstreamProtocolError("Bundle entry without a resource")
                if entry.get("search", {}).get("mode", "match") in ("match", "include"):
                    out.append(resource)
            url = next(
                (
                    link.get("url")
                    for link in bundle.get("link", [])
                    if link.get("relation") == "next"
                ),
                None,
            )
            query = None  # the next link carries its own query
        return out
