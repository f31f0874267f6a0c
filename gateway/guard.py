"""The door every request passes: authenticate, rate-limit, let the handler work under an
`Access`, and write the audit record before the answer leaves (DESIGN.md, Audit).

The record is written from aiohttp's ``on_response_prepare`` signal, which runs before the
first byte of any response, streamed or not: so a WADO-RS stream, a FHIR Bundle and a 403
are each audited once, and each only once its record is durable. A refusal is written in
the protocol's own form by the renderer the face registered for its path prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from aiohttp import web

from adapters.errors import UpstreamError

from .access import Access
from .errors import FacilityUnavailable, Forbidden, NotFound, TooManyRequests, Unauthenticated
from .shares import ShareRefused
from .storage import patient_id_of
from .tokens import Principal, TokenError
from .web import CORE, Handler

ACCESS_KEY: Final = web.RequestKey("access", Access)
#: Answer nobody has to be authenticated for, and which touch no patient's records.
PUBLIC_PATHS: Final = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/fhir/metadata",
        "/.well-known/smart-configuration",
        "/openapi.json",
    }
)
#: Resource types whose instances are definitions (the conformance resources in fhir/): read
#: by anyone, like the CapabilityStatement that points at them.
PUBLIC_FHIR_TYPES: Final = ("StructureDefinition", "CodeSystem", "ValueSet", "OperationDefinition")
#: Resident portal paths carry their share's token: /portal/s/{token}/…
PORTAL_SHARE_PREFIX: Final = "/portal/s/"
#: The cookie that says a share's second factor was answered in this browser.
SHARE_SESSION_COOKIE: Final = "huren_share"
#: How a refused share is answered: an unknown link is not found; an ended one is gone; a
#: locked one is to be tried later.
SHARE_REFUSAL_STATUS: Final = {
    "forged": 404,
    "expired": 410,
    "revoked": 410,
    "locked": 423,
    "second-factor": 403,
}
#: A header a clinician sends, with a reason, to break the glass (allowed, flagged, reported).
BREAK_GLASS_HEADER: Final = "Huren-Break-Glass"
_MAX_REASON: Final = 500

#: (request, status, code, text, headers) -> the refusal in the face's protocol.
Renderer = Callable[[web.Request, int, str, str, Mapping[str, str]], web.Response]
RENDERERS: Final = web.AppKey("renderers", dict[str, Renderer])


def access_of(request: web.Request) -> Access:
    """The request's Access (every non-public request has one)."""
    access: Access | None = request.get(ACCESS_KEY)
    if access is None:
        raise Forbidden("not authenticated")
    return access


def is_public(path: str) -> bool:
    if path in PUBLIC_PATHS:
        return True
    parts = path.split("/")
    return len(parts) >= 3 and parts[1] == "fhir" and parts[2] in PUBLIC_FHIR_TYPES


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_public(request.path):
        return await handler(request)
    access = _access(request)
    request[ACCESS_KEY] = access
    core = request.app[CORE]
    try:
        token = share_token(request.path)
        if token is None:
            principal = _authenticate(request)
        else:
            principal = await _share_principal(request, access, token)
        access.principal = principal
        access.break_glass = _break_glass(request)
        await core.rate_limiter.check(principal)
        return await handler(request)
    except ShareRefused as exc:
        access.detail = f"share refused: {exc.reason}"
        return _render(request, SHARE_REFUSAL_STATUS[exc.reason], exc.reason, str(exc), {})
    except Unauthenticated as exc:
        access.detail = exc.detail
        challenge = 'Bearer realm="huren"'
        if exc.error:
            description = exc.detail.replace('"', "'")
            challenge += f', error="{exc.error}", error_description="{description}"'
        return _render(request, 401, "login", exc.detail, {"WWW-Authenticate": challenge})
    except Forbidden as exc:
        access.detail = exc.detail
        return _render(request, 403, "forbidden", exc.detail, {})
    except TooManyRequests as exc:
        access.detail = exc.detail
        headers = {"Retry-After": str(exc.retry_after)}
        return _render(request, 429, "throttled", exc.detail, headers)
    except NotFound as exc:  # what a face did not answer in its own terms
        access.detail = str(exc)
        return _render(request, 404, "not-found", str(exc), {})
    except FacilityUnavailable as exc:
        access.detail = str(exc)
        return _render(request, 503, "unavailable", str(exc), {})
    except UpstreamError as exc:
        access.detail = f"a facility failed: {exc}"
        return _render(request, 502, "upstream", "a facility's system did not answer well", {})


async def audit_before_answering(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the request's audit record, committed before the answer."""
    access = request.get(ACCESS_KEY)
    if access is None or access.audited:
        return
    access.audited = True
    await request.app[CORE].audit.record(access.record(response.status))


def _access(request: web.Request) -> Access:
    action, subtype = _interaction(request)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Access(
        path=audit_path(request.path),
        action=action,
        subtype=subtype,
        query=request.query_string or None,
        source=str(peer[0]) if peer else None,
        request_id=_request_id(request),
    )


def audit_path(path: str) -> str:
    """The path as the audit keeps it: a share link names its share, without the signature
    that makes it a credential."""
    token = share_token(path)
    if token is None or "." not in token:
        return path
    return path.replace(token, token.split(".", 1)[0] + ".…", 1)


def _request_id(request: web.Request) -> str | None:
    """The client's X-Request-Id, kept with the audit record when it is a sane token."""
    value = request.headers.get("X-Request-Id", "")
    if value and len(value) <= 64 and value.isascii() and value.isprintable():
        return value
    return None


def _interaction(request: web.Request) -> tuple[str, str]:
    """AuditEvent action and restful-interaction subtype, from the method and the path."""
    if request.method == "POST":
        return "C", "create"
    if request.method in ("PUT", "PATCH"):
        return "U", "update"
    if request.method == "DELETE":
        return "D", "delete"
    last = request.path.rstrip("/").rsplit("/", 1)[-1]
    if last.startswith("$"):
        return "E", "operation"
    if last in ("studies", "series", "instances") or (
        request.path.startswith("/fhir/") and request.path.count("/") == 2
    ):
        return "E", "search-type"
    return "R", "read"


def _authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise Unauthenticated("a bearer token is required", error=None)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <token>'", error="invalid_request"
        )
    try:
        return request.app[CORE].tokens.verify(token.strip())
    except TokenError as exc:
        raise Unauthenticated(exc.description, error=exc.error) from None


def share_token(path: str) -> str | None:
    """The share token of a resident portal path (/portal/s/{token}/…): the link itself is
    the credential, so a phone needs no account."""
    if not path.startswith(PORTAL_SHARE_PREFIX):
        return None
    token = path[len(PORTAL_SHARE_PREFIX) :].split("/", 1)[0]
    return token or None


async def _share_principal(request: web.Request, access: Access, token: str) -> Principal:
    """The resident a share speaks for, scoped to what it covers: read their own records
    (patient/ scopes), and only once its second factor, if any, has been answered here."""
    shares = request.app[CORE].shares
    share = await shares.open(token)
    access.share = share
    access.share_unlocked = share.second_factor == "none" or shares.session_valid(
        share, request.cookies.get(SHARE_SESSION_COOKIE)
    )
    return Principal(
        subject=f"share:{share.id}",
        role="resident",
        facility_id=None,
        scopes=frozenset({"patient/*.rs"}),
        patient=patient_id_of(share.person_key),
        token_id=share.id,
        expires_at=share.expires_at.timestamp(),
    )


def _break_glass(request: web.Request) -> str | None:
    reason = request.headers.get(BREAK_GLASS_HEADER)
    if reason is None:
        return None
    reason = reason.strip()
    if not reason:
        raise Forbidden(f"{BREAK_GLASS_HEADER} needs a reason")
    return reason[:_MAX_REASON]


def _render(
    request: web.Request, status: int, code: str, text: str, headers: Mapping[str, str]
) -> web.Response:
    renderers = request.app.get(RENDERERS, {})
    for prefix, render in renderers.items():
        if request.path.startswith(prefix):
            return render(request, status, code, text, headers)
    return web.json_response({"error": code, "detail": text}, status=status, headers=headers)
