"""The fast shared store: query cache, counters, rate limits, revocations, breaker state.

In-process by default; Redis when several gateway processes must share it (DESIGN.md,
Storage). Both keep the same contract: values are bytes, counters are integers stored as
their decimal text (so ``get`` on a counter returns ``b"3"``), and a ``ttl`` is in seconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import Final, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import ConfigError, GatewayError

__all__ = ["Cache", "CacheError", "MemoryCache", "RedisCache", "open_cache"]

DEFAULT_NAMESPACE: Final = "huren:"  # prefix of every key this gateway writes to Redis
MEMORY_MAX_ENTRIES: Final = 100_000  # in-process entries kept before the least recent goes
REDIS_OPEN_TIMEOUT: Final = 10.0  # seconds for the first PING, so a bad URL fails at start-up
# PEXPIRE ... NX (set an expiry only where none is set), which incr relies on, came in 7.0.
REDIS_MIN_VERSION: Final = (7, 0)


class CacheError(GatewayError):
    """The cache could not do what was asked: Redis failed, or a counter is not an integer."""


@runtime_checkable
class Cache(Protocol):
    """What the gateway needs of a fast key-value store."""

    async def get(self, key: str) -> bytes | None:
        """Return the value at ``key``, or None if absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` at ``key``, expiring after ``ttl`` seconds (never if None)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the counter at ``key`` (absent counts as 0); return the new value.

        ``ttl`` is applied only when the counter has no expiry yet, typically when this call
        creates it, so a window of ``ttl`` seconds starts at the first increment.
        """
        ...

    async def close(self) -> None:
        """Release connections; the cache is not used afterwards."""
        ...


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None (got {ttl!r})")


def _as_int(key: str, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise CacheError(f"counter {key!r} holds {value[:40]!r}, not an integer") from None


class MemoryCache:
    """An in-process cache with per-entry expiry, bounded by least-recently-used eviction.

    Not shared between processes; every method runs without awaiting, so it is atomic on
    the event loop.
    """

    def __init__(self, max_entries: int = MEMORY_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries!r})")
        self.max_entries = max_entries
        # key -> (value, monotonic deadline or None); most recently used at the end
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline = entry[1]
        if deadline is not None and time.monotonic() >= deadline:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _put(self, key: str, value: bytes, deadline: float | None) -> None:
        self._entries[key] = (value, deadline)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        self._put(key, bytes(value), None if ttl is None else time.monotonic() + ttl)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        entry = self._live(key)
        current, deadline = (0, None) if entry is None else (_as_int(key, entry[0]), entry[1])
        if deadline is None and ttl is not None:
            deadline = time.monotonic() + ttl
        new = current + amount
        self._put(key, str(new).encode("ascii"), deadline)
        return new

    async def close(self) -> None:
        self._entries.clear()


def _ttl_ms(ttl: float) -> int:
    # Redis counts in whole milliseconds and refuses 0; round up so an entry never outlives
    # its ttl by less than asked, nor is refused.
    return max(1, math.ceil(ttl * 1000))


class RedisCache:
    """A cache in Redis, shared by every gateway process; keys are prefixed by ``namespace``.

    Redis failures are raised as :class:`CacheError`.
    """

    def __init__(self, client: aioredis.Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client = client
        self.namespace = namespace

    def _key(self, key: str) -> str:
        return self.namespace + key

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._key(key))
        except RedisError as exc:
            raise CacheError(f"redis GET failed: {exc}") from exc
        if value is None or isinstance(value, bytes):
            return value
        return value.encode()  # only if a client was built with decode_responses=True

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        try:
            await self._client.set(self._key(key), value, px=None if ttl is None else _ttl_ms(ttl))
        except RedisError as exc:
            raise CacheError(f"redis SET failed: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete(self._key(key))
        except RedisError as exc:
            raise CacheError(f"redis DEL failed: {exc}") from exc

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        name = self._key(key)
        try:
            if ttl is None:
                return int(await self._client.incrby(name, amount))
            # One MULTI/EXEC: the counter never exists without its expiry, even if this
            # process dies between the two commands.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(name, amount)
                pipe.pexpire(name, _ttl_ms(ttl), nx=True)
                value, _ = await pipe.execute()
            return int(value)
        except RedisError as exc:
            raise CacheError(f"redis INCRBY {key!r} failed: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()


def _redacted(url: str) -> str:
    """``url`` with its password (userinfo or ``password=`` query) masked, for messages."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return "<unparseable URL>"
    host = parts.netloc.rpartition("@")[2]
    userinfo = (user or "") + (":***" if password else "")
    netloc = f"{userinfo}@{host}" if userinfo else host
    query = "&".join(
        "password=***" if p.lower().startswith("password=") else p
        for p in parts.query.split("&")
        if p
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        return (0,)


async def open_cache(url: str | None, *, namespace: str = DEFAULT_NAMESPACE) -> Cache:
    """Open the cache: in-process if ``url`` is None, else Redis (``HUREN_REDIS_URL``).

    Parameters
    ----------
    url
        ``redis://``, ``rediss://`` or ``unix://`` URL, or None for a :class:`MemoryCache`.
    namespace
        Prefix of every Redis key, so several deployments can share one Redis.

    Raises
    ------
    ConfigError
        If the URL is malformed, or Redis cannot be reached, refuses the credentials or the
        database number, or is older than 7.0. Found at start-up, not at the first request.
    """
    if url is None:
        return MemoryCache()
    shown = _redacted(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"cache URL must be redis://, rediss:// or unix:// (got {shown!r})")
    try:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=5.0)
    except ValueError as exc:
        raise ConfigError(f"cache URL {shown!r} is malformed: {exc}") from exc
    try:
        async with asyncio.timeout(REDIS_OPEN_TIMEOUT):
            await client.ping()
            info = await client.info("server")
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise ConfigError(f"cannot use Redis at {shown!r}: {exc or type(exc).__name__}") from exc
    if _version(str(info.get("redis_version", ""))) < REDIS_MIN_VERSION:
        await client.aclose()
        raise ConfigError(
            f"Redis at {shown!r} is version {info.get('redis_version')}; "
            f"{'.'.join(map(str, REDIS_MIN_VERSION))} or later is needed"
        )
    return RedisCache(client, namespace)
