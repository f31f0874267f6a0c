"""The resident portal (云胶片, cloud film): what a share link opens on a phone.

- ``GET /portal/s/{token}``: the studies, reports and lab results the share covers, newest
  first (or, for a share with a second factor not yet answered here, the form that asks it);
- ``POST /portal/s/{token}/unlock``: the second factor; right, a session cookie for this
  link; wrong, attempts counted and the link locked after too many;
- ``GET /portal/s/{token}/studies/{facility}/{study}``: the viewer (images rendered by the
  DICOM face under the same link: /portal/s/{token}/facilities/…/rendered);
- ``GET /portal/s/{token}/facilities/{facility}/studies/{study}/archive.zip``: the study
  as DICOM files in a zip, streamed instance by instance;
- ``GET /portal/s/{token}/access-log``: who at which facility looked at the records;
- ``GET /portal/s/{token}/qr.png`` and ``qr.svg``: the link as a QR code.

The guard has authenticated the link (gateway/guard.py) and every request is audited as the
resident's access; the policy refuses patient data until the second factor is answered and
anything the share does not cover. Pages carry no patient data when they refuse.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import zipfile
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any, Final, Literal

from aiohttp import web

from adapters.types import DicomJson, Target

from . import portal_views as views
from .audit import CITY_TZ
from .errors import Forbidden, NotFound
from .guard import SHARE_SESSION_COOKIE, access_of
from .identity import NATIONAL_ID_SYSTEM
from .lab import LabQuery
from .recognition import city_today, facts_of_fhir, facts_of_study
from .registry import Registry
from .shares import Share, ShareRefused, covers, qr_png, qr_svg
from .storage import source_facility
from .web import CORE

PREFIX: Final = "/portal/s/{token}"
_RAD: Final = "RAD"
_V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
_INTERPRETATION_FLAG: Final = {"H": "H", "HH": "H", "HU": "H", "L": "L", "LL": "L", "LU": "L"}


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX, share_page)
    r.add_post(PREFIX + "/unlock", unlock)
    r.add_get(PREFIX + "/studies/{facility}/{study}", viewer)
    r.add_get(PREFIX + "/facilities/{facility}/studies/{study}/archive.zip", download)
    r.add_get(PREFIX + "/access-log", access_log)
    r.add_get(PREFIX + "/qr.png", qr)
    r.add_get(PREFIX + "/qr.svg", qr)


def refusal(
    request: web.Request, status: int, code: str, text: str, headers: Mapping[str, str]
) -> web.Response:
    """A refused link as a calm page saying what happened, with no patient data."""
    kind = code if code in ("forged", "expired", "revoked", "locked") else "error"
    if status == 404 and kind == "error":
        kind = "not-found"
    return _page(views.error_page(_lang(request), kind), status=status, headers=headers)  # type: ignore[arg-type]


# -- the list ---------------------------------------------------------------------------------


async def share_page(request: web.Request) -> web.Response:
    access = access_of(request)
    share = _share(request)
    lang = _lang(request)
    if not access.share_unlocked:
        return await _unlock_form(request, share, error=False)
    core = request.app[CORE]
    await core.policy.patient(access, share.person_key, "ImagingStudy", "s")
    base = _base(request)
    studies, (labs, reports) = await asyncio.gather(
        _studies(request, share, base, lang), _lab(request, share, lang)
    )
    person = await core.store.person_by_key(share.person_key)
    view = views.ShareView(
        patient=_masked(person.names if person else (), lang),
        expires=share.expires_at.astimezone(CITY_TZ).strftime("%Y-%m-%d"),
        base=base,
        studies=tuple(studies),
        reports=tuple(reports),
        labs=tuple(labs),
        access_log_href=f"{base}/access-log?lang={lang}" if share.scope == "all" else "",
    )
    return _page(views.list_page(lang, view))


async def _studies(
    request: web.Request, share: Share, base: str, lang: views.Lang
) -> list[views.StudyItem]:
    core = request.app[CORE]
    access = access_of(request)
    found = await core.imaging.search_studies({"PatientID": share.person_key})
    shown = [
        (fid, ds)
        for fid, ds in found.items
        if covers(share, fid, study=_v(ds, "0020000D"), day=_dicom_day(_v(ds, "00080020")))
    ]
    shown.sort(key=lambda pair: (_v(pair[1], "00080020"), _v(pair[1], "00080030")), reverse=True)
    access.holders.update(fid for fid, _ in shown)
    series = await core.imaging.series_of_studies(shown)
    today = city_today()
    items = []
    for (fid, ds), listed in zip(shown, series, strict=True):
        uid = _v(ds, "0020000D")
        parts = [(_v(s, "00080060"), _v(s, "00180015")) for s in listed]
        verdict = core.recognition.verdict(
            facts_of_study(ds, fid, [p for p in parts if all(p)]), None, today
        )
        modalities = sorted({p[0] for p in parts if p[0]}) or _values(ds, "00080061")
        items.append(
            views.StudyItem(
                facility=_facility_name(core.registry, fid, lang),
                when=_dicom_when(_v(ds, "00080020"), _v(ds, "00080030")),
                modality="/".join(modalities),
                description=_v(ds, "00081030"),
                series=len(listed) or int(_v(ds, "00201206") or 0),
                images=int(_v(ds, "00201208") or 0)
                or sum(int(_v(s, "00201209") or 0) for s in listed),
                hr_mark=verdict.mark is not None,
                view_href=f"{base}/studies/{fid}/{uid}?lang={lang}",
                download_href=f"{base}/facilities/{fid}/studies/{uid}/archive.zip",
            )
        )
    return items


async def _lab(
    request: web.Request, share: Share, lang: views.Lang
) -> tuple[list[views.LabPanel], list[views.ReportItem]]:
    """Lab panels (a report and its results) and imaging reports the share covers."""
    core = request.app[CORE]
    access = access_of(request)

    async def search(rtype: str) -> list[tuple[str, dict[str, Any]]]:
        query = LabQuery(rtype, NATIONAL_ID_SYSTEM, share.person_key, count=1000)
        return [(source_facility(r) or fid, r) for fid, r in (await core.lab.search(query)).items]

    reports, observations = await asyncio.gather(search("DiagnosticReport"), search("Observation"))
    by_id = {(fid, f"Observation/{o.get('id')}"): o for fid, o in observations}
    today = city_today()
    panels: list[views.LabPanel] = []
    imaging: list[views.ReportItem] = []
    for fid, report in reports:
        when = str(report.get("effectiveDateTime") or report.get("issued") or "")
        if _is_imaging(report):
            study = _study_of(report)
            if study is None or not covers(share, fid, study=study, day=_day(when)):
                continue
            imaging.append(_report_item(core.registry, fid, report, when, lang))
        else:
            if not covers(share, fid, study=None, day=_day(when)):
                continue
            results = [
                by_id[(fid, ref.get("reference", ""))]
                for ref in report.get("result", [])
                if (fid, ref.get("reference", "")) in by_id
            ]
            verdict = core.recognition.verdict(facts_of_fhir(report, fid), None, today)
            panels.append(
                views.LabPanel(
                    facility=_facility_name(core.registry, fid, lang),
                    when=_when(when),
                    title=_text(report.get("code")),
                    hr_mark=verdict.mark is not None,
                    rows=tuple(_lab_row(o) for o in results),
                )
            )
        access.holders.add(fid)
    return panels, imaging


def _report_item(
    registry: Registry, fid: str, report: dict[str, Any], when: str, lang: views.Lang
) -> views.ReportItem:
    text = ""
    for form in report.get("presentedForm", []):
        if str(form.get("contentType", "")).startswith("text/plain") and form.get("data"):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                text = base64.b64decode(form["data"]).decode("utf-8")
            break
    return views.ReportItem(
        facility=_facility_name(registry, fid, lang),
        when=_when(when),
        title=_text(report.get("code")),
        conclusion=str(report.get("conclusion") or ""),
        text=text,
    )


def _lab_row(obs: dict[str, Any]) -> views.LabRow:
    quantity = obs.get("valueQuantity") or {}
    value = quantity.get("value", obs.get("valueString", ""))
    ranges = obs.get("referenceRange") or [{}]
    flag = ""
    for concept in obs.get("interpretation", []):
        for coding in concept.get("coding", []):
            code = str(coding.get("code", ""))
            flag = _INTERPRETATION_FLAG.get(code, "N" if code == "N" else flag)
    return views.LabRow(
        name=_text(obs.get("code")),
        value=str(value),
        unit=str(quantity.get("unit") or quantity.get("code") or ""),
        range_text=str(ranges[0].get("text") or _range_text(ranges[0])),
        flag=flag,  # type: ignore[arg-type]
    )


def _range_text(r: dict[str, Any]) -> str:
    low, high = (r.get("low") or {}).get("value"), (r.get("high") or {}).get("value")
    if low is not None and high is not None:
        return f"{low}-{high}"
    if high is not None:
        return f"<{high}"
    return f">{low}" if low is not None else ""


# -- the second factor ------------------------------------------------------------------------


async def unlock(request: web.Request) -> web.Response:
    share = _share(request)
    shares = request.app[CORE].shares
    form = await request.post()
    answer = str(form.get("answer", ""))[:64]
    try:
        passed = await shares.check_second_factor(share, answer)
    except ShareRefused as exc:
        # Seen again from the link itself (a refusal page the language switch can reload).
        access_of(request).detail = f"share refused: {exc.reason}"
        raise web.HTTPSeeOther(f"{_base(request)}?lang={_lang(request)}") from None
    if not passed:
        access_of(request).detail = "wrong second factor"
        return await _unlock_form(request, share, error=True)
    response = web.HTTPSeeOther(f"{_base(request)}?lang={_lang(request)}")
    response.set_cookie(
        SHARE_SESSION_COOKIE,
        shares.session_cookie(share),
        path=_base(request),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def _unlock_form(request: web.Request, share: Share, *, error: bool) -> web.Response:
    shares = request.app[CORE].shares
    left = await shares.attempts_left(share)
    kind: Literal["id4", "pin"] = "pin" if share.second_factor == "pin" else "id4"
    page = views.unlock_page(
        _lang(request), f"{_base(request)}/unlock?lang={_lang(request)}", kind, error, left
    )
    return _page(page, status=401 if error else 200)


# -- one study --------------------------------------------------------------------------------


async def viewer(request: web.Request) -> web.Response:
    core = request.app[CORE]
    share = _share(request)
    lang = _lang(request)
    fid, uid = request.match_info["facility"], request.match_info["study"]
    study = await _covered_study(request, share, fid, uid)
    listed = await core.imaging.study_series(fid, uid)
    listed.sort(key=lambda s: int(_v(s, "00200011") or 0))
    base = _base(request)
    series = []
    for s in listed:
        series_uid = _v(s, "0020000E")
        _, instances = await core.imaging.search_instances(fid, uid, series_uid, {}, None)
        instances.sort(key=lambda i: int(_v(i, "00200013") or 0))
        root = f"{base}/facilities/{fid}/studies/{uid}/series/{series_uid}/instances"
        images = tuple(f"{root}/{_v(i, '00080018')}/rendered" for i in instances)
        if images:
            series.append(
                views.SeriesView(
                    uid=series_uid,
                    description=_v(s, "0008103E"),
                    modality=_v(s, "00080060"),
                    images=images,
                    default_preset=_preset(_v(s, "00080060"), _v(s, "00180015")),
                )
            )
    view = views.StudyView(
        facility=_facility_name(core.registry, fid, lang),
        when=_dicom_when(_v(study, "00080020"), _v(study, "00080030")),
        description=_v(study, "00081030"),
        series=tuple(series),
        download_href=f"{base}/facilities/{fid}/studies/{uid}/archive.zip",
        back_href=f"{base}?lang={lang}",
    )
    return _page(views.viewer_page(lang, view))


def _preset(modality: str, body_part: str) -> str:
    """The window a CT series opens in; other modalities keep their own (no HU presets)."""
    if modality != "CT":
        return views.OWN_WINDOW
    return {"HEAD": "brain", "CHEST": "lung"}.get(body_part.upper(), "soft")


async def _covered_study(request: web.Request, share: Share, fid: str, uid: str) -> DicomJson:
    """The study-level record of a study the share covers and the resident may read."""
    core = request.app[CORE]
    access = access_of(request)
    await core.policy.patient(access, share.person_key, "ImagingStudy", "r")
    if core.registry.get(fid) is None:
        raise NotFound(f"no facility {fid}")
    found = await core.imaging.search_studies(
        {"PatientID": share.person_key, "StudyInstanceUID": uid}, facility_ids=[fid]
    )
    if not found.items:
        raise NotFound("no such study among the resident's records")
    study = found.items[0][1]
    core.policy.share_study(access, fid, uid, _dicom_day(_v(study, "00080020")))
    access.holders.add(fid)
    return study


async def download(request: web.Request) -> web.StreamResponse:
    """The study as a zip of DICOM files (to take to another hospital), streamed: one
    instance at a time is held, never the study."""
    core = request.app[CORE]
    share = _share(request)
    fid, uid = request.match_info["facility"], request.match_info["study"]
    await _covered_study(request, share, fid, uid)
    _, instances = await core.imaging.retrieve(fid, Target(uid))
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="study-{uid}.zip"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    sink = _Sink()
    try:
        with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
            n = 0
            async for instance in instances:
                n += 1
                with archive.open(f"DICOM/I{n:05d}.dcm", mode="w", force_zip64=True) as entry:
                    async for chunk in instance.chunks:
                        entry.write(chunk)
                        await response.write(sink.take())
                await response.write(sink.take())
        await response.write(sink.take())
        await response.write_eof()
    finally:
        with contextlib.suppress(Exception):
            await instances.aclose()  # type: ignore[attr-defined]
    return response


class _Sink:
    """A write-only, non-seekable file for zipfile: what it writes is taken out in pieces
    and sent on (zipfile then writes data descriptors instead of seeking back)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


# -- who looked, and the QR code --------------------------------------------------------------


async def access_log(request: web.Request) -> web.Response:
    """Who at which facility looked at the resident's records: facility and role only."""
    core = request.app[CORE]
    access = access_of(request)
    share = _share(request)
    if share.scope != "all":
        raise Forbidden("only a link to all of the resident's records shows who looked")
    await core.policy.patient(access, share.person_key, "AuditEvent", "s")
    lang = _lang(request)
    records = await core.audit.search(patient=share.person_key, limit=200)
    rows = tuple(
        views.AccessRow(
            when=r.recorded.astimezone(CITY_TZ).strftime("%Y-%m-%d %H:%M"),
            facility=_facility_name(core.registry, r.facility, lang) if r.facility else "",
            role=_role(r.role, lang),
            what=_what(r.resource_type, r.path, lang),
        )
        for r in records
        if r.role != "resident" and r.outcome == "0"
    )
    return _page(views.access_log_page(lang, _base(request), rows))


async def qr(request: web.Request) -> web.Response:
    url = f"{request.scheme}://{request.host}{_base(request)}"
    if request.path.endswith(".svg"):
        return web.Response(body=qr_svg(url), content_type="image/svg+xml")
    return web.Response(body=await asyncio.to_thread(qr_png, url), content_type="image/png")


_ROLES: Final = {
    "zh": {"clinician": "医生", "service": "系统", "admin": "管理员"},
    "en": {"clinician": "clinician", "service": "system", "admin": "administrator"},
}


def _role(role: str | None, lang: views.Lang) -> str:
    return _ROLES[lang].get(role or "", role or "")


def _what(resource_type: str | None, path: str, lang: views.Lang) -> str:
    imaging = resource_type == "ImagingStudy" or "dicomweb" in path or "/studies" in path
    if lang == "zh":
        return "影像" if imaging else "检验/报告"
    return "images" if imaging else "results/reports"


# -- small things -----------------------------------------------------------------------------


def _share(request: web.Request) -> Share:
    share = access_of(request).share
    assert share is not None  # the guard opened it for every /portal/s/ path
    return share


def _base(request: web.Request) -> str:
    return f"/portal/s/{request.match_info['token']}"


def _lang(request: web.Request) -> views.Lang:
    return "en" if request.query.get("lang") == "en" else "zh"


def _page(
    html: str, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    response.headers.update(headers or {})
    response.headers["Content-Security-Policy"] = views.CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the link is the credential
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _masked(names: Iterable[Mapping[str, Any]], lang: views.Lang) -> str:
    """A name as a printed report shows it to whoever holds the paper: 张*明."""
    for name in names:
        text = str(name.get("text") or "")
        if text:
            return text[0] + "*" * max(len(text) - 2, 1) + (text[-1] if len(text) > 2 else "")
    return "居民" if lang == "zh" else "Resident"


def _facility_name(registry: Registry, fid: str, lang: views.Lang) -> str:
    facility = registry.get(fid)
    if facility is None:
        return fid
    return facility.name_zh if lang == "zh" else facility.name_en


def _is_imaging(report: Mapping[str, Any]) -> bool:
    return any(
        c.get("system") == _V2_0074 and c.get("code") == _RAD
        for concept in report.get("category", [])
        for c in concept.get("coding", [])
    )


def _study_of(report: Mapping[str, Any]) -> str | None:
    for ident in report.get("identifier", []):
        if ident.get("system") == "urn:dicom:uid":
            return str(ident.get("value", "")).removeprefix("urn:oid:") or None
    return None


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding", []):
        if coding.get("display"):
            return str(coding["display"])
    return ""


def _v(ds: Mapping[str, Any], tag: str) -> str:
    values = (ds.get(tag) or {}).get("Value") or [""]
    return str(values[0]) if values[0] is not None else ""


def _values(ds: Mapping[str, Any], tag: str) -> list[str]:
    return [str(v) for v in (ds.get(tag) or {}).get("Value") or []]


def _dicom_day(value: str) -> date | None:
    if len(value) >= 8 and value[:8].isdigit():
        with contextlib.suppress(ValueError):
            return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    return None


def _dicom_when(day: str, time: str) -> str:
    d = _dicom_day(day)
    if d is None:
        return ""
    t = time.split(".")[0]
    return f"{d.isoformat()} {t[:2]}:{t[2:4]}" if len(t) >= 4 and t[:4].isdigit() else d.isoformat()


def _day(when: str) -> date | None:
    with contextlib.suppress(ValueError):
        return date.fromisoformat(when[:10])
    return None


def _when(value: str) -> str:
    return value[:16].replace("T", " ")
