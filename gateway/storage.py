"""The durable store: identity cross-references (the MPI) and the lab result index.

One code path for both back ends through SQLAlchemy Core async: a SQLite file in the data dir
by default, PostgreSQL at scale (DESIGN.md, Storage). Timestamps are stored in UTC and always
come back timezone-aware, whichever back end holds them.
"""

from __future__ import annotations

import hashlib
import operator
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from .bulk_insert import insert_many
from .errors import ConfigError, GatewayError

__all__ = [
    "Identifier",
    "IdentityConflict",
    "LabResult",
    "Store",
    "database_url_for",
    "lab_result",
    "metadata",
    "patient_identity",
]

#: meta.source of a resource from a facility: this prefix and the facility id.
FACILITY_SOURCE_PREFIX: Final = "urn:huren:facility:"


def source_facility(resource: Mapping[str, Any]) -> str | None:
    """The facility a resource's ``meta.source`` names (``urn:huren:facility:Fxxx``)."""
    source = str((resource.get("meta") or {}).get("source", ""))
    return (
        source.removeprefix(FACILITY_SOURCE_PREFIX)
        if source.startswith(FACILITY_SOURCE_PREFIX)
        else None
    )


DATABASE_FILE: Final = "huren.db"
#: Seconds an MPI read is reused, and how many are kept (see Store.__init__).
MPI_TTL: Final = 5.0
MPI_CACHE_ENTRIES: Final = 50_000  # name of the SQLite file inside the data dir
SQLITE_BUSY_TIMEOUT_MS: Final = 5_000  # how long a writer waits for SQLite's single write lock

ResourceType = Literal["Observation", "DiagnosticReport"]
RESOURCE_TYPES: Final[tuple[ResourceType, ...]] = ("Observation", "DiagnosticReport")


class IdentityConflict(GatewayError, ValueError):
    """An identifier is already linked to another person; the existing link is kept."""

    def __init__(self, system: str, value: str, *, linked_to: str, attempted: str) -> None:
        super().__init__(
            f"identifier {system}|{value} is linked to person {linked_to!r}; "
            f"refusing to re-link it to {attempted!r}"
        )
        self.system = system
        self.value = value
        self.linked_to = linked_to
        self.attempted = attempted

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(system={self.system!r}, value={self.value!r}, "
            f"linked_to={self.linked_to!r}, attempted={self.attempted!r})"
        )


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that refuses naive values and always returns UTC.

    SQLite has no time zone type and drops the offset, so values are normalised to UTC on the
    way in (which also keeps its text comparison in time order) and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"expected a timezone-aware datetime (got naive {value!r})")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

patient_identity = Table(
    "patient_identity",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("person_key", String(64), nullable=False),  # the national ID number
    Column("system", String(255), nullable=False),
    Column("value", String(255), nullable=False),
    Column("facility_id", String(16), nullable=True),
    Column("source", String(255), nullable=False),  # where the link was learned
    Column("learned_at", UtcDateTime(), nullable=False),
    UniqueConstraint("system", "value", name="uq_patient_identity_system_value"),
    Index("ix_patient_identity_person_key", "person_key"),
)

person = Table(
    "person",
    metadata,
    Column("person_key", String(64), primary_key=True),  # the national ID number
    # The person's id in URLs (FHIR Patient.id): a digest, so the number never reaches a URL.
    Column("patient_id", String(32), nullable=False, unique=True),
    # FHIR HumanName list, as last learned (SQL NULL when unknown, so COALESCE keeps it).
    Column("names", JSON(none_as_null=True), nullable=True),
    # Every name part, lower-cased, each preceded by a space: FHIR string search (a part
    # starts with the value) is one LIKE '% value%'.
    Column("name_search", Text, nullable=True),
    Column("gender", String(16), nullable=True),
    Column("birth_date", String(10), nullable=True),
    Column("source", String(255), nullable=True),  # where the demographics were learned
    Column("updated_at", UtcDateTime(), nullable=True),
    Index("ix_person_birth_date", "birth_date"),
)

lab_result = Table(
    "lab_result",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("facility_id", String(16), nullable=False),
    Column("person_key", String(64), nullable=True),  # null until the patient is linked
    Column("patient_system", String(255), nullable=False),
    Column("patient_value", String(255), nullable=False),
    Column("resource_type", String(32), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("code", String(64), nullable=True),
    Column("effective", UtcDateTime(), nullable=True),
    Column("resource", JSON, nullable=False),
    Column("source_message_id", String(255), nullable=True),
    Column("received_at", UtcDateTime(), nullable=False),
    UniqueConstraint(
        "facility_id", "resource_type", "resource_id", name="uq_lab_result_facility_resource"
    ),
    Index("ix_lab_result_person_key", "person_key"),
    Index("ix_lab_result_patient", "patient_system", "patient_value"),
    Index("ix_lab_result_code", "code"),
)


hl7_message = Table(
    "hl7_message",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("facility_id", String(64), nullable=False),  # or MSH-4 as sent, when unknown
    Column("control_id", String(64), nullable=True),  # MSH-10; null when unreadable
    Column("status", String(16), nullable=False),  # stored | rejected
    Column("error", Text, nullable=True),
    Column("raw", Text, nullable=False),  # kept whole, for inspection and replay
    Column("received_at", UtcDateTime(), nullable=False),
    # A control id is stored once; a rejected message is kept once per control id too, and a
    # corrected message may reuse the id of one that was rejected.
    UniqueConstraint("facility_id", "control_id", "status", name="uq_hl7_message_control"),
)


@dataclass(frozen=True, slots=True)
class Hl7Record:
    """One received HL7 v2 message and what it yields, written in one transaction."""

    facility_id: str
    control_id: str | None
    status: Literal["stored", "rejected"]
    raw: str
    error: str | None = None
    results: tuple[LabResult, ...] = ()
    #: (person key, system, value, facility id) identity links learned from the message.
    identities: tuple[tuple[str, str, str, str | None], ...] = ()
    demographics: Demographics | None = None


@dataclass(frozen=True, slots=True)
class Demographics:
    """What a source says of a person: names (FHIR HumanName), gender, birth date."""

    person_key: str
    names: tuple[Mapping[str, Any], ...] = ()
    gender: str | None = None
    birth_date: str | None = None  # YYYY-MM-DD
    source: str = ""


@dataclass(frozen=True, slots=True)
class Person:
    """A person as the gateway knows them."""

    person_key: str
    patient_id: str
    names: tuple[Mapping[str, Any], ...]
    gender: str | None
    birth_date: str | None


def patient_id_of(person_key: str) -> str:
    """The person's FHIR Patient.id: stable, and no national ID number in URLs or logs."""
    return "p-" + hashlib.sha256(person_key.encode()).hexdigest()[:20]


def _name_search(names: Iterable[Mapping[str, Any]]) -> str:
    parts: list[str] = []
    for name in names:
        for part in (name.get("text"), name.get("family"), *name.get("given", ())):
            if isinstance(part, str) and part.strip():
                parts += part.lower().split()
    return "".join(f" {p}" for p in dict.fromkeys(parts))


def _person(row: Any) -> Person:
    return Person(
        person_key=row.person_key,
        patient_id=row.patient_id,
        names=tuple(row.names or ()),
        gender=row.gender,
        birth_date=row.birth_date,
    )


def _compare(column: Any, op: str, value: str) -> ColumnElement[bool]:
    comparisons: dict[str, Callable[[Any, str], ColumnElement[bool]]] = {
        "eq": operator.eq,
        "ge": operator.ge,
        "gt": operator.gt,
        "le": operator.le,
        "lt": operator.lt,
    }
    if op not in comparisons:
        raise ValueError(f"comparison must be one of {sorted(comparisons)} (got {op!r})")
    return comparisons[op](column, value)


def name_matches(names: Iterable[Mapping[str, Any]], query: str) -> bool:
    """FHIR string search on names: some part starts with ``query``, ignoring case (the same
    test as :meth:`Store.search_people`)."""
    return f" {query.strip().lower()}" in _name_search(names)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class Identifier:
    """One identifier of a person, as the MPI knows it."""

    system: str
    value: str
    facility_id: str | None


@dataclass(frozen=True, slots=True)
class LabResult:
    """One FHIR ``Observation`` or ``DiagnosticReport`` to index, with its search keys."""

    facility_id: str
    patient_system: str
    patient_value: str
    resource_type: ResourceType
    resource_id: str
    resource: Mapping[str, Any]
    person_key: str | None = None
    code: str | None = None
    effective: datetime | None = None
    source_message_id: str | None = None

    def __post_init__(self) -> None:
        # Checked at construction, so a bad row never reaches a half-done batch.
        if self.resource_type not in RESOURCE_TYPES:
            raise ValueError(
                f"resource_type must be one of {RESOURCE_TYPES} (got {self.resource_type!r})"
            )
        declared = self.resource.get("resourceType")
        if declared is not None and declared != self.resource_type:
            raise ValueError(
                f"resource declares resourceType {declared!r} but the row says "
                f"{self.resource_type!r}"
            )
        declared_id = self.resource.get("id")
        if declared_id is not None and declared_id != self.resource_id:
            raise ValueError(
                f"resource declares id {declared_id!r} but the row says {self.resource_id!r}"
            )
        if self.effective is not None and self.effective.utcoffset() is None:
            raise ValueError(f"effective must be timezone-aware (got naive {self.effective!r})")


_LAB_COLUMNS: Final = (
    "facility_id",
    "person_key",
    "patient_system",
    "patient_value",
    "resource_type",
    "resource_id",
    "code",
    "effective",
    "resource",
    "source_message_id",
    "received_at",
)


def _with_meta(resource: Mapping[str, Any], facility_id: str, received_at: datetime) -> Any:
    """The resource as held: meta says since when (what _lastUpdated searches) and which
    facility it came from (meta.source), as results the gateway fetches say too."""
    meta = {
        **resource.get("meta", {}),
        "lastUpdated": received_at.isoformat(),
        "source": f"{FACILITY_SOURCE_PREFIX}{facility_id}",
    }
    return {**resource, "meta": meta}


def _lab_values(r: LabResult, received_at: datetime) -> tuple[Any, ...]:
    """A lab result's row, in the order of ``_LAB_COLUMNS``."""
    return (
        r.facility_id,
        r.person_key,
        r.patient_system,
        r.patient_value,
        r.resource_type,
        r.resource_id,
        r.code,
        r.effective,
        _with_meta(r.resource, r.facility_id, received_at),
        r.source_message_id,
        received_at,
    )


def dumps(value: Any) -> str:
    # Compact UTF-8 JSON (reports carry Chinese text, which ASCII escaping would triple), by
    # orjson: the standard library's encoder was a tenth of the HL7 feed's CPU.
    return orjson.dumps(value).decode()


def _async_url(url: str) -> URL:
    """Parse ``url`` and name the async driver: aiosqlite for SQLite, asyncpg for PostgreSQL."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    # SQLAlchemy no longer knows the ``postgres`` alias that Heroku-style URLs use.
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database URL is not a URL (got {scheme or 'no'} scheme)") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql" and driver in ("", "asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        # asyncpg calls libpq's ``sslmode`` ``ssl``; accept the URL as libpq users write it.
        if "sslmode" in parsed.query and "ssl" not in parsed.query:
            query = dict(parsed.query)
            query["ssl"] = query.pop("sslmode")
            parsed = parsed.set(query=query)
        return parsed
    raise ConfigError(
        "database URL must be sqlite:///path, sqlite+aiosqlite:///path, postgresql://..., "
        f"postgres://... or postgresql+asyncpg://... (got {parsed.drivername}://...)"
    )


def database_url_for(data_dir: Path, url: str | None) -> str:
    """Return the async SQLAlchemy URL of the store.

    Parameters
    ----------
    data_dir
        The gateway's data directory; the SQLite file lives there when ``url`` is None.
    url
        ``HUREN_DATABASE_URL`` if set: ``postgresql://``, ``postgres://`` or ``sqlite:///``,
        with or without the async driver named.

    Returns
    -------
    str
        A ``sqlite+aiosqlite:///`` or ``postgresql+asyncpg://`` URL, password included.

    Raises
    ------
    ConfigError
        If ``url`` is neither SQLite nor PostgreSQL, or names a synchronous driver.
    """
    if url is None:
        return f"sqlite+aiosqlite:///{(data_dir / DATABASE_FILE).resolve()}"
    return _async_url(url).render_as_string(hide_password=False)


def _enable_wal(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets readers run beside the single writer; the busy timeout makes a second writer
    # wait for the lock instead of failing at once. ``synchronous`` stays at its default (FULL):
    # an answered access must survive a power cut (DESIGN.md, Audit).
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


class Store:
    """The durable store. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dumps = dumps
        # The MPI is read on every look-up and changes rarely: reads are kept MPI_TTL
        # seconds (a link made in this process is seen at once; in another, within MPI_TTL).
        self._mpi: dict[tuple[str, ...], tuple[float, Any]] = {}

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for other modules that keep their tables in the same database."""
        return self._engine

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect to the database at ``url`` and create the tables that are absent.

        Raises
        ------
        ConfigError
            If ``url`` is neither SQLite nor PostgreSQL, or the database cannot be reached,
            refuses the credentials, or does not exist.
        """
        parsed = _async_url(url)
        shown = parsed.render_as_string(hide_password=True)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        json_codec = {"json_serializer": dumps, "json_deserializer": orjson.loads}
        if is_sqlite:
            engine = create_async_engine(parsed, **json_codec)
            event.listen(engine.sync_engine, "connect", _enable_wal)
        else:
            # Connections dropped by a PostgreSQL restart or failover are replaced, not used.
            engine = create_async_engine(parsed, **json_codec, pool_pre_ping=True)
        try:
            if is_sqlite and parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        except (DBAPIError, OSError, TimeoutError) as exc:
            await engine.dispose()
            reason = exc.orig if isinstance(exc, DBAPIError) else exc
            raise ConfigError(f"cannot open the database at {shown}: {reason}") from exc
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # Identity cross-references (the MPI)

    async def link_identity(
        self,
        person_key: str,
        system: str,
        value: str,
        *,
        facility_id: str | None = None,
        source: str,
    ) -> None:
        """Record that identifier ``system|value`` belongs to the person ``person_key``.

        Linking an identifier again to the same person changes nothing (the first
        ``facility_id``, ``source`` and time are kept).

        Raises
        ------
        IdentityConflict
            If the identifier is already linked to another person.
        """
        stmt = (
            self._insert(patient_identity)
            .values(
                person_key=person_key,
                system=system,
                value=value,
                facility_id=facility_id,
                source=source,
                learned_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=["system", "value"])
        )
        # Two rounds at most: the second only if the colliding row vanished in between.
        self._mpi.clear()
        for _ in range(2):
            async with self._engine.begin() as conn:
                if (await conn.execute(stmt)).rowcount:
                    await self._upsert_people(conn, [Demographics(person_key)], datetime.now(UTC))
                    return
                # The insert waited for any concurrent insert of the same identifier, so the
                # row it collided with is committed and visible here.
                linked_to = await self._person_for(conn, system, value)
            if linked_to == person_key:
                return
            if linked_to is not None:
                raise IdentityConflict(system, value, linked_to=linked_to, attempted=person_key)
        raise RuntimeError(f"identifier {system}|{value} could not be linked")  # pragma: no cover

    async def person_for(self, system: str, value: str) -> str | None:
        """Return the person key linked to identifier ``system|value``, or None."""
        key = ("p", system, value)
        if (kept := self._kept(key)) is not None:
            return kept[0]  # type: ignore[no-any-return]
        async with self._engine.connect() as conn:
            found = await self._person_for(conn, system, value)
        self._keep(key, (found,))
        return found

    def _kept(self, key: tuple[str, ...]) -> Any:
        hit = self._mpi.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def _keep(self, key: tuple[str, ...], value: Any) -> None:
        if len(self._mpi) >= MPI_CACHE_ENTRIES:
            self._mpi.clear()
        self._mpi[key] = (time.monotonic() + MPI_TTL, value)

    @staticmethod
    async def _person_for(conn: AsyncConnection, system: str, value: str) -> str | None:
        stmt = select(patient_identity.c.person_key).where(
            patient_identity.c.system == system, patient_identity.c.value == value
        )
        return (await conn.execute(stmt)).scalar_one_or_none()

    async def identifiers_for(self, person_key: str) -> list[Identifier]:
        """Return every identifier linked to ``person_key``, ordered by system then value."""
        key = ("i", person_key)
        if (kept := self._kept(key)) is not None:
            return list(kept)
        found = await self._identifiers_for(person_key)
        self._keep(key, tuple(found))
        return found

    async def _identifiers_for(self, person_key: str) -> list[Identifier]:
        stmt = (
            select(
                patient_identity.c.system,
                patient_identity.c.value,
                patient_identity.c.facility_id,
            )
            .where(patient_identity.c.person_key == person_key)
            .order_by(patient_identity.c.system, patient_identity.c.value)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Identifier(r.system, r.value, r.facility_id) for r in rows]

    # People (demographics, and the Patient.id each person is read by)

    async def put_people(self, people: Iterable[Demographics]) -> None:
        """Learn people's demographics; what a source leaves out keeps its earlier value."""
        async with self._engine.begin() as conn:
            await self._upsert_people(conn, list(people), datetime.now(UTC))

    async def _upsert_people(
        self, conn: AsyncConnection, people: list[Demographics], now: datetime
    ) -> None:
        latest = {d.person_key: d for d in people}  # one row per statement: the last word
        if not latest:
            return
        rows = [
            {
                "person_key": d.person_key,
                "patient_id": patient_id_of(d.person_key),
                "names": [dict(n) for n in d.names] if d.names else None,
                "name_search": _name_search(d.names) if d.names else None,
                "gender": d.gender,
                "birth_date": d.birth_date,
                "source": d.source or None,
                "updated_at": now if (d.names or d.gender or d.birth_date) else None,
            }
            for d in latest.values()
        ]
        stmt = self._insert(person)
        kept = ("names", "name_search", "gender", "birth_date", "source", "updated_at")
        stmt = stmt.on_conflict_do_update(
            index_elements=["person_key"],
            set_={c: func.coalesce(stmt.excluded[c], person.c[c]) for c in kept},
        )
        await conn.execute(stmt, rows)

    async def person(self, patient_id: str) -> Person | None:
        """The person whose FHIR Patient.id is ``patient_id``."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(person).where(person.c.patient_id == patient_id))
            ).first()
        return _person(row) if row is not None else None

    async def person_by_key(self, person_key: str) -> Person | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(person).where(person.c.person_key == person_key))
            ).first()
        return _person(row) if row is not None else None

    async def search_people(
        self,
        *,
        name: str | None = None,
        gender: str | None = None,
        birth_date: Iterable[tuple[str, str]] = (),
        limit: int = 100,
    ) -> list[Person]:
        """People by name (any part starting with ``name``, case-insensitive), gender and
        birth date (``(op, YYYY-MM-DD)`` pairs, op one of eq, ge, gt, le, lt)."""
        c = person.c
        conditions: list[ColumnElement[bool]] = []
        if name is not None:
            pattern = f"% {_like_escape(name.strip().lower())}%"
            conditions.append(c.name_search.like(pattern, escape="\\"))
        if gender is not None:
            conditions.append(c.gender == gender)
        for op, value in birth_date:
            conditions.append(_compare(c.birth_date, op, value))
        stmt = select(person).where(*conditions).order_by(c.person_key).limit(limit)
        async with self._engine.connect() as conn:
            return [_person(row) for row in await conn.execute(stmt)]

    # Lab result index

    async def put_lab_results(self, rows: Iterable[LabResult]) -> int:
        """Index lab results; a result already held (same facility, type and id) is skipped.

        A result sent again with changed content keeps the first version held.

        Returns
        -------
        int
            How many results were newly stored.
        """
        received_at = datetime.now(UTC)
        async with self._engine.begin() as conn:
            inserted = await insert_many(
                conn,
                lab_result,
                _LAB_COLUMNS,
                [_lab_values(r, received_at) for r in rows],
                json_dumps=self._dumps,
                skip_conflicts_on=("facility_id", "resource_type", "resource_id"),
                returning=("id",),
            )
        return len(inserted)

    async def record_hl7(self, records: list[Hl7Record]) -> list[bool]:
        """Write a batch of received messages in ONE transaction (the group commit of the
        HL7 listener); for each, whether it was new (False: a repeat, nothing written).

        A message is acknowledged only after this returns, so an ACK means it is durable.
        Three statements per batch, whatever its size (gateway/bulk_insert.py): the messages
        first, and the unique constraint on (facility, control id, status) says which are new,
        so two writers (two gateway processes) never both take the same message as new; then
        the results and identities of the new ones.
        """
        now = datetime.now(UTC)
        if any(r.identities for r in records):
            self._mpi.clear()
        firsts: dict[tuple[str, str, str], int] = {}  # a repeat within the batch is a repeat
        messages = []
        for n, rec in enumerate(records):
            if rec.control_id is not None:
                key = (rec.facility_id, rec.control_id, rec.status)
                if key in firsts:
                    continue
                firsts[key] = n
            messages.append((rec.facility_id, rec.control_id, rec.status, rec.error, rec.raw, now))
        async with self._engine.begin() as conn:
            inserted = await insert_many(
                conn,
                hl7_message,
                ("facility_id", "control_id", "status", "error", "raw", "received_at"),
                messages,
                json_dumps=self._dumps,
                skip_conflicts_on=("facility_id", "control_id", "status"),
                returning=("facility_id", "control_id", "status"),
            )
            new = {firsts[(f, c, s)] for f, c, s in inserted if c is not None}
            fresh = [rec.control_id is None or n in new for n, rec in enumerate(records)]
            stored = [
                r
                for r, is_new in zip(records, fresh, strict=True)
                if is_new and r.status == "stored"
            ]
            await insert_many(
                conn,
                lab_result,
                _LAB_COLUMNS,
                [_lab_values(result, now) for rec in stored for result in rec.results],
                json_dumps=self._dumps,
                skip_conflicts_on=("facility_id", "resource_type", "resource_id"),
            )
            await insert_many(
                conn,
                patient_identity,
                ("person_key", "system", "value", "facility_id", "source", "learned_at"),
                [
                    (person, system, value, facility, f"hl7v2:{rec.facility_id}", now)
                    for rec in stored
                    for person, system, value, facility in rec.identities
                ],
                json_dumps=self._dumps,
                skip_conflicts_on=("system", "value"),
            )
            await self._upsert_people(
                conn,
                [r.demographics for r in stored if r.demographics is not None],
                now,
            )
        return fresh

    async def hl7_messages(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Received messages, newest first (rejected ones are kept here for inspection)."""
        stmt = select(hl7_message).order_by(hl7_message.c.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(hl7_message.c.status == status)
        async with self._engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(stmt)]

    async def lab_results_for(
        self,
        person_key: str | None = None,
        patient: tuple[str, str] | None = None,
        code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return indexed lab results as FHIR resources, newest ``effective`` first.

        Parameters
        ----------
        person_key
            The person's results: those stored under the key, and those stored under any
            identifier linked to the person, even if the link was learned afterwards.
        patient
            ``(system, value)``: results stored under exactly this patient identifier.
        code
            The result's code (as indexed).
        since, until
            Timezone-aware bounds on ``effective``: ``since <= effective < until``. Results
            without an ``effective`` time are left out when either bound is given.
        limit
            At most this many results. Results without ``effective`` come last.

        Raises
        ------
        ValueError
            If ``limit`` is not positive or a bound is a naive datetime.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit!r})")
        for name, bound in (("since", since), ("until", until)):
            if bound is not None and bound.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware (got naive {bound!r})")
        c = lab_result.c
        async with self._engine.connect() as conn:
            conditions: list[ColumnElement[bool]] = []
            if person_key is not None:
                linked = await conn.execute(
                    select(patient_identity.c.system, patient_identity.c.value).where(
                        patient_identity.c.person_key == person_key
                    )
                )
                # An OR of indexed equalities: both planners answer it from the indexes.
                conditions.append(
                    or_(
                        c.person_key == person_key,
                        *(and_(c.patient_system == s, c.patient_value == v) for s, v in linked),
                    )
                )
            if patient is not None:
                conditions.append(c.patient_system == patient[0])
                conditions.append(c.patient_value == patient[1])
            if code is not None:
                conditions.append(c.code == code)
            if since is not None:
                conditions.append(c.effective >= since)
            if until is not None:
                conditions.append(c.effective < until)
            stmt = (
                select(c.resource)
                .where(*conditions)
                .order_by(c.effective.is_(None), c.effective.desc(), c.id.desc())
                .limit(limit)
            )
            resources = (await conn.execute(stmt)).scalars().all()
        return [dict(r) for r in resources]
