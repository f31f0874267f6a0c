"""What the gateway says of itself and of the city's look-ups: the SMART configuration its
clients discover, and the statistics regulators read (never a patient's data)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any, Final, get_args

from aiohttp import web

from .audit import audit_event, audit_lookup
from .guard import access_of
from .lookup_stats import Grouping, reconcile
from .recognition import city_today
from .recognition_decisions import statistics as decision_statistics
from .tokens import DEV_ISSUER, ROLES
from .web import CORE

#: Longest range one statistics request covers.
MAX_DAYS: Final = 3 * 366
STATS_ROLES: Final = ("regulator", "admin")


def setup(app: web.Application) -> None:
    app.router.add_get("/.well-known/smart-configuration", smart_configuration)
    app.router.add_get("/admin/stats/lookups", lookup_stats)
    app.router.add_get("/admin/stats/break-glass", break_glass_stats)
    app.router.add_get("/admin/stats/recognition", recognition_stats)


async def smart_configuration(request: web.Request) -> web.Response:
    """SMART App Launch 2.x discovery: this gateway is a resource server; tokens come from
    the city's authorization server (or, in the demo, from `huren token`)."""
    settings = request.app[CORE].settings
    body: dict[str, Any] = {
        "issuer": settings.auth_issuer or DEV_ISSUER,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256"],
        "scopes_supported": [
            "system/*.rs",
            "user/*.rs",
            "patient/*.rs",
            "user/ImagingStudy.rs",
            "user/Observation.rs",
            "user/DiagnosticReport.rs",
            "user/AuditEvent.rs",
            "user/Basic.c",
        ],
        "capabilities": [
            "permission-v2",
            "permission-patient",
            "permission-user",
            "client-confidential-asymmetric",
        ],
        "huren_roles": list(ROLES),
        "huren_break_glass_header": "Huren-Break-Glass",
    }
    if settings.auth_jwks and settings.auth_jwks.startswith(("http://", "https://")):
        body["jwks_uri"] = settings.auth_jwks
    return web.json_response(body)


async def lookup_stats(request: web.Request) -> web.Response:
    """Cross-institution look-ups by day, requesting facility, holding facility or pair,
    from the fast counters, or recounted from the audit (``source=audit``)."""
    core = request.app[CORE]
    access = access_of(request)
    core.policy.require_role(access, *STATS_ROLES)
    start, end = _range(request)
    group_by = _grouping(request.query.get("group_by", "day"))
    source = request.query.get("source", "counters")
    if source == "counters":
        rows = await core.lookups.query(start, end, group_by)
    elif source == "audit":
        rows = await reconcile(core.store.engine, start, end, group_by, table=audit_lookup)
    else:
        raise _bad("source must be counters or audit")
    return web.json_response(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "group_by": group_by,
            "source": source,
            "total": sum(int(r["count"]) for r in rows),
            "rows": rows,
        }
    )


async def break_glass_stats(request: web.Request) -> web.Response:
    """Break-the-glass accesses by requesting facility and day: flagged, and reported."""
    from sqlalchemy import func, select

    core = request.app[CORE]
    core.policy.require_role(access_of(request), *STATS_ROLES)
    start, end = _range(request)
    c = audit_event.c
    stmt = (
        select(c.day, c.facility, func.count())
        .where(c.break_glass.is_(True), c.day >= start.isoformat(), c.day <= end.isoformat())
        .group_by(c.day, c.facility)
        .order_by(c.day, c.facility)
    )
    async with core.store.engine.connect() as conn:
        rows = [
            {"day": day, "facility": facility, "count": n}
            for day, facility, n in await conn.execute(stmt)
        ]
    return web.json_response(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "rows": rows,
            "total": sum(r["count"] for r in rows),
        }
    )


async def recognition_stats(request: web.Request) -> web.Response:
    """Mutual recognition for the regulator: recognition rate by holding facility, deciding
    facility and item; re-tests by reason; re-tests avoided; and how many facilities had
    passed quality control on the last day of the range."""
    core = request.app[CORE]
    core.policy.require_role(access_of(request), *STATS_ROLES)
    start, end = _range(request)
    facility = request.query.get("facility")
    if facility is not None and core.registry.get(facility) is None:
        raise _bad(f"no facility {facility!r} in the registry")
    unknown = sorted(set(request.query) - {"from", "to", "facility"})
    if unknown:
        raise _bad(f"unknown parameters {unknown}")
    stats = await decision_statistics(core.store, since=start, until=end, facility=facility)
    catalogue = core.recognition.catalogue
    for row in stats["by_item"]:
        item = catalogue.items.get(row["item"])
        row["name_zh"] = item.name_zh if item else None
    qc_on_day = {
        kind: len(
            {
                q.facility
                for q in catalogue.quality_control
                if q.kind == kind and q.passed <= end <= q.valid_until
            }
        )
        for kind in ("lab", "imaging")
    }
    lapsing = core.recognition.lapsing(city_today(), core.settings.qc_warning_days)
    return web.json_response(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "facility": facility,
            "catalogue": catalogue.version,
            "retest_reasons": "urn:huren:CodeSystem/retest-reason",
            "facilities_passing_quality_control": qc_on_day,
            # Passes about to end: from the next day those facilities' results lose the mark.
            "quality_control_lapsing": [
                {
                    "facility": x.facility,
                    "kind": x.kind,
                    "covered_until": x.covered_until.isoformat(),
                    "days_left": x.days_left,
                }
                for x in lapsing
                if facility is None or x.facility == facility
            ],
            **stats,
        }
    )


def _bad(detail: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "invalid", "detail": detail}), content_type="application/json"
    )


def _grouping(value: str) -> Grouping:
    for grouping in get_args(Grouping):
        if value == grouping:
            return grouping  # type: ignore[no-any-return]
    raise _bad(f"group_by must be one of {', '.join(get_args(Grouping))}")


def _range(request: web.Request) -> tuple[date, date]:
    try:
        end = date.fromisoformat(request.query["to"]) if "to" in request.query else date.today()
        start = (
            date.fromisoformat(request.query["from"])
            if "from" in request.query
            else end - timedelta(days=29)
        )
    except ValueError:
        raise _bad("from and to are dates, YYYY-MM-DD") from None
    if end < start or (end - start).days >= MAX_DAYS:
        raise _bad(f"from must be before to, at most {MAX_DAYS} days apart")
    return start, end
