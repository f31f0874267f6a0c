"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import NoReturn

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

# The simulated city (seed data and the simulator process) as session fixtures.
pytest_plugins = ["tests.city", "tests.loopback", "tests.orthanc", "tests.browser"]

# --- Real PostgreSQL and Redis ------------------------------------------------------------
# Storage and cache tests run against the real servers, not mocks. Outside CI a missing
# server skips those tests with the reason; with CI=true it fails them, so a broken CI service
# can never turn into a green run that tested nothing.

PG_ADMIN_URL = os.environ.get(
    "HUREN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HUREN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SERVICE_TIMEOUT = 5.0  # seconds to reach a test server before calling it unreachable

# Why a server was unreachable, found once per session so later tests do not wait again.
_unreachable: dict[str, str] = {}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _unavailable(service: str) -> NoReturn:
    reason = _unreachable[service]
    if _in_ci():
        pytest.fail(f"{reason} (CI is set: a test server that is down fails the run)")
    pytest.skip(reason)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """URL (``postgresql://``) of a fresh, empty PostgreSQL database, dropped after the test.

    The server is ``HUREN_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/
    test``); its user needs CREATEDB.
    """
    if "postgresql" in _unreachable:
        _unavailable("postgresql")
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=SERVICE_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _unreachable["postgresql"] = f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc!r}"
        _unavailable("postgresql")
    name = f"huren_test_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE ends connections a failed test left open (PostgreSQL 13 and later).
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def redis_url() -> str:
    """URL of the test Redis (``HUREN_TEST_REDIS_URL``, default db 15 on localhost).

    The database is shared: write only under a ``redis_namespace``.
    """
    if "redis" in _unreachable:
        _unavailable("redis")
    client = aioredis.Redis.from_url(
        REDIS_URL, socket_connect_timeout=SERVICE_TIMEOUT, socket_timeout=SERVICE_TIMEOUT
    )
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        _unreachable["redis"] = f"Redis unreachable at {REDIS_URL}: {exc!r}"
        _unavailable("redis")
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def redis_namespace(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted after the test."""
    namespace = f"huren-test:{uuid.uuid4().hex}:"
    yield namespace
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
