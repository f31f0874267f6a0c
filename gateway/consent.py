"""Care grants: a patient's consent that a facility (or every facility) may read their
records, and referrals that put a patient under another facility's care.

Kept durably beside the MPI; read by the access policy (gateway/access.py) on every
cross-institution look-up, so the policy keeps them briefly in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import Column, Index, Integer, String, Table, and_, or_, select, update

from .storage import Store, UtcDateTime, metadata

#: A grant to every facility of the city.
ANY_FACILITY: Final = "*"

GrantKind = Literal["consent", "referral"]

care_grant = Table(
    "care_grant",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("person_key", String(64), nullable=False),
    Column("facility_id", String(16), nullable=False),  # or "*": every facility
    Column("kind", String(16), nullable=False),  # consent | referral
    Column("granted_by", String(255), nullable=False),  # who recorded it
    Column("granted_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Index("ix_care_grant_person", "person_key"),
)


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    person_key: str
    facility_id: str
    kind: GrantKind
    granted_by: str
    granted_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


async def grant(
    store: Store,
    person_key: str,
    facility_id: str,
    kind: GrantKind,
    *,
    granted_by: str,
    expires_at: datetime | None = None,
) -> int:
    """Record a grant; returns its id."""
    async with store.engine.begin() as conn:
        result = await conn.execute(
            care_grant.insert().values(
                person_key=person_key,
                facility_id=facility_id,
                kind=kind,
                granted_by=granted_by,
                granted_at=datetime.now(UTC),
                expires_at=expires_at,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


async def revoke(store: Store, grant_id: int, person_key: str) -> bool:
    """Revoke one of the person's grants; False if there is no such active grant."""
    async with store.engine.begin() as conn:
        result = await conn.execute(
            update(care_grant)
            .where(
                care_grant.c.id == grant_id,
                care_grant.c.person_key == person_key,
                care_grant.c.revoked_at.is_(None),
            )
            .values(revoked_at=datetime.now(UTC))
        )
        return bool(result.rowcount)


async def active_grants(store: Store, person_key: str) -> list[Grant]:
    """The person's grants in force now."""
    now = datetime.now(UTC)
    c = care_grant.c
    stmt = (
        select(care_grant)
        .where(
            c.person_key == person_key,
            c.revoked_at.is_(None),
            or_(c.expires_at.is_(None), and_(c.expires_at > now)),
        )
        .order_by(c.id)
    )
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [_grant(r) for r in rows]


async def grant_by_id(store: Store, grant_id: int) -> Grant | None:
    """One grant, whatever its state."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(care_grant).where(care_grant.c.id == grant_id))).first()
    return _grant(row) if row is not None else None


def _grant(r: Any) -> Grant:
    return Grant(
        id=r.id,
        person_key=r.person_key,
        facility_id=r.facility_id,
        kind=r.kind,
        granted_by=r.granted_by,
        granted_at=r.granted_at,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
    )
