"""Many rows into one table in one statement, straight to the driver.

The group commits (the HL7 feed, the audit trail) write thousands of rows a second. Through
SQLAlchemy Core they cost compilation, an execution context and a result proxy per statement,
and per-row parameter dictionaries: measured at about 40% of the HL7 feed's CPU. Here the
statement text is built once per (table, columns, conflict) shape and handed to the driver:

- PostgreSQL, `insert_many`: ``INSERT ... SELECT ... FROM unnest($1::type[], ...)``, one array
  per column, a statement the driver prepares once, whatever the batch's size;
- PostgreSQL, `Writer` (narrow rows: the audit): the batch as ONE JSON parameter (an array of
  rows), ``INSERT ... SELECT (r->>0)::type, ... FROM json_array_elements($1::json) r``: one C
  call (orjson) here instead of encoding every value of every row;
- SQLite: ``INSERT ... VALUES (?, ...), (?, ...)``, chunked under its bound-variable limit.

Values pass through each column type's own bind processor (UTC timestamps, naive ones
refused), so what lands is what a Core insert would have written, and reads through Core see
no difference. Rows that collide with ``skip_conflicts_on`` are skipped (``ON CONFLICT DO
NOTHING``); ``returning`` names columns to give back for the rows actually inserted.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from functools import cache
from typing import Any, Final, Protocol

import orjson
from sqlalchemy import JSON, Dialect, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32.
_SQLITE_MAX_VARIABLES: Final = 32_766

Row = Sequence[Any]


async def insert_many(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Row],
    *,
    json_dumps: Callable[[Any], str],
    skip_conflicts_on: Sequence[str] | None = None,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (values in the order of ``columns``) into ``table`` inside ``conn``'s
    transaction; the ``returning`` columns of the rows inserted, in no particular order."""
    if not rows:
        return []
    dialect = conn.dialect
    prepared = _prepared(table, columns, rows, dialect, json_dumps)
    conflict = tuple(skip_conflicts_on) if skip_conflicts_on is not None else None
    if dialect.name == "postgresql":
        # One array per column: rows that carry whole FHIR resources would make the server
        # parse every resource once more if the batch went as one JSON text (measured: four
        # times the database's CPU on the HL7 feed). Narrow rows go as JSON (`Writer`).
        sql = _postgres_sql(table, tuple(columns), conflict, tuple(returning), dialect)
        arrays = tuple(list(column) for column in zip(*prepared, strict=True))
        result = await conn.exec_driver_sql(sql, arrays)
        return [tuple(r) for r in result] if returning else []
    out: list[tuple[Any, ...]] = []
    per_chunk = max(1, _SQLITE_MAX_VARIABLES // len(columns))
    for start in range(0, len(prepared), per_chunk):
        chunk = prepared[start : start + per_chunk]
        sql = _sqlite_sql(table, tuple(columns), conflict, tuple(returning), len(chunk), dialect)
        result = await conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row))
        if returning:
            out += [tuple(r) for r in result]
    return out


def _prepared(
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Row],
    dialect: Dialect,
    json_dumps: Callable[[Any], str],
) -> Sequence[Row]:
    processors = _processors(table, tuple(columns), dialect, json_dumps)
    if not any(p is not None for p in processors):
        return rows  # PostgreSQL takes strings, numbers and aware datetimes as they are
    return [
        tuple(p(v) if p is not None else v for p, v in zip(processors, row, strict=True))
        for row in rows
    ]


class Writer:
    """A connection kept for one writer's batches (a group commit), and its transactions.

    A group commit writes a transaction every few milliseconds: checking a pooled connection
    out (and pinging it) each time, and SQLAlchemy's async plumbing around each statement,
    cost more than the inserts. On PostgreSQL the batches go straight to asyncpg on a
    connection held for the purpose; on SQLite through the same connection via Core. A
    connection that fails is dropped, and the next batch opens a new one.
    """

    def __init__(self, engine: AsyncEngine, json_dumps: Callable[[Any], str]) -> None:
        self._engine = engine
        self._dumps = json_dumps
        self._conn: AsyncConnection | None = None
        self._dialect: Dialect | None = None
        self._driver: Any = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn, self._driver = self._conn, None, None
            await conn.close()

    async def insert_all(self, parts: Sequence[tuple[Table, Sequence[str], Sequence[Row]]]) -> None:
        """Insert into several tables at once, all or nothing. On PostgreSQL this is ONE
        statement (the inserts as data-modifying WITH clauses), so a batch costs one round
        trip and one commit: a group commit's latency is what its waiters wait."""
        parts = [p for p in parts if p[2]]
        if not parts:
            return
        await self._connect()
        if self._driver is None:
            async with self.transaction() as insert:
                for table, columns, rows in parts:
                    await insert(table, columns, rows)
            return
        dialect = self._dialect
        assert dialect is not None
        clauses, values = [], []
        for n, (table, columns, rows) in enumerate(parts, start=1):
            clauses.append(
                f"i{n} AS ({_postgres_json_sql(table, tuple(columns), None, (), dialect, n)})"
            )
            values.append(
                orjson.dumps(_prepared(table, columns, rows, dialect, self._dumps)).decode()
            )
        sql = f"WITH {', '.join(clauses)} SELECT 1"
        try:
            await self._driver.execute(sql, *values)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise

    async def _connect(self) -> None:
        if self._conn is None:
            self._conn = await self._engine.connect()
            self._dialect = self._conn.dialect
            if self._conn.dialect.name == "postgresql":
                raw = await self._conn.get_raw_connection()
                self._driver = raw.driver_connection

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Inserter]:
        """One transaction: ``await insert(table, columns, rows, ...)`` as many times as
        needed; committed when the block ends, rolled back if it raises."""
        await self._connect()
        assert self._conn is not None
        conn, dialect = self._conn, self._conn.dialect
        try:
            if self._driver is not None:
                driver = self._driver
                async with driver.transaction():

                    async def pg_insert(
                        table: Table,
                        columns: Sequence[str],
                        rows: Sequence[Row],
                        *,
                        skip_conflicts_on: Sequence[str] | None = None,
                        returning: Sequence[str] = (),
                    ) -> list[tuple[Any, ...]]:
                        if not rows:
                            return []
                        conflict = tuple(skip_conflicts_on) if skip_conflicts_on else None
                        sql = _postgres_json_sql(
                            table, tuple(columns), conflict, tuple(returning), dialect, 1
                        )
                        ready = _prepared(table, columns, rows, dialect, self._dumps)
                        # The whole batch as one JSON text, parsed by the server: one C call
                        # here instead of encoding every value of every row.
                        found = await driver.fetch(sql, orjson.dumps(ready).decode())
                        return [tuple(r) for r in found]

                    yield pg_insert
            else:
                async with conn.begin():

                    async def insert(
                        table: Table,
                        columns: Sequence[str],
                        rows: Sequence[Row],
                        *,
                        skip_conflicts_on: Sequence[str] | None = None,
                        returning: Sequence[str] = (),
                    ) -> list[tuple[Any, ...]]:
                        return await insert_many(
                            conn,
                            table,
                            columns,
                            rows,
                            json_dumps=self._dumps,
                            skip_conflicts_on=skip_conflicts_on,
                            returning=returning,
                        )

                    yield insert
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise


class Inserter(Protocol):
    async def __call__(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        skip_conflicts_on: Sequence[str] | None = None,
        returning: Sequence[str] = (),
    ) -> list[tuple[Any, ...]]: ...


@cache
def _processors(
    table: Table, columns: tuple[str, ...], dialect: Dialect, json_dumps: Callable[[Any], str]
) -> list[Callable[[Any], Any] | None]:
    out: list[Callable[[Any], Any] | None] = []
    for name in columns:
        type_ = table.c[name].type
        # SQLite takes JSON as text. The dialect's own implementation of each type: SQLite's
        # DATETIME, say, writes its text form.
        impl = type_.dialect_impl(dialect)
        out.append(json_dumps if isinstance(type_, JSON) else impl.bind_processor(dialect))
    return out


def _conflict_clause(conflict: tuple[str, ...] | None, q: Callable[[str], str]) -> str:
    if conflict is None:
        return ""
    return f" ON CONFLICT ({', '.join(map(q, conflict))}) DO NOTHING"


def _returning_clause(returning: tuple[str, ...], q: Callable[[str], str]) -> str:
    return f" RETURNING {', '.join(map(q, returning))}" if returning else ""


@cache
def _postgres_sql(
    table: Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...] | None,
    returning: tuple[str, ...],
    dialect: Dialect,
) -> str:
    q = dialect.identifier_preparer.quote
    names = [q(name) for name in columns]
    arrays, selected = [], []
    for n, name in enumerate(columns, start=1):
        type_ = table.c[name].type
        if isinstance(type_, JSON):
            arrays.append(f"${n}::text[]")
            selected.append(f"{q(name)}::json")
        else:
            arrays.append(f"${n}::{type_.compile(dialect)}[]")
            selected.append(q(name))
    return (
        f"INSERT INTO {q(table.name)} ({', '.join(names)}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) "
        f"AS u({', '.join(names)})"
        f"{_conflict_clause(conflict, q)}{_returning_clause(returning, q)}"
    )


@cache
def _postgres_json_sql(
    table: Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...] | None,
    returning: tuple[str, ...],
    dialect: Dialect,
    param: int,
) -> str:
    """INSERT ... SELECT from a JSON array of rows (each row an array, in column order) in
    parameter ``$param``."""
    q = dialect.identifier_preparer.quote
    selected = []
    for n, name in enumerate(columns):
        type_ = table.c[name].type
        # JSON values arrive as text (the bind processor wrote them): parsed from that text.
        cast = "json" if isinstance(type_, JSON) else type_.compile(dialect)
        selected.append(f"(r->>{n})::{cast}")
    return (
        f"INSERT INTO {q(table.name)} ({', '.join(map(q, columns))}) "
        f"SELECT {', '.join(selected)} FROM json_array_elements(${param}::json) AS r"
        f"{_conflict_clause(conflict, q)}{_returning_clause(returning, q)}"
    )


@cache
def _sqlite_sql(
    table: Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...] | None,
    returning: tuple[str, ...],
    n_rows: int,
    dialect: Dialect,
) -> str:
    q = dialect.identifier_preparer.quote
    row = f"({', '.join('?' * len(columns))})"
    return (
        f"INSERT INTO {q(table.name)} ({', '.join(map(q, columns))}) "
        f"VALUES {', '.join([row] * n_rows)}"
        f"{_conflict_clause(conflict, q)}{_returning_clause(returning, q)}"
    )
