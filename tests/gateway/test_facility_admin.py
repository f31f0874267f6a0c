"""Registrations made in one gateway process reach the others at once (pub/sub on the shared
cache, Redis when configured), survive a restart, and keep credentials sealed; on SQLite and
PostgreSQL, with the in-process cache and with Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from adapters.archive import Archive
from adapters.types import DicomWebEndpoint
from gateway.cache import Cache, open_cache
from gateway.credentials import Credentials, Vault
from gateway.facility_admin import FacilityAdmin, facility_registration
from gateway.recognition import Recognition
from gateway.recognition_catalogue import load_catalogue
from gateway.registry import Facility, Registry, load_registry, parse_facility
from gateway.storage import Store
from gateway.upstreams import Upstreams

SECRET = b"k" * 32


def _new_facility(registry: Registry, url: str = "http://127.0.0.1:9/dicomweb") -> Facility:
    return parse_facility(
        {
            "id": "F120",
            "name_zh": "测试医院",
            "name_en": "Test Hospital",
            "level": "一级",
            "kind": "community",
            "district": "天宁区",
            "alliances": [],
            "mrn_issuer": "CZ-F120",
            "imaging": {"kind": "dicomweb", "url": url},
            "lab": {"kind": "none"},
        },
        registry,
    )


@contextlib.asynccontextmanager
async def _process(
    store_url: str, cache_target: tuple[str | None, str], tmp: Path
) -> AsyncIterator[FacilityAdmin]:
    """What one gateway process holds: its own registry, adapters, engine, cache client."""
    registry = load_registry(None)
    store = await Store.open(store_url)
    url, namespace = cache_target
    cache: Cache = await open_cache(url, namespace=namespace)
    session = aiohttp.ClientSession()
    executor = ThreadPoolExecutor(2)
    upstreams = Upstreams(registry, session, executor, Archive(tmp / "archive"))
    recognition = Recognition(load_catalogue(None, registry), registry)
    admin = FacilityAdmin(store, cache, registry, upstreams, recognition, Vault(SECRET))
    await admin.load()
    admin.start()
    try:
        yield admin
    finally:
        await admin.stop()
        await upstreams.close()
        await session.close()
        executor.shutdown()
        await cache.close()
        await store.close()


async def _eventually(check: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "not seen in time"
        await asyncio.sleep(0.05)


Backend = tuple[str, tuple[str | None, str]]


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """(store URL, cache target) of the embedded defaults, and of PostgreSQL with Redis."""
    if request.param == "sqlite+memory":
        return f"sqlite:///{tmp_path / 'huren.db'}", (None, "huren:")
    url: str = request.getfixturevalue("pg_url")
    redis_url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("redis_namespace")
    return url, (redis_url, namespace)


async def test_a_registration_reaches_every_process_and_a_restart(
    backend: Backend, tmp_path: Path
) -> None:
    store_url, target = backend
    async with (
        _process(store_url, target, tmp_path) as one,
        _process(store_url, target, tmp_path) as two,
    ):
        facility = _new_facility(one.registry)
        await one.save(facility, Credentials(bearer_token="tok-123"), by="test")
        assert one.registry["F120"].status == "pending"
        assert "F120" not in one.upstreams.imaging_facilities()  # pending: not asked
        # The other process hears of it: by message with Redis, by its watch without.
        await _eventually(lambda: two.registry.get("F120") is not None)
        assert two.registry["F120"].name_zh == "测试医院"
        await one.set_status("F120", "live", by="test")
        await _eventually(lambda: two.registry["F120"].status == "live")
        assert "F120" in two.upstreams.imaging_facilities()
        moved = replace(
            two.registry["F120"], imaging=DicomWebEndpoint("dicomweb", "http://127.0.0.1:10/dw")
        )
        await two.save(moved, None, by="test", keep_credentials=True)
        await _eventually(lambda: one.registry["F120"].imaging == moved.imaging)
        creds = await one.credentials("F120")
        assert creds is not None and creds.headers() == {"Authorization": "Bearer tok-123"}
    # A restart reads the registrations back.
    async with _process(store_url, target, tmp_path) as again:
        assert again.registry["F120"].status == "live"
        async with again.store.engine.connect() as conn:
            sealed = (await conn.execute(facility_registration.select())).first()
        assert sealed is not None and "tok-123" not in str(sealed._mapping["credentials"])
        async with again.store.engine.begin() as conn:
            await conn.execute(facility_registration.delete())


async def test_credentials_parse_and_seal() -> None:
    vault = Vault(SECRET)
    basic = Credentials.parse({"username": "huren", "password": "pw"})
    assert "pw" not in repr(basic) and basic.headers()["Authorization"].startswith("Basic ")
    assert vault.open(vault.seal(basic)) == basic
    for bad in ({"username": "u"}, {"password": "p"}, {"bearer_token": ""}, {"x": "y"}, "pw"):
        with pytest.raises(ValueError):
            Credentials.parse(bad)
    with pytest.raises(Exception, match="cannot be opened"):
        Vault(b"z" * 32).open(vault.seal(basic))


async def test_pub_sub_on_each_cache(cache: Cache) -> None:
    received: list[bytes] = []

    async def listen() -> None:
        async for message in cache.subscribe("registry-test"):
            received.append(message)
            if len(received) == 2:
                return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed before anything is published
    await cache.publish("registry-test", b"F120")
    await cache.publish("registry-test", b"F121")
    await asyncio.wait_for(task, 5)
    assert received == [b"F120", b"F121"]
