"""The operations console at ``/admin``: the facilities' health, a year of cross-institution
look-ups (per day, and between facility pairs as a heat map), recognition, and the recent
failed conformance checks, drawn from the gateway's own data (gateway/console_views.py).

For operators (admins, integrators) and the health commission (regulators): statistics and
the state of systems, never a patient's data. The page is a GET with the bearer token (the
city's single sign-on proxy adds it in front of the gateway).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from adapters.types import DicomWebEndpoint, DimseEndpoint, FhirEndpoint, Hl7v2Feed

from . import console_views as views
from .audit import CITY_TZ
from .guard import access_of
from .recognition import city_today
from .recognition_decisions import statistics as decision_statistics
from .web import CORE

ROLES: Final = ("admin", "integrator", "regulator")
#: The look-up statistics shown: a year, to today.
DAYS: Final = 366
_REASON_LABELS: Final = {
    "01": "病情变化 condition changed",
    "02": "变化快 changes quickly",
    "03": "治疗关键 critical to treatment",
    "04": "急诊急救 emergency",
    "05": "鉴定 assessment",
    "06": "法定资质 qualified body",
    "07": "医师判断 clinician judgement",
    "08": "其他 other",
    "98": "未获影像 images not available",
    "99": "动态监测 serial monitoring",
}


def setup(app: web.Application) -> None:
    app.router.add_get("/admin", console)


async def console(request: web.Request) -> web.Response:
    core = request.app[CORE]
    access = access_of(request)
    principal = core.policy.require_role(access, *ROLES)
    lang: views.Lang = "en" if request.query.get("lang") == "en" else "zh"
    today = datetime.now(CITY_TZ).date()
    start = today - timedelta(days=DAYS - 1)
    by_day, pairs, recognition, failed = await asyncio.gather(
        core.lookups.query(start, today, "day"),
        core.lookups.query(start, today, "pair"),
        decision_statistics(core.store, since=start, until=today),
        core.facilities.recent_checks(failed_only=True, limit=10),
    )
    days = _days(by_day, start, today)
    view = views.ConsoleView(
        generated=datetime.now(CITY_TZ).strftime("%Y-%m-%d %H:%M"),
        period=f"{start.isoformat()} – {today.isoformat()}",
        facilities=tuple(_facility_rows(request, lang)),
        lookups_by_day=tuple(days),
        lookups_total=sum(d.count for d in days),
        pairs=tuple(_pairs(pairs)),
        recognition_by_holder=tuple(
            _recognition_row(r["facility"], _name(request, r["facility"], lang), r)
            for r in recognition["by_holder"]
        ),
        recognition_by_item=tuple(
            _recognition_row(r["item"], r.get("name_zh") or r["item"], r)
            for r in _named_items(request, recognition["by_item"])
        ),
        retest_reasons=tuple(
            views.ReasonCount(
                code=str(r["reason"]),
                label=_REASON_LABELS.get(str(r["reason"]), str(r["reason"])),
                count=int(r["n"]),
                counts_against=bool(r["counts_against_recognition"]),
            )
            for r in recognition["retests_by_reason"]
        ),
        failed_checks=tuple(
            views.FailedCheck(
                facility=row.facility,
                when=row.started.astimezone(CITY_TZ).strftime("%Y-%m-%d %H:%M"),
                failed=tuple(
                    str(i["name"]) for i in row.report.get("items", []) if not i.get("passed")
                ),
                href=f"/admin/checks/{row.id}?format=html",
            )
            for row in failed
        ),
        qc_lapsing=tuple(_qc_groups(request, lang)),
        qc_warning_days=core.settings.qc_warning_days,
        show_facility_details=principal.role != "regulator",
    )
    response = web.Response(
        text=views.console_page(lang, view), content_type="text/html", charset="utf-8"
    )
    response.headers["Content-Security-Policy"] = views.CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    return response


def _qc_groups(request: web.Request, lang: views.Lang) -> list[views.QcLapseGroup]:
    """The facilities whose quality control ends within the warning window, by day and kind."""
    core = request.app[CORE]
    groups: dict[tuple[date, str], list[tuple[str, str]]] = defaultdict(list)
    days_left: dict[tuple[date, str], int] = {}
    for lapse in core.recognition.lapsing(city_today(), core.settings.qc_warning_days):
        key = (lapse.covered_until, lapse.kind)
        groups[key].append((lapse.facility, _name(request, lapse.facility, lang)))
        days_left[key] = lapse.days_left
    return [
        views.QcLapseGroup(kind, until.isoformat(), days_left[(until, kind)], tuple(members))
        for (until, kind), members in sorted(groups.items())
    ]


def _facility_rows(request: web.Request, lang: views.Lang) -> list[views.FacilityRow]:
    core = request.app[CORE]
    recent = core.federation.recent.counts()
    rows = []
    for f in core.registry:
        reach = core.prober.state.get(f.id)
        calls, failures = recent.get(f.id, (0, 0))
        rows.append(
            views.FacilityRow(
                id=f.id,
                name=f.name_zh if lang == "zh" else f.name_en,
                level=f.level,
                district=f.district,
                status=f.status,
                imaging=_imaging_kind(f.imaging),
                lab=_lab_kind(f.lab),
                reachable=reach.reachable if reach else None,
                latency_ms=round(reach.latency_ms, 1) if reach else None,
                error_rate=failures / calls if calls else None,
                breaker=core.federation.breaker(f.id).state.value.replace("_", "-"),
            )
        )
    return rows


def _days(rows: list[dict[str, Any]], start: date, end: date) -> list[views.DayCount]:
    counts = {str(r.get("day")): int(r["count"]) for r in rows}
    out = []
    day = start
    while day <= end:
        out.append(views.DayCount(day.isoformat(), counts.get(day.isoformat(), 0)))
        day += timedelta(days=1)
    return out


def _pairs(rows: list[dict[str, Any]]) -> list[views.PairCount]:
    return [
        views.PairCount(str(r["requester"]), str(r["holder"]), int(r["count"]))
        for r in rows
        if int(r["count"]) > 0
    ]


def _recognition_row(key: str, label: str, r: dict[str, Any]) -> views.RecognitionRow:
    return views.RecognitionRow(
        key=key,
        label=label,
        decisions=int(r["decisions"]),
        accepted=int(r["accepted"]),
        retests_counted=int(r["retests_counted"]),
        rate=r["recognition_rate"],
    )


def _named_items(request: web.Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    catalogue = request.app[CORE].recognition.catalogue
    out = []
    for r in rows:
        item = catalogue.items.get(str(r["item"]))
        out.append(r | {"name_zh": item.name_zh if item else r["item"]})
    return out


def _name(request: web.Request, fid: str, lang: views.Lang) -> str:
    f = request.app[CORE].registry.get(fid)
    if f is None:
        return fid
    return f"{fid} {f.name_zh if lang == 'zh' else f.name_en}"


def _imaging_kind(endpoint: object) -> str:
    if isinstance(endpoint, DicomWebEndpoint):
        return "DICOMweb"
    return "DIMSE" if isinstance(endpoint, DimseEndpoint) else "none"


def _lab_kind(endpoint: object) -> str:
    if isinstance(endpoint, FhirEndpoint):
        return "FHIR"
    return "HL7 v2" if isinstance(endpoint, Hl7v2Feed) else "none"
