"""The fast shared store: query cache, counters, rate limits, revocations, breaker state.

In-process by default; Redis when several gateway processes must share it (DESIGN.md,
Storage). Both keep the same contract: values are bytes, counters are integers stored as
their decimal text (so ``get`` on a counter returns ``b"3"``), and a ``ttl`` is in seconds.
Hashes of integer counters (``hincrby_many``, ``hgetall_many``) are a kind of key of their own:
reading or incrementing a hash as a plain value, or a plain value as a hash, is a
:class:`CacheError`, as Redis's WRONGTYPE is.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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
REDIS_DELETE_CHUNK: Final = 1_000  # keys per DEL command in delete_many
# A hash's fields and values as one text joined by newlines, and how many there are: redis-py's
# pure-Python reply parser takes about 1 s for 12 hashes of 12,000 fields sent as separate
# strings, and 20 ms to split one text. A field holding a newline makes the count disagree
# with the pieces; that hash is read again with a plain HGETALL.
_HGETALL_JOINED: Final = """
local flat = redis.call('HGETALL', KEYS[1])
return {#flat, table.concat(flat, '\\n')}
"""


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

    async def incr_many(self, keys: Sequence[str], ttl: float) -> list[int]:
        """:meth:`incr` by one of each key, in one round trip; the new values, in order."""
        ...

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key of ``keys`` that is present, values and hashes alike."""
        ...

    async def hincrby_many(
        self, increments: Mapping[str, Mapping[str, int]], ttl: float | None = None
    ) -> None:
        """Add to integer fields of hashes: ``{key: {field: amount}}``, in one round trip.

        Absent hashes and fields count as 0. The batch is applied whole or not at all: no
        reader sees half of it, and a failure part way leaves none of it applied in memory
        (in Redis, a MULTI/EXEC that a WRONGTYPE key can still fail part way). ``ttl`` is
        applied to a hash only when it has no expiry yet, as for :meth:`incr`.
        """
        ...

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        """Return the fields of each hash of ``keys`` (``{}`` if absent), in one round trip.

        Raises
        ------
        CacheError
            If a key holds a plain value, or a field is not an integer.
        """
        ...

    async def publish(self, channel: str, message: bytes) -> None:
        """Tell every process subscribed to ``channel`` (a registry change, say)."""
        ...

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """The messages published on ``channel`` from now on, until the iterator is closed."""
        ...

    async def close(self) -> None:
        """Release connections; the cache is not used afterwards."""
        ...


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None (got {ttl!r})")


def _wrong_type(key: str, want: str) -> CacheError:
    return CacheError(f"key {key!r} holds a {'value' if want == 'hash' else 'hash'}, not a {want}")


def _as_int(key: str, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise CacheError(f"counter {key!r} holds {value[:40]!r}, not an integer") from None


class MemoryCache:
    """An in-process cache with per-entry expiry, bounded by least-recently-used eviction.

    Not shared between processes; every method runs without awaiting, so it is atomic on
    the event loop. Hashes (counters by field) are kept apart from the bounded entries and are
    never evicted: a count that vanished silently would be a wrong answer, not a cache miss.
    """

    def __init__(self, max_entries: int = MEMORY_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries!r})")
        self.max_entries = max_entries
        # key -> (value, monotonic deadline or None); most recently used at the end
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        # key -> (fields, monotonic deadline or None); unbounded, see the class docstring
        self._hashes: dict[str, tuple[dict[str, int], float | None]] = {}
        self._subscribers: dict[str, list[asyncio.Queue[bytes]]] = {}

    def __len__(self) -> int:
        """Entries under the ``max_entries`` bound; hashes are not counted."""
        return len(self._entries)

    def _live_hash(self, key: str) -> tuple[dict[str, int], float | None] | None:
        entry = self._hashes.get(key)
        if entry is None:
            return None
        deadline = entry[1]
        if deadline is not None and time.monotonic() >= deadline:
            del self._hashes[key]
            return None
        return entry

    def _not_a_hash(self, key: str) -> None:
        if self._live_hash(key) is not None:
            raise _wrong_type(key, "value")

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
        self._not_a_hash(key)
        entry = self._live(key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        self._hashes.pop(key, None)  # as Redis SET replaces a key of any type
        self._put(key, bytes(value), None if ttl is None else time.monotonic() + ttl)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
        self._hashes.pop(key, None)

    async def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._entries.pop(key, None)
            self._hashes.pop(key, None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        self._not_a_hash(key)
        entry = self._live(key)
        current, deadline = (0, None) if entry is None else (_as_int(key, entry[0]), entry[1])
        if deadline is None and ttl is not None:
            deadline = time.monotonic() + ttl
        new = current + amount
        self._put(key, str(new).encode("ascii"), deadline)
        return new

    async def incr_many(self, keys: Sequence[str], ttl: float) -> list[int]:
        return [await self.incr(key, ttl=ttl) for key in keys]

    async def hincrby_many(
        self, increments: Mapping[str, Mapping[str, int]], ttl: float | None = None
    ) -> None:
        _check_ttl(ttl)
        for key in increments:  # check all before changing any: all or nothing
            if self._live(key) is not None:
                raise _wrong_type(key, "hash")
        now = time.monotonic()
        for key, amounts in increments.items():
            entry = self._live_hash(key)
            if entry is None:
                if not amounts:
                    continue  # as in Redis, a hash without a field does not exist
                fields: dict[str, int] = {}
                deadline = None
            else:
                fields, deadline = entry
            for field, amount in amounts.items():
                fields[field] = fields.get(field, 0) + amount
            if deadline is None and ttl is not None:
                deadline = now + ttl
            self._hashes[key] = (fields, deadline)

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        out: list[dict[str, int]] = []
        for key in keys:
            entry = self._live_hash(key)
            if entry is None:
                if self._live(key) is not None:
                    raise _wrong_type(key, "hash")
                out.append({})
            else:
                out.append(dict(entry[0]))
        return out

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in self._subscribers.get(channel, []):
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.setdefault(channel, []).append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers[channel].remove(queue)

    async def close(self) -> None:
        self._entries.clear()
        self._hashes.clear()


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
        self._hgetall_joined = client.register_script(_HGETALL_JOINED)

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

    async def incr_many(self, keys: Sequence[str], ttl: float) -> list[int]:
        _check_ttl(ttl)
        try:
            # One MULTI/EXEC for them all: a rate check is one round trip, not one per key.
            async with self._client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.incrby(self._key(key), 1)
                    pipe.pexpire(self._key(key), _ttl_ms(ttl), nx=True)
                replies = await pipe.execute()
            return [int(v) for v in replies[::2]]
        except RedisError as exc:
            raise CacheError(f"redis INCRBY of {len(keys)} keys failed: {exc}") from exc

    async def delete_many(self, keys: Iterable[str]) -> None:
        names = [self._key(key) for key in keys]
        if not names:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for i in range(0, len(names), REDIS_DELETE_CHUNK):
                    pipe.delete(*names[i : i + REDIS_DELETE_CHUNK])
                await pipe.execute()
        except RedisError as exc:
            raise CacheError(f"redis DEL of {len(names)} keys failed: {exc}") from exc

    async def hincrby_many(
        self, increments: Mapping[str, Mapping[str, int]], ttl: float | None = None
    ) -> None:
        _check_ttl(ttl)
        if not any(increments.values()):
            return
        try:
            # MULTI/EXEC: other clients never see part of a batch, and a connection lost
            # while it is sent applies none of it.
            async with self._client.pipeline(transaction=True) as pipe:
                for key, amounts in increments.items():
                    name = self._key(key)
                    for field, amount in amounts.items():
                        pipe.hincrby(name, field, amount)
                    if ttl is not None and amounts:
                        pipe.pexpire(name, _ttl_ms(ttl), nx=True)
                await pipe.execute()
        except RedisError as exc:
            raise CacheError(f"redis HINCRBY of {len(increments)} hashes failed: {exc}") from exc

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    await self._hgetall_joined(keys=[self._key(key)], client=pipe)
                replies = await pipe.execute()
            out: list[dict[str, int]] = []
            for key, (count, joined) in zip(keys, replies, strict=True):
                text = joined.decode() if isinstance(joined, bytes) else str(joined)
                parts = text.split("\n") if count else []
                if len(parts) != count:  # a field holds a newline: read it the slow way
                    raw = await self._client.hgetall(self._key(key))
                    parts = [_text(p) for pair in raw.items() for p in pair]
                it = iter(parts)
                try:
                    out.append({field: int(value) for field, value in zip(it, it, strict=True)})
                except ValueError:
                    raise CacheError(f"hash {key!r} holds a field that is not an integer") from None
            return out
        except RedisError as exc:
            raise CacheError(f"redis HGETALL failed: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise CacheError(f"redis HGETALL: a field is not UTF-8 text: {exc}") from exc

    async def publish(self, channel: str, message: bytes) -> None:
        try:
            await self._client.publish(self._key(channel), message)
        except RedisError as exc:
            raise CacheError(f"redis PUBLISH failed: {exc}") from exc

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._key(channel))
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message["data"]
                    yield data if isinstance(data, bytes) else str(data).encode()
        except RedisError as exc:
            raise CacheError(f"redis SUBSCRIBE failed: {exc}") from exc
        finally:
            with contextlib.suppress(RedisError, RuntimeError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
