"""Mount the FHIR face's routes on the gateway app."""

from __future__ import annotations

from aiohttp import web

from . import search


def setup(app: web.Application) -> None:
    app.router.add_get("/fhir/metadata", search.metadata)
    app.router.add_get("/fhir/{type}", search.search)
