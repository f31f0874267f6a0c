"""`huren share`: a resident's share link from the command line (a records office printing a
QR code on a report), and the demo's resident link. Both make it as an administrator would."""

from __future__ import annotations

from datetime import date

from .config import Settings
from .core import Core, open_core
from .errors import GatewayError
from .identity import resolve_person
from .shares import SecondFactor, ShareScope


async def make_share(
    settings: Settings,
    *,
    patient: str,
    study: str | None = None,
    facility: str | None = None,
    visit_date: str | None = None,
    days: float | None = None,
    second_factor: SecondFactor = "id4",
) -> list[str]:
    """The lines to print: the link, and what its second factor is."""
    async with open_core(settings, probe=False) as core:
        return await share_lines(
            core,
            settings,
            patient=patient,
            study=study,
            facility=facility,
            visit_date=visit_date,
            days=days,
            second_factor=second_factor,
            created_by="huren share",
        )


async def share_lines(
    core: Core,
    settings: Settings,
    *,
    patient: str,
    study: str | None,
    facility: str | None,
    visit_date: str | None,
    days: float | None,
    second_factor: SecondFactor,
    created_by: str,
) -> list[str]:
    person = await resolve_person(core.store, core.registry, patient, None)
    if person is None:
        raise ValueError("no resident with that ID number is known here (import the seed?)")
    if facility is not None and core.registry.get(facility) is None:
        raise ValueError(f"no facility {facility} in the registry")
    if study is not None and facility is None:
        try:
            facility = await core.imaging.holder(None, study)
        except GatewayError as exc:
            raise ValueError(
                f"cannot find the study's facility ({exc.detail}); name it with --facility"
            ) from None
    try:
        day = date.fromisoformat(visit_date) if visit_date else None
    except ValueError:
        raise ValueError("--visit-date is YYYY-MM-DD") from None
    scope: ShareScope = "study" if study else ("visit" if day else "all")
    share, token, pin = await core.shares.create(
        person,
        scope,
        created_by=created_by,
        created_role="admin",
        facility=facility if scope != "all" else None,
        study=study,
        visit_date=day,
        days=days if days is not None else settings.share_days,
        second_factor=second_factor,
    )
    url = f"http://{settings.host}:{settings.port}/portal/s/{token}"
    lines = [url, f"  expires {share.expires_at.date().isoformat()}; QR code: {url}/qr.png"]
    if second_factor == "id4":
        lines.append("  second factor: the last 4 characters of the resident's ID number")
    elif pin is not None:
        lines.append(f"  second factor: PIN {pin} (print it apart from the QR code)")
    return lines
