"""The durable store, against a SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from gateway.errors import ConfigError, GatewayError
from gateway.storage import (
    Demographics,
    Hl7Record,
    Identifier,
    IdentityConflict,
    LabResult,
    Store,
    database_url_for,
    lab_result,
    patient_identity,
)

NATIONAL = "urn:oid:2.16.156.10011.1.1"  # national ID number system (illustrative)
MRN_F001 = "urn:huren:mrn:F001"
MRN_F002 = "urn:huren:mrn:F002"
PERSON_A = "320402198001010011"
PERSON_B = "320402199002020022"
LOINC = "http://loinc.org"
HGB = "718-7"  # haemoglobin
GLU = "2345-7"  # glucose
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def observation(
    rid: str,
    *,
    code: str | None = HGB,
    effective: datetime | None = T0,
    facility: str = "F001",
    patient: tuple[str, str] = (MRN_F001, "M0001"),
    person: str | None = None,
    message: str | None = "MSG1",
) -> LabResult:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": rid, "status": "final"}
    if code is not None:
        resource["code"] = {"coding": [{"system": LOINC, "code": code}]}
    if effective is not None:
        resource["effectiveDateTime"] = effective.isoformat()
    return LabResult(
        facility_id=facility,
        patient_system=patient[0],
        patient_value=patient[1],
        resource_type="Observation",
        resource_id=rid,
        resource=resource,
        person_key=person,
        code=code,
        effective=effective,
        source_message_id=message,
    )


def ids(resources: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]


# database_url_for


def test_database_url_defaults_to_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    """Without a URL the store is a SQLite file in the data dir, through aiosqlite."""
    url = database_url_for(tmp_path, None)
    assert url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'huren.db'}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:pw@db:5432/huren", "postgresql+asyncpg://u:pw@db:5432/huren"),
        ("postgres://u:pw@db/huren", "postgresql+asyncpg://u:pw@db/huren"),
        ("postgresql+asyncpg://db/huren", "postgresql+asyncpg://db/huren"),
        ("postgres://db/huren?sslmode=require", "postgresql+asyncpg://db/huren?ssl=require"),
        ("sqlite:////var/lib/huren/h.db", "sqlite+aiosqlite:////var/lib/huren/h.db"),
        ("sqlite+aiosqlite:////var/lib/huren/h.db", "sqlite+aiosqlite:////var/lib/huren/h.db"),
    ],
)
def test_database_url_names_the_async_driver(tmp_path: Path, given: str, expected: str) -> None:
    """PostgreSQL URLs get asyncpg, SQLite URLs get aiosqlite; the rest is kept."""
    assert database_url_for(tmp_path, given) == expected


@pytest.mark.parametrize(
    "given",
    ["mysql://u:s3cret@db/huren", "postgresql+psycopg2://u:s3cret@db/huren", "not a url"],
)
def test_database_url_refuses_other_databases(tmp_path: Path, given: str) -> None:
    """Another database or a synchronous driver is a ConfigError that hides the password."""
    with pytest.raises(ConfigError) as caught:
        database_url_for(tmp_path, given)
    assert isinstance(caught.value, GatewayError)
    assert "s3cret" not in str(caught.value)


async def test_open_refuses_other_databases() -> None:
    """Store.open checks the URL as database_url_for does."""
    with pytest.raises(ConfigError):
        await Store.open("mysql://db/huren")


async def test_open_refuses_a_database_it_cannot_reach(pg_url: str) -> None:
    """An unknown database, a refused connection: a ConfigError at open, password hidden."""
    missing = pg_url.rsplit("/", 1)[0] + "/huren_no_such_database"
    with pytest.raises(ConfigError, match="huren_no_such_database"):
        await Store.open(missing)
    with pytest.raises(ConfigError) as caught:
        await Store.open("postgresql://huren:s3cret@127.0.0.1:1/huren")
    assert "s3cret" not in str(caught.value)


async def test_open_accepts_heroku_style_postgres_url(pg_url: str) -> None:
    """A postgres:// URL opens PostgreSQL through asyncpg and creates the tables."""
    store = await Store.open(pg_url.replace("postgresql://", "postgres://", 1))
    try:
        assert store.engine.dialect.name == "postgresql"
        assert store.engine.dialect.driver == "asyncpg"
        await store.link_identity(PERSON_A, MRN_F001, "M0001", source="test")
        assert await store.person_for(MRN_F001, "M0001") == PERSON_A
    finally:
        await store.close()


async def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path: Path) -> None:
    """Every SQLite connection uses WAL and waits for the write lock instead of failing."""
    store = await Store.open(database_url_for(tmp_path, None))
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
    finally:
        await store.close()
    assert (tmp_path / "huren.db").exists()


# Identity cross-references


async def test_link_identity_is_idempotent(store: Store) -> None:
    """Linking the same identifier to the same person again changes nothing."""
    await store.link_identity(PERSON_A, MRN_F001, "M0001", facility_id="F001", source="hl7:ADT")
    await store.link_identity(PERSON_A, MRN_F001, "M0001", facility_id="F001", source="hl7:ADT")
    await store.link_identity(PERSON_A, MRN_F001, "M0001", source="fhir:Patient")
    assert await store.identifiers_for(PERSON_A) == [Identifier(MRN_F001, "M0001", "F001")]
    async with store.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(patient_identity))).scalar()
        source = (await conn.execute(select(patient_identity.c.source))).scalar()
    assert count == 1
    assert source == "hl7:ADT"  # the first learning is kept


async def test_link_identity_to_another_person_conflicts(store: Store) -> None:
    """An identifier held by one person cannot be re-linked to another; the link stays."""
    await store.link_identity(PERSON_A, MRN_F001, "M0001", facility_id="F001", source="t")
    with pytest.raises(IdentityConflict) as caught:
        await store.link_identity(PERSON_B, MRN_F001, "M0001", facility_id="F001", source="t")
    conflict = caught.value
    assert isinstance(conflict, GatewayError)
    assert (conflict.system, conflict.value) == (MRN_F001, "M0001")
    assert (conflict.linked_to, conflict.attempted) == (PERSON_A, PERSON_B)
    assert await store.person_for(MRN_F001, "M0001") == PERSON_A
    assert await store.identifiers_for(PERSON_B) == []


async def test_identifiers_for_returns_every_identifier_of_the_person(store: Store) -> None:
    """All of a person's identifiers come back, ordered, and no one else's."""
    await store.link_identity(PERSON_A, NATIONAL, PERSON_A, source="fhir:Patient")
    await store.link_identity(PERSON_A, MRN_F002, "X-77", facility_id="F002", source="t")
    await store.link_identity(PERSON_A, MRN_F001, "M0001", facility_id="F001", source="t")
    await store.link_identity(PERSON_B, MRN_F001, "M0002", facility_id="F001", source="t")
    assert await store.identifiers_for(PERSON_A) == [
        Identifier(MRN_F001, "M0001", "F001"),
        Identifier(MRN_F002, "X-77", "F002"),
        Identifier(NATIONAL, PERSON_A, None),
    ]
    assert await store.identifiers_for("nobody") == []


async def test_person_for_unknown_identifier_is_none(store: Store) -> None:
    """An identifier never linked resolves to no one; the same value in another system too."""
    await store.link_identity(PERSON_A, MRN_F001, "M0001", source="t")
    assert await store.person_for(MRN_F001, "M0001") == PERSON_A
    assert await store.person_for(MRN_F002, "M0001") is None
    assert await store.person_for(MRN_F001, "M9999") is None


async def test_concurrent_links_of_one_identifier_keep_exactly_one_person(store: Store) -> None:
    """Racing links of one identifier: one person wins, the others get IdentityConflict."""
    people = [PERSON_A, PERSON_B] * 8
    outcomes = await asyncio.gather(
        *(store.link_identity(p, MRN_F001, "M0001", source="race") for p in people),
        return_exceptions=True,
    )
    winner = await store.person_for(MRN_F001, "M0001")
    assert winner in (PERSON_A, PERSON_B)
    for person, outcome in zip(people, outcomes, strict=True):
        if person == winner:
            assert outcome is None
        else:
            assert isinstance(outcome, IdentityConflict)
    assert await store.identifiers_for(winner) == [Identifier(MRN_F001, "M0001", None)]


async def test_concurrent_links_of_many_identifiers_all_land(store: Store) -> None:
    """Many writers at once all commit (SQLite waits for its write lock)."""
    await asyncio.gather(
        *(store.link_identity(PERSON_A, MRN_F001, f"M{i:04d}", source="t") for i in range(40))
    )
    assert len(await store.identifiers_for(PERSON_A)) == 40


# Lab result index


async def test_put_lab_results_stores_each_result_once(store: Store) -> None:
    """A repeated (facility, type, id) is skipped, in a later batch or in the same one."""
    batch = [observation("o1"), observation("o2"), observation("o1")]
    assert await store.put_lab_results(batch) == 2
    assert await store.put_lab_results([observation("o2"), observation("o3")]) == 1
    assert await store.put_lab_results([]) == 0
    # The same id from another facility, or as another type, is another result.
    assert await store.put_lab_results([observation("o1", facility="F002")]) == 1
    async with store.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(lab_result))).scalar()
    assert count == 4


async def test_put_lab_results_in_large_batches(store: Store) -> None:
    """A batch larger than one INSERT statement is stored whole and counted right."""
    rows = [observation(f"o{i}", effective=T0 + timedelta(minutes=i)) for i in range(1_234)]
    assert await store.put_lab_results(rows) == 1_234
    assert await store.put_lab_results(rows) == 0
    newest = await store.lab_results_for(patient=(MRN_F001, "M0001"), limit=2)
    assert ids(newest) == ["o1233", "o1232"]


async def test_lab_results_round_trip_the_resource(store: Store) -> None:
    """The stored resource comes back equal, Chinese text and numbers included, with meta
    saying when it was received and from which facility."""
    row = observation("o1")
    resource = {
        **row.resource,
        "valueQuantity": {"value": 13.5, "unit": "g/dL"},
        "note": [{"text": "溶血标本，建议复查"}],
    }
    row = replace(row, resource=resource)
    before = datetime.now(UTC).isoformat()
    await store.put_lab_results([row])
    [back] = await store.lab_results_for(patient=(MRN_F001, "M0001"))
    meta = back.pop("meta")
    assert back == resource
    assert meta["source"] == f"urn:huren:facility:{row.facility_id}"
    assert before <= meta["lastUpdated"] <= datetime.now(UTC).isoformat()


async def test_lab_results_filter_by_code_and_time_newest_first(store: Store) -> None:
    """Code and [since, until) select results; the newest effective comes first."""
    await store.put_lab_results(
        [
            observation("hgb-old", code=HGB, effective=T0 - timedelta(days=30)),
            observation("hgb-new", code=HGB, effective=T0 + timedelta(days=1)),
            observation("hgb-mid", code=HGB, effective=T0),
            observation("glu", code=GLU, effective=T0 + timedelta(hours=1)),
            observation("hgb-undated", code=HGB, effective=None),
        ]
    )
    everything = await store.lab_results_for(patient=(MRN_F001, "M0001"))
    assert ids(everything) == ["hgb-new", "glu", "hgb-mid", "hgb-old", "hgb-undated"]
    assert ids(await store.lab_results_for(patient=(MRN_F001, "M0001"), code=HGB)) == [
        "hgb-new",
        "hgb-mid",
        "hgb-old",
        "hgb-undated",
    ]
    in_window = await store.lab_results_for(
        patient=(MRN_F001, "M0001"), code=HGB, since=T0, until=T0 + timedelta(days=1)
    )
    assert ids(in_window) == ["hgb-mid"]  # since is inclusive, until exclusive
    assert ids(await store.lab_results_for(code=HGB, since=T0 - timedelta(days=1))) == [
        "hgb-new",
        "hgb-mid",
    ]
    assert ids(await store.lab_results_for(code=GLU, until=T0)) == []
    assert ids(await store.lab_results_for(code="nope")) == []
    assert ids(await store.lab_results_for(patient=(MRN_F001, "M0001"), limit=2)) == [
        "hgb-new",
        "glu",
    ]


async def test_times_in_other_offsets_compare_as_instants(store: Store) -> None:
    """08:00 in Beijing is 00:00 UTC: stored and compared as the same instant."""
    beijing = timezone(timedelta(hours=8))
    await store.put_lab_results(
        [
            observation("bj", effective=datetime(2024, 5, 1, 8, 0, tzinfo=beijing)),
            observation("utc", effective=datetime(2024, 5, 1, 0, 30, tzinfo=UTC)),
        ]
    )
    midnight_utc = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
    assert ids(await store.lab_results_for(since=midnight_utc)) == ["utc", "bj"]
    assert ids(await store.lab_results_for(until=midnight_utc)) == []
    async with store.engine.connect() as conn:
        effective = (
            await conn.execute(
                select(lab_result.c.effective).where(lab_result.c.resource_id == "bj")
            )
        ).scalar_one()
    assert effective == midnight_utc
    assert effective.utcoffset() == timedelta(0)


async def test_naive_datetimes_are_refused(store: Store) -> None:
    """A time without a zone is ambiguous: refused in queries and in rows."""
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.lab_results_for(since=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        observation("o1", effective=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="limit"):
        await store.lab_results_for(limit=0)


def test_lab_result_must_agree_with_its_resource() -> None:
    """A row whose type or id differs from the resource's own is refused at construction."""
    good = observation("o1")
    with pytest.raises(ValueError, match="resource_type"):
        replace(good, resource_type="Patient")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resourceType"):
        replace(good, resource_type="DiagnosticReport")
    with pytest.raises(ValueError, match="id"):
        replace(good, resource_id="o2")


async def test_lab_results_for_person_follow_identity_links(store: Store) -> None:
    """A person's results include those filed under any of their identifiers, linked later."""
    await store.put_lab_results(
        [
            observation("a-keyed", person=PERSON_A, effective=T0),
            observation("a-f002", patient=(MRN_F002, "X-77"), effective=T0 + timedelta(hours=2)),
            observation("b-f001", patient=(MRN_F001, "M0002"), effective=T0 + timedelta(hours=1)),
        ]
    )
    assert ids(await store.lab_results_for(person_key=PERSON_A)) == ["a-keyed"]
    await store.link_identity(PERSON_A, MRN_F002, "X-77", facility_id="F002", source="t")
    await store.link_identity(PERSON_B, MRN_F001, "M0002", facility_id="F001", source="t")
    assert ids(await store.lab_results_for(person_key=PERSON_A)) == ["a-f002", "a-keyed"]
    assert ids(await store.lab_results_for(person_key=PERSON_B)) == ["b-f001"]
    assert ids(await store.lab_results_for(person_key="nobody")) == []
    # The patient filter is exact: one identifier, no link following.
    assert ids(await store.lab_results_for(patient=(MRN_F002, "X-77"))) == ["a-f002"]
    assert ids(await store.lab_results_for(person_key=PERSON_A, patient=(MRN_F001, "M0002"))) == []


async def test_store_persists_across_close_and_reopen(store_url: str) -> None:
    """Links and results written before close are there after reopening; tables are kept."""
    store = await Store.open(store_url)
    try:
        await store.link_identity(PERSON_A, MRN_F001, "M0001", facility_id="F001", source="t")
        assert await store.put_lab_results([observation("o1", person=PERSON_A)]) == 1
    finally:
        await store.close()
    store = await Store.open(store_url)
    try:
        assert await store.person_for(MRN_F001, "M0001") == PERSON_A
        assert ids(await store.lab_results_for(person_key=PERSON_A)) == ["o1"]
        assert await store.put_lab_results([observation("o1", person=PERSON_A)]) == 0
    finally:
        await store.close()


def hl7_record(control: str, result_id: str) -> Hl7Record:
    obs = observation(result_id)
    return Hl7Record(
        facility_id="F001",
        control_id=control,
        status="stored",
        raw=f"MSH|...|{control}",
        results=(obs,),
        identities=((PERSON_A, MRN_F001, "M0001", "F001"),),
        demographics=Demographics(PERSON_A, ({"text": "张三", "family": "张"},), "male"),
    )


async def test_two_writers_never_both_take_a_message_as_new(store_url: str) -> None:
    """Two gateway processes (two stores) writing the same messages at once: each message is
    new to exactly one of them, and stored once."""
    a, b = await Store.open(store_url), await Store.open(store_url)
    try:
        batch = [hl7_record(f"C{i}", f"r{i}") for i in range(200)]
        first, second = await asyncio.gather(a.record_hl7(batch), b.record_hl7(batch))
        assert all(x != y for x, y in zip(first, second, strict=True))
        held = await a.lab_results_for(patient=(MRN_F001, "M0001"), limit=1000)
        assert len(held) == 200
        assert len(await a.hl7_messages(limit=1000)) == 200
        # A repeat within one batch is a repeat too.
        assert await a.record_hl7([hl7_record("D1", "d1"), hl7_record("D1", "d1")]) == [
            True,
            False,
        ]
        person = await a.person_by_key(PERSON_A)
        assert person is not None and person.gender == "male"
        assert person.names[0]["text"] == "张三"
    finally:
        await a.close()
        await b.close()


async def test_people_keep_what_a_later_source_leaves_out(store: Store) -> None:
    """Demographics merge: a source without a name keeps the name; search by name part,
    gender and birth date bounds."""
    await store.put_people(
        [
            Demographics(
                PERSON_A,
                ({"text": "张三丰", "family": "张", "given": ["三丰"]},),
                "male",
                "1950-04-09",
                "seed",
            )
        ]
    )
    await store.link_identity(PERSON_A, MRN_F001, "M0001", facility_id="F001", source="t")
    await store.put_people([Demographics(PERSON_A, (), None, None, "hl7")])
    person = await store.person_by_key(PERSON_A)
    assert person is not None and person.names[0]["text"] == "张三丰"
    assert person.birth_date == "1950-04-09" and person.gender == "male"
    assert await store.person(person.patient_id) == person
    for name in ("张", "张三", "三丰", "三"):
        found = await store.search_people(name=name)
        assert [p.person_key for p in found] == [PERSON_A], name
    assert await store.search_people(name="丰") == []
    assert await store.search_people(name="%") == []  # LIKE wildcards are plain text
    assert await store.search_people(name="张", gender="female") == []
    assert await store.search_people(name="张", birth_date=[("ge", "1950"), ("lt", "1951")])
    assert not await store.search_people(name="张", birth_date=[("ge", "1951")])
