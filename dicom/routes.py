"""Mount the DICOM face's HTTP routes on the gateway app."""

from __future__ import annotations

from aiohttp import web

from . import qido, stow, wado


def setup(app: web.Application) -> None:
    for prefix in ("/dicomweb", "/facilities/{facility}/dicomweb"):
        r = app.router
        r.add_get(f"{prefix}/studies", qido.search_studies)
        r.add_get(f"{prefix}/studies/{{study}}", wado.retrieve)
        r.add_get(f"{prefix}/studies/{{study}}/metadata", wado.metadata)
        r.add_get(f"{prefix}/studies/{{study}}/series", wado.search_series)
        r.add_get(f"{prefix}/studies/{{study}}/instances", wado.search_instances)
        r.add_get(f"{prefix}/studies/{{study}}/series/{{series}}", wado.retrieve)
        r.add_get(f"{prefix}/studies/{{study}}/series/{{series}}/metadata", wado.metadata)
        r.add_get(f"{prefix}/studies/{{study}}/series/{{series}}/instances", wado.search_instances)
        instance = f"{prefix}/studies/{{study}}/series/{{series}}/instances/{{instance}}"
        r.add_get(instance, wado.retrieve)
        r.add_get(f"{instance}/metadata", wado.metadata)
        r.add_get(f"{instance}/bulkdata/{{tag}}", wado.bulkdata)
        r.add_get(f"{instance}/rendered", wado.rendered)
        r.add_get(f"{instance}/thumbnail", wado.thumbnail)
        r.add_get(f"{instance}/frames/{{frames}}", wado.frames)
        r.add_get(f"{instance}/frames/{{frames}}/rendered", wado.rendered)
        r.add_get(f"{prefix}/studies/{{study}}/thumbnail", wado.thumbnail)
        r.add_get(f"{prefix}/studies/{{study}}/series/{{series}}/thumbnail", wado.thumbnail)
    # A resident's share link (gateway/portal.py) opens images rendered here; the link in
    # the path is the credential the guard checks, and the policy what the share covers.
    portal = "/portal/s/{token}/facilities/{facility}/studies/{study}/series/{series}"
    app.router.add_get(f"{portal}/instances/{{instance}}/rendered", wado.rendered)
    app.router.add_get(f"{portal}/thumbnail", wado.thumbnail)
    app.router.add_post("/facilities/{facility}/dicomweb/studies", stow.store)
    app.router.add_post("/facilities/{facility}/dicomweb/studies/{study}", stow.store)
