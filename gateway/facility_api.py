"""Registering a hospital's systems and proving they work (admin API, JSON; /openapi.json):

- ``GET /admin/facilities``, ``GET /admin/facilities/{id}``: the registry with each
  facility's status and reachability (credentials never shown, only whether there are any);
- ``POST /admin/facilities``: a new facility in the registry file's form (``imaging``,
  ``lab``, level, district, alliances …) and optional ``credentials``; it starts pending;
- ``PUT /admin/facilities/{id}``: a change (new endpoints send it back to pending);
- ``POST /admin/facilities/{id}/disable``;
- ``POST /admin/facilities/{id}/check``: the conformance self-test against its real
  systems; passed, a pending facility goes live. ``Accept: text/html`` gives the report as
  a page; ``GET /admin/checks/{id}`` reads one again;
- ``POST /admin/facilities/{id}/go-live`` ``{"reason": …}``: an admin's override, recorded.

Integrators manage their own facility only (their token's ``facility``); admins any. Every
change is audited and takes effect at once in every gateway process.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Final

from aiohttp import web

from .credentials import Credentials
from .errors import Forbidden, RegistryError
from .facility_check import CheckReport, report_page
from .guard import access_of
from .registry import Facility, facility_json, parse_facility
from .web import CORE

MANAGERS: Final = ("integrator", "admin")
READERS: Final = ("integrator", "regulator", "admin")


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/facilities", listed)
    r.add_post("/admin/facilities", create)
    r.add_get("/admin/facilities/{id}", read)
    r.add_put("/admin/facilities/{id}", update)
    r.add_post("/admin/facilities/{id}/disable", disable)
    r.add_post("/admin/facilities/{id}/check", check)
    r.add_post("/admin/facilities/{id}/go-live", go_live)
    r.add_get("/admin/checks/{id}", read_check)


async def listed(request: web.Request) -> web.Response:
    core = request.app[CORE]
    core.policy.require_role(access_of(request), *READERS)
    status = request.query.get("status")
    rows = [await _described(request, f) for f in core.registry if status in (None, f.status)]
    return web.json_response({"total": len(rows), "facilities": rows})


async def read(request: web.Request) -> web.Response:
    core = request.app[CORE]
    core.policy.require_role(access_of(request), *READERS)
    return web.json_response(await _described(request, _facility(request)))


async def create(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    body = await _body(request)
    facility_id = body.get("id")
    if not isinstance(facility_id, str):
        raise _bad("id is required (like F112)")
    _may_manage(request, facility_id)
    if core.registry.get(facility_id) is not None:
        raise web.HTTPConflict(
            text=json.dumps({"error": "conflict", "detail": f"{facility_id} is registered"}),
            content_type="application/json",
        )
    facility, credentials = _parsed(request, body, status="pending")
    saved = await core.facilities.save(facility, credentials, by=_who(request))
    access.holders.add(saved.id)
    access.detail = f"facility {saved.id} registered (pending its check)"
    return web.json_response(await _described(request, saved), status=201)


async def update(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    current = _facility(request)
    _may_manage(request, current.id)
    body = await _body(request)
    if body.get("id", current.id) != current.id:
        raise _bad("the id in the body differs from the one in the path")
    facility, credentials = _parsed(request, {**body, "id": current.id}, status=current.status)
    if (facility.imaging, facility.lab) != (current.imaging, current.lab) and current.live:
        facility = replace(facility, status="pending")  # new systems: check them again
    saved = await core.facilities.save(
        facility, credentials, by=_who(request), keep_credentials=True
    )
    access.holders.add(saved.id)
    access.detail = f"facility {saved.id} updated ({saved.status})"
    return web.json_response(await _described(request, saved))


async def disable(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    current = _facility(request)
    _may_manage(request, current.id)
    saved = await core.facilities.set_status(current.id, "disabled", by=_who(request))
    access.detail = f"facility {saved.id} disabled"
    return web.json_response(await _described(request, saved))


async def go_live(request: web.Request) -> web.Response:
    """An admin puts a facility live without a passed check; the reason is kept."""
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_role(access, "admin")
    current = _facility(request)
    body = await _body(request)
    reason = body.get("reason")
    if set(body) != {"reason"} or not isinstance(reason, str) or not reason.strip():
        raise _bad('the body is {"reason": "why it goes live without a passed check"}')
    saved = await core.facilities.set_status(
        current.id, "live", by=_who(request), override_reason=reason.strip()[:1000]
    )
    access.detail = f"facility {saved.id} put live by override: {reason.strip()[:200]}"
    return web.json_response(await _described(request, saved))


async def check(request: web.Request) -> web.Response:
    """Run the conformance self-test now; a pending facility that passes goes live."""
    core = request.app[CORE]
    access = access_of(request)
    current = _facility(request)
    _may_manage(request, current.id)
    settings = core.settings
    row, report = await core.facilities.run_check(
        current,
        session=core.http,
        calling_ae=settings.ae_title,
        mllp=(settings.host, settings.mllp_port),
        by=_who(request),
    )
    failed = [item.name for item in report.items if not item.passed]
    access.detail = f"facility {current.id} checked: " + (
        "passed" if report.passed else f"failed {', '.join(failed)}"
    )
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(text=report_page(report), content_type="text/html")
    body = report.as_json() | {
        "check": row.id,
        "status": core.registry[current.id].status,
        "report_url": f"/admin/checks/{row.id}",
    }
    return web.json_response(body)


async def read_check(request: web.Request) -> web.Response:
    core = request.app[CORE]
    core.policy.require_role(access_of(request), *READERS)
    row = await core.facilities.check_row(request.match_info["id"])
    if row is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "not-found", "detail": "no such check"}),
            content_type="application/json",
        )
    if "text/html" in request.headers.get("Accept", "") or request.query.get("format") == "html":
        return web.Response(
            text=report_page(CheckReport.from_json(row.report)), content_type="text/html"
        )
    return web.json_response(row.report | {"check": row.id})


# -- reading and checking ---------------------------------------------------------------------


def _parsed(
    request: web.Request, body: dict[str, Any], *, status: str
) -> tuple[Facility, Credentials | None]:
    core = request.app[CORE]
    raw = {k: v for k, v in body.items() if k != "credentials"}
    try:
        facility = parse_facility(raw, core.registry, status=status)
        credentials = Credentials.parse(body["credentials"]) if "credentials" in body else None
    except RegistryError as exc:
        raise _bad(exc.detail) from None
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return facility, credentials


def _may_manage(request: web.Request, facility_id: str) -> None:
    """Integrators manage their own facility (the one their token names); admins any."""
    core = request.app[CORE]
    principal = core.policy.require_role(access_of(request), *MANAGERS)
    if principal.role == "integrator" and principal.facility_id != facility_id:
        raise Forbidden(f"an integrator of {principal.facility_id} manages only that facility")


def _facility(request: web.Request) -> Facility:
    found = request.app[CORE].registry.get(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "not-found", "detail": "no such facility"}),
            content_type="application/json",
        )
    return found


async def _described(request: web.Request, f: Facility) -> dict[str, Any]:
    core = request.app[CORE]
    reach = core.prober.state.get(f.id)
    return facility_json(f) | {
        "status": f.status,
        "has_credentials": await core.facilities.has_credentials(f.id),
        "reachable": reach.reachable if reach else None,
        "breaker": core.federation.breaker(f.id).state.value,
    }


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _bad("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad("the body is a JSON object")
    return body


def _who(request: web.Request) -> str:
    principal = access_of(request).principal
    assert principal is not None  # the guard authenticated the request
    return f"{principal.role}:{principal.subject}"


def _bad(detail: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "invalid", "detail": detail}, ensure_ascii=False),
        content_type="application/json",
    )
