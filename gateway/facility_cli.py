"""`huren facility add|update|disable|check`: the admin API's registration, from a shell on
the gateway's host (an integrator's first step, or a script). Changes are written to the
database the gateways share and announced to them; running gateways apply them at once."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from .config import Settings
from .core import open_core
from .credentials import Credentials
from .errors import RegistryError
from .registry import parse_facility

BY = "cli:huren facility"


async def run_facility(
    settings: Settings, action: str, args: argparse.Namespace
) -> tuple[int, list[str]]:
    """(exit code, lines to print)."""
    async with open_core(settings, probe=False) as core:
        if action in ("add", "update"):
            body = _read(args.file)
            current = core.registry.get(str(body.get("id")))
            if action == "add" and current is not None:
                raise ValueError(f"{body.get('id')} is registered: use update")
            if action == "update" and current is None:
                raise ValueError(f"{body.get('id')} is not registered: use add")
            status = current.status if current is not None else "pending"
            try:
                facility = parse_facility(
                    {k: v for k, v in body.items() if k != "credentials"},
                    core.registry,
                    status=status,
                )
                credentials = (
                    Credentials.parse(body["credentials"]) if "credentials" in body else None
                )
            except RegistryError as exc:
                raise ValueError(exc.detail) from None
            if (
                current is not None
                and current.live
                and ((facility.imaging, facility.lab) != (current.imaging, current.lab))
            ):
                facility = replace(facility, status="pending")
            saved = await core.facilities.save(
                facility, credentials, by=BY, keep_credentials=action == "update"
            )
            return 0, [f"{saved.id} {saved.name_zh}: {saved.status}"]
        current = core.registry.get(args.id)
        if current is None:
            raise ValueError(f"no facility {args.id}")
        if action == "disable":
            saved = await core.facilities.set_status(current.id, "disabled", by=BY)
            return 0, [f"{saved.id}: {saved.status}"]
        _, report = await core.facilities.run_check(
            current,
            session=core.http,
            calling_ae=settings.ae_title,
            mllp=(settings.host, settings.mllp_port),
            by=BY,
        )
        lines = [f"{current.id}: {'PASS' if report.passed else 'FAIL'}"]
        for item in report.items:
            mark = "ok  " if item.passed else "FAIL"
            lines.append(f"  {mark} {item.name}: {item.detail}")
            if not item.passed and item.fix:
                lines.append(f"       fix: {item.fix}")
        return (0 if report.passed else 1), lines


def _read(path: Any) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"{path} must hold one facility as a JSON object")
    return body
