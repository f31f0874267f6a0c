"""Look-up statistics for regulators: cross-institution look-ups of images, counted.

Every cross-institution access is recorded durably as an audit event, with one
``audit_lookup`` row (event_id, day, requester, holder) per holding facility other than the
requester (gateway/audit.py). Beside that, :class:`LookupCounters` keeps counts of those
look-ups in the fast store (DESIGN.md, Storage: Redis when configured, in-process otherwise),
so ``/admin/stats/lookups`` answers a year by day, requesting facility, holding facility,
facility pair or in total without scanning the audit table. :func:`reconcile` computes the
same answer from the audit table with SQL, and :func:`rebuild` recounts the counters from it
after a crash lost increments.

Key layout
----------
Each key is a hash of integer counters, under the cache's own namespace (``huren:`` in Redis)
and the counters' ``prefix`` (``lookups:`` by default). Days are ``YYYY-MM-DD`` in China time,
as the audit rows have them. A ``PERIOD`` is one of five nested kinds: a year ``2026``, a
quarter ``2026-Q1``, a month ``2026-01``, a half month ``2026-01-H1`` (days 1 to 15) or
``2026-01-H2`` (16 to the end), or a day ``2026-01-03``.

=====================  ==============================  ======================================
key                    field                           value: look-ups ...
=====================  ==============================  ======================================
``months``             ``YYYY-MM``                     in that month (also the list of months
                                                       that have counters, for query and clear)
``days:YYYY-MM``       ``YYYY-MM-DD``                  on that day
``facilities``         facility id                     it asked for or answered, ever (its
                                                       size tells how dense pairs can be)
``req:PERIOD``         requesting facility id          asked by that facility in the period
``hold:PERIOD``        holding facility id             answered from that facility's holdings
``pair:PERIOD``        ``REQUESTER>HOLDER``            between the two in the period
=====================  ==============================  ======================================

Every look-up increments its ``req``, ``hold`` and ``pair`` field in each of the five periods
holding its day, and its fields of ``days:YYYY-MM``, ``months`` and ``facilities``; all of one
:meth:`LookupCounters.add` batch go in one MULTI/EXEC, so the rollups never disagree.

Reading a range
---------------
By day and in total, a query reads ``months`` (whole months) and the ``days:`` hashes of the
months it starts or ends inside: a few dozen fields. By facility or pair it covers the range
with periods, adding whole ones and subtracting the parts of a period outside the range where
that reads fewer fields: 2026 is ``pair:2026`` alone, 2026-01-02 to 2026-12-30 is ``pair:2026``
less two days, 2025-07-16 to 2026-07-15 is 2025-Q3 less 2025-07-H1, then 2025-Q4, 2026-Q1,
2026-Q2 and 2026-07-H1. Whole months inside the range are always read as months or larger
periods, never as days. The cover minimises an estimate of the fields read: ``KEY_COST`` per
key plus, for a period's ``n`` look-ups (from ``months``, spread evenly over its days), the
distinct groups expected among ``cap`` possible (facilities, or ordered facility pairs, seen so
far): ``cap * (1 - exp(-n / cap))``. With 1M look-ups a year among 111 facilities a month's
pair hash is near all 12,210 pairs and a day's 2,500 of them, so subtracting days from a month
or a year often reads less than adding days. Even through RedisCache's joined replies
(gateway/cache.py) a field read costs about a microsecond, so fields read is what a query
costs. With 1,020,293 look-ups a year among 111 facilities, by pair, a calendar year took 25 ms
from a local Redis, 2025-07-16 to 2026-07-15 94 ms and the worst range tried (2025-07-08 to
2026-07-23, 20 hashes) 100 ms; by day, by facility or in total, under 5 ms.

Answers are lists of rows, sorted by their key ascending (days in order, facility ids by code
point, pairs by requester then holder); a group with no look-ups has no row, so a range with
none, "total" included, answers ``[]``::

    {"day": "2026-01-03", "count": 17}
    {"requester": "F001", "count": 5}          {"holder": "F002", "count": 5}
    {"requester": "F001", "holder": "F002", "count": 3}
    {"count": 1020293}
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any, Final, Literal, NamedTuple, get_args

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .cache import Cache

__all__ = ["BufferedCounters", "Grouping", "LookupCounters", "rebuild", "reconcile"]

log = logging.getLogger(__name__)

Grouping = Literal["day", "requester", "holder", "pair", "total"]
GROUPINGS: Final[tuple[Grouping, ...]] = get_args(Grouping)

DEFAULT_PREFIX: Final = "lookups:"
PAIR_SEPARATOR: Final = ">"  # between requester and holder in a pair field; never in an id
REBUILD_BATCH: Final = 20_000  # (day, requester, holder) groups per counter batch in rebuild
KEY_COST: Final = 50.0  # what reading one more hash costs, in fields (module docstring)
_ONE_DAY: Final = timedelta(days=1)

_FACILITY_KIND: Final[dict[str, str]] = {"requester": "req", "holder": "hold", "pair": "pair"}


def _check_range(start: date, end: date, group_by: str) -> None:
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)} (got {group_by!r})")
    if end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")


def _check_day(day: str) -> None:
    try:
        ok = date.fromisoformat(day).isoformat() == day
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"a look-up's day must be YYYY-MM-DD (got {day!r})")


def _check_facility(facility: str) -> None:
    if not isinstance(facility, str) or not facility or PAIR_SEPARATOR in facility:
        raise ValueError(
            f"a facility id must be non-empty text without {PAIR_SEPARATOR!r} (got {facility!r})"
        )


def _month_bounds(month: str) -> tuple[date, date]:
    year, mon = int(month[:4]), int(month[5:7])
    return date(year, mon, 1), date(year, mon, calendar.monthrange(year, mon)[1])


def _periods_of(day: str) -> tuple[str, ...]:
    """The five periods holding ``day`` (``YYYY-MM-DD``), year first."""
    year, month = day[:4], day[:7]
    quarter = f"{year}-Q{(int(day[5:7]) + 2) // 3}"
    half = f"{month}-H{1 if int(day[8:10]) <= 15 else 2}"
    return year, quarter, month, half, day


class _Period(NamedTuple):
    name: str  # the key suffix: 2026, 2026-Q1, 2026-01, 2026-01-H1 or 2026-01-03
    start: date
    end: date
    level: int  # 0 year, 1 quarter, 2 month, 3 half month, 4 day


def _year(year: int) -> _Period:
    return _Period(str(year), date(year, 1, 1), date(year, 12, 31), 0)


def _children(p: _Period) -> list[_Period]:
    y = p.start.year
    if p.level == 0:
        return [
            _Period(f"{y}-Q{q}", date(y, 3 * q - 2, 1), _month_bounds(f"{y}-{3 * q:02d}")[1], 1)
            for q in range(1, 5)
        ]
    if p.level == 1:
        months = [f"{y}-{m:02d}" for m in range(p.start.month, p.start.month + 3)]
        return [_Period(m, *_month_bounds(m), 2) for m in months]
    if p.level == 2:
        mid = p.start.replace(day=15)
        return [
            _Period(f"{p.name}-H1", p.start, mid, 3),
            _Period(f"{p.name}-H2", mid + _ONE_DAY, p.end, 3),
        ]
    days = (p.start + timedelta(days=i) for i in range((p.end - p.start).days + 1))
    return [_Period(d.isoformat(), d, d, 4) for d in days]


Cover = tuple[tuple[str, int], ...]  # (period name, +1 to add its hash or -1 to subtract it)


class _Planner:
    """Chooses the periods to read for a range: the cover of least estimated cost."""

    def __init__(self, month_counts: Mapping[str, int], cap: int) -> None:
        self._months = month_counts
        self._cap = max(cap, 1)
        self._memo: dict[tuple[str, date, date], tuple[float, Cover]] = {}

    def _lookups(self, p: _Period) -> float:
        """Look-ups in ``p``, estimated from its months', spread evenly over their days."""
        if p.level <= 2:
            first, last = p.start.isoformat()[:7], p.end.isoformat()[:7]
            return float(sum(n for m, n in self._months.items() if first <= m <= last))
        month = p.name[:7]
        days = calendar.monthrange(p.start.year, p.start.month)[1]
        return self._months.get(month, 0) * ((p.end - p.start).days + 1) / days

    def _cost(self, p: _Period) -> float:
        return KEY_COST + self._cap * -math.expm1(-self._lookups(p) / self._cap)

    def cover(self, p: _Period, lo: date, hi: date) -> tuple[float, Cover]:
        """The cheapest cover of ``lo`` to ``hi``, a non-empty part of ``p``, and its cost."""
        key = (p.name, lo, hi)
        known = self._memo.get(key)
        if known is not None:
            return known
        if not self._lookups(p):
            best: tuple[float, Cover] = (0.0, ())
        elif lo <= p.start and p.end <= hi:
            best = (self._cost(p), ((p.name, 1),))
        else:  # a part of p, which is not a day: its children, or p less the rest
            children = _children(p)
            best = self._children(children, [(lo, hi)], 1)
            outside = [(p.start, lo - _ONE_DAY)] if lo > p.start else []
            if hi < p.end:
                outside.append((hi + _ONE_DAY, p.end))
            less_cost, less = self._children(children, outside, -1)
            if self._cost(p) + less_cost < best[0]:
                best = (self._cost(p) + less_cost, ((p.name, 1), *less))
        self._memo[key] = best
        return best

    def _children(
        self, children: list[_Period], spans: list[tuple[date, date]], sign: int
    ) -> tuple[float, Cover]:
        cost, cover = 0.0, []
        for lo, hi in spans:
            for child in children:
                if child.start <= hi and lo <= child.end:
                    c, part = self.cover(child, max(lo, child.start), min(hi, child.end))
                    cost += c
                    cover += [(name, sign * s) for name, s in part]
        return cost, tuple(cover)


def _rows(group_by: Grouping, counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """Rows of ``counts`` (field -> count) for ``group_by``, sorted by key, zero counts left out."""
    if group_by == "total":
        total = sum(counts.values())
        return [{"count": total}] if total else []
    if group_by == "pair":
        pairs = sorted((*field.split(PAIR_SEPARATOR, 1), n) for field, n in counts.items() if n)
        return [{"requester": r, "holder": h, "count": n} for r, h, n in pairs]
    return [{group_by: k, "count": n} for k, n in sorted(counts.items()) if n]


def _merged(hashes: Sequence[dict[str, int]], signs: Sequence[int]) -> dict[str, int]:
    """The field-by-field sum of ``hashes``, each times its sign; changes one of them."""
    added = [i for i, sign in enumerate(signs) if sign > 0]
    if not added:
        return {}
    base = max(added, key=lambda i: len(hashes[i]))
    acc = hashes[base]
    get = acc.get
    for i, (more, sign) in enumerate(zip(hashes, signs, strict=True)):
        if i == base:
            continue
        if sign > 0:
            for field, n in more.items():
                acc[field] = get(field, 0) + n
        else:
            for field, n in more.items():
                acc[field] = get(field, 0) - n
    return acc


class LookupCounters:
    """Counts of cross-institution look-ups in a :class:`~gateway.cache.Cache`.

    Parameters
    ----------
    cache
        The fast store; several gateway processes sharing a Redis share the counts.
    prefix
        Prefix of every key, inside the cache's namespace (module docstring: Key layout).
    """

    def __init__(self, cache: Cache, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.cache = cache
        self.prefix = prefix

    async def add(self, lookups: Iterable[tuple[str, str, str]]) -> None:
        """Count ``(day, requester, holder)`` look-ups, one triple per look-up, in one batch.

        ``day`` is ``YYYY-MM-DD``. A triple whose holder is its requester is not a
        cross-institution look-up and is not counted, as the audit table has no row for it.

        Raises
        ------
        ValueError
            If a day or facility id is malformed; nothing of the batch is counted.
        CacheError
            If the cache failed; nothing of the batch is counted.
        """
        await self.add_counts(Counter(lookups))

    async def add_counts(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Count ``n`` look-ups for each ``(day, requester, holder): n``, in one batch.

        As :meth:`add`, for callers that have counted already (:func:`rebuild`).
        """
        p = self.prefix
        inc: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        # day -> its month and the hashes its look-ups increment: pair, req and hold for each
        # of its five periods, then days:YYYY-MM and months
        day_keys: dict[str, tuple[str, tuple[defaultdict[str, int], ...]]] = {}
        facilities: defaultdict[str, int] = inc[p + "facilities"]
        for (day, requester, holder), n in counts.items():
            if n < 0:
                raise ValueError(f"look-ups are counted up, never down (got {n} for {day})")
            if requester == holder or not n:
                continue
            known = day_keys.get(day)
            if known is None:
                _check_day(day)
                month = day[:7]
                periods = _periods_of(day)
                known = day_keys[day] = (
                    month,
                    (
                        *(inc[f"{p}pair:{period}"] for period in periods),
                        *(inc[f"{p}req:{period}"] for period in periods),
                        *(inc[f"{p}hold:{period}"] for period in periods),
                        inc[f"{p}days:{month}"],
                        inc[p + "months"],
                    ),
                )
            month, keys = known
            pair = requester + PAIR_SEPARATOR + holder
            for i in range(5):
                keys[i][pair] += n
                keys[i + 5][requester] += n
                keys[i + 10][holder] += n
            keys[15][day] += n
            keys[16][month] += n
            facilities[requester] += n
            facilities[holder] += n
        for facility in facilities:
            _check_facility(facility)
        if len(inc) > 1:  # not only the facilities hash, empty
            await self.cache.hincrby_many(inc)

    async def query(self, start: date, end: date, group_by: Grouping) -> list[dict[str, Any]]:
        """Look-ups from ``start`` to ``end`` (both included), grouped; rows as in the module
        docstring, sorted by key.

        Raises
        ------
        ValueError
            If ``end`` is before ``start`` or ``group_by`` is not a :data:`Grouping`.
        CacheError
            If the cache failed.
        """
        _check_range(start, end, group_by)
        p = self.prefix
        months, facilities = await self.cache.hgetall_many([p + "months", p + "facilities"])
        first, last = start.isoformat(), end.isoformat()
        in_range = {m: n for m, n in months.items() if n and first[:7] <= m <= last[:7]}

        if group_by in ("day", "total"):
            whole: list[str] = []  # months wholly inside the range
            partial: list[str] = []  # months the range starts or ends inside
            for month in in_range:
                month_start, month_end = _month_bounds(month)
                (whole if start <= month_start and month_end <= end else partial).append(month)
            if group_by == "total" and not partial:
                return _rows("total", {m: in_range[m] for m in whole})
            keys = [f"{p}days:{m}" for m in (partial if group_by == "total" else whole + partial)]
            counts = {
                day: n
                for days in await self.cache.hgetall_many(keys)
                for day, n in days.items()
                if first <= day <= last
            }
            if group_by == "total":
                counts.update({m: in_range[m] for m in whole})  # month and day keys differ
            return _rows(group_by, counts)

        f = sum(1 for n in facilities.values() if n)
        # estimates from every month: subtracting from a year reads all of its months
        planner = _Planner(months, f * (f - 1) if group_by == "pair" else f)
        cover: list[tuple[str, int]] = []
        for year in sorted({int(m[:4]) for m in in_range}):
            y = _year(year)
            cover += planner.cover(y, max(start, y.start), min(end, y.end))[1]
        kind = _FACILITY_KIND[group_by]
        hashes = await self.cache.hgetall_many([f"{p}{kind}:{name}" for name, _ in cover])
        return _rows(group_by, _merged(hashes, [sign for _, sign in cover]))

    async def clear(self) -> None:
        """Delete every counter under the prefix (before :func:`rebuild`, or in tests).

        Increments made while this runs may survive it in part.
        """
        p = self.prefix
        (months,) = await self.cache.hgetall_many([p + "months"])
        keys = {p + "months", p + "facilities"}
        for month in months:
            keys.add(f"{p}days:{month}")
            month_start, month_end = _month_bounds(month)
            for offset in range((month_end - month_start).days + 1):
                for period in _periods_of((month_start + timedelta(days=offset)).isoformat()):
                    keys.update(f"{p}{kind}:{period}" for kind in ("req", "hold", "pair"))
        await self.cache.delete_many(sorted(keys))


async def reconcile(
    conn_or_engine: AsyncEngine | AsyncConnection,
    start: date,
    end: date,
    group_by: Grouping,
    *,
    table: Table,
) -> list[dict[str, Any]]:
    """The answer of :meth:`LookupCounters.query`, computed with SQL from the audit table.

    ``table`` has the columns of ``audit_lookup``: ``day`` (``YYYY-MM-DD`` text),
    ``requester`` and ``holder``. Works on SQLite and PostgreSQL. Rows are sorted in Python,
    so a database collation cannot change the order.

    Raises
    ------
    ValueError
        If ``end`` is before ``start`` or ``group_by`` is not a :data:`Grouping`.
    """
    _check_range(start, end, group_by)
    c = table.c
    where = (c.day.between(start.isoformat(), end.isoformat()), c.requester != c.holder)
    columns = {
        "day": [c.day],
        "requester": [c.requester],
        "holder": [c.holder],
        "pair": [c.requester, c.holder],
        "total": [],
    }[group_by]
    stmt = select(*columns, func.count().label("count")).where(*where)
    if columns:
        stmt = stmt.group_by(*columns)
    if isinstance(conn_or_engine, AsyncEngine):
        async with conn_or_engine.connect() as conn:
            result = (await conn.execute(stmt)).all()
    else:
        result = (await conn_or_engine.execute(stmt)).all()
    names = [col.name for col in columns]
    rows = sorted(tuple(row) for row in result if row[-1])
    return [dict(zip([*names, "count"], row, strict=True)) for row in rows]


async def rebuild(engine: AsyncEngine, counters: LookupCounters, *, table: Table) -> int:
    """Recount ``counters`` from the audit table, after a crash or a Redis loss lost increments.

    Clears the counters first, then adds the table's look-ups, grouped by day and pair in SQL,
    in batches. Look-ups recorded while it runs may be counted twice or not at all: run it
    when none are (or :func:`reconcile` afterwards). Returns the number of look-ups counted.
    """
    c = table.c
    stmt = (
        select(c.day, c.requester, c.holder, func.count())
        .where(c.requester != c.holder)
        .group_by(c.day, c.requester, c.holder)
    )
    await counters.clear()
    total = 0
    async with engine.connect() as conn:
        result = await conn.stream(stmt)
        async for part in result.partitions(REBUILD_BATCH):
            counts = {(day, requester, holder): n for day, requester, holder, n in part}
            await counters.add_counts(counts)
            total += sum(counts.values())
    return total


class BufferedCounters:
    """Look-ups counted in this process and written to the shared counters once a second.

    Each write to the shared counters touches a few dozen hash fields per distinct (day,
    pair); done per group-commit batch, in Redis, it cost more than the audit itself. Here a
    batch only adds to a local tally. A process that dies loses at most the last second's
    tally; the audit rows hold every look-up, and `rebuild` counts them again.
    """

    def __init__(self, counters: LookupCounters, *, interval: float = 1.0) -> None:
        self.counters = counters
        self._interval = interval
        self._pending: Counter[tuple[str, str, str]] = Counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lookup-counters")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def add(self, lookups: Iterable[tuple[str, str, str]]) -> None:
        self._pending.update(lookups)

    async def flush(self) -> None:
        """Write the tally to the shared counters (kept for the next try if that fails)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, Counter()
        try:
            await self.counters.add_counts(pending)
        except Exception:
            self._pending.update(pending)
            raise

    async def query(self, start: date, end: date, group_by: Grouping) -> list[dict[str, Any]]:
        """As `LookupCounters.query`, this process's latest look-ups included."""
        await self.flush()
        return await self.counters.query(start, end, group_by)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("look-up counters not written; kept for the next try")
