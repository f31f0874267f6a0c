"""Errors in the DICOMweb form: an HTTP status with a DICOM JSON body carrying ErrorComment."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from aiohttp import web, web_exceptions

from adapters.errors import UpstreamError, UpstreamTimeout
from gateway.errors import FacilityUnavailable, NotFound


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


@asynccontextmanager
async def failure_response() -> AsyncIterator[None]:
    """Answer the core's and the upstreams' failures in DICOMweb's form, in one place."""
    try:
        yield
    except NotFound as exc:
        raise dicom_error(404, exc.detail) from None
    except FacilityUnavailable as exc:
        raise dicom_error(503, exc.detail, headers={"Retry-After": "30"}) from None
    except UpstreamTimeout:
        raise dicom_error(504, "the facility did not answer in time") from None
    except UpstreamError as exc:
        if exc.status == 404:
            raise dicom_error(404, "not found at the facility") from None
        raise dicom_error(502, f"the facility failed: {exc.detail}") from None
    except TimeoutError:
        raise dicom_error(504, "the facility did not answer in time") from None


def refusal(
    request: web.Request, status: int, code: str, text: str, headers: Mapping[str, str]
) -> web.Response:
    """A refusal by the gateway's door (401, 403, 429) in DICOMweb's form."""
    body = [{"00000902": {"vr": "LO", "Value": [text[:64]]}}]
    # ErrorComment holds 64 characters; the whole reason goes in a Warning (PS3.18 8.7.6).
    warning = text.replace('"', "'").encode("ascii", "replace").decode()
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/dicom+json",
        headers={**headers, "Warning": f'299 HUREN "{warning}"'},
    )
