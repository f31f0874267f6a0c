"""Fixtures of the gateway's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.cache import Cache, open_cache


@pytest.fixture(params=["memory", "redis"])
def cache_target(request: pytest.FixtureRequest) -> tuple[str | None, str]:
    """(URL, namespace) of each kind of cache; Redis keys go under the test's own namespace."""
    if request.param == "memory":
        return None, "huren:"
    url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("redis_namespace")
    return url, namespace


@pytest.fixture
async def cache(cache_target: tuple[str | None, str]) -> AsyncIterator[Cache]:
    url, namespace = cache_target
    c = await open_cache(url, namespace=namespace)
    try:
        yield c
    finally:
        await c.close()
