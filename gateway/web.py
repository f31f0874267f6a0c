"""HTTP plumbing shared by the faces: the core's app key, metrics and last-resort errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .core import Core
from .metrics import HTTP_REQUESTS, HTTP_SECONDS

log = logging.getLogger(__name__)

CORE = web.AppKey("core", Core)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route; turn an unexpected exception into a clean 500."""
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        # Log the failure without the request's query (it may hold patient identifiers).
        log.exception("unhandled error", extra={"route": name, "method": request.method})
        return web.json_response(
            {"error": "internal error", "detail": "the gateway failed to answer; see its log"},
            status=500,
        )
    finally:
        HTTP_REQUESTS.labels(name, f"{status // 100}xx").inc()
        HTTP_SECONDS.labels(name).observe(time.perf_counter() - start)
