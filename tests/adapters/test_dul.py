"""The asyncio DICOM upper layer and DIMSE command codec: round trips and bad input."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from adapters import dimse_codec as codec
from adapters.dimse import STUDY_ROOT_FIND, DimseImaging
from adapters.dul import Association
from adapters.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from adapters.types import DimseEndpoint, StudyQuery
from gateway.registry import load_registry
from tests.city import City
from tests.ports import free_port


def test_command_round_trip() -> None:
    """A command set packs and parses back, with group length and dataset type set."""
    command: dict[str, int | str] = {
        "CommandField": codec.C_FIND_RQ,
        "AffectedSOPClassUID": STUDY_ROOT_FIND,
        "MessageID": 7,
        "Priority": 2,
    }
    packed = codec.encode_command(command, has_dataset=True)
    assert len(packed) % 2 == 0
    parsed = codec.decode_command(packed)
    assert parsed == {**command, "CommandDataSetType": codec.HAS_DATASET}
    # The same bytes pydicom reads as an Implicit VR Little Endian group-0000 dataset.
    ds = pydicom.dataset.Dataset()
    from io import BytesIO

    from pydicom.filereader import read_dataset

    ds = read_dataset(BytesIO(packed), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(packed) - 12
    assert ds.AffectedSOPClassUID == STUDY_ROOT_FIND and ds.MessageID == 7


def test_fragments_reassemble_across_small_pdus() -> None:
    """A message split into many PDVs comes back whole, command then dataset."""
    command = codec.encode_command(
        {"CommandField": codec.C_STORE_RQ, "MessageID": 1}, has_dataset=True
    )
    dataset = bytes(range(256)) * 40
    pdus = list(codec.fragments(3, command, dataset, max_pdu=1024 + 12))
    assert len(pdus) > 10
    got_command, got_dataset, last_flags = b"", b"", []
    for pdu in pdus:
        for cx, control, data in codec.pdv_items(pdu):
            assert cx == 3
            if control & 1:
                got_command += data
            else:
                got_dataset += data
            last_flags.append(control & 2)
    assert got_command == command and got_dataset == dataset
    assert sum(1 for f in last_flags if f) == 2  # one last fragment each


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x01\x04\x00\x00\x00",
        b"\x00\x00\x00\x01\xff\xff\x00\x00abc",
        b"\x08\x00\x10\x00\x00\x00\x00\x00",
    ],
)
def test_malformed_command_sets_are_refused(data: bytes) -> None:
    """Truncated values, elements outside group 0000, or no CommandField raise CommandError."""
    with pytest.raises(codec.CommandError):
        codec.decode_command(data)


def test_malformed_pdv_is_refused() -> None:
    with pytest.raises(codec.CommandError):
        list(codec.pdv_items(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\xff\x01\x03"))


async def test_open_to_a_closed_port_is_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await Association.open(
            "127.0.0.1",
            free_port(),
            calling_ae="HUREN",
            called_ae="X",
            abstract_syntaxes=[STUDY_ROOT_FIND],
        )


@pytest.mark.parametrize("junk", [b"HTTP/1.1 200 OK\r\n\r\n", b"\x02\x00\xff\xff\xff\xffxx", b""])
async def test_open_to_a_server_answering_junk_is_a_protocol_error(junk: bytes) -> None:
    """Non-PDU bytes, an absurd PDU length, or a silent close: a clear upstream error."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(junk)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises((UpstreamProtocolError, UpstreamUnavailable)):
            await Association.open(
                "127.0.0.1",
                port,
                calling_ae="HUREN",
                called_ae="X",
                abstract_syntaxes=[STUDY_ROOT_FIND],
            )


async def test_c_find_with_an_unknown_level_gets_a_failure_status(city: City) -> None:
    """The simulated PACS answers 0xA900 to a query level it does not know; the SCU raises."""
    f = next(f for f in load_registry() if isinstance(f.imaging, DimseEndpoint))
    assert isinstance(f.imaging, DimseEndpoint)
    assoc = await Association.open(
        f.imaging.host,
        f.imaging.port,
        calling_ae="HUREN",
        called_ae=f.imaging.ae_title,
        abstract_syntaxes=[STUDY_ROOT_FIND],
    )
    query = Dataset()
    query.QueryRetrieveLevel = "GALAXY"
    with pytest.raises(UpstreamError, match="0xA900"):
        async for _ in assoc.c_find(query, STUDY_ROOT_FIND):
            pass
    await assoc.release()


async def test_pooled_associations_are_reused_and_survive_a_restart(city: City) -> None:
    """The adapter reuses its association; after the PACS drops it, it reconnects."""
    f = next(f for f in load_registry() if isinstance(f.imaging, DimseEndpoint))
    assert isinstance(f.imaging, DimseEndpoint)
    adapter = DimseImaging(f.imaging, timeout=5)
    try:
        await adapter.ping()
        first = adapter._idle[0]
        await adapter.search_studies(StudyQuery(match={}))
        assert adapter._idle == [first]
        await asyncio.to_thread(city.fault, f.id, "down")
        await asyncio.to_thread(city.fault, f.id, "ok")
        await adapter.ping()  # the dropped association is noticed and replaced
        assert adapter._idle and adapter._idle[0] is not first
    finally:
        await adapter.close()
        await asyncio.to_thread(city.reset)


@pytest.mark.skipif(shutil.which("movescu") is None, reason="dcmtk is not installed")
def test_movescu_moves_a_study_to_a_storescp(city: City, tmp_path: Path) -> None:
    """C-MOVE from a simulated PACS to dcmtk's storescp (AE HUREN on 11112) delivers the study."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 11112)) == 0:
            pytest.skip("port 11112 is in use")
    f = next(
        f
        for f in load_registry()
        if isinstance(f.imaging, DimseEndpoint)
        and (city.data_dir / "seed" / "dicom" / f.id).is_dir()
    )
    assert isinstance(f.imaging, DimseEndpoint)
    files = sorted((city.data_dir / "seed" / "dicom" / f.id).rglob("*.dcm"))
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    expected = {p.stem for p in files if p.parent.parent.name == study}
    received = tmp_path / "in"
    received.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "HUREN", "-od", str(received), "11112"])
    try:
        time.sleep(0.5)
        subprocess.run(
            [
                "movescu",
                "-S",
                "-aec",
                f.imaging.ae_title,
                "-aem",
                "HUREN",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                f.imaging.host,
                str(f.imaging.port),
            ],
            check=True,
            timeout=60,
        )
    finally:
        scp.terminate()
        scp.wait(10)
    got = {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()}
    assert got == expected
