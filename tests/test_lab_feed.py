"""The HL7 v2 lab feed: the simulator's senders deliver ORU^R01 over MLLP to the gateway's
listener; ACK after store, duplicates, malformed messages, cut connections and a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.mllp import MllpConnection, frame
from adapters.types import Hl7v2Feed
from gateway.lab_codes import LabCodeMap
from gateway.lab_feed import LabFeed
from gateway.registry import load_registry
from gateway.storage import Store, database_url_for
from seeds.hl7_sender import messages_for_facility, parse_ack
from tests.city import City
from tests.ports import free_port

REGISTRY = load_registry()


def _feed_facility(city: City) -> tuple[str, Path, int]:
    """An HL7 v2 facility with lab reports in the seed: (id, ndjson path, report count)."""
    for f in REGISTRY:
        path = city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if isinstance(f.lab, Hl7v2Feed) and path.exists():
            lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
            reports = [
                r
                for r in lines
                if r["resourceType"] == "DiagnosticReport"
                and any(
                    c.get("code") == "LAB"
                    for cat in r.get("category", [])
                    for c in cat.get("coding", [])
                )
            ]
            if reports:
                return f.id, path, len(reports)
    raise AssertionError("no HL7 v2 facility with lab reports in the seed")


class Listener:
    def __init__(self, store: Store, port: int) -> None:
        self.store, self.port = store, port


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file, or a fresh database on the real PostgreSQL."""
    if request.param == "sqlite":
        return database_url_for(tmp_path, None)
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def listener(store_url: str) -> AsyncIterator[Listener]:
    store = await Store.open(store_url)
    feed = LabFeed(REGISTRY, store, LabCodeMap.load())
    port = free_port()
    await feed.start("127.0.0.1", port)
    try:
        yield Listener(store, port)
    finally:
        await feed.stop()
        await store.close()


async def _send(port: int, messages: list[bytes]) -> list[tuple[str, str, str | None]]:
    acks = []
    async with await MllpConnection.open("127.0.0.1", port, timeout=10) as conn:
        for m in messages:
            acks.append(parse_ack(await conn.exchange(m, timeout=10)))
    return acks


async def test_simulator_feed_is_stored_then_acknowledged(listener: Listener, city: City) -> None:
    """Every ORU the simulator sends is ACKed AA and its results are in the result index,
    filed under the patient, with the identities learned."""
    fid, _, reports = _feed_facility(city)
    body = await asyncio.to_thread(
        _post, f"{city.control_url}/_sim/hl7/{fid}?target=127.0.0.1:{listener.port}"
    )
    assert body["accepted"] == reports and body["rejected"] == 0
    stored = await listener.store.hl7_messages(status="stored", limit=1000)
    assert len(stored) == reports
    patients = {p["records"][fid]: p["national_id"] for p in city.patients() if fid in p["records"]}
    facility = next(f for f in REGISTRY if f.id == fid)
    found = 0
    for mrn, nid in patients.items():
        results = await listener.store.lab_results_for(patient=(facility.mrn_system, str(mrn)))
        found += len(results)
        if results:
            assert await listener.store.person_for(facility.mrn_system, str(mrn)) == nid
            assert all(r["resourceType"] in ("Observation", "DiagnosticReport") for r in results)
    assert found > reports  # reports and their observations


async def test_repeated_messages_are_acknowledged_not_stored_twice(
    listener: Listener, city: City
) -> None:
    """The same control id twice: AA both times, one stored message, results not doubled."""
    fid, path, _ = _feed_facility(city)
    facility = next(f for f in REGISTRY if f.id == fid)
    assert isinstance(facility.lab, Hl7v2Feed)
    messages = messages_for_facility(
        path,
        sending_application=facility.lab.sending_application,
        sending_facility=facility.lab.sending_facility,
    )[:3]
    first = await _send(listener.port, messages)
    second = await _send(listener.port, messages)
    assert [a[0] for a in first + second] == ["AA"] * 2 * len(messages)
    assert all("duplicate" in (a[2] or "") for a in second)
    assert len(await listener.store.hl7_messages(status="stored")) == len(messages)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"not hl7 at all", "AR"),
        (
            b"MSH|^~\\&|LIS|F999|HUREN|HUREN|20250101||ORU^R01^ORU_R01|X1|P|2.5.1\rPID|1||M1^^^F999^MR\r",
            "AR",
        ),
        (b"MSH|^~\\&|LIS|F002|HUREN|HUREN|20250101||ADT^A01^ADT_A01|X2|P|2.5.1\r", "AR"),
    ],
)
async def test_malformed_messages_are_kept_and_refused(
    listener: Listener, message: bytes, code: str
) -> None:
    """Not HL7, an unknown sender, a message type not taken: AR naming it, kept raw."""
    [ack] = await _send(listener.port, [message])
    assert ack[0] == code and ack[2]
    kept = await listener.store.hl7_messages(status="rejected")
    assert kept and kept[0]["raw"] == message.decode() and kept[0]["error"].startswith(code)


async def test_a_connection_cut_mid_message_stores_nothing(listener: Listener, city: City) -> None:
    """Half a frame then a hang-up: nothing stored, nothing acknowledged, the listener goes on."""
    fid, path, _ = _feed_facility(city)
    facility = next(f for f in REGISTRY if f.id == fid)
    assert isinstance(facility.lab, Hl7v2Feed)
    message = messages_for_facility(
        path,
        sending_application=facility.lab.sending_application,
        sending_facility=facility.lab.sending_facility,
    )[0]
    _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(frame(message)[: len(message) // 2])
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.2)
    assert await listener.store.hl7_messages() == []
    [ack] = await _send(listener.port, [message])
    assert ack[0] == "AA"


async def test_acknowledged_messages_survive_a_restart(city: City, tmp_path: Path) -> None:
    """ACK means durable: after the listener and its store stop and reopen, all ACKed are there."""
    fid, path, _ = _feed_facility(city)
    facility = next(f for f in REGISTRY if f.id == fid)
    assert isinstance(facility.lab, Hl7v2Feed)
    messages = messages_for_facility(
        path,
        sending_application=facility.lab.sending_application,
        sending_facility=facility.lab.sending_facility,
    )
    url = database_url_for(tmp_path, None)
    store = await Store.open(url)
    feed = LabFeed(REGISTRY, store, LabCodeMap.load())
    port = free_port()
    await feed.start("127.0.0.1", port)
    acks = await _send(port, messages)
    await feed.stop()
    await store.close()
    reopened = await Store.open(url)
    try:
        kept = await reopened.hl7_messages(status="stored", limit=10_000)
        assert len(kept) == sum(1 for a in acks if a[0] == "AA") == len(messages)
    finally:
        await reopened.close()


async def test_no_aa_when_the_store_fails(
    city: City, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails is answered AE (send again), never AA."""
    fid, path, _ = _feed_facility(city)
    facility = next(f for f in REGISTRY if f.id == fid)
    assert isinstance(facility.lab, Hl7v2Feed)
    store = await Store.open(database_url_for(tmp_path, None))

    async def broken(records: object) -> list[bool]:
        raise OSError("disk full")

    monkeypatch.setattr(store, "record_hl7", broken)
    feed = LabFeed(REGISTRY, store, LabCodeMap.load())
    port = free_port()
    await feed.start("127.0.0.1", port)
    try:
        message = messages_for_facility(
            path,
            sending_application=facility.lab.sending_application,
            sending_facility=facility.lab.sending_facility,
        )[0]
        [ack] = await _send(port, [message])
        assert ack[0] == "AE"
    finally:
        await feed.stop()
        await store.close()


def _post(url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60) as resp:
        data: dict[str, int] = json.loads(resp.read())
        return data


def test_every_facility_feed_builds_and_parses(city: City) -> None:
    """Every HL7 v2 facility's seed results become ORU^R01 that parse back, local panel codes
    (panels without a LOINC code) included."""
    from adapters.hl7v2 import parse_oru

    count = 0
    for f in REGISTRY:
        path = city.data_dir / "seed" / "fhir" / f"{f.id}.ndjson"
        if not (isinstance(f.lab, Hl7v2Feed) and path.exists()):
            continue
        for message in messages_for_facility(
            path,
            sending_application=f.lab.sending_application,
            sending_facility=f.lab.sending_facility,
        ):
            oru = parse_oru(message)
            assert oru.sending_facility == f.lab.sending_facility and oru.reports
            count += 1
    assert count > 0
