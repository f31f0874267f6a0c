"""The fast shared store, in-process and against a real Redis."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.cache import Cache, CacheError, MemoryCache, RedisCache, open_cache
from gateway.errors import ConfigError, GatewayError


async def test_open_cache_kinds(cache: Cache, cache_target: tuple[str | None, str]) -> None:
    """No URL gives the in-process cache; a redis:// URL gives Redis. Both are a Cache."""
    assert isinstance(cache, Cache)
    assert isinstance(cache, MemoryCache if cache_target[0] is None else RedisCache)


async def test_set_get_delete(cache: Cache) -> None:
    """Bytes come back as stored, any byte value; absent and deleted keys are None."""
    blob = bytes(range(256))
    assert await cache.get("k") is None
    await cache.set("k", blob)
    assert await cache.get("k") == blob
    await cache.set("k", b"replaced")
    assert await cache.get("k") == b"replaced"
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.delete("k")  # deleting an absent key is fine


async def test_set_with_ttl_expires(cache: Cache) -> None:
    """An entry set with a ttl is gone after it; one set again without a ttl stays."""
    await cache.set("short", b"1", ttl=0.2)
    await cache.set("kept", b"1", ttl=0.2)
    await cache.set("kept", b"2")
    await cache.set("long", b"1", ttl=60)
    assert await cache.get("short") == b"1"
    await asyncio.sleep(0.35)
    assert await cache.get("short") is None
    assert await cache.get("kept") == b"2"
    assert await cache.get("long") == b"1"


async def test_ttl_must_be_positive(cache: Cache) -> None:
    """A zero or negative ttl is a mistake, not 'never' nor 'at once'."""
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", b"v", ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        await cache.incr("n", ttl=-1)


async def test_incr_counts(cache: Cache) -> None:
    """incr starts from 0, adds the amount, and the counter reads back as decimal bytes."""
    assert await cache.incr("n") == 1
    assert await cache.incr("n") == 2
    assert await cache.incr("n", 5) == 7
    assert await cache.incr("n", -3) == 4
    assert await cache.get("n") == b"4"
    await cache.set("m", b"10")
    assert await cache.incr("m") == 11


async def test_concurrent_incr_loses_no_count(cache: Cache) -> None:
    """Fifty increments at once give fifty distinct values and a total of fifty."""
    values = await asyncio.gather(*(cache.incr("hits", ttl=30) for _ in range(50)))
    assert sorted(values) == list(range(1, 51))
    assert await cache.get("hits") == b"50"


async def test_incr_ttl_starts_at_first_increment(cache: Cache) -> None:
    """A counter's ttl runs from its first increment: later ones do not extend it."""
    assert await cache.incr("window", ttl=0.4) == 1
    await asyncio.sleep(0.25)
    assert await cache.incr("window", ttl=0.4) == 2
    await asyncio.sleep(0.25)  # 0.5 s after the first increment, 0.25 s after the second
    assert await cache.get("window") is None
    assert await cache.incr("window", ttl=0.4) == 1  # a new window


async def test_incr_on_non_integer_is_cache_error(cache: Cache) -> None:
    """Incrementing a value that is not an integer fails and leaves the value alone."""
    await cache.set("k", b"not a number")
    with pytest.raises(CacheError) as caught:
        await cache.incr("k")
    assert isinstance(caught.value, GatewayError)
    assert await cache.get("k") == b"not a number"


async def test_memory_cache_evicts_least_recently_used() -> None:
    """Past max_entries the least recently used entry goes; reads count as use."""
    cache = MemoryCache(max_entries=3)
    for key in ("a", "b", "c"):
        await cache.set(key, key.encode())
    assert await cache.get("a") == b"a"  # now b is the least recently used
    await cache.set("d", b"d")
    assert len(cache) == 3
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in ("a", "c", "d")] == [b"a", b"c", b"d"]
    await cache.incr("e")  # counters count towards the bound too; a is now the oldest
    assert len(cache) == 3
    assert await cache.get("a") is None


def test_memory_cache_needs_room_for_one_entry() -> None:
    """A bound below one entry is refused."""
    with pytest.raises(ValueError, match="max_entries"):
        MemoryCache(max_entries=0)


async def test_redis_keys_live_under_the_namespace(redis_url: str, redis_namespace: str) -> None:
    """Keys are written with the namespace prefix; another namespace does not see them."""
    cache = await open_cache(redis_url, namespace=redis_namespace)
    other = await open_cache(redis_url, namespace=redis_namespace + "other:")
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await cache.set("k", b"v", ttl=60)
        assert await raw.get(redis_namespace + "k") == b"v"
        assert 0 < await raw.pttl(redis_namespace + "k") <= 60_000
        assert await other.get("k") is None
        await cache.incr("n", ttl=60)
        assert await raw.get(redis_namespace + "n") == b"1"
    finally:
        await cache.close()
        await other.close()
        await raw.aclose()


async def test_open_cache_refuses_unreachable_redis() -> None:
    """Nothing listening at the URL: a ConfigError at open, not at the first request."""
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1\b"):
        await open_cache("redis://127.0.0.1:1/0")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/0", "memcached://127.0.0.1", "redis://127.0.0.1:notaport/0"]
)
async def test_open_cache_refuses_malformed_urls(url: str) -> None:
    """A URL that is not a Redis URL is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        await open_cache(url)
    assert isinstance(caught.value, GatewayError)


async def test_open_cache_refuses_what_redis_refuses(redis_url: str) -> None:
    """A database number or password the server refuses is a ConfigError hiding the password."""
    server = urlsplit(redis_url).netloc.rpartition("@")[2]
    with pytest.raises(ConfigError):
        await open_cache(f"redis://{server}/99999")
    with pytest.raises(ConfigError) as caught:
        await open_cache(f"redis://nobody:wr0ng-pw@{server}/15")
    assert "wr0ng-pw" not in str(caught.value)
    assert "nobody:***@" in str(caught.value)
