"""Making and withdrawing residents' share links (bearer-token API, JSON):

- ``POST /portal/shares`` ``{"patient": NATIONAL-ID or "Patient/{id}", "study": UID,
  "facility": ID, "visit_date": "YYYY-MM-DD", "days": 30, "second_factor": "none" | "id4" |
  "pin"}`` → 201 with the link, its expiry, the PIN (once) and QR code URLs;
- ``GET /portal/shares?patient=…`` → the person's links (never their tokens);
- ``DELETE /portal/shares/{id}`` → revoked, at once, in every gateway process.

Who: a resident for their own records (any scope); a clinician or integrator for what their
facility holds (a study or a visit there, for a patient of theirs); admins and services for
anyone. A study's holder is found by the federation when not named.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any, Final

from aiohttp import web

from .errors import Forbidden, NotFound
from .guard import access_of
from .identity import resolve_person
from .shares import Share, ShareScope
from .storage import Person
from .web import CORE

FIELDS: Final = frozenset({"patient", "study", "facility", "visit_date", "days", "second_factor"})
FACTORS: Final = ("none", "id4", "pin")


def setup(app: web.Application) -> None:
    app.router.add_post("/portal/shares", create)
    app.router.add_get("/portal/shares", listed)
    app.router.add_delete("/portal/shares/{id}", revoke)


async def create(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    principal = core.policy.require_role(
        access, "resident", "clinician", "integrator", "admin", "service"
    )
    body = await _body(request)
    person = await _person(request, body.get("patient"))
    access.patient = person.person_key
    study, facility, visit = body.get("study"), body.get("facility"), body.get("visit_date")
    for name, value in (("study", study), ("facility", facility), ("visit_date", visit)):
        if value is not None and not isinstance(value, str):
            raise _bad(f"{name} must be a string")
    if facility is not None and core.registry.get(facility) is None:
        raise _bad(f"no facility {facility!r} in the registry")
    visit_date = _date(visit) if visit is not None else None
    if study is not None:
        facility = await core.imaging.holder(facility, study)
        if await core.imaging.study_patient(facility, study) != person.person_key:
            raise _bad("the study is not this patient's")
    scope: ShareScope = "study" if study else ("visit" if visit_date else "all")
    if scope == "visit" and facility is None:
        raise _bad("a visit's link needs the facility")
    factor = body.get("second_factor", "none")
    if factor not in FACTORS:
        raise _bad(f"second_factor is one of {', '.join(FACTORS)}")
    days = body.get("days", core.settings.share_days)
    if not isinstance(days, int | float) or isinstance(days, bool) or not 0 < days <= 365:
        raise _bad("days is a number of days, more than 0 and at most 365")
    await _may_share(request, person, scope, facility)
    if facility:
        access.holders.add(facility)
    try:
        share, token, pin = await core.shares.create(
            person.person_key,
            scope,
            created_by=principal.subject,
            created_role=principal.role,
            facility=facility,
            study=study,
            visit_date=visit_date,
            days=float(days),
            second_factor=factor,
        )
    except ValueError as exc:
        raise _bad(str(exc)) from None
    url = f"{request.scheme}://{request.host}/portal/s/{token}"
    body_out = _described(share) | {
        "url": url,
        "qr_png": f"{url}/qr.png",
        "qr_svg": f"{url}/qr.svg",
    }
    if pin is not None:
        body_out["pin"] = pin
    access.detail = f"share {share.id} created ({scope})"
    return web.json_response(body_out, status=201, headers={"Cache-Control": "no-store"})


async def listed(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_role(access, "resident", "admin", "service")
    person = await _person(request, request.query.get("patient"))
    await core.policy.patient(access, person.person_key, "Patient", "r")
    shares = await core.shares.for_person(person.person_key)
    return web.json_response({"shares": [_described(s) for s in shares]})


async def revoke(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    principal = core.policy.require_role(
        access, "resident", "clinician", "integrator", "admin", "service"
    )
    share = await core.shares.get(request.match_info["id"])
    if share is None:
        raise NotFound("no such share")
    access.patient = share.person_key
    if principal.role == "resident":
        await core.policy.patient(access, share.person_key, "Patient", "r")
    elif principal.role in ("clinician", "integrator"):
        if share.facility is None or share.facility != principal.facility_id:
            raise Forbidden("a facility withdraws only the links it made for its records")
    await core.shares.revoke(share.id)
    access.detail = f"share {share.id} revoked"
    return web.json_response({"id": share.id, "revoked": True})


async def _may_share(
    request: web.Request, person: Person, scope: str, facility: str | None
) -> None:
    core = request.app[CORE]
    access = access_of(request)
    principal = access.principal
    assert principal is not None
    if principal.role == "resident":
        await core.policy.patient(access, person.person_key, "Patient", "r")
    elif principal.role in ("clinician", "integrator"):
        if scope == "all" or facility is None or facility != principal.facility_id:
            raise Forbidden("a facility shares a study or a visit of its own, not more")
        if not await core.policy.cared_for(person.person_key, facility):
            raise Forbidden("the patient is not registered at this facility")


async def _person(request: web.Request, value: Any) -> Person:
    core = request.app[CORE]
    if not isinstance(value, str) or not value:
        raise _bad("patient is required: a national ID number or Patient/{id}")
    if value.startswith("Patient/"):
        person = await core.store.person(value.removeprefix("Patient/"))
    else:
        key = await resolve_person(core.store, core.registry, value, None)
        person = await core.store.person_by_key(key) if key else None
    if person is None:
        raise NotFound("no such patient")
    return person


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _bad("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad("the body is a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _bad(f"unknown fields {unknown}")
    return body


def _described(share: Share) -> dict[str, Any]:
    return {
        "id": share.id,
        "scope": share.scope,
        "facility": share.facility,
        "study": share.study,
        "visit_date": share.visit_date.isoformat() if share.visit_date else None,
        "second_factor": share.second_factor,
        "created": share.created_at.isoformat(),
        "expires": share.expires_at.isoformat(),
        "revoked": share.revoked_at.isoformat() if share.revoked_at else None,
    }


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _bad("visit_date is YYYY-MM-DD") from None


def _bad(detail: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "invalid", "detail": detail}, ensure_ascii=False),
        content_type="application/json",
    )
