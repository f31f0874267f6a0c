"""Errors in the DICOMweb form: an HTTP status with a DICOM JSON body carrying ErrorComment."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web, web_exceptions


def _by_status() -> dict[int, type[web.HTTPException]]:
    out: dict[int, type[web.HTTPException]] = {}
    for name in dir(web_exceptions):
        cls = getattr(web_exceptions, name)
        if isinstance(cls, type) and issubclass(cls, web.HTTPException) and cls.status_code > 0:
            out.setdefault(cls.status_code, cls)
    return out


_EXCEPTIONS = _by_status()


def http_error(
    status: int, body: str, content_type: str, *, headers: Mapping[str, str] | None = None
) -> web.HTTPException:
    cls = _EXCEPTIONS[status]
    return cls(text=body, content_type=content_type, headers=headers)


def dicom_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.HTTPException:
    body = [{"00000902": {"vr": "LO", "Value": [message[:64]]}}]  # ErrorComment (PS3.7 C.4)
    return http_error(status, json.dumps(body), "application/dicom+json", headers=headers)
