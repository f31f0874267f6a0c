"""Look-up statistics: counters in the fast store agree with the audit table.

Counters run on the in-process cache and on the real Redis; the audit table on SQLite and on
the real PostgreSQL. The table here is a stand-in with audit_lookup's columns, in a MetaData
of its own, so these tests do not depend on gateway/audit.py.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.cache import Cache, CacheError, MemoryCache, open_cache
from gateway.lookup_stats import GROUPINGS, Grouping, LookupCounters, rebuild, reconcile

Lookup = tuple[str, str, str]

# --- Fixtures -----------------------------------------------------------------------------


@pytest.fixture
def counters(cache: Cache) -> LookupCounters:
    return LookupCounters(cache)


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """Async URL of an empty SQLite file or of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return make_url(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")
    pg_url: str = request.getfixturevalue("pg_url")
    return make_url(pg_url).set(drivername="postgresql+asyncpg")


@pytest.fixture
async def audit(audit_url: URL) -> AsyncIterator[tuple[AsyncEngine, Table]]:
    """(engine, table) of an empty audit_lookup stand-in with a unique name, dropped after."""
    table = Table(
        f"audit_lookup_test_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("event_id", String(32), nullable=False),
        Column("day", String(10), nullable=False),
        Column("requester", String(16), nullable=False),
        Column("holder", String(16), nullable=False),
    )
    engine = create_async_engine(audit_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.create)
        yield engine, table
        async with engine.begin() as conn:
            await conn.run_sync(table.drop)
    finally:
        await engine.dispose()


# --- Data ---------------------------------------------------------------------------------

FIRST_DAY = date(2025, 12, 20)
LAST_DAY = date(2027, 1, 10)
# Ids of different lengths and characters on both sides of the pair separator ('>') in code
# point order, so an order by field text would differ from an order by (requester, holder).
FACILITIES = [f"F{n:03d}" for n in range(1, 19)] + ["F1", "F10", "H7", "F01A", "Zx"]


def _random_lookups(seed: int, n: int) -> list[Lookup]:
    rng = random.Random(seed)
    span = (LAST_DAY - FIRST_DAY).days
    out: list[Lookup] = []
    for _ in range(n):
        day = (FIRST_DAY + timedelta(days=rng.randint(0, span))).isoformat()
        requester, holder = rng.sample(FACILITIES, 2)
        out.append((day, requester, holder))
    return out


async def _record(engine: AsyncEngine, table: Table, lookups: Sequence[Lookup]) -> None:
    rows = [
        {"event_id": f"e{i}", "day": d, "requester": r, "holder": h}
        for i, (d, r, h) in enumerate(lookups)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(table), rows)


async def _count(counters: LookupCounters, lookups: Sequence[Lookup], seed: int) -> None:
    """add() in batches of random size, as audit events come."""
    rng = random.Random(seed)
    i = 0
    while i < len(lookups):
        size = rng.choice([1, 2, 3, 50, 400])
        await counters.add(lookups[i : i + size])
        i += size


def _expected(
    lookups: Sequence[Lookup], start: date, end: date, group_by: Grouping
) -> list[dict[str, Any]]:
    """The answer, worked out the plain way."""
    first, last = start.isoformat(), end.isoformat()
    inside = [(d, r, h) for d, r, h in lookups if first <= d <= last and r != h]
    if group_by == "total":
        return [{"count": len(inside)}] if inside else []
    if group_by == "pair":
        pairs = Counter((r, h) for _, r, h in inside)
        return [{"requester": r, "holder": h, "count": n} for (r, h), n in sorted(pairs.items())]
    index = {"day": 0, "requester": 1, "holder": 2}[group_by]
    counts = Counter(lookup[index] for lookup in inside)
    return [{group_by: k, "count": n} for k, n in sorted(counts.items())]


RANGES = [
    (date(2026, 1, 1), date(2026, 12, 31)),  # a calendar year: whole months only
    (date(2025, 12, 1), date(2027, 1, 31)),  # beyond the data on both sides
    (date(2026, 1, 15), date(2026, 11, 20)),  # starts and ends mid-month
    (date(2025, 12, 25), date(2026, 12, 24)),  # a year across the new year, mid-month edges
    (date(2026, 2, 1), date(2026, 2, 28)),  # exactly one month
    (date(2026, 3, 5), date(2026, 3, 25)),  # inside one month
    (date(2026, 1, 31), date(2026, 2, 1)),  # two days in two months
    (date(2026, 2, 28), date(2026, 2, 28)),  # single days
    (date(2026, 3, 1), date(2026, 3, 1)),
    (date(2026, 7, 16), date(2026, 7, 16)),
    (date(2027, 1, 10), date(2027, 1, 10)),
]


# --- Counters against the table -------------------------------------------------------------


async def test_counters_agree_with_the_audit_table(
    counters: LookupCounters, audit: tuple[AsyncEngine, Table]
) -> None:
    """Random look-ups over a year: every grouping of every range, counted three ways, agrees."""
    engine, table = audit
    lookups = _random_lookups(seed=5, n=6_000)
    await _record(engine, table, lookups)
    await _count(counters, lookups, seed=6)
    for start, end in RANGES:
        for group_by in GROUPINGS:
            expected = _expected(lookups, start, end, group_by)
            assert expected, (start, end, group_by)  # every range here has look-ups
            from_counters = await counters.query(start, end, group_by)
            from_table = await reconcile(engine, start, end, group_by, table=table)
            assert from_counters == expected, (start, end, group_by)
            assert from_table == expected, (start, end, group_by)


async def test_rows_have_the_documented_shape(counters: LookupCounters) -> None:
    await counters.add([("2026-01-03", "F002", "F001")] * 2 + [("2026-01-04", "F001", "F002")])
    day = date(2026, 1, 3)
    week = (day, day + timedelta(days=6))
    assert await counters.query(*week, "day") == [
        {"day": "2026-01-03", "count": 2},
        {"day": "2026-01-04", "count": 1},
    ]
    assert await counters.query(*week, "requester") == [
        {"requester": "F001", "count": 1},
        {"requester": "F002", "count": 2},
    ]
    assert await counters.query(*week, "holder") == [
        {"holder": "F001", "count": 2},
        {"holder": "F002", "count": 1},
    ]
    assert await counters.query(*week, "pair") == [
        {"requester": "F001", "holder": "F002", "count": 1},
        {"requester": "F002", "holder": "F001", "count": 2},
    ]
    assert await counters.query(*week, "total") == [{"count": 3}]
    assert await counters.query(day, day, "total") == [{"count": 2}]


async def test_empty_ranges_answer_nothing(
    counters: LookupCounters, audit: tuple[AsyncEngine, Table]
) -> None:
    """No look-ups in the range (or none at all): [] for every grouping, 'total' included."""
    engine, table = audit
    year = (date(2026, 1, 1), date(2026, 12, 31))
    for group_by in GROUPINGS:
        assert await counters.query(*year, group_by) == []
        assert await reconcile(engine, *year, group_by, table=table) == []
    lookups = [("2026-05-05", "F001", "F002"), ("2026-05-07", "F003", "F001")]
    await counters.add(lookups)
    await _record(engine, table, lookups)
    for start, end in [
        (date(2025, 1, 1), date(2025, 12, 31)),
        (date(2026, 5, 6), date(2026, 5, 6)),
        (date(2026, 5, 8), date(2026, 6, 30)),
    ]:
        for group_by in GROUPINGS:
            assert await counters.query(start, end, group_by) == [], (start, group_by)
            assert await reconcile(engine, start, end, group_by, table=table) == []


async def test_bad_range_and_grouping_are_value_errors(
    counters: LookupCounters, audit: tuple[AsyncEngine, Table]
) -> None:
    engine, table = audit
    start, end = date(2026, 3, 2), date(2026, 3, 1)
    for group_by in GROUPINGS:
        with pytest.raises(ValueError, match="before"):
            await counters.query(start, end, group_by)
        with pytest.raises(ValueError, match="before"):
            await reconcile(engine, start, end, group_by, table=table)
    with pytest.raises(ValueError, match="group_by"):
        await counters.query(end, end, "facility")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_by"):
        await reconcile(engine, end, end, "week", table=table)  # type: ignore[arg-type]


async def test_lookups_within_one_facility_are_not_counted(counters: LookupCounters) -> None:
    await counters.add([("2026-01-03", "F001", "F001"), ("2026-01-03", "F001", "F002")])
    day = date(2026, 1, 3)
    assert await counters.query(day, day, "pair") == [
        {"requester": "F001", "holder": "F002", "count": 1}
    ]
    assert await counters.query(day, day, "total") == [{"count": 1}]


@pytest.mark.parametrize(
    "bad",
    [
        ("2026-1-3", "F001", "F002"),
        ("20260103", "F001", "F002"),
        ("2026-02-30", "F001", "F002"),
        ("2026-01-03", "F0>1", "F002"),
        ("2026-01-03", "F001", ""),
    ],
)
async def test_malformed_lookups_are_refused_whole_batch(
    counters: LookupCounters, bad: Lookup
) -> None:
    """A malformed day or facility id is a ValueError and nothing of its batch is counted."""
    with pytest.raises(ValueError):
        await counters.add([("2026-01-03", "F003", "F004"), bad])
    year = (date(2026, 1, 1), date(2026, 12, 31))
    assert await counters.query(*year, "total") == []


class _KeyRecordingCache(MemoryCache):
    """A MemoryCache that remembers the keys each hgetall_many read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        self.reads.append(list(keys))
        return await super().hgetall_many(keys)


async def test_queries_read_rollups_not_days() -> None:
    """Whole periods are read as one hash; a range a day short of a year is the year less a day;
    whole months inside a range are never read day by day."""
    cache = _KeyRecordingCache()
    counters = LookupCounters(cache)
    await _count(counters, _random_lookups(seed=7, n=20_000), seed=8)

    async def read(start: date, end: date, group_by: Grouping) -> list[str]:
        cache.reads.clear()
        await counters.query(start, end, group_by)
        assert cache.reads[0] == ["lookups:months", "lookups:facilities"]
        return sorted(k for keys in cache.reads[1:] for k in keys)

    assert await read(date(2026, 1, 1), date(2026, 12, 31), "pair") == ["lookups:pair:2026"]
    assert await read(date(2026, 4, 1), date(2026, 6, 30), "holder") == ["lookups:hold:2026-Q2"]
    assert await read(date(2026, 5, 1), date(2026, 5, 31), "pair") == ["lookups:pair:2026-05"]
    assert await read(date(2026, 5, 16), date(2026, 5, 31), "pair") == ["lookups:pair:2026-05-H2"]
    assert await read(date(2026, 1, 2), date(2026, 12, 31), "pair") == [
        "lookups:pair:2026",
        "lookups:pair:2026-01-01",
    ]
    keys = await read(date(2026, 1, 30), date(2026, 4, 2), "requester")
    assert "lookups:req:2026-01-30" in keys
    assert "lookups:req:2026-04-02" in keys
    assert not [k for k in keys if k.startswith(("lookups:req:2026-02-", "lookups:req:2026-03-"))]
    assert len(keys) <= 6
    # day and total read the day totals of edge months only
    assert await read(date(2026, 1, 1), date(2026, 12, 31), "total") == []
    assert await read(date(2026, 1, 30), date(2026, 4, 2), "total") == [
        "lookups:days:2026-01",
        "lookups:days:2026-04",
    ]


async def test_random_ranges_agree(counters: LookupCounters) -> None:
    """Many random ranges, every grouping: the counters' cover is exact however it is chosen."""
    lookups = _random_lookups(seed=11, n=8_000)
    await _count(counters, lookups, seed=12)
    rng = random.Random(13)
    span = (LAST_DAY - FIRST_DAY).days + 20
    for _ in range(60):
        start = FIRST_DAY - timedelta(days=10) + timedelta(days=rng.randint(0, span))
        end = start + timedelta(days=rng.choice([0, 1, 6, 14, 15, 16, 30, 45, 90, 200, 364]))
        for group_by in GROUPINGS:
            assert await counters.query(start, end, group_by) == _expected(
                lookups, start, end, group_by
            ), (start, end, group_by)


async def test_rebuild_recounts_from_the_table(
    counters: LookupCounters, audit: tuple[AsyncEngine, Table]
) -> None:
    """Counters that lost increments (and hold some never recorded) are recounted exactly."""
    engine, table = audit
    lookups = _random_lookups(seed=9, n=3_000)
    await _record(engine, table, lookups)
    await counters.add(lookups[::3])  # two thirds were lost...
    await counters.add([("2024-06-01", "F001", "F002")])  # ...and one was never recorded
    total = await rebuild(engine, counters, table=table)
    assert total == len(lookups)
    for start, end in [(date(2024, 1, 1), date(2027, 12, 31)), *RANGES[2:5]]:
        for group_by in GROUPINGS:
            assert await counters.query(start, end, group_by) == await reconcile(
                engine, start, end, group_by, table=table
            )


async def test_clear_deletes_every_counter(cache: Cache) -> None:
    counters = LookupCounters(cache, prefix="stats-test:")
    others = LookupCounters(cache, prefix="stats-other:")
    await counters.add(_random_lookups(seed=10, n=500))
    await others.add([("2026-01-03", "F001", "F002")])
    await counters.clear()
    everything = (date(2020, 1, 1), date(2030, 12, 31))
    for group_by in GROUPINGS:
        assert await counters.query(*everything, group_by) == []
    assert await others.query(*everything, "total") == [{"count": 1}]
    await others.clear()
    if isinstance(cache, MemoryCache):
        assert not cache._hashes  # Redis: test_redis_hashes_live_under_the_namespace


# --- The cache's hash operations ------------------------------------------------------------


async def test_hincrby_many_and_hgetall_many(cache: Cache) -> None:
    await cache.hincrby_many({"h1": {"a": 1, "b": 2}, "h2": {"a": 5}})
    await cache.hincrby_many({"h1": {"a": 10, "c": -3}, "h3": {}})
    assert await cache.hgetall_many(["h1", "h2", "h3", "absent"]) == [
        {"a": 11, "b": 2, "c": -3},
        {"a": 5},
        {},
        {},
    ]
    assert await cache.hgetall_many([]) == []
    await cache.hincrby_many({})


async def test_hash_fields_may_hold_any_text(cache: Cache) -> None:
    """Fields with newlines, separators and non-ASCII text come back as written."""
    fields = {"line\nbreak": 1, "": 2, "医院>F002": 3, "\n": 4, "a b": 5}
    await cache.hincrby_many({"h": fields})
    assert await cache.hgetall_many(["h"]) == [fields]


async def test_hashes_and_values_are_different_kinds(cache: Cache) -> None:
    await cache.set("v", b"1")
    await cache.hincrby_many({"h": {"f": 1}})
    with pytest.raises(CacheError):
        await cache.hincrby_many({"v": {"f": 1}})
    with pytest.raises(CacheError):
        await cache.hgetall_many(["h", "v"])
    with pytest.raises(CacheError):
        await cache.get("h")
    with pytest.raises(CacheError):
        await cache.incr("h")
    assert await cache.get("v") == b"1"
    assert await cache.hgetall_many(["h"]) == [{"f": 1}]
    await cache.set("h", b"now a value")  # SET replaces a key of any kind, as in Redis
    assert await cache.get("h") == b"now a value"
    assert await cache.hgetall_many(["other"]) == [{}]


async def test_delete_and_delete_many_remove_hashes(cache: Cache) -> None:
    await cache.hincrby_many({f"h{i}": {"f": i + 1} for i in range(5)})
    await cache.set("v", b"x")
    await cache.delete("h0")
    await cache.delete_many(["h1", "h2", "v", "absent"])
    await cache.delete_many([])
    assert await cache.hgetall_many([f"h{i}" for i in range(5)]) == [{}, {}, {}, {"f": 4}, {"f": 5}]
    assert await cache.get("v") is None


async def test_hash_ttl_starts_at_creation(cache: Cache) -> None:
    await cache.hincrby_many({"h": {"f": 1}, "kept": {"f": 1}}, ttl=0.4)
    await cache.hincrby_many({"kept2": {"f": 1}})
    await asyncio.sleep(0.25)
    await cache.hincrby_many({"h": {"f": 1}}, ttl=0.4)  # does not extend the expiry
    assert await cache.hgetall_many(["h"]) == [{"f": 2}]
    await asyncio.sleep(0.25)
    assert await cache.hgetall_many(["h", "kept2"]) == [{}, {"f": 1}]
    with pytest.raises(ValueError, match="ttl"):
        await cache.hincrby_many({"h": {"f": 1}}, ttl=0)


async def test_memory_hashes_are_never_evicted() -> None:
    """The LRU bound is for cached values; counters in hashes must not vanish."""
    cache = MemoryCache(max_entries=2)
    await cache.hincrby_many({f"h{i}": {"f": 1} for i in range(10)})
    for i in range(5):
        await cache.set(f"v{i}", b"x")
    assert len(cache) == 2
    assert await cache.hgetall_many([f"h{i}" for i in range(10)]) == [{"f": 1}] * 10


async def test_memory_hincrby_many_is_all_or_nothing() -> None:
    cache = MemoryCache()
    await cache.set("v", b"1")
    with pytest.raises(CacheError):
        await cache.hincrby_many({"h": {"f": 1}, "v": {"f": 1}})
    assert await cache.hgetall_many(["h"]) == [{}]


async def test_redis_hashes_live_under_the_namespace(redis_url: str, redis_namespace: str) -> None:
    cache = await open_cache(redis_url, namespace=redis_namespace)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await cache.hincrby_many({"h": {"f": 3}}, ttl=60)
        assert await raw.hgetall(redis_namespace + "h") == {b"f": b"3"}
        assert 0 < await raw.pttl(redis_namespace + "h") <= 60_000
        counters = LookupCounters(cache)
        await counters.add([("2026-01-03", "F001", "F002")])
        keys = {k.decode() async for k in raw.scan_iter(match=f"{redis_namespace}*")}
        periods = ("2026", "2026-Q1", "2026-01", "2026-01-H1", "2026-01-03")
        assert keys == {
            redis_namespace + k
            for k in [
                "h",
                "lookups:months",
                "lookups:facilities",
                "lookups:days:2026-01",
                *(f"lookups:{kind}:{p}" for kind in ("req", "hold", "pair") for p in periods),
            ]
        }
        await counters.clear()
        keys = {k.decode() async for k in raw.scan_iter(match=f"{redis_namespace}*")}
        assert keys == {redis_namespace + "h"}
    finally:
        await cache.close()
        await raw.aclose()
