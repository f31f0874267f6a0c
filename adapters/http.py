"""The one place HTTP adapters turn aiohttp failures into Upstream errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from yarl import URL

from .errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable

#: Largest JSON answer read into memory from one upstream search (bulk data is streamed).
MAX_JSON_BYTES = 32 * 1024 * 1024


async def get_json(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    params: Mapping[str, str] | None = None,
    accept: str,
    ok_empty: bool = False,
) -> Any:
    """GET a JSON document; map every failure onto an `UpstreamError` kind."""
    async with upstream_errors():
        async with session.get(url, params=params, headers={"Accept": accept}) as resp:
            if resp.status == 204 and ok_empty:
                return []
            if resp.status >= 400:
                raise UpstreamError(f"HTTP {resp.status} from {resp.url.path}", status=resp.status)
            if resp.content_length is not None and resp.content_length > MAX_JSON_BYTES:
                raise UpstreamProtocolError(f"answer of {resp.content_length} bytes is too large")
            # read(n) gives what has arrived so far, not the whole body: read to the end.
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_JSON_BYTES:
                    raise UpstreamProtocolError("answer is too large")
                chunks.append(chunk)
    body = b"".join(chunks)
    if not body and ok_empty:
        return []
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UpstreamProtocolError(f"answer is not JSON ({body[:16]!r}…)") from None


@asynccontextmanager
async def upstream_errors() -> AsyncIterator[None]:
    """Map aiohttp's failures, raised anywhere in the block, onto `UpstreamError` kinds."""
    try:
        yield
    except UpstreamError:
        raise  # already in our terms (and a ValueError or TimeoutError subclass itself)
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"cannot connect: {exc.os_error.strerror or exc}") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamUnavailable(f"connection lost: {type(exc).__name__}") from None
    except aiohttp.ClientResponseError as exc:
        raise UpstreamProtocolError(f"malformed HTTP answer: {exc.message}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # aiohttp's multipart reader on a malformed body
        raise UpstreamProtocolError(f"malformed answer: {exc}") from None
    except TimeoutError:
        raise UpstreamTimeout("no answer within the per-request timeout") from None
