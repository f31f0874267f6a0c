"""Mount the DICOM face's HTTP routes on the gateway app."""

from __future__ import annotations

from aiohttp import web

from . import qido


def setup(app: web.Application) -> None:
    app.router.add_get("/dicomweb/studies", qido.search_studies)
    app.router.add_get("/facilities/{facility}/dicomweb/studies", qido.search_studies)
