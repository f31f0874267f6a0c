"""Fixtures of the gateway's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.cache import Cache, open_cache
from gateway.storage import Store


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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each back end."""
    if request.param == "sqlite":
        # A directory that does not exist yet: opening the store creates it.
        return f"sqlite:///{tmp_path / 'data' / 'huren.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await Store.open(store_url)
    try:
        yield s
    finally:
        await s.close()
