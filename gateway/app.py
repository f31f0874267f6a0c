"""Assembly: the one place the faces are wired to the core (DESIGN.md, rules of the house)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import dicom.errors
import dicom.routes
import fhirapi.outcome
import fhirapi.routes
from dicom.scp import GatewayScp

from . import admin, console, facility_api, portal, share_api
from .config import Settings
from .core import open_core
from .guard import RENDERERS, Renderer, audit_before_answering, guard
from .lab_feed import LabFeed
from .metrics import REGISTRY
from .openapi import openapi
from .web import CORE, observe


def build_app(settings: Settings, *, probe: bool = True) -> web.Application:
    app = web.Application(middlewares=[observe, guard], client_max_size=64 * 1024**2)
    app.on_response_prepare.append(audit_before_answering)
    renderers: dict[str, Renderer] = {
        "/fhir": fhirapi.outcome.refusal,
        "/dicomweb": dicom.errors.refusal,
        "/facilities/": dicom.errors.refusal,
        "/portal/s/": portal.refusal,
    }
    app[RENDERERS] = renderers

    async def core_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_core(settings, probe=probe) as core:
            app[CORE] = core
            scp = GatewayScp(core, move_destinations=settings.move_destination_map())
            await scp.start(settings.host, settings.dimse_port)
            feed = LabFeed(core.registry, core.store, core.lab_codes)
            await feed.start(settings.host, settings.mllp_port)
            try:
                yield
            finally:
                await feed.stop()
                await scp.stop()

    app.cleanup_ctx.append(core_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    dicom.routes.setup(app)
    fhirapi.routes.setup(app)
    admin.setup(app)
    portal.setup(app)
    share_api.setup(app)
    facility_api.setup(app)
    console.setup(app)
    app.router.add_get("/openapi.json", openapi)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Says nothing of the facilities (that is /readyz)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Each facility's reachability from the latest background probe (contract table)."""
    return web.json_response(request.app[CORE].prober.report(), dumps=_dumps)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)
