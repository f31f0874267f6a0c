"""Facilities registered while the gateway runs: kept durably, applied in place, and told to
every gateway process.

The seed registry (``seeds/facilities.json``) is where the city starts; registrations through
the admin API are rows here that add to it or replace its entries. A change is written, then
applied to this process's registry, adapters and recognition engine, then published on the
shared cache; every other process, subscribed, reads the row and applies it too. A new
facility starts ``pending``: federated searches do not ask it until its conformance check
passes (or an admin puts it live, with a reason that is recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from sqlalchemy import JSON, Boolean, Column, Index, String, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .audit import new_event_id
from .cache import Cache, CacheError
from .credentials import Credentials, Vault
from .facility_check import CheckReport, check_facility
from .recognition import Recognition
from .registry import Facility, Registry, facility_json, parse_facility
from .storage import Store, UtcDateTime, metadata
from .upstreams import Upstreams

log = logging.getLogger(__name__)

CHANNEL: Final = "registry"
#: Seconds between looks at the registrations table for changes no message announced.
WATCH_SECONDS: Final = 2.0
#: What a registration is kept as (the registry file's form, plus status and who).
facility_registration = Table(
    "facility_registration",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("credentials", Text(), nullable=True),  # sealed (gateway/credentials.py)
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("updated_by", String(255), nullable=False),
    Column("override_reason", Text(), nullable=True),
)
facility_check = Table(
    "facility_check",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("facility", String(16), nullable=False),
    Column("started", UtcDateTime(), nullable=False),
    Column("passed", Boolean(), nullable=False),
    Column("report", JSON, nullable=False),
    Column("checked_by", String(255), nullable=False),
    Index("ix_facility_check_facility", "facility", "started"),
)


@dataclass(frozen=True, slots=True)
class CheckRow:
    id: str
    facility: str
    started: datetime
    passed: bool
    report: dict[str, Any]


class FacilityAdmin:
    def __init__(
        self,
        store: Store,
        cache: Cache,
        registry: Registry,
        upstreams: Upstreams,
        recognition: Recognition,
        vault: Vault,
    ) -> None:
        self.store = store
        self.cache = cache
        self.registry = registry
        self.upstreams = upstreams
        self.recognition = recognition
        self.vault = vault
        self._tasks: list[asyncio.Task[None]] = []

    # -- start and stop -------------------------------------------------------------------

    async def load(self) -> int:
        """Apply every stored registration (at start-up); returns how many."""
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(facility_registration))).all()
        for row in rows:
            await self._apply(row._mapping)
        return len(rows)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="registry-listener"),
            asyncio.create_task(self._watch(), name="registry-watch"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        """Changes made where no message reaches this process (``huren facility`` beside a
        gateway on the embedded defaults, with no Redis): seen by their time in the table."""
        seen = await self._last_change()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            with contextlib.suppress(Exception):  # the next round tries again
                latest = await self._last_change()
                if latest != seen:
                    seen = latest
                    await self.load()

    async def _last_change(self) -> datetime | None:
        async with self.store.engine.connect() as conn:
            latest: datetime | None = (
                await conn.execute(select(func.max(facility_registration.c.updated_at)))
            ).scalar()
        return latest

    async def _listen(self) -> None:
        """Apply what other processes register. A lost subscription is renewed, and what
        may have been missed meanwhile is read again whole."""
        while True:
            try:
                async for message in self.cache.subscribe(CHANNEL):
                    await self.reload(message.decode())
            except (CacheError, OSError) as exc:
                log.warning("registry subscription lost; renewing", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self.load()

    async def reload(self, facility_id: str) -> None:
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(facility_registration).where(facility_registration.c.id == facility_id)
                )
            ).first()
        if row is not None:
            await self._apply(row._mapping)

    async def _apply(self, row: Any) -> Facility:
        facility = parse_facility(row["data"], self.registry, status=row["status"])
        credentials = self.vault.open(row["credentials"]) if row["credentials"] else None
        self.registry.put(facility)
        await self.upstreams.refresh(facility, credentials)
        self.recognition.learn(self.registry)
        return facility

    # -- changes --------------------------------------------------------------------------

    async def save(
        self,
        facility: Facility,
        credentials: Credentials | None,
        *,
        by: str,
        keep_credentials: bool = False,
        override_reason: str | None = None,
    ) -> Facility:
        """Write a registration, apply it here, and tell the other processes.

        ``keep_credentials``: an update that names none keeps the sealed ones it had.
        """
        sealed = self.vault.seal(credentials) if credentials is not None else None
        values = {
            "id": facility.id,
            "data": facility_json(facility),
            "status": facility.status,
            "credentials": sealed,
            "updated_at": datetime.now(UTC),
            "updated_by": by,
            "override_reason": override_reason,
        }
        async with self.store.engine.begin() as conn:
            if keep_credentials and credentials is None:
                old = (
                    await conn.execute(
                        select(facility_registration.c.credentials).where(
                            facility_registration.c.id == facility.id
                        )
                    )
                ).scalar()
                values["credentials"] = old
            insert = _insert(self.store)(facility_registration).values(**values)
            update = {k: insert.excluded[k] for k in values if k != "id"}
            await conn.execute(insert.on_conflict_do_update(index_elements=["id"], set_=update))
        applied = await self._apply(values)
        await self._tell(facility.id)
        return applied

    async def set_status(
        self, facility_id: str, status: str, *, by: str, override_reason: str | None = None
    ) -> Facility:
        current = self.registry[facility_id]
        return await self.save(
            replace(current, status=status),
            None,
            by=by,
            keep_credentials=True,
            override_reason=override_reason,
        )

    async def has_credentials(self, facility_id: str) -> bool:
        async with self.store.engine.connect() as conn:
            sealed = (
                await conn.execute(
                    select(facility_registration.c.credentials).where(
                        facility_registration.c.id == facility_id
                    )
                )
            ).scalar()
        return bool(sealed)

    async def credentials(self, facility_id: str) -> Credentials | None:
        async with self.store.engine.connect() as conn:
            sealed = (
                await conn.execute(
                    select(facility_registration.c.credentials).where(
                        facility_registration.c.id == facility_id
                    )
                )
            ).scalar()
        return self.vault.open(sealed) if sealed else None

    async def _tell(self, facility_id: str) -> None:
        try:
            await self.cache.publish(CHANNEL, facility_id.encode())
        except CacheError as exc:  # written and applied here; others catch up on renewal
            log.warning("registry change not published", extra={"error": str(exc)})

    # -- conformance checks ---------------------------------------------------------------

    async def record_check(
        self, facility_id: str, passed: bool, report: dict[str, Any], *, by: str
    ) -> CheckRow:
        row = CheckRow(new_event_id(), facility_id, datetime.now(UTC), passed, report)
        async with self.store.engine.begin() as conn:
            await conn.execute(
                facility_check.insert().values(
                    id=row.id,
                    facility=row.facility,
                    started=row.started,
                    passed=row.passed,
                    report=row.report,
                    checked_by=by,
                )
            )
        return row

    async def run_check(
        self,
        facility: Facility,
        *,
        session: aiohttp.ClientSession,
        calling_ae: str,
        mllp: tuple[str, int] | None,
        by: str,
    ) -> tuple[CheckRow, CheckReport]:
        """The conformance self-test against the facility's systems (with its own login
        where it has one), recorded; a pending facility that passes goes live."""
        credentials = await self.credentials(facility.id)
        if credentials is None:
            report = await check_facility(
                facility, session=session, calling_ae=calling_ae, mllp=mllp
            )
        else:
            async with aiohttp.ClientSession(
                timeout=session.timeout,
                headers=credentials.headers(),
            ) as own:
                report = await check_facility(
                    facility, session=own, calling_ae=calling_ae, mllp=mllp
                )
        row = await self.record_check(facility.id, report.passed, report.as_json(), by=by)
        if report.passed and self.registry[facility.id].status == "pending":
            await self.set_status(facility.id, "live", by=by)
        return row, report

    async def check_row(self, check_id: str) -> CheckRow | None:
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(select(facility_check).where(facility_check.c.id == check_id))
            ).first()
        return _check_row(row._mapping) if row is not None else None

    async def recent_checks(
        self, *, facility: str | None = None, failed_only: bool = False, limit: int = 20
    ) -> list[CheckRow]:
        query = select(facility_check).order_by(facility_check.c.started.desc()).limit(limit)
        if facility is not None:
            query = query.where(facility_check.c.facility == facility)
        if failed_only:
            query = query.where(facility_check.c.passed.is_(False))
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_check_row(r._mapping) for r in rows]


def _check_row(row: Any) -> CheckRow:
    return CheckRow(row["id"], row["facility"], row["started"], bool(row["passed"]), row["report"])


def _insert(store: Store) -> Any:
    return sqlite_insert if store.engine.dialect.name == "sqlite" else pg_insert
